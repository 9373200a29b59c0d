"""One truncation period of meta-training (spec §3): its unroll, meta-loss and meta-gradient.

Meta-gradient: the optimizee gradient g_t is detached (∂∇/∂φ = 0, both papers), so
d f(θ_t)/dφ = g_t · dθ_t/dφ. We therefore backpropagate the surrogate Σ_t w_t ⟨g_t, θ_t⟩
instead of Σ_t w_t f(θ_t): the same gradient, without keeping the optimizee's graph alive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from l2o_pipeline.optimizees.base import Batch, Task
from l2o_pipeline.optimizers.base import LearnedOptimizer, State, detach_state


def meta_loss_weights(kind: str, unroll: int) -> list[float]:
    """Weight of f(θ_t) for t = 0..unroll (the last entry is the state after the period)."""
    if kind == "last":
        return [0.0] * (unroll - 1) + [1.0, 0.0]
    if kind == "mean":
        return [1.0 / unroll] * unroll + [0.0]
    return [1.0] * (unroll + 1)


def n_period_batches(weights: list[float]) -> int:
    """Minibatches one period draws: one per step, and one for f(θ_unroll) if it is weighed."""
    return len(weights) - 1 + (weights[-1] != 0.0)


def period_batches(task: Task, generator: torch.Generator, weights: list[float]) -> list[Batch]:
    """A period's minibatches, drawn beforehand in the order :func:`truncated_meta_loss` draws
    them."""
    return [task.sample_batch(generator) for _ in range(n_period_batches(weights))]


def truncated_meta_loss(model: LearnedOptimizer, task: Task, theta: torch.Tensor, state: State,
                        generator: torch.Generator | None, weights: list[float],
                        second_order: bool = False, batches: Sequence[Batch] | None = None):
    """Unroll one truncation period from (θ, state).

    Returns (surrogate, meta_loss_value, θ_end, state_end). ``surrogate.backward()`` gives the
    meta-gradient of Σ_t w_t f(θ_t); ``meta_loss_value`` is that sum (detached). The
    minibatches are drawn from ``generator`` as the period goes, or given as ``batches``
    (:func:`period_batches`'s, the same draws).
    """
    unroll = len(weights) - 1
    surrogate = theta.new_zeros(())
    value = theta.new_zeros(())
    for t in range(unroll + 1):
        w = weights[t]
        if t == unroll and w == 0.0:
            break
        batch = task.sample_batch(generator) if batches is None else batches[t]
        if second_order:
            loss = task.loss(theta, batch)
            (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
            loss = loss.detach()
        else:
            loss, grad = task.loss_and_grad(theta, batch)
        if w:
            surrogate = surrogate + w * torch.dot(grad.detach(), theta)
            value = value + w * loss
        if t < unroll:
            update, state = model.step(grad, state)
            theta = theta + update
    return surrogate, value, theta, state


def meta_gradient_of_period(model: LearnedOptimizer, meta_opt, task: Task, theta: torch.Tensor,
                            state: State, generator: torch.Generator, weights: list[float],
                            second_order: bool = False):
    """One truncation period from (θ, state) cut off from the past, its meta-gradient in the
    model's ``.grad`` (φ not stepped). Returns (meta-loss value, whether it and the
    meta-gradient are finite, as a device tensor: no sync, θ_end, state_end)."""
    theta, state = theta.detach(), detach_state(state)
    if second_order:
        theta.requires_grad_(True)
    surrogate, value, theta, state = truncated_meta_loss(model, task, theta, state, generator,
                                                         weights, second_order)
    meta_opt.zero_grad(set_to_none=True)
    if surrogate.requires_grad:
        surrogate.backward()
    return value, period_is_finite(value, model), theta, state


def period_is_finite(value: torch.Tensor, model: LearnedOptimizer) -> torch.Tensor:
    """Whether a period's meta-loss value and the model's meta-gradient are all finite."""
    return torch.stack([torch.isfinite(value)] + [
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None]).all()
