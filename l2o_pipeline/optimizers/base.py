"""One step interface for learned and hand-designed optimizers.

``state = opt.init_state(n, device, dtype)`` allocates the per-coordinate state once per run;
``update, state = opt.step(grad, state)`` returns Δθ (so θ ← θ + Δθ) and the new state.
State is a tuple of tensors so that truncation can detach it and checkpoints can save it.
"""

from __future__ import annotations

import torch

State = tuple[torch.Tensor, ...]


class Optimizer(torch.nn.Module):
    """Base class: hand-designed optimizers have no meta-parameters, learned ones do."""

    name: str = "optimizer"
    learned: bool = False

    def init_state(self, n: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> State:
        raise NotImplementedError

    def step(self, grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(self, grad: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.step(grad, state)


def detach_state(state: State) -> State:
    return tuple(s.detach() for s in state)
