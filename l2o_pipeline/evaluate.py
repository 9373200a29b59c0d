"""Evaluation: any optimizer on any task for any horizon, over paired runs (spec §4).

Within a run every optimizer starts from the same θ0 and sees the same minibatches; state is
reset per run. The final loss is that of the frozen final parameters averaged over every
minibatch seen during the run (the paper's definition: a training-set loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from l2o_pipeline import cuda_graphs
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers.base import Optimizer
from l2o_pipeline.progress import Progress

FINAL_LOSS_RULES = ("average_over_seen", "last_batch")


def run_seed(seed: int, run: int, stream: int) -> int:
    """Independent, reproducible seeds per (seed, run, stream) without global RNG state."""
    return (seed * 1_000_003 + run * 7_919 + stream * 104_729) % (2**63 - 1)


# A run diverged when its final loss is non-finite or more than DIVERGED_FACTOR times its
# initial loss (the loss at θ0 on the run's first minibatch). Not "≥ the initial loss": a
# run that barely moves ends near it, above or below by minibatch noise alone.
DIVERGED_FACTOR = 2.0
DIVERGED_RULE = (f"a run diverged when its final loss is non-finite or > {DIVERGED_FACTOR:g}x "
                 "its initial loss; mean, std and median are over the other runs")


@dataclass
class EvalResult:
    name: str
    curves: torch.Tensor  # [runs, steps]: loss at θ_t on B_t, before the t-th update
    final_losses: torch.Tensor  # [runs]
    extra: dict = field(default_factory=dict)

    def diverged(self) -> torch.Tensor:
        """[runs] bool: the runs that diverged (:data:`DIVERGED_RULE`)."""
        final, initial = self.final_losses, self.curves[:, 0]
        return ~torch.isfinite(final) | (final > DIVERGED_FACTOR * initial)

    def summary(self) -> dict:
        diverged = self.diverged()
        kept = self.final_losses[~diverged]
        mean = kept.mean().item() if len(kept) else math.nan
        std = kept.std().item() if len(kept) > 1 else 0.0
        return {
            "final_loss_mean": mean,
            "final_loss_std": std,
            "final_loss_median": kept.median().item() if len(kept) else math.nan,
            "n_runs": len(self.final_losses),
            "n_diverged": int(diverged.sum()),
            "n_in_mean": len(kept),
        }


@torch.no_grad()
def run_optimizer(task: Task, optimizer: Optimizer, theta0: torch.Tensor, batch_seed: int,
                  n_steps: int, final_loss: str = "average_over_seen",
                  on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, float]:
    """One optimizee run. Returns (loss curve [n_steps], final loss). On CUDA the steps are
    replays of one captured step (:mod:`l2o_pipeline.cuda_graphs`): the same numbers."""
    gen = torch.Generator().manual_seed(batch_seed)
    batches = (task.sample_batch(gen) for _ in range(n_steps))
    theta = theta0.clone()
    state = optimizer.init_state(theta.numel(), theta.device, theta.dtype)
    curve = torch.empty(n_steps, device=theta.device)  # filled on-device: no sync per step

    def record(t: int, loss: torch.Tensor) -> None:
        curve[t] = loss
        if on_step is not None:
            on_step(t)

    if cuda_graphs.enabled(theta.device):
        state = list(state)

        def step(batch):  # on static buffers: θ and the state advanced in place
            loss, grad = task.loss_and_grad(theta, batch)
            update, new_state = optimizer.step(grad, tuple(state))
            theta.add_(update)
            cuda_graphs.copy_into(state, new_state)
            return loss
        cuda_graphs.replay_steps(step, batches, record, restore=[theta, *state],
                                 capture_graph=cuda_graphs.captures(theta.device))
    else:
        for t, batch in enumerate(batches):
            loss, grad = task.loss_and_grad(theta, batch)
            record(t, loss)
            update, state = optimizer.step(grad, state)
            theta = theta + update
    return curve.cpu(), frozen_final_loss(task, theta, batch_seed, n_steps, final_loss).item()


def frozen_final_loss(task: Task, theta: torch.Tensor, batch_seed: int, n_steps: int,
                      final_loss: str = "average_over_seen") -> torch.Tensor:
    """The final loss of a run: its frozen final ``theta`` averaged over the minibatches the
    run saw (re-drawn lazily: 10,000 MNIST batches would not fit in memory), or on the last."""
    gen = torch.Generator().manual_seed(batch_seed)
    total, count = torch.zeros((), device=theta.device), 0
    for t in range(n_steps):
        batch = task.sample_batch(gen)
        if final_loss == "average_over_seen" or t == n_steps - 1:
            total, count = total + task.loss(theta, batch), count + 1
    return total / count


def check_evaluation_args(optimizers: Mapping, n_steps: int, n_runs: int,
                          final_loss: str) -> None:
    if n_steps <= 0 or n_runs <= 0:
        raise ValueError(f"evaluation needs positive steps and runs, got steps={n_steps}, "
                         f"runs={n_runs}")
    if final_loss not in FINAL_LOSS_RULES:
        raise ValueError(f"unknown final_loss rule {final_loss!r}; valid: {FINAL_LOSS_RULES}")
    if not optimizers:
        raise ValueError("evaluate needs at least one optimizer")


def evaluate(task: Task, optimizers: Mapping[str, Optimizer], n_steps: int, n_runs: int,
             seed: int = 0, final_loss: str = "average_over_seen",
             progress: bool | None = None, desc: str | None = None) -> dict[str, EvalResult]:
    """Paired comparison of ``optimizers`` on ``task`` over ``n_runs`` runs of ``n_steps``.

    One run and one optimizer at a time: the reference for ``batched.evaluate_batched``.
    ``progress``, ``desc``: as :class:`l2o_pipeline.progress.Progress` (one unit: one step of
    one optimizer in one run)."""
    check_evaluation_args(optimizers, n_steps, n_runs, final_loss)
    curves = {name: torch.empty(n_runs, n_steps) for name in optimizers}
    finals = {name: torch.empty(n_runs) for name in optimizers}
    with Progress(n_runs * len(optimizers) * n_steps, desc or f"evaluate {n_steps} steps",
                  unit="step", enabled=progress) as bar:
        for run in range(n_runs):
            gen = torch.Generator().manual_seed(run_seed(seed, run, 0))
            instance = task.sample_instance(gen)
            theta0 = instance.init_params(gen)
            batch_seed = run_seed(seed, run, 1)
            for name, opt in optimizers.items():
                curve, final = run_optimizer(instance, opt, theta0, batch_seed, n_steps,
                                             final_loss, on_step=lambda t: bar.update(1))
                curves[name][run], finals[name][run] = curve, final
    return {name: EvalResult(name, curves[name], finals[name]) for name in optimizers}
