"""CUDA graphs for applying an optimizer: one optimizee step captured once, replayed per step.

An RNNprop step on the paper's task is ~100 small kernels, so on a GPU its launches, not its
arithmetic, set the pace; a graph replays them with one launch. Only the minibatch draw (a
CPU generator, as in every paired run) stays outside: it is copied into the graph's static
batch before each replay. The numbers are :func:`evaluate.run_optimizer`'s (the same kernels
in the same order; ``bench/gpu_check.py`` compares them). Never used on a CPU; switched by
``L2O_CUDA_GRAPHS`` (``auto``, the default: on CUDA; ``false``: off); a failed capture logs
once and falls back to the eager loop.
"""

from __future__ import annotations

import logging
import os

import torch

from l2o_pipeline.evaluate import frozen_final_loss, run_optimizer
from l2o_pipeline.optimizees.base import Batch, Task
from l2o_pipeline.optimizers.base import Optimizer

log = logging.getLogger(__name__)
MODES = ("auto", "false")


def enabled(device: torch.device) -> bool:
    mode = os.environ.get("L2O_CUDA_GRAPHS", "auto").lower()
    if mode not in MODES:
        raise ValueError(f"L2O_CUDA_GRAPHS must be one of {MODES}, got {mode!r}")
    return mode == "auto" and device.type == "cuda"


def _clone(batch: Batch) -> Batch:
    if batch is None:
        return None
    if isinstance(batch, tuple):
        return tuple(_clone(b) for b in batch)
    return batch.clone()


def _copy_into(static: Batch, batch: Batch) -> None:
    if isinstance(static, tuple):
        for s, b in zip(static, batch):
            _copy_into(s, b)
    elif static is not None:
        static.copy_(batch, non_blocking=True)


@torch.no_grad()
def run_optimizer_graphed(task: Task, optimizer: Optimizer, theta0: torch.Tensor,
                          batch_seed: int, n_steps: int, final_loss: str = "average_over_seen",
                          warmup: int = 3) -> tuple[torch.Tensor, float, bool]:
    """:func:`run_optimizer` with the step as a CUDA graph: (loss curve, final loss, whether a
    graph ran). Off CUDA (or switched off) it is :func:`run_optimizer` itself."""
    if not enabled(theta0.device):
        return (*run_optimizer(task, optimizer, theta0, batch_seed, n_steps, final_loss), False)
    gen = torch.Generator().manual_seed(batch_seed)
    theta = theta0.clone()
    state = list(optimizer.init_state(theta.numel(), theta.device, theta.dtype))
    static_batch = _clone(task.sample_batch(gen))
    loss_out = torch.zeros((), device=theta.device, dtype=theta.dtype)

    def step():
        loss, grad = task.loss_and_grad(theta, static_batch)
        loss_out.copy_(loss)
        update, new_state = optimizer.step(grad, tuple(state))
        theta.add_(update)
        for s, new in zip(state, new_state):
            s.copy_(new)

    start = [theta.clone()] + [s.clone() for s in state]
    graph = torch.cuda.CUDAGraph()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy init, compiled kernels, allocator
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as exc:
        log.warning("CUDA graph capture failed (%s); applying eagerly", exc)
        return (*run_optimizer(task, optimizer, theta0, batch_seed, n_steps, final_loss), False)
    for buf, value in zip([theta] + state, start):  # undo the warm-up steps
        buf.copy_(value)
    curve = torch.empty(n_steps, device=theta.device)
    for t in range(n_steps):
        if t:
            _copy_into(static_batch, task.sample_batch(gen))
        graph.replay()
        curve[t] = loss_out
    final = frozen_final_loss(task, theta, batch_seed, n_steps, final_loss)
    return curve.cpu(), final.item(), True
