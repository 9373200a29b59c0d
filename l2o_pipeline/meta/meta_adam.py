"""The meta-optimizer: ``torch.optim.Adam``'s own update, without ``torch.optim.Optimizer``.

Why not ``torch.optim.Adam`` itself: constructing any ``torch.optim.Optimizer`` imports
``torch._dynamo`` (its ``add_param_group`` is wrapped in ``torch._disable_dynamo``), which pulls
in sympy and ~150 MB of RSS that meta-training never uses. This class calls the same functional
update, ``torch.optim.adam.adam``, with the arguments ``Adam.step`` passes, so the trajectory is
bit-identical, and its ``state_dict`` has ``torch.optim.Adam``'s layout, so training states saved
by either load into either.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.adam import adam


class MetaAdam:
    """Adam (PyTorch semantics, one parameter group) over ``params``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.group = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0,
                      "amsgrad": False, "maximize": False, "foreach": None,
                      "capturable": False, "differentiable": False, "fused": None,
                      "decoupled_weight_decay": False}
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        index = [i for i, p in enumerate(self.params) if p.grad is not None]
        for i in index:  # as Adam._init_group: a step counter on the host, zero moments
            if i not in self.state:
                p = self.params[i]
                self.state[i] = {"step": torch.tensor(0.0),
                                 "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
        slots = [self.state[i] for i in index]
        g = self.group
        adam([self.params[i] for i in index], [self.params[i].grad for i in index],
             [s["exp_avg"] for s in slots], [s["exp_avg_sq"] for s in slots], [],
             [s["step"] for s in slots], amsgrad=False, has_complex=False,
             beta1=g["betas"][0], beta2=g["betas"][1], lr=g["lr"], weight_decay=0, eps=g["eps"],
             maximize=False, foreach=None, capturable=False, differentiable=False, fused=None)

    def state_dict(self) -> dict:
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [{**self.group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"the meta-optimizer state has {len(group['params'])} parameters, "
                             f"the model {len(self.params)}")
        self.group.update({k: v for k, v in group.items() if k in self.group})
        self.group["betas"] = tuple(self.group["betas"])
        # saved ids are positions in the group (torch.optim's convention)
        position = {saved: k for k, saved in enumerate(group["params"])}
        self.state = {}
        for saved, slot in state_dict["state"].items():
            p = self.params[position[saved]]
            self.state[position[saved]] = {
                "step": slot["step"].detach().to("cpu", torch.float32).clone(),
                "exp_avg": slot["exp_avg"].detach().to(p.device, p.dtype).clone(),
                "exp_avg_sq": slot["exp_avg_sq"].detach().to(p.device, p.dtype).clone()}
