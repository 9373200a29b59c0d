"""A trained learned optimizer as a ``torch.optim.Optimizer``, for any PyTorch model.

    opt = LearnedOptimizer(model.parameters(), checkpoint="rnnprop-mnist")
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

Every step gathers the gradients of all parameters that have one (all groups) into one flat
vector per device, runs the coordinatewise network once on it, and adds the updates back with
``torch._foreach_add_``. The network's recurrent state is kept per parameter in
``self.state[p]``, flat over the parameter's coordinates (``(p.numel(), ...)``), so
``state_dict()`` / ``load_state_dict()`` follow the ``torch.optim`` conventions and a resumed
run follows the uninterrupted trajectory exactly. The network itself is frozen.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from l2o_pipeline.checkpoint import (
    CheckpointError,
    load_optimizer,
    pretrained_names,
    resolve_checkpoint,
)
from l2o_pipeline.optimizers.base import LearnedOptimizer as _Network

__all__ = ["LearnedOptimizer"]

DEFAULT_CHECKPOINT = "rnnprop-mnist"


def _valid_checkpoints() -> str:
    packaged = pretrained_names()
    names = ", ".join(repr(n) for n in packaged) if packaged else "none installed yet"
    return ("a learned-optimizer checkpoint file (RNNprop or DMoptimizer, as written by "
            "meta-training or l2o_pipeline.checkpoint.save_optimizer: best.pt, final.pt, "
            f"checkpoints/iter_*.pt), a meta-training run folder holding best.pt or final.pt, "
            f"or a packaged name (packaged: {names})")


def _load_network(checkpoint: Any, device: torch.device) -> tuple[_Network, dict]:
    """The frozen network and a description of where it came from."""
    if isinstance(checkpoint, torch.nn.Module):
        if not isinstance(checkpoint, _Network):
            raise ValueError(f"LearnedOptimizer needs a learned optimizer network (RNNprop or "
                             f"DMOptimizer), got {type(checkpoint).__name__}; hand-designed "
                             "optimizers have torch.optim equivalents")
        network = copy.deepcopy(checkpoint).to(device)
        return network, {"class": network.name, "hparams": network.hparams(), "path": None}
    if not isinstance(checkpoint, (str, Path)):
        raise TypeError(f"checkpoint must be a path, a run folder or a packaged name, got "
                        f"{type(checkpoint).__name__}; valid: {_valid_checkpoints()}")
    try:
        path = resolve_checkpoint(checkpoint)
        network, payload = load_optimizer(path, None, device)
    except CheckpointError as exc:
        raise CheckpointError(f"LearnedOptimizer cannot use checkpoint {str(checkpoint)!r}: "
                              f"{exc}. Valid: {_valid_checkpoints()}") from exc
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["path"] = str(path)
    return network, info


def _slot_names(network: _Network, n_slots: int) -> tuple[str, ...]:
    names = tuple(network.state_names())  # the network's own names for its state
    if len(names) != n_slots:  # another coordinatewise network: generic names
        names = tuple(f"slot{i}" for i in range(n_slots))
    return names


class LearnedOptimizer(torch.optim.Optimizer):
    """Optimize any model's parameters with a meta-trained RNNprop or DMoptimizer.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        checkpoint: a checkpoint file, a meta-training run folder (its ``best.pt``, else
            ``final.pt``), the name of a packaged optimizer (``l2o_pipeline/pretrained/``), or
            a learned optimizer module (copied). An unusable checkpoint raises
            ``CheckpointError`` (a ``ValueError``) naming the file and what is accepted.
        device: where the network is loaded (default: the first parameter's device). Each
            step runs it on the device of the parameters it updates.
        lr: per-group multiplier on the network's update, θ ← θ + lr·Δθ (default 1.0: the
            update the network was meta-trained to make). RNNprop's Δθ = −α·tanh(·) moves
            each coordinate by at most α = 0.1 per step, so lr scales that bound;
            DMoptimizer's Δθ is 0.1 × a linear output. It does not enter the network (whose
            inputs are gradients only), so its state evolves the same way whatever the lr;
            values far from 1 leave the regime the network was trained in. Being the group's
            ``lr``, it is what ``torch.optim.lr_scheduler`` schedules (a schedule of
            multipliers: ``OneCycleLR(opt, max_lr=1.0, ..., cycle_momentum=False)``, since
            there is no momentum to cycle).
        lr_scale: deprecated alias of ``lr`` (also as a group key); a FutureWarning.
        maximize: per group, ascend the objective instead of descending it.

    Parameters whose ``grad`` is None are skipped (their state does not advance). Sparse
    gradients are refused. State and network math run in float32, or float64 when a
    parameter is float64; updates are cast to each parameter's dtype.

    ``self.state[p]`` holds ``step`` and the network's recurrent state for ``p``'s
    coordinates (RNNprop: ``exp_avg``, ``exp_avg_sq``, ``beta1_power``, ``beta2_power``,
    ``h0, c0, h1, c1``), 82 floats per coordinate for RNNprop. ``self.network`` is the frozen
    network; ``self.checkpoint_info`` says where it came from (path, class, variant, config).
    """

    def __init__(self, params: Iterable, checkpoint: Any = DEFAULT_CHECKPOINT,
                 device: str | torch.device | None = None, lr: float = 1.0,
                 maximize: bool = False, lr_scale: float | None = None):
        if lr_scale is not None:
            _warn_lr_scale()
            lr = lr_scale
        params = _materialize(params)
        if device is None:
            device = _first_device(params)
        network, info = _load_network(checkpoint, torch.device(device))
        network.requires_grad_(False).eval()
        self.network = network.float()
        self.checkpoint_info = info
        # Which state slots hold one row per coordinate (the rest are shared, like β^t).
        small, large = network.init_state(2), network.init_state(3)
        self._per_coord = tuple(a.dim() > 0 and a.shape[0] == 2 and b.shape[0] == 3
                                for a, b in zip(small, large))
        # Shape of each slot for one parameter, without the leading numel of per-coord slots.
        self._slot_shapes = tuple(tuple(a.shape[1:]) if per_coord else tuple(a.shape)
                                  for a, per_coord in zip(small, self._per_coord))
        self._slots = _slot_names(network, len(small))
        self._networks: dict[tuple[torch.device, torch.dtype], _Network] = {}
        super().__init__(params, dict(lr=lr, maximize=maximize))

    # ------------------------------------------------------------------ torch.optim API

    def add_param_group(self, param_group: dict) -> None:
        if "lr_scale" in param_group:
            _warn_lr_scale()
            if "lr" in param_group:
                raise ValueError("a parameter group gives both lr and lr_scale (its deprecated "
                                 "alias); give lr only")
            param_group = {**param_group, "lr": param_group["lr_scale"]}
            del param_group["lr_scale"]
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        lr = group["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or \
                not math.isfinite(lr) or lr < 0:
            self.param_groups.pop()
            raise ValueError(f"lr must be a finite number >= 0 (a multiplier on the learned "
                             f"update; 1.0 = as meta-trained), got {lr!r}")
        for p in group["params"]:
            if not p.is_floating_point():
                self.param_groups.pop()
                kind = "complex (optimize torch.view_as_real views instead)" if \
                    p.is_complex() else str(p.dtype)
                raise ValueError(f"LearnedOptimizer optimizes real floating-point parameters; "
                                 f"got a {kind} parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buckets: dict[torch.device, list[tuple[dict, torch.Tensor]]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or p.numel() == 0:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"LearnedOptimizer does not support sparse gradients (parameter of "
                        f"shape {tuple(p.shape)}); use a dense layer, e.g. "
                        "nn.Embedding(..., sparse=False)")
                buckets.setdefault(p.device, []).append((group, p))
        for device, items in buckets.items():
            self._step_device(device, items)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim``, but the recurrent state keeps its own dtype (float32 at least)
        instead of being cast to the parameters' dtype, so a resume is exact."""
        # Saved before lr replaced lr_scale: the same multiplier under its new name.
        state_dict = {**state_dict, "param_groups": [
            {("lr" if k == "lr_scale" else k): v for k, v in g.items()}
            for g in state_dict["param_groups"]]}
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_state = state_dict["state"]
        params = [p for g in self.param_groups for p in g["params"]]
        pairs = [(i, p) for i, p in zip(saved_ids, params) if i in saved_state]
        if len(saved_ids) == len(params):  # otherwise torch.optim explains the mismatch
            for saved_id, p in pairs:
                self._check_loaded_state(saved_state[saved_id], p)
        super().load_state_dict(state_dict)
        for saved_id, p in pairs:
            self.state[p] = {k: v.to(device=p.device, copy=True)
                             if isinstance(v, torch.Tensor) else v
                             for k, v in saved_state[saved_id].items()}

    def __getstate__(self):
        state = super().__getstate__()
        state.update(network=self.network, checkpoint_info=self.checkpoint_info,
                     _per_coord=self._per_coord, _slot_shapes=self._slot_shapes,
                     _slots=self._slots)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._networks = {}

    # ----------------------------------------------------------------------- internals

    def _check_loaded_state(self, state: dict, p: torch.Tensor) -> None:
        expected = set(self._slots) | {"step"}
        if set(state) != expected:
            raise ValueError(f"state_dict does not belong to this learned optimizer: a "
                             f"parameter's state has keys {sorted(state)}, expected "
                             f"{sorted(expected)} ({self.network.name} network)")
        for name, per_coord, shape in zip(self._slots, self._per_coord, self._slot_shapes):
            expected_shape = (p.numel(), *shape) if per_coord else shape
            value = state[name]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected_shape:
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else value
                raise ValueError(f"state_dict does not fit this optimizer: {name!r} is "
                                 f"{found}, expected shape {expected_shape} for a parameter "
                                 f"of shape {tuple(p.shape)} ({self.network.name}, hidden "
                                 f"size {self.network.hidden_size})")

    def _network_for(self, device: torch.device, dtype: torch.dtype) -> _Network:
        key = (device, dtype)
        if key not in self._networks:
            net = self.network
            same = next(net.parameters()).device == device and dtype == torch.float32
            self._networks[key] = net if same else copy.deepcopy(net).to(device, dtype)
        return self._networks[key]

    def _step_device(self, device: torch.device, items: list[tuple[dict, torch.Tensor]]):
        params = [p for _, p in items]
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) \
            else torch.float32
        network = self._network_for(device, dtype)
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                init = network.init_state(p.numel(), device, _state_dtype(p))
                state.update(step=0, **dict(zip(self._slots, init)))
            states.append(state)
        numels = [p.numel() for p in params]

        grad = torch.cat([p.grad.reshape(-1) for p in params]).to(dtype)
        offset = 0
        for (group, _), n in zip(items, numels):
            if group["maximize"]:
                grad[offset:offset + n].neg_()
            offset += n

        inputs = []
        for name, per_coord in zip(self._slots, self._per_coord):
            if per_coord:
                inputs.append(torch.cat([s[name] for s in states]).to(dtype))
            else:  # shared slots: one row per coordinate, so parameters may differ in age
                inputs.append(torch.cat([s[name].to(dtype).expand(n, *s[name].shape)
                                         for s, n in zip(states, numels)]))
        update, new_state = network.step(grad, tuple(inputs))

        starts = torch.tensor([0, *itertools.accumulate(numels[:-1])], device=device)
        targets, sources = [], []
        for name, per_coord, new in zip(self._slots, self._per_coord, new_state):
            targets += [s[name] for s in states]
            if per_coord:
                sources += list(new.split(numels))
            else:
                sources += [row.view(s[name].shape)
                            for row, s in zip(new.index_select(0, starts), states)]
        if targets:  # a network without state (a per-coordinate MLP) has none to copy
            torch._foreach_copy_(targets, sources)
        for state in states:
            state["step"] += 1

        updates = update.split(numels)
        by_group: dict[int, tuple[dict, list, list]] = {}
        for (group, p), u in zip(items, updates):
            entry = by_group.setdefault(id(group), (group, [], []))
            entry[1].append(p)
            entry[2].append(u.view(p.shape).to(p.dtype))
        for group, ps, us in by_group.values():
            torch._foreach_add_(ps, us, alpha=float(group["lr"]))  # a scheduler's lr too


def _warn_lr_scale() -> None:
    warnings.warn("LearnedOptimizer's lr_scale is now lr (the same multiplier, the key "
                  "torch.optim.lr_scheduler schedules); lr_scale will be removed",
                  FutureWarning, stacklevel=3)


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _materialize(params: Iterable) -> list:
    """``params`` as a list, each group's ``params`` too (generators are read only once)."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or dicts, got a Tensor")
    params = list(params)
    for i, item in enumerate(params):
        if isinstance(item, dict) and not isinstance(item.get("params"), torch.Tensor):
            params[i] = {**item, "params": list(item.get("params", []))}
    return params


def _first_device(params: list) -> torch.device:
    for item in params:
        tensors = item["params"] if isinstance(item, dict) else [item]
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else tensors
        for t in tensors:
            t = t[1] if isinstance(t, tuple) else t  # named parameters: (name, tensor)
            if isinstance(t, torch.Tensor):
                return t.device
    return torch.device("cpu")
