"""Closed-form tasks: DeepMind's quadratic (spec §2b, §7) and the convex ``Square`` (spec §3C)."""

from __future__ import annotations

import torch

from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizees.batched import BatchedTask
from l2o_pipeline.registry import optimizees
from l2o_pipeline.utils import check_one_of, check_positive

QUADRATIC_DISTRIBUTIONS = ("uniform", "gaussian")
SQUARE_X0_RULES = ("zero", "uniform")


@optimizees.register("quadratic", label="quadratic", tuning_key=lambda s: (
    f"quadratic-{s.get('distribution', 'uniform')}-d{s.get('dim', 10)}"))
class QuadraticTask(Task):
    """f(x) = mean over ``n_problems`` of ‖W x − y‖², each problem ``dim``-dimensional.

    ``distribution="uniform"`` draws W, y ~ U[0, 1) as DeepMind's code does; ``"gaussian"``
    draws N(0, 1) as paper 2 says. x0 ~ N(0, init_std²). A new W, y per ``sample_instance``.
    """

    def __init__(self, dim: int = 10, n_problems: int = 128, distribution: str = "uniform",
                 init_std: float = 0.01, device: str | torch.device = "cpu",
                 W: torch.Tensor | None = None, y: torch.Tensor | None = None):
        check_positive("dim", dim, "a positive integer")
        check_positive("n_problems", n_problems, "a positive integer")
        check_positive("init_std", init_std)
        check_one_of("distribution", distribution, QUADRATIC_DISTRIBUTIONS)
        self.dim, self.n_problems, self.distribution = dim, n_problems, distribution
        self.init_std, self._device = init_std, torch.device(device)
        self.n_params = dim * n_problems
        self.W, self.y = W, y
        self.name = f"quadratic{dim}x{n_problems}"

    @property
    def device(self):
        return self._device

    def _draw(self, shape, generator):
        if self.distribution == "uniform":
            return torch.rand(shape, generator=generator)
        return torch.randn(shape, generator=generator)

    def sample_instance(self, generator):
        W = self._draw((self.n_problems, self.dim, self.dim), generator).to(self.device)
        y = self._draw((self.n_problems, self.dim), generator).to(self.device)
        return QuadraticTask(self.dim, self.n_problems, self.distribution, self.init_std,
                             self.device, W, y)

    def init_params(self, generator):
        return (torch.randn(self.n_params, generator=generator) * self.init_std).to(self.device)

    def sample_batch(self, generator):
        return None

    def loss(self, params, batch):
        if self.W is None:
            raise RuntimeError("QuadraticTask.loss needs an instance: call sample_instance()")
        x = params.view(self.n_problems, self.dim, 1)
        residual = torch.bmm(self.W.to(params.dtype), x).squeeze(-1) - self.y.to(params.dtype)
        return (residual**2).sum(-1).mean()

    @classmethod
    def batched(cls, instances):
        return BatchedQuadratic(instances)


@optimizees.register("square", label="Square")
class SquareTask(Task):
    """The convex g(x) = (1/n) Σ clip((x_i − v_i)², 0, clip), v ~ U[−1, 1]^n per instance.

    ``x0="zero"`` follows the official code; ``x0="uniform"`` draws U[−1, 1] as the paper says.
    ``clip=None`` removes the clip, which the paper does not mention.
    """

    def __init__(self, dim: int = 20, x0: str = "zero", clip: float | None = 10.0,
                 device: str | torch.device = "cpu", target: torch.Tensor | None = None):
        check_positive("dim", dim, "a positive integer")
        check_one_of("x0", x0, SQUARE_X0_RULES)
        if clip is not None:
            check_positive("clip", clip)
        self.dim, self.x0, self.clip = dim, x0, clip
        self._device = torch.device(device)
        self.target = target
        self.n_params = dim
        self.name = f"square{dim}"

    @property
    def device(self):
        return self._device

    def sample_instance(self, generator):
        target = (torch.rand(self.dim, generator=generator) * 2 - 1).to(self.device)
        return SquareTask(self.dim, self.x0, self.clip, self.device, target)

    def init_params(self, generator):
        if self.x0 == "zero":
            return torch.zeros(self.dim, device=self.device)
        return (torch.rand(self.dim, generator=generator) * 2 - 1).to(self.device)

    def sample_batch(self, generator):
        return None

    def loss(self, params, batch):
        if self.target is None:
            raise RuntimeError("SquareTask.loss needs an instance: call sample_instance()")
        sq = (params - self.target.to(params.dtype)) ** 2
        if self.clip is not None:
            sq = sq.clamp(0.0, self.clip)
        return sq.mean()

    @classmethod
    def batched(cls, instances):
        return BatchedSquare(instances)


class BatchedQuadratic(BatchedTask):
    """Every run's own W, y, stacked: ‖W x − y‖² as one broadcast matmul over [S, R]."""

    def __init__(self, instances):
        super().__init__(instances)
        first = self.instances[0]
        self.n_problems, self.dim = first.n_problems, first.dim
        self.W = torch.stack([t.W for t in self.instances])  # [R, P, d, d]
        self.y = torch.stack([t.y for t in self.instances])  # [R, P, d]

    def sample_batch(self, generators):
        return None

    def loss(self, theta, batch):
        S, R = theta.shape[:2]
        x = theta.reshape(S, R, self.n_problems, self.dim, 1)
        residual = torch.matmul(self.W.to(theta.dtype), x).squeeze(-1) - self.y.to(theta.dtype)
        return (residual**2).sum(-1).mean(-1)


class BatchedSquare(BatchedTask):
    """Every run's own target v, stacked: mean of clip((x − v)²) over the last axis."""

    def __init__(self, instances):
        super().__init__(instances)
        self.clip = self.instances[0].clip
        self.target = torch.stack([t.target for t in self.instances])  # [R, n]

    def sample_batch(self, generators):
        return None

    def loss(self, theta, batch):
        sq = (theta - self.target.to(theta.dtype)) ** 2
        if self.clip is not None:
            sq = sq.clamp(0.0, self.clip)
        return sq.mean(-1)
