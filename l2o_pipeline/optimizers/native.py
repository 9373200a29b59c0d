"""Each LSTM layer as a C++ extension (``lstm_cell.cpp``), built at first use.

Why: on CPU the eager kernels make ~15 passes over [n, 80] gate tensors per layer and step,
each out of cache for the paper's 15,930 coordinates. Here each layer is one call per
direction over 256-row blocks: a block's gate GEMMs, cell and (backward) GEMMs and weight-
gradient sums run while its gates are in L2, and the backward recomputes the gates from the
carry (x, h, c), so no gate tensor is ever stored. ``torch.utils.cpp_extension.load_inline``
compiles it with the machine's C++ compiler (-O3 -ffast-math and the instruction set that
ATen detected: vectorised exp) into torch's extension cache (``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``), once per source, instruction set and torch version;
later processes load it in well under a second.

Switch: ``L2O_NATIVE`` (``auto``: on CPU; ``false``: eager kernels) or :func:`set_native`.
Where no compiler or ninja exists, or the build fails, one warning is logged and the eager
kernels run instead (same numbers).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from l2o_pipeline.utils import switch_mode

log = logging.getLogger(__name__)

NATIVE_MODES = ("auto", "false")
SOURCE = Path(__file__).with_name("lstm_cell.cpp")
_native = {"mode": "auto", "module": None, "failed": False}
ISA_FLAGS = {"AVX2": ["-mavx2", "-mfma"],
             "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]}


def set_native(mode: str | bool) -> None:
    """``"auto"`` (the C++ kernels on CPU, built at first use) or ``"false"`` (eager)."""
    _native["mode"] = switch_mode("native mode", mode, NATIVE_MODES, on="auto")


def get_native() -> str:
    return _native["mode"]


set_native(os.environ.get("L2O_NATIVE", "auto"))


def build(build_directory: str | None = None):
    """Compile (or load from the cache) the extension; None, with one warning, if that fails."""
    try:
        # Its import warns on every CPU-only machine that no CUDA runtime exists: irrelevant here.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        from torch.utils import cpp_extension

        kwargs = {"build_directory": build_directory} if build_directory else {}
        # Instruction set as ATen detected it, in the name: a cache shared by machines of
        # different CPUs (a cluster's home directory) never loads a build it cannot run.
        capability = torch.backends.cpu.get_cpu_capability()
        return cpp_extension.load_inline(
            name=f"l2o_lstm_cell_{capability.lower()}", cpp_sources=SOURCE.read_text(),
            functions=["lstm_forward", "lstm_backward", "linear_elu"],
            extra_cflags=["-O3", "-ffast-math", "-fopenmp", *ISA_FLAGS.get(capability, [])],
            extra_ldflags=["-fopenmp"], verbose=False, **kwargs)
    except Exception as exc:  # no compiler, no ninja, a failed build: the eager kernels run
        log.warning("the C++ LSTM kernels could not be built (%s: %s); using the eager "
                    "kernels", type(exc).__name__, str(exc).strip().splitlines()[-1:])
        return None


def kernels_for(t: torch.Tensor):
    """The extension module when the native kernels apply to ``t``, else None."""
    if (_native["mode"] == "false" or _native["failed"] or t.device.type != "cpu"
            or t.dtype not in (torch.float32, torch.float64)):
        return None
    if _native["module"] is None:
        _native["module"] = build()
        _native["failed"] = _native["module"] is None
    return _native["module"]
