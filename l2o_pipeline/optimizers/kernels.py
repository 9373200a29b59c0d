"""The learned optimizers' fused layers: a TF-semantics coordinatewise LSTM cell and a
Linear + ELU, each with a hand-written backward, and the switches of how they run.

Speed (``bench/bench_speed.py``). n is large (15,930 rows for the paper's training task) and
the network tiny, so a step is a few skinny matmuls plus pointwise passes over [n, 80] gate
tensors, and on CPU the pointwise passes cost as much as the matmuls. The hot path is therefore
hand-fused; the maths is unchanged, and ``tests/test_fast_path.py`` pins it (trajectories and
meta-gradients over 100 steps) against a plain ``nn.LSTMCell`` version, ``bench/reference.py``:

- one sigmoid over all four gates: the j block of the gate weights is scaled by 2 so that
  tanh(g) = 2σ(2g) − 1 comes out of the same call (ATen's CPU tanh is ~3× slower than its
  sigmoid); tanh(c) uses the same identity; the forget bias is folded into the gate bias;
- with autograd on (meta-training), each LSTM layer and the preprocessing layer are one
  ``autograd.Function``: the forward stores the six per-unit factors the backward needs
  (same memory as the activations autograd would keep), so the backward is four passes and
  three matmuls per layer, and the graph holds ~6 nodes per step instead of ~40;
- on CPU, the pointwise part is C++ (:mod:`l2o_pipeline.optimizers.native`, built at first
  use, eager fallback): one fused pass over row blocks forward, and a backward that
  recomputes the gates from the carry (x, h, c) and fuses the cell's whole backward into one
  pass; it stores no gates (~7 MB instead of ~19 MB per step of the paper's task) at the
  speed of the eager path that stores them;
- without autograd (evaluation, ``torch_optim``), the same kernels run in place, no graph;
- optionally, the pointwise kernels go through ``torch.compile`` (one fused loop each):
  :func:`set_compile` (the pipeline's ``compile`` key) or the ``L2O_COMPILE`` environment
  variable, ``auto`` (default: compile
  on CUDA only, where Triton fuses the ~15 eager kernel launches per layer), ``true`` or
  ``false``. On CPU a first compile takes tens of seconds (then cached on disk), worth it only
  for long meta-training runs; tests and short runs stay eager.

Nothing here syncs with the host, so the same code runs on CUDA.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from l2o_pipeline.optimizers import native
from l2o_pipeline.utils import switch_mode

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "true", "false")
_compile_mode = {"mode": "auto"}


def set_compile(mode: str | bool) -> None:
    """Whether the pointwise kernels run through ``torch.compile``: ``"true"``, ``"false"`` or
    ``"auto"`` (compile on CUDA only). The default comes from the ``L2O_COMPILE`` environment
    variable, else ``"auto"``."""
    _compile_mode["mode"] = switch_mode("compile mode", mode, COMPILE_MODES, on="true")


def get_compile() -> str:
    return _compile_mode["mode"]


set_compile(os.environ.get("L2O_COMPILE", "auto"))


_memory_saving = {"on": os.environ.get("L2O_SAVE_MEMORY", "0") == "1"}


def set_memory_saving(on: bool) -> None:
    """Eager kernels only (the C++ ones always recompute): trade time for memory in
    meta-training, keep only each LSTM layer's inputs and recompute its gates in the backward
    (one more gate matmul and pointwise pass per layer and step).
    Saved activations drop from ~19 MB to ~7 MB per step of the paper's training task. The
    default comes from the ``L2O_SAVE_MEMORY`` environment variable (``1``: on), else off."""
    _memory_saving["on"] = bool(on)


def _use_compiled(device: torch.device) -> bool:
    mode = _compile_mode["mode"]
    return mode == "true" or (mode == "auto" and device.type == "cuda")


# --------------------------------------------------------------------------- pointwise kernels
# ``z`` holds one LSTM layer's gate pre-activations (blocks i, j, f, o) with the forget bias
# added and the j block scaled by 2, so that s = σ(z) gives i, f, o and j = tanh = 2·s_j − 1.
# With autograd on, the forward also computes what the backward needs, while the data is hot:
#   P = [−j·σ'_i, i·σ'_j, c·σ'_f, tanh(c')·σ'_o, o·(1 − tanh²c'), f]     (σ' = s(1 − s))
# so that the backward is four passes: dc_tot = dc + dh·P4; dz' = [dc_tot·P0..P2, dh·P3];
# dc_prev = dc_tot·P5. dz' is dL/dz divided by GRAD_FACTOR = (−1, 2, 1, 1) per block (the sign
# and the 2 of tanh' = 2σ' would cost a pass each here, nothing on the 40×80 weights); the
# backward multiplies it back into the weights, together with the j-block scaling of z.
# Eager kernels write into given outputs and work in place on the gate tensor they own; their
# functional twins (*_math) are what torch.compile fuses into one loop each.

GRAD_FACTOR = (-1.0, 2.0, 1.0, 1.0)


def _blocks(t: torch.Tensor, hidden: int, count: int = 4):
    return tuple(t[:, k * hidden:(k + 1) * hidden] for k in range(count))


def _fwd_eager(z, c, hidden: int, h_out, c_out) -> None:
    """Inference: h', c' into ``h_out``, ``c_out``. Consumes ``z``."""
    i, j, f, o = _blocks(z.sigmoid_(), hidden)
    j.mul_(2.0).sub_(1.0)  # tanh(g) = 2σ(2g) − 1 (ATen's CPU tanh is ~3× slower than σ)
    torch.mul(f, c, out=c_out).addcmul_(i, j)
    tc = torch.mul(c_out, 2.0).sigmoid_().mul_(2.0).sub_(1.0)
    torch.mul(o, tc, out=h_out)


def _fwd_train_eager(z, c, hidden: int, h_out, c_out, P) -> None:
    """Training: h', c' and the backward's factors P (see above). Consumes ``z``."""
    H = hidden
    s = z.sigmoid_()
    torch.addcmul(s, s, s, value=-1.0, out=P[:, :4 * H])  # σ' = s − s² for the four gates
    p0, p1, p2, p3, p4, p5 = _blocks(P, H, 6)
    i, sj, f, o = _blocks(s, H)
    p0.addcmul_(p0, sj, value=-2.0)  # σ'_i·(1 − 2 s_j) = −j·σ'_i
    p1.mul_(i)
    p2.mul_(c)
    torch.mul(f, c, out=c_out).addcmul_(i, sj, value=2.0).sub_(i)  # f·c + i·(2 s_j − 1)
    tc = torch.mul(c_out, 2.0).sigmoid_().mul_(2.0).sub_(1.0)
    p3.mul_(tc)
    torch.mul(o, tc, out=h_out)
    torch.addcmul(o, h_out, tc, value=-1.0, out=p4)  # o·(1 − tanh²) = o − h'·tanh
    p5.copy_(f)


def _bwd_eager(dh, dc, P, hidden: int, dc_out) -> torch.Tensor:
    """dz' = dL/dz ÷ GRAD_FACTOR for one block of rows; dL/dc_prev into ``dc_out``."""
    H, n = hidden, P.shape[0]
    p3, p4, p5 = _blocks(P, H, 6)[3:]
    dct = torch.addcmul(dc, dh, p4)
    dz = torch.empty(n, 4 * H, dtype=P.dtype, device=P.device)
    dzv = dz.view(n, 4, H)
    torch.mul(P.view(n, 6, H)[:, :3], dct.unsqueeze(1), out=dzv[:, :3])
    torch.mul(p3, dh, out=dzv[:, 3])
    if dc_out is not None:
        torch.mul(dct, p5, out=dc_out)
    return dz


def _fwd_math(z, c, hidden: int):
    i, sj, f, o = torch.sigmoid(z).split(hidden, dim=1)
    c_new = f * c + i * (2.0 * sj - 1.0)
    return o * (2.0 * torch.sigmoid(2.0 * c_new) - 1.0), c_new


def _fwd_train_math(z, c, hidden: int):
    s = torch.sigmoid(z)
    i, sj, f, o = s.split(hidden, dim=1)
    di, dj, df, do = (s * (1.0 - s)).split(hidden, dim=1)
    j = 2.0 * sj - 1.0
    c_new = f * c + i * j
    tc = 2.0 * torch.sigmoid(2.0 * c_new) - 1.0
    P = torch.cat([-j * di, i * dj, c * df, tc * do, o * (1.0 - tc * tc), f], dim=1)
    return o * tc, c_new, P


def _bwd_math(dh, dc, P, hidden: int):
    p0, p1, p2, p3, p4, p5 = P.split(hidden, dim=1)
    dct = dc + dh * p4
    return torch.cat([dct * p0, dct * p1, dct * p2, dh * p3], dim=1), dct * p5


def _elu_eager(pre: torch.Tensor) -> torch.Tensor:
    """ELU in place on ``pre`` (ATen's elu is ~1.6× slower): max(p, 0) + exp(min(p, 0)) − 1."""
    neg = torch.clamp_max(pre, 0.0).exp_().sub_(1.0)
    return pre.clamp_min_(0.0).add_(neg)


def _elu_math(pre: torch.Tensor) -> torch.Tensor:
    return pre.clamp_min(0.0) + torch.exp(pre.clamp_max(0.0)) - 1.0


_MATH = {"fwd": _fwd_math, "fwd_train": _fwd_train_math, "bwd": _bwd_math, "elu": _elu_math}
_compiled: dict[str, _CompiledKernel] = {}


def _compiled_kernel(name: str, device: torch.device) -> Callable | None:
    """The compiled twin of a kernel when compilation is on for ``device``, else None."""
    if not _use_compiled(device):
        return None
    if name not in _compiled:
        _compiled[name] = _CompiledKernel(name)
    kernel = _compiled[name]
    return None if kernel.failed else kernel


class _CompiledKernel:
    """``torch.compile`` of one kernel, specialised to the shapes seen (n is fixed within a
    run); a failure to compile (no C++ compiler, no Triton) logs once and falls back to eager."""

    def __init__(self, name: str):
        self.name = name
        self.fn = torch.compile(_MATH[name], dynamic=False)
        self.failed = False

    def __call__(self, *args):
        try:
            return self.fn(*args)
        except Exception as exc:
            self.failed = True
            log.warning("torch.compile of the %s kernel failed (%s: %s); using the eager "
                        "kernels", self.name, type(exc).__name__, exc)
            return None


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


_malloc_tuned = {"done": False, "every_size": False}


def keep_freed_memory(every_size: bool = False) -> bool:
    """Stop glibc from handing freed memory back to the OS (process-wide; Linux/glibc only).

    Every step allocates and frees several [n, 80] gate tensors (5 MB each for the paper's
    task), and meta-training frees the ~400 MB of saved activations at the end of every
    truncation period; by default glibc unmaps such blocks when they are freed, so the next
    step page-faults (and the kernel zeroes) them again, which costs ~20 % of an evaluation
    step and more than the arithmetic of meta-training on a loaded machine. Called once, on the
    first LSTM step on CPU; peak memory is unchanged, but it is kept until the process ends.
    ``every_size``: blocks over 32 MiB (glibc's largest mmap threshold) come from the heap too
    (``M_MMAP_MAX = 0``), for the batched evaluation engine, whose per-step tensors are
    10-200 MB: page-faulting them cost a clone of θ ten times its copy. ``L2O_MALLOC_TUNING=0``
    opts out. Returns whether the setting was applied."""
    if _malloc_tuned["done"] and (_malloc_tuned["every_size"] or not every_size):
        return True
    _malloc_tuned["done"] = True
    _malloc_tuned["every_size"] |= every_size
    if os.environ.get("L2O_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4  # mallopt's numbers
        # allocations under 32 MiB (glibc's maximum) come from the heap, never trimmed
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20)
        ok = ok and libc.mallopt(m_trim_threshold, 2**31 - 1)
        return bool(ok and (not every_size or libc.mallopt(m_mmap_max, 0)))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False


# ------------------------------------------------------------------------------ fused layers


def _gate_params(weight, bias, scale, fmask, forget_bias):
    """W·scale and (b + forget bias)·scale: z = x·W_x + h·W_h + b then has j scaled by 2."""
    return weight * scale, torch.add(bias, fmask, alpha=forget_bias).mul_(scale)


def _gates(x, h, w, b):
    """z = x·W_x + h·W_h + b, [n, 4H]."""
    n_in = x.shape[1]
    return torch.addmm(b, x, w[:n_in]).addmm_(h, w[n_in:])


def _cell_forward(x, h, c, w, b, hidden: int, train: bool):
    """(h', c', P or None): the gate matmuls, then one compiled or eager pointwise kernel."""
    if x.device.type == "cpu" and not _malloc_tuned["done"]:
        keep_freed_memory()
    n, n_in = x.shape
    if not train and (ext := native.kernels_for(x)) is not None:  # GEMM + cell, block by block
        h_new, c_new = x.new_empty(n, hidden), x.new_empty(n, hidden)
        ext.lstm_forward(x.contiguous(), h.contiguous(), c.contiguous(), w, b, h_new, c_new)
        return h_new, c_new, None
    z = _gates(x, h, w, b)
    kernel = _compiled_kernel("fwd_train" if train else "fwd", x.device)
    if kernel is not None:
        out = kernel(z, c, hidden)
        if out is not None:
            return out if train else (*out, None)
    h_new, c_new = x.new_empty(n, hidden), x.new_empty(n, hidden)
    if train:
        P = x.new_empty(n, 6 * hidden)
        _fwd_train_eager(z, c, hidden, h_new, c_new, P)
        return h_new, c_new, P
    _fwd_eager(z, c, hidden, h_new, c_new)
    return h_new, c_new, None


class _LSTMCellFunction(torch.autograd.Function):
    """One TF LSTM layer over all coordinates, with a hand-written backward."""

    @staticmethod
    def forward(ctx, x, h, c, weight, bias, scale, fmask, grad_factor, forget_bias):
        w, b = _gate_params(weight, bias, scale, fmask, forget_bias)
        # The C++ kernels always recompute (their backward fuses it); eager ones on request.
        ctx.native = native.kernels_for(x) is not None
        ctx.recompute, ctx.forget_bias = ctx.native or _memory_saving["on"], forget_bias
        if ctx.recompute:  # keep the inputs only; the backward recomputes the gates
            c = c.contiguous()
            h_new, c_new, _ = _cell_forward(x, h, c, w, b, c.shape[1], train=False)
            ctx.save_for_backward(x, h, c, weight, bias, scale, fmask, grad_factor)
        else:
            h_new, c_new, P = _cell_forward(x, h, c, w, b, c.shape[1], train=True)
            ctx.save_for_backward(x, h, weight, grad_factor, P)
        return h_new, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dc):
        need_x, need_h, need_c, need_w, need_b = ctx.needs_input_grad[:5]
        out = None
        if ctx.native:  # the whole layer's backward from the carry, block by block in cache
            x, h, c, weight, bias, scale, fmask, factor = ctx.saved_tensors
            w, b = _gate_params(weight, bias, scale, fmask, ctx.forget_bias)
            dxh, dc_prev, dw, db = native.kernels_for(x).lstm_backward(
                x.contiguous(), h.contiguous(), c, w, b, weight * factor, dh.contiguous(),
                dc.contiguous())
            n_in = x.shape[1]
            return (dxh[:, :n_in] if need_x else None, dxh[:, n_in:] if need_h else None,
                    dc_prev if need_c else None, dw.mul_(factor) if need_w else None,
                    db.mul_(factor) if need_b else None, None, None, None, None)
        if ctx.recompute:
            x, h, c, weight, bias, scale, fmask, factor = ctx.saved_tensors
            w, b = _gate_params(weight, bias, scale, fmask, ctx.forget_bias)
            _, _, P = _cell_forward(x, h, c, w, b, c.shape[1], train=True)
        else:
            x, h, weight, factor, P = ctx.saved_tensors
        n, n_in = x.shape
        hidden = weight.shape[1] // 4
        # dL/dz = dz'·GRAD_FACTOR and z used W·scale: factor = scale·GRAD_FACTOR, on the weights
        w = weight * factor
        if out is None:
            kernel = _compiled_kernel("bwd", P.device)
            out = kernel(dh, dc, P, hidden) if kernel is not None else None
        if out is None:
            dc_prev = x.new_empty(n, hidden) if need_c else None
            dz = _bwd_eager(dh, dc, P, hidden, dc_prev)
        else:
            dz, dc_prev = out
        dx = dh_prev = dw = db = None
        if need_x and need_h:
            dxh = dz.mm(w.t())  # one matmul for both, split into views
            dx, dh_prev = dxh[:, :n_in], dxh[:, n_in:]
        elif need_x:
            dx = dz.mm(w[:n_in].t())
        elif need_h:
            dh_prev = dz.mm(w[n_in:].t())
        if need_w:
            dw = torch.empty_like(weight)
            torch.mm(x.t(), dz, out=dw[:n_in])
            torch.mm(h.t(), dz, out=dw[n_in:])
        if need_b:
            db = dz.sum(0)
        if dw is not None:
            dw.mul_(factor)
        if db is not None:
            db.mul_(factor)
        return dx, dh_prev, dc_prev if need_c else None, dw, db, None, None, None, None


def _elu(pre: torch.Tensor) -> torch.Tensor:
    kernel = _compiled_kernel("elu", pre.device)
    out = kernel(pre) if kernel is not None else None
    return _elu_eager(pre) if out is None else out


def _linear_elu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """ELU(x·Wᵀ + b): one C++ pass on CPU, else the matmul and the (compiled or eager) ELU."""
    if (ext := native.kernels_for(x)) is not None and not _use_compiled(x.device):
        return ext.linear_elu(x, weight, bias)
    return _elu(torch.addmm(bias, x, weight.t()))


class _LinearELUFunction(torch.autograd.Function):
    """ELU(x·Wᵀ + b) (nn.Linear layout), saving only x and the output."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        y = _linear_elu_forward(x, weight, bias)
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, y = ctx.saved_tensors
        # ELU'(p) = 1 for p > 0, e^p = y + 1 otherwise; y > 0 exactly when p > 0.
        dpre = torch.clamp_max(y, 0.0).add_(1.0).mul_(dy)
        need = ctx.needs_input_grad
        dx = dpre.mm(weight) if need[0] else None
        dw = x.t().mm(dpre).t() if need[1] else None  # (xᵀ·dpre)ᵀ: much faster than dpreᵀ·x
        db = dpre.sum(0) if need[2] else None
        return dx, dw, db


def linear_elu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``F.elu(linear(x))`` on the fast path."""
    if _needs_grad(x, linear.weight, linear.bias):
        return _LinearELUFunction.apply(x, linear.weight, linear.bias)
    return _linear_elu_forward(x, linear.weight, linear.bias)


class CoordinatewiseLSTM(nn.Module):
    """TF 0.12 ``LSTMCell`` semantics: one weight [in+hid, 4·hid], one bias, gate order
    (i, j, f, o) and a constant forget bias, so the official weights map one to one."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0):
        super().__init__()
        self.input_size, self.hidden_size, self.forget_bias = input_size, hidden_size, forget_bias
        self.weight = nn.Parameter(torch.empty(input_size + hidden_size, 4 * hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        # Not in the state_dict (checkpoints unchanged); they follow .to(device, dtype).
        scale = torch.ones(4 * hidden_size)
        scale[hidden_size:2 * hidden_size] = 2.0
        fmask = torch.zeros(4 * hidden_size)
        fmask[2 * hidden_size:3 * hidden_size] = 1.0
        factor = scale * torch.tensor(GRAD_FACTOR).repeat_interleave(hidden_size)
        self.register_buffer("_gate_scale", scale, persistent=False)
        self.register_buffer("_forget_mask", fmask, persistent=False)
        self.register_buffer("_grad_factor", factor, persistent=False)

    def forward(self, x, h, c):
        if _needs_grad(x, h, c, self.weight, self.bias):
            return _LSTMCellFunction.apply(x, h, c, self.weight, self.bias, self._gate_scale,
                                           self._forget_mask, self._grad_factor,
                                           float(self.forget_bias))
        w, b = _gate_params(self.weight, self.bias, self._gate_scale, self._forget_mask,
                            float(self.forget_bias))
        h_new, c_new, _ = _cell_forward(x, h, c, w, b, self.hidden_size, train=False)
        return h_new, c_new
