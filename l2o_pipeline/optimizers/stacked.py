"""K learned optimizers of one architecture as one: their meta-parameters stacked ``[K, ...]``.

Run k's coordinates are rows ``[k, :, :]`` of every tensor (θ and gradient ``[K, n]``, LSTM
state ``[K, n, H]``), and its own weights multiply only them: the gate matmuls are ``bmm``
over K, the pointwise work is the single-run kernels of :mod:`kernels` on ``[K·n, ·]``
unchanged (they are coordinatewise). So the maths per run is the single run's, to float
rounding (``tests/test_batched_k.py``), and a GPU gets K times the work per kernel launch.
A CPU does not use these layers (:func:`runs_one_by_one`); the tests run them there too.

Why not ``torch.func.vmap`` over ``functional_call``: the fast path's ``autograd.Function``s
save tensors through ``ctx`` in ``forward`` and write into ``out=`` buffers, which vmap cannot
batch; a batched twin of the two layers (here) costs less than making them vmappable.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from l2o_pipeline.optimizers import kernels
from l2o_pipeline.optimizers.base import LearnedOptimizer, State
from l2o_pipeline.optimizers.learned import DMOptimizer, LSTMOptimizer, RNNprop


def stack_parameters(models: list[LearnedOptimizer]) -> dict[str, torch.Tensor]:
    """``{name: [K, ...]}``, differentiable: the meta-gradient reaches every model's own
    leaves (so each keeps its own meta-optimizer and checkpoints as a single run)."""
    names = [name for name, _ in models[0].named_parameters()]
    per_model = [dict(m.named_parameters()) for m in models]
    return {name: torch.stack([p[name] for p in per_model]) for name in names}


def _pad_rows(t: torch.Tensor, n: int, n_max: int) -> torch.Tensor:
    if t.dim() == 0 or t.shape[0] != n:
        return t.reshape(1)  # shared across coordinates (β^t): one value per run
    if n == n_max:
        return t
    return torch.cat([t, t.new_zeros(n_max - n, *t.shape[1:])])


def stack_states(states: list[State], sizes: list[int]) -> State:
    """Per-run states (``init_state(n_k)`` layouts) as one: per-coordinate tensors ``[K, n_max,
    ...]`` (runs with fewer coordinates padded with zeros), shared ones ``[K, 1]``."""
    n_max = max(sizes)
    return tuple(torch.stack([_pad_rows(s, n, n_max) for s, n in zip(parts, sizes)])
                 for parts in zip(*states))


def unstack_state(state: State, k: int, like: State, n: int) -> State:
    """Run k's part of a stacked state, in the shapes of ``like`` (its single-run state)."""
    return tuple(s[k, :n] if ref.dim() and ref.shape[0] == n else s[k].reshape(ref.shape)
                 for s, ref in zip(state, like))


# ------------------------------------------------------------------------------ stacked layers


def runs_one_by_one(device: torch.device) -> bool:
    """Whether K runs on ``device`` go one after another, each as its single run (a CPU's:
    :mod:`l2o_pipeline.meta.batched_k` then never stacks them), rather than stacked through
    the batched layers below (a GPU's: one call per layer for the K runs keeps it busy). On a
    CPU MKL's bmm is slower than K mms on these shapes and one run's gates stay in cache where
    K runs' do not: the batched layers measured 0.7x of K single runs, the stacked step with
    per-run layers 0.87-0.92x."""
    return device.type == "cpu"


def _cell_rows(z, c, H: int, h_out, c_out, P_out) -> None:
    """The single-run training kernel on rows of gates ``z`` (consumed)."""
    kernel = kernels._compiled_kernel("fwd_train", z.device)
    out = kernel(z, c, H) if kernel is not None else None
    if out is None:
        kernels._fwd_train_eager(z, c, H, h_out, c_out, P_out)
    else:
        for buf, value in zip((h_out, c_out, P_out), out):
            buf.copy_(value)


def _cell_rows_backward(dh, dc, P, H: int, dc_out):
    kernel = kernels._compiled_kernel("bwd", P.device)
    out = kernel(dh, dc, P, H) if kernel is not None else None
    if out is None:
        return kernels._bwd_eager(dh, dc, P, H, dc_out)
    dz, dc_prev = out
    dc_out.copy_(dc_prev)
    return dz


class _StackedLSTMCell(torch.autograd.Function):
    """:class:`kernels._LSTMCellFunction` with per-run weights ``[K, in+H, 4H]``."""

    @staticmethod
    def forward(ctx, x, h, c, weight, bias, scale, fmask, grad_factor, forget_bias):
        K, n, n_in = x.shape
        H = c.shape[-1]
        if x.device.type == "cpu":  # K-fold tensors: past glibc's mmap threshold for K > 4
            kernels.keep_freed_memory(every_size=True)
        w = weight * scale
        b = torch.add(bias, fmask, alpha=forget_bias).mul_(scale)
        h_new, c_new, P = x.new_empty(K, n, H), x.new_empty(K, n, H), x.new_empty(K, n, 6 * H)
        z = torch.baddbmm(b.unsqueeze(1), x, w[:, :n_in]).baddbmm_(h, w[:, n_in:])
        _cell_rows(z.view(K * n, 4 * H), c.reshape(K * n, H), H, h_new.view(K * n, H),
                   c_new.view(K * n, H), P.view(K * n, 6 * H))
        ctx.save_for_backward(x, h, weight, grad_factor, P)
        return h_new, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dc):
        x, h, weight, factor, P = ctx.saved_tensors
        K, n, n_in = x.shape
        H = P.shape[-1] // 6
        w = weight * factor  # dL/dz = dz'·GRAD_FACTOR, and z used W·scale (see kernels)
        dc_prev = x.new_empty(K, n, H)
        dz = _cell_rows_backward(dh.reshape(K * n, H), dc.reshape(K * n, H),
                                 P.view(K * n, 6 * H), H, dc_prev.view(K * n, H))
        dz = dz.view(K, n, 4 * H)
        dxh = torch.bmm(dz, w.transpose(1, 2))
        dw = torch.cat([torch.bmm(x.transpose(1, 2), dz), torch.bmm(h.transpose(1, 2), dz)],
                       dim=1)
        db = dz.sum(1)
        return (dxh[..., :n_in], dxh[..., n_in:], dc_prev, dw.mul_(factor), db.mul_(factor),
                None, None, None, None)


def _linear(x, weight, bias):
    """x·Wᵀ + b per run (``weight [K, out, in]``)."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class _StackedLinearELU(torch.autograd.Function):
    """ELU(x·Wᵀ + b) with per-run ``W [K, out, in]``, ``b [K, out]``."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        y = kernels._elu_eager(_linear(x, weight, bias))
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, y = ctx.saved_tensors
        dpre = torch.clamp_max(y, 0.0).add_(1.0).mul_(dy)  # ELU' = e^p = y + 1 where p ≤ 0
        return (torch.bmm(dpre, weight), torch.bmm(x.transpose(1, 2), dpre).transpose(1, 2),
                dpre.sum(1))


# --------------------------------------------------------------------------- the stacked step


def _rnnprop_features(model: RNNprop, params, grad, state):
    features, moments = model.inputs(grad, state[:4])
    x = _StackedLinearELU.apply(features, params["preprocess.weight"], params["preprocess.bias"])
    return x, moments, state[4:]


def _dmoptimizer_features(model: DMOptimizer, params, grad, state):
    return model.inputs(grad), (), state


# What each learned optimizer feeds its LSTM core: (LSTM input, other state, LSTM state).
STACKED_FEATURES = {RNNprop: _rnnprop_features, DMOptimizer: _dmoptimizer_features}


def supports(model: LearnedOptimizer) -> bool:
    return type(model) in STACKED_FEATURES


def stacked_step(model: LSTMOptimizer, params: dict[str, torch.Tensor], grad: torch.Tensor,
                 state: State) -> tuple[torch.Tensor, State]:
    """``model.step`` for K runs at once: ``grad [K, n]``, ``params`` from
    :func:`stack_parameters`, ``state`` from :func:`stack_states`; ``model`` supplies the
    hyper-parameters (shared by the K runs) and the layers' constant buffers."""
    x, other, lstm_state = STACKED_FEATURES[type(model)](model, params, grad, state)
    new_state = []
    for layer, cell in enumerate(model.cells):
        h, c = lstm_state[2 * layer], lstm_state[2 * layer + 1]
        weight, bias = params[f"cells.{layer}.weight"], params[f"cells.{layer}.bias"]
        constants = (cell._gate_scale, cell._forget_mask, cell._grad_factor,
                     float(cell.forget_bias))
        h, c = _StackedLSTMCell.apply(x, h, c, weight, bias, *constants)
        new_state += [h, c]
        x = h
    K = x.shape[0]
    out = torch.baddbmm(params["output.bias"].view(K, 1, 1), x,
                        params["output.weight"].transpose(1, 2)).squeeze(-1)
    return model.readout(out), tuple(other) + tuple(new_state)
