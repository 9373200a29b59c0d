"""Checkpoints: clear errors, the config saved inside (nanoGPT's habit).

Two kinds: an *optimizer* checkpoint (meta-parameters + how to rebuild the model + the config +
the model-selection record) that evaluation and ``LearnedOptimizer`` load, and the full
*training state* of meta-training (meta-optimizer, RNG, counters) used for exact resume.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import torch

from l2o_pipeline import registry
from l2o_pipeline.errors import UserError
from l2o_pipeline.optimizers import LearnedOptimizer
from l2o_pipeline.records import save_torch

log = logging.getLogger(__name__)

OPTIMIZER_FORMAT = "l2o_pipeline.learned_optimizer/v1"
STATE_FORMAT = "l2o_pipeline.meta_train_state/v1"


def learned_classes() -> dict[str, type]:
    """The model classes a checkpoint may hold, by the name it records (``class``): those of
    the registered learned optimizers."""
    registry.load_builtins()
    return {e.cls.name: e.cls for e in registry.learned_optimizers.entries()}


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated, corrupt or for something else."""


def load_file(path: str | Path, expected_format: str) -> dict:
    """A checkpoint or training state, read with ``weights_only=True``: the unpickler builds
    tensors, containers and plain values only, so a file that names any other object (a
    pickled ``os.system`` call) is refused before anything in it runs. What this project
    writes needs no more (tests/test_checkpoint_safety.py loads the packaged optimizer)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # raw pickles of another protocol: refused just below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _refusal_reason(exc)
        if "GLOBAL" not in reason:  # text, a raw pickle: opcodes the safe loader never reads
            raise _corrupt(path, "UnpicklingError", reason) from None
        raise CheckpointError(f"{path} is not a checkpoint this project wrote: it holds objects "
                              f"a checkpoint never contains ({reason}), so it was not loaded "
                              "and nothing in it ran. Use a file written by meta-training or "
                              "save_optimizer") from None
    except Exception as exc:  # truncated zip, pickle garbage, ...
        raise _corrupt(path, exc.__class__.__name__, str(exc)) from exc
    if not isinstance(obj, dict) or obj.get("format") != expected_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a {expected_format} checkpoint (found {found!r})")
    return obj


def _corrupt(path: Path, kind: str, reason: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is truncated or corrupt, or not a checkpoint this "
                           f"project wrote ({kind}: {reason}); re-create it or use an earlier "
                           "checkpoint")


def _refusal_reason(exc: Exception) -> str:
    """The reason of torch's safe loader, e.g. "Trying to load unsupported GLOBAL posix.system
    ...", without its advice to load the file with weights_only=False."""
    text = str(exc).split("Check the documentation of torch.load")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if len(lines) > 1 else str(exc)


def optimizer_payload(model: LearnedOptimizer, variant: str, config: dict | None = None,
                      **extra) -> dict:
    return {
        "format": OPTIMIZER_FORMAT,
        "class": model.name,
        "variant": variant,
        "hparams": model.hparams(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config,
        **extra,
    }


def save_optimizer(path, model: LearnedOptimizer, variant: str, config: dict | None = None,
                   **extra) -> Path:
    return save_torch(path, optimizer_payload(model, variant, config, **extra))


def load_optimizer(path: str | Path, expected_class: str | None = None,
                   device: str | torch.device = "cpu") -> tuple[LearnedOptimizer, dict]:
    """Rebuild a learned optimizer from its checkpoint; refuse one for another model."""
    payload = load_file(path, OPTIMIZER_FORMAT)
    cls_name, classes = payload.get("class"), learned_classes()
    if cls_name not in classes:
        raise CheckpointError(f"{path}: unknown learned optimizer class {cls_name!r}; "
                              f"valid: {sorted(classes)}")
    if expected_class is not None and cls_name != expected_class:
        raise CheckpointError(f"{path} holds a {cls_name!r} optimizer, but {expected_class!r} "
                              f"was asked for")
    model = classes[cls_name](**payload["hparams"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {cls_name}: {exc}") from exc
    payload["path"] = Path(path)  # where it was read from, for logs and summaries
    return model.to(device), payload


PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def pretrained_names() -> list[str]:
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def resolve_checkpoint(spec: str | Path, iteration: int | None = None) -> Path:
    """A checkpoint file, a run folder (its ``best.pt``, else ``final.pt``; or with
    ``iteration`` its ``checkpoints/iter_<N>.pt``), or a packaged name."""
    path = Path(spec)
    if path.is_dir() and iteration is not None:
        candidate = path / "checkpoints" / f"iter_{iteration:07d}.pt"
        if candidate.is_file():
            return candidate
        have = sorted(p.stem for p in (path / "checkpoints").glob("iter_*.pt"))
        raise CheckpointError(f"no checkpoint of iteration {iteration} in {path}; it has {have}")
    if path.is_dir():
        for name in ("best.pt", "final.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"no meta-trained optimizer in {path} (expected best.pt or "
                              "final.pt): run its meta-training first")
    if path.is_file():
        return path
    if (PRETRAINED_DIR / f"{spec}.pt").is_file():
        return PRETRAINED_DIR / f"{spec}.pt"
    raise CheckpointError(f"checkpoint {spec!r} is neither a file, a run folder nor a packaged "
                          f"optimizer; packaged: {pretrained_names()}")
