"""One step interface for learned and hand-designed optimizers.

``state = opt.init_state(n, device, dtype)`` allocates the per-coordinate state once per run;
``update, state = opt.step(grad, state) -> (update, state)`` returns Δθ (so θ ← θ + Δθ) and
the new state. State is a tuple of tensors so that truncation can detach it and checkpoints
can save it.
"""

from __future__ import annotations

import inspect

import torch

State = tuple[torch.Tensor, ...]


class Optimizer(torch.nn.Module):
    """Base class: hand-designed optimizers have no meta-parameters, learned ones do."""

    name: str = "optimizer"

    def init_state(self, n: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> State:
        raise NotImplementedError

    def step(self, grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(self, grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.step(grad, state)

    def hparams(self) -> dict:
        """Constructor arguments (the attributes of the same names): what rebuilds it, saved
        in checkpoints."""
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names}


class LearnedOptimizer(Optimizer):
    """An optimizer with meta-parameters (its ``nn.Module`` parameters), applied to every
    coordinate alike: ``init_state(n)`` gives per-coordinate state (tensors with a leading
    dimension n; others, such as β^t, are shared), ``step`` maps (gradient, state) to
    (update, state) for all coordinates at once. Nothing here assumes a recurrent core: a
    per-coordinate MLP with no state is one too. ``state_names`` names the state tensors (the
    ``torch.optim`` wrapper's ``self.state[p]`` keys); by default ``slot<i>``."""

    def state_names(self) -> tuple[str, ...]:
        return tuple(f"slot{i}" for i in range(len(self.init_state(1))))


def detach_state(state: State) -> State:
    return tuple(s.detach() for s in state)
