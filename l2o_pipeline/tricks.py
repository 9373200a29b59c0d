"""The RNNprop training tricks as task wrappers (spec §3C).

Random Scaling: optimize f_c(θ) = f(c ⊙ θ) from θ0 / c with c_i = exp(U[−k, k]), drawn anew for
every optimizee run, so f_c(θ0 / c) = f(θ0). Combination with a convex function: one task over the
concatenated coordinates whose loss is the sum of the two losses.

A trick is registered (``l2o_pipeline.registry.tricks``) as a function from the task (and the
names of the ``active`` tricks) to the wrapped task; its other parameters are its config keys
(``tricks.<name>.<key>``, plus ``enabled``). Enabled tricks apply in registration order.
"""

from __future__ import annotations

import math

import torch

from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizees.batched import BatchedTask
from l2o_pipeline.optimizees.synthetic import SquareTask
from l2o_pipeline.registry import tricks
from l2o_pipeline.utils import check_positive

# c = exp(U[-k, k]): beyond k = 88, exp(k) overflows float32.
MAX_SCALING_K = math.log(torch.finfo(torch.float32).max)


class RandomScaling(Task):
    def __init__(self, task: Task, k: float = 3.0, scale: torch.Tensor | None = None):
        check_positive("k", k, owner="random_scaling", at_most=MAX_SCALING_K)
        self.task, self.k, self.scale = task, k, scale
        self.n_params = task.n_params
        self.name = f"{task.name}+rs{k:g}"

    @property
    def device(self):
        return self.task.device

    def sample_instance(self, generator):
        inner = self.task.sample_instance(generator)
        u = torch.rand(self.n_params, generator=generator) * (2 * self.k) - self.k
        return RandomScaling(inner, self.k, torch.exp(u).to(inner.device))

    def _scale(self, dtype):
        if self.scale is None:
            raise RuntimeError("RandomScaling needs an instance: call sample_instance()")
        return self.scale.to(dtype)

    def init_params(self, generator):
        theta0 = self.task.init_params(generator)
        return theta0 / self._scale(theta0.dtype)

    def sample_batch(self, generator):
        return self.task.sample_batch(generator)

    def loss(self, params, batch):
        return self.task.loss(params * self._scale(params.dtype), batch)

    @classmethod
    def batched(cls, instances):
        return BatchedRandomScaling(instances)


class Combined(Task):
    """Sum of several tasks over concatenated coordinates (the convex combination trick)."""

    def __init__(self, tasks: list[Task]):
        if not tasks:
            raise ValueError("Combined needs at least one task")
        self.tasks = list(tasks)
        self.sizes = [t.n_params for t in self.tasks]
        self.n_params = sum(self.sizes)
        self.name = "+".join(t.name for t in self.tasks)

    @property
    def device(self):
        return self.tasks[0].device

    def sample_instance(self, generator):
        return Combined([t.sample_instance(generator) for t in self.tasks])

    def init_params(self, generator):
        return torch.cat([t.init_params(generator).to(self.device) for t in self.tasks])

    def sample_batch(self, generator):
        return tuple(t.sample_batch(generator) for t in self.tasks)

    def loss(self, params, batch):
        parts = params.split(self.sizes)
        return sum(t.loss(p, b) for t, p, b in zip(self.tasks, parts, batch))

    @classmethod
    def batched(cls, instances):
        return BatchedCombined(instances)


@tricks.register("random_scaling", label="Random Scaling")
def random_scaling(task: Task, k: float = 3.0) -> Task:
    return RandomScaling(task, k)


@tricks.register("convex_combination", label="convex combination")
def convex_combination(task: Task, dim: int = 20, scale_k: float = 1.0, x0: str = "zero",
                       clip: float | None = 10.0, *, active=(), device="cpu") -> Task:
    """The task plus Square(dim). The convex part is scaled only under Random Scaling (its own
    k): "RNNprop without Random Scaling" then means no scaling at all."""
    check_positive("scale_k", scale_k, owner="convex_combination", at_most=MAX_SCALING_K)
    convex = SquareTask(dim, x0, clip, device)
    return Combined([task, RandomScaling(convex, scale_k) if "random_scaling" in active
                     else convex])


def apply_tricks(task: Task, settings, device="cpu") -> Task:
    """``task`` with every enabled trick of ``settings`` (the ``tricks`` config) applied."""
    active = [name for name in tricks if settings[name]["enabled"]]
    for name in active:
        keys = {k: v for k, v in dict(settings[name]).items() if k != "enabled"}
        task = tricks.build(name, keys, {"task": task, "active": active, "device": device})
    return task


def batch_instances(instances: list[Task]) -> BatchedTask:
    """The batched form of R instances of one kind (``Task.batched`` of their class)."""
    return type(instances[0]).batched(instances)


class BatchedRandomScaling(BatchedTask):
    """Every run's own scaling c, stacked [R, n]: the inner batched task at θ ⊙ c."""

    def __init__(self, instances):
        super().__init__(instances)
        self.inner = batch_instances([t.task for t in self.instances])
        self.scale = torch.stack([t._scale(t.scale.dtype) for t in self.instances])

    def sample_batch(self, generators):
        return self.inner.sample_batch(generators)

    def loss(self, theta, batch):
        return self.inner.loss(theta * self.scale.to(theta.dtype), batch)


class BatchedCombined(BatchedTask):
    """The parts' batched tasks over their slices of the last axis, losses summed."""

    def __init__(self, instances):
        super().__init__(instances)
        self.sizes = self.instances[0].sizes
        self.parts = [batch_instances([t.tasks[i] for t in self.instances])
                      for i in range(len(self.sizes))]

    def sample_batch(self, generators):
        # Each run's generator serves its parts in turn, as in Combined.sample_batch.
        return tuple(part.sample_batch(generators) for part in self.parts)

    def loss(self, theta, batch):
        parts = theta.split(self.sizes, dim=-1)
        return sum(t.loss(p, b) for t, p, b in zip(self.parts, parts, batch))
