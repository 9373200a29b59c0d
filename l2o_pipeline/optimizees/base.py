"""The task interface: a functional optimizee over one flat parameter vector.

A task knows how to initialise parameters, draw a minibatch and compute the loss from
``(params, batch)``. It does not know who optimizes it. Tricks (``l2o_pipeline.tricks``)
wrap a task into another task, so every optimizer and trainer sees the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from l2o_pipeline.utils import check_positive  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from l2o_pipeline.optimizees.batched import BatchedTask

Batch = Any  # a tensor, a tuple of tensors, or None for deterministic tasks


class Task(ABC):
    """An optimizee: ``loss(params, batch)`` with ``params`` a flat ``(n_params,)`` tensor."""

    name: str = "task"
    n_params: int

    @abstractmethod
    def init_params(self, generator: torch.Generator) -> torch.Tensor:
        """Draw θ0, a flat float tensor of shape ``(n_params,)`` on the task's device."""

    @abstractmethod
    def sample_batch(self, generator: torch.Generator) -> Batch:
        """Draw one minibatch. All randomness comes from ``generator`` (paired runs)."""

    @abstractmethod
    def loss(self, params: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Scalar loss of ``params`` on ``batch``; differentiable in ``params``."""

    def sample_instance(self, generator: torch.Generator) -> Task:
        """A fresh member of the task's family (new scaling draws, new convex target).

        Plain tasks are their own only member. Called once per optimizee run.
        """
        return self

    @classmethod
    def batched(cls, instances: Sequence[Task]) -> BatchedTask:
        """R instances of this kind (one per run) as one task over θ ``[S, R, n]``
        (``l2o_pipeline.optimizees.batched``). Kinds with per-run draws override it."""
        from l2o_pipeline.optimizees.batched import VmapBatched

        return VmapBatched(instances)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def loss_and_grad(self, params: torch.Tensor, batch: Batch
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and its gradient at ``params``, both detached (∂∇/∂φ = 0, as both papers)."""
        with torch.enable_grad():
            p = params.detach().requires_grad_(True)
            value = self.loss(p, batch)
            (grad,) = torch.autograd.grad(value, p)
        return value.detach(), grad
