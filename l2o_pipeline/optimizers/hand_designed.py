"""Hand-designed baselines with TensorFlow's default semantics (spec §4).

PyTorch's defaults differ (Adam's ε placement, RMSprop's accumulator init, Adagrad's initial
accumulator), and the paper tuned only the learning rate with TF defaults for the rest.
"""

from __future__ import annotations

import torch

from l2o_pipeline.optimizers.base import Optimizer
from l2o_pipeline.registry import hand_designed
from l2o_pipeline.utils import check_fraction, check_positive


class HandDesigned(Optimizer):
    """``lr`` is a number, or a tensor of rates that broadcasts against the gradient when the
    optimizer steps many runs at once: one per row (``[rows, 1]``) over gradients ``[rows,
    n]``, or one per column (``[k]``) over ``[coordinates, k]`` (the batched evaluation
    engine: a whole learning-rate grid in one pass)."""

    def __init__(self, lr: float | torch.Tensor):
        super().__init__()
        if isinstance(lr, torch.Tensor):
            if not bool((lr > 0).all()):
                raise ValueError(f"{self.name}.lr must be positive, got {lr.flatten().tolist()}")
            self.lr = lr
        else:
            check_positive("lr", lr, owner=self.name)
            self.lr = float(lr)

    def step_(self, grad: torch.Tensor, state: tuple, theta: torch.Tensor) -> tuple:
        """θ ← θ + Δθ in place, and the new state, which may reuse the old one's storage (the
        batched engine's step; ``step`` stays the functional reference)."""
        update, state = self.step(grad, state)
        theta += update
        return state

    def with_lr(self, lr: float | torch.Tensor) -> HandDesigned:
        """The same optimizer with another learning rate (or one per row)."""
        return type(self)(**(self.hparams() | {"lr": lr}))

    def extra_repr(self) -> str:
        if isinstance(self.lr, torch.Tensor):
            return f"lr=<{self.lr.numel()} per-row rates>"
        return f"lr={self.lr:g}"


@hand_designed.register("sgd", label="SGD", color="C7")
class SGD(HandDesigned):
    name = "sgd"

    def init_state(self, n, device="cpu", dtype=torch.float32):
        return ()

    def step(self, grad, state):
        return -self.lr * grad, state


@hand_designed.register("momentum", label="Momentum", color="C8")
class Momentum(HandDesigned):
    """tf.train.MomentumOptimizer: acc ← μ·acc + g; θ ← θ − lr·acc. μ is not in the paper."""

    name = "momentum"

    def __init__(self, lr: float, momentum: float = 0.9):
        super().__init__(lr)
        check_fraction("momentum", momentum, self.name)
        self.momentum = float(momentum)

    def init_state(self, n, device="cpu", dtype=torch.float32):
        return (torch.zeros(n, device=device, dtype=dtype),)

    def step(self, grad, state):
        (acc,) = state
        acc = self.momentum * acc + grad
        return -self.lr * acc, (acc,)


@hand_designed.register("adagrad", label="Adagrad", color="C4")
class Adagrad(HandDesigned):
    """tf.train.AdagradOptimizer: accumulator starts at 0.1, no ε."""

    name = "adagrad"

    def __init__(self, lr: float, initial_accumulator: float = 0.1):
        super().__init__(lr)
        check_positive("initial_accumulator", initial_accumulator, owner=self.name)
        self.initial_accumulator = float(initial_accumulator)

    def init_state(self, n, device="cpu", dtype=torch.float32):
        return (torch.full((n,), self.initial_accumulator, device=device, dtype=dtype),)

    def step(self, grad, state):
        (acc,) = state
        acc = acc + grad * grad
        return -self.lr * grad / acc.sqrt(), (acc,)


@hand_designed.register("adadelta", label="Adadelta", color="C6")
class Adadelta(HandDesigned):
    """tf.train.AdadeltaOptimizer (ρ = 0.95, ε = 1e-8); the update is scaled by lr."""

    name = "adadelta"

    def __init__(self, lr: float, rho: float = 0.95, eps: float = 1e-8):
        super().__init__(lr)
        check_fraction("rho", rho, self.name)
        check_positive("eps", eps, owner=self.name)
        self.rho, self.eps = float(rho), float(eps)

    def init_state(self, n, device="cpu", dtype=torch.float32):
        z = torch.zeros(n, device=device, dtype=dtype)
        return (z, z.clone())

    def step(self, grad, state):
        accum, accum_update = state
        accum = self.rho * accum + (1 - self.rho) * grad * grad
        delta = (accum_update + self.eps).sqrt() / (accum + self.eps).sqrt() * grad
        accum_update = self.rho * accum_update + (1 - self.rho) * delta * delta
        return -self.lr * delta, (accum, accum_update)


@hand_designed.register("rmsprop", label="RMSprop", color="C2")
class RMSprop(HandDesigned):
    """tf.train.RMSPropOptimizer: decay 0.9, momentum 0, ε = 1e-10 inside the sqrt, ms = 1."""

    name = "rmsprop"

    def __init__(self, lr: float, decay: float = 0.9, eps: float = 1e-10):
        super().__init__(lr)
        check_fraction("decay", decay, self.name)
        check_positive("eps", eps, owner=self.name)
        self.decay, self.eps = float(decay), float(eps)

    def init_state(self, n, device="cpu", dtype=torch.float32):
        return (torch.ones(n, device=device, dtype=dtype),)

    def step(self, grad, state):
        (ms,) = state
        ms = self.decay * ms + (1 - self.decay) * grad * grad
        return -self.lr * grad / (ms + self.eps).sqrt(), (ms,)


@hand_designed.register("adam", label="Adam", color="k")
class Adam(HandDesigned):
    """tf.train.AdamOptimizer: ε added to the un-bias-corrected √v; bias correction in lr_t."""

    name = "adam"

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr)
        check_fraction("beta1", beta1, self.name)
        check_fraction("beta2", beta2, self.name)
        check_positive("eps", eps, owner=self.name)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def init_state(self, n, device="cpu", dtype=torch.float32):
        z = torch.zeros(n, device=device, dtype=dtype)
        return (z, z.clone(), torch.zeros((), device=device, dtype=dtype))

    def step(self, grad, state):
        m, v, t = state
        t = t + 1
        m = self.beta1 * m + (1 - self.beta1) * grad
        v = self.beta2 * v + (1 - self.beta2) * grad * grad
        lr_t = self.lr * torch.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        return -lr_t * m / (v.sqrt() + self.eps), (m, v, t)

    def step_(self, grad, state, theta):
        """``step`` in five passes over memory instead of about twelve: m and v updated in
        place, the update never materialised on its own."""
        m, v, t = state
        t = t + 1
        m.lerp_(grad, 1 - self.beta1)  # β1·m + (1 − β1)·g
        v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        lr_t = self.lr * torch.sqrt(1 - self.beta2**t) / (1 - self.beta1**t)
        denom = v.sqrt().add_(self.eps).div_(lr_t)
        theta.addcdiv_(m, denom, value=-1.0)
        return m, v, t

