"""Many optimizee runs of one task as one computation (the batched evaluation engine's tasks).

A :class:`BatchedTask` holds R instances of a task, one per optimizee run (what
``task.sample_instance`` drew for that run), and computes over parameters of shape
``[S, R, n]``: row ``(s, r)`` is setting ``s`` (one optimizer, or one learning rate of a grid)
on run ``r``. Every setting of run ``r`` sees run ``r``'s minibatch, which is drawn once from
run ``r``'s generator, exactly as ``instances[r].sample_batch`` draws it in the sequential path.

Rows are independent, so the gradient of the summed loss is every row's gradient: the default
``loss_and_grad`` is one autograd pass over ``loss(theta).sum()``. Each task kind says how it
batches through ``Task.batched`` (default: :class:`VmapBatched`, ``torch.func.vmap`` over the
task's own functional ``loss``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.func import vmap

from l2o_pipeline.optimizees.base import Batch, Task


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """Per-run batches (tensors, tuples of them, or None) stacked along a new leading axis."""
    first = batches[0]
    if first is None:
        return None
    if isinstance(first, tuple):
        return tuple(stack_batches(parts) for parts in zip(*batches))
    return torch.stack(batches)


class BatchedTask:
    """R instances of one task kind over θ of shape ``[S, R, n]`` (see the module docstring)."""

    # Whether the engine should store a rate grid's θ as [R, n, S] (seen as [S, R, n]): for
    # tasks that compute faster so (BatchedMLP); every task must accept any layout.
    settings_minor_layout = False

    def __init__(self, instances: Sequence[Task]):
        if not instances:
            raise ValueError("a batched task needs at least one instance")
        self.instances = list(instances)
        self.n_params = self.instances[0].n_params
        self.device = self.instances[0].device

    @property
    def n_runs(self) -> int:
        return len(self.instances)

    def sample_batch(self, generators: Sequence[torch.Generator]) -> Batch:
        """Run r's minibatch from ``generators[r]``, stacked over runs."""
        return stack_batches([task.sample_batch(g)
                              for task, g in zip(self.instances, generators)])

    def loss(self, theta: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Losses ``[S, R]`` of ``theta`` ``[S, R, n]``; differentiable in ``theta``."""
        raise NotImplementedError

    def loss_and_grad(self, theta: torch.Tensor, batch: Batch
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses ``[S, R]`` and gradients ``[S, R, n]``, detached."""
        with torch.enable_grad():
            p = theta.detach().requires_grad_(True)
            value = self.loss(p, batch)
            (grad,) = torch.autograd.grad(value.sum(), p)
        return value.detach(), grad


class VmapBatched(BatchedTask):
    """Any task whose instances are one object (no per-run draws: MLP, CNN, sine LSTM): its
    ``loss(params, batch)`` vmapped over settings (batch shared) and over runs."""

    def __init__(self, instances: Sequence[Task]):
        super().__init__(instances)
        task = self.instances[0]
        if any(t is not task for t in self.instances):
            raise TypeError(f"{type(task).__name__} draws per-run instances: it must define "
                            "its own Task.batched (VmapBatched shares one instance)")
        self._over_settings = vmap(task.loss, in_dims=(0, None))

    def loss(self, theta, batch):
        over_runs = vmap(self._over_settings, in_dims=(1, None if batch is None else 0),
                         out_dims=1)
        return over_runs(theta, batch)
