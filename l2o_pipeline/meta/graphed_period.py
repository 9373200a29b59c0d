"""A meta-training truncation period as one CUDA graph: captured once, replayed for every period.

On a GPU, a period of RNNprop on the paper's task is 20 optimizee steps, forward and backward:
thousands of small kernels whose launches, not their arithmetic, set the pace. The graph holds
the whole period — unroll, meta-loss, meta-gradient (written into static ``.grad`` buffers)
and the finite check. Outside it stay the meta-optimizer's step (a non-finite period must not
touch φ, so the loop reads the check first: one host sync per period, none per step) and the
minibatch draws (the CPU generator of every paired run, drawn in the eager loop's order).

Before each replay the host copies in what changes: θ and the optimizer state at the period's
start, the period's minibatches, and the new task instance's own tensors (Random Scaling's c,
the convex target, whatever a task draws per run). Those are found by walking the instance's
attributes against the captured one's, so a new task or trick needs no code here; the captured
instance is a private copy (the family's tensors shared, the instance's cloned), so copying
into it never writes into a tensor anything else holds. An instance the graph cannot stand
for (a non-tensor attribute that differs, a tensor of another shape) and a failed capture fall
back to the eager period for the rest of the run, with a warning, and with the generator
rewound: the numbers are the eager loop's either way.

Off CUDA (or with ``L2O_CUDA_GRAPHS=static``), ``capture=False`` runs the recorded function
itself on the static buffers: what ``tests/test_graphed_period.py`` pins to the eager loop;
``bench/gpu_check.py`` checks the real graph on a GPU.
"""

from __future__ import annotations

import copy
import functools
import logging
import types
from collections.abc import Callable

import torch

from l2o_pipeline import cuda_graphs
from l2o_pipeline.cuda_graphs import GraphUnavailable
from l2o_pipeline.meta.period import (
    meta_gradient_of_period,
    period_batches,
    period_is_finite,
    truncated_meta_loss,
)
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers.base import LearnedOptimizer, State, detach_state

log = logging.getLogger(__name__)

# value, finite, θ_end, state_end: what a period returns (meta-gradient in the model's .grad)
PeriodResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, State]
# leaves a walk compares by value (everything else: by its attributes, or by identity)
_ATOMS = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
          types.ModuleType, functools.partial, torch.dtype, torch.device, torch.Generator)


def period_runner(model: LearnedOptimizer, meta_opt, task: Task, weights: list[float],
                  second_order: bool, device: torch.device
                  ) -> Callable[[Task, torch.Tensor, State, torch.Generator], PeriodResult]:
    """What computes a period's meta-gradient: ``(instance, θ, state, generator) -> (value,
    finite, θ_end, state_end)``. On CUDA (``L2O_CUDA_GRAPHS``, :mod:`l2o_pipeline.cuda_graphs`)
    a replayed graph, else :func:`meta_gradient_of_period`. Second-order meta-gradients stay
    eager (a graph would need θ as a differentiable static input)."""
    if cuda_graphs.enabled(device) and not second_order:
        return GraphedPeriods(model, meta_opt, task, weights)

    def eager(instance, theta, state, generator):
        return meta_gradient_of_period(model, meta_opt, instance, theta, state, generator,
                                       weights, second_order)
    return eager


class GraphedPeriods:
    """Meta-gradients of truncation periods of instances of ``task`` by replaying one period.

    ``capture``: record a CUDA graph (default: ``cuda_graphs.captures``, on CUDA); ``False``
    runs the recorded function eagerly on the same static buffers (the CPU stand-in of the
    tests)."""

    def __init__(self, model: LearnedOptimizer, meta_opt, task: Task, weights: list[float],
                 capture: bool | None = None, warmup: int = 3):
        self.model, self.meta_opt, self.task, self.weights = model, meta_opt, task, weights
        self.capture, self.warmup = capture, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.built = False
        self.unavailable: str | None = None  # why periods run eagerly now

    def __call__(self, instance: Task, theta: torch.Tensor, state: State,
                 generator: torch.Generator) -> PeriodResult:
        if self.unavailable is None:
            drawn_from = generator.get_state()
            try:
                return self._replay(instance, theta, state, generator)
            except GraphUnavailable as exc:
                generator.set_state(drawn_from)  # the eager period draws the same batches
                self.unavailable = str(exc)
                log.warning("meta-training goes on without a CUDA graph: %s", exc)
        return meta_gradient_of_period(self.model, self.meta_opt, instance, theta, state,
                                       generator, self.weights)

    def _replay(self, instance, theta, state, generator) -> PeriodResult:
        if not self.built:
            self._build(instance, theta, state, period_batches(instance, generator,
                                                               self.weights))
        else:
            # every check before the first copy: a mismatch leaves the buffers as they were
            pairs = static_pairs(self.instance, instance, "the task instance")
            batches = period_batches(instance, generator, self.weights)
            pairs += static_pairs(self.batches, batches, "a minibatch")
            pairs += static_pairs((self.theta, self.state), (theta, detach_state(state)),
                                  "(θ, state)")
            for static, value in pairs:
                static.copy_(value)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._recorded()
        return self.outputs

    def _period(self) -> PeriodResult:
        """The recorded function: one period on the static inputs, its meta-gradient copied
        into the static ``.grad`` buffers (replays overwrite them; nothing accumulates)."""
        surrogate, value, theta, state = truncated_meta_loss(
            self.model, self.instance, self.theta, self.state, None, self.weights,
            batches=self.batches)
        grads = torch.autograd.grad(surrogate, self.used)
        for p, g in zip(self.used, grads):
            p.grad.copy_(g)
        return (value.detach(), period_is_finite(value, self.model), theta.detach(),
                detach_state(state))

    def _recorded(self) -> None:
        cuda_graphs.copy_into(self.outputs, self._period())

    def _build(self, instance, theta, state, batches) -> None:
        try:
            self.instance = private_copy(instance, shared=self.task)
        except Exception as exc:  # noqa: BLE001  (any object deepcopy cannot copy)
            raise GraphUnavailable(f"the task instance cannot be copied ({exc})") from exc
        self.theta = theta.detach().clone()
        self.state = cuda_graphs.clone_tree(detach_state(state))
        self.batches = cuda_graphs.clone_tree(batches)
        # A probe period, eagerly: which parameters get a meta-gradient (the others keep
        # .grad None, as after the eager period's backward) and the outputs' buffers.
        params = [p for p in self.model.parameters() if p.requires_grad]
        surrogate, *_ = truncated_meta_loss(self.model, self.instance, self.theta, self.state,
                                            None, self.weights, batches=self.batches)
        probe = torch.autograd.grad(surrogate, params, allow_unused=True)
        self.used = [p for p, g in zip(params, probe) if g is not None]
        del surrogate, probe
        self.meta_opt.zero_grad(set_to_none=True)
        for p in self.used:
            p.grad = torch.zeros_like(p)
        self.outputs = cuda_graphs.clone_tree(self._period())
        self.built = True
        capture = cuda_graphs.captures(self.theta.device) if self.capture is None else self.capture
        if capture:
            self._capture()

    def _capture(self) -> None:
        self.graph, _ = cuda_graphs.capture(self._recorded, self.warmup)


def private_copy(instance: Task, shared: object) -> Task:
    """A deep copy of ``instance`` that shares every object reachable from ``shared`` (the
    task family: its dataset, its layers) and owns the rest (what the instance drew)."""
    memo = {id(obj): obj for obj in _reachable(shared)}
    return copy.deepcopy(instance, memo)


def _by_attributes(obj) -> bool:
    """Whether ``obj``'s whole state is its ``__dict__`` (not a function; no class of it has
    slots beyond ``__dict__``/``__weakref__``, as ``abc.ABC``'s empty ones)."""
    if not hasattr(obj, "__dict__") or isinstance(obj, _ATOMS):
        return False
    for cls in type(obj).__mro__:
        slots = vars(cls).get("__slots__", ())
        if set([slots] if isinstance(slots, str) else slots) - {"__dict__", "__weakref__"}:
            return False
    return True


def _children(obj) -> list:
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, dict):
        return list(obj.values())
    return list(vars(obj).values()) if _by_attributes(obj) else []


def _reachable(root) -> list:
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        found.append(obj)
        stack.extend(_children(obj))
    return found


def static_pairs(static, new, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(static tensor, new tensor) pairs whose copies make ``static`` stand for ``new``: the
    tensors at the same place in both (through tuples, lists, dicts and attributes) that are
    not the very same tensor. Anything else must be equal, and paired tensors alike in shape,
    dtype and device; else :class:`GraphUnavailable`, naming the place."""
    pairs, seen = [], set()

    def walk(a, b, where):
        if a is b or (id(a), id(b)) in seen:
            return
        seen.add((id(a), id(b)))
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            alike = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                     and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device)
            if not alike:
                raise GraphUnavailable(f"{what} differs from the captured one at {where} "
                                       f"({_describe(a)} vs {_describe(b)})")
            pairs.append((a, b))
            return
        if type(a) is not type(b):
            raise GraphUnavailable(f"{what} differs from the captured one at {where} "
                                   f"({type(a).__name__} vs {type(b).__name__})")
        if isinstance(a, (list, tuple)) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif isinstance(a, dict) and a.keys() == b.keys():
            for key in a:
                walk(a[key], b[key], f"{where}.{key}" if isinstance(key, str)
                     else f"{where}[{key!r}]")
        elif _by_attributes(a):
            walk(vars(a), vars(b), where)
        elif not _equal(a, b):
            raise GraphUnavailable(f"{what} differs from the captured one at {where} "
                                   f"({a!r} vs {b!r})")

    walk(static, new, "the top")
    return pairs


def _equal(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001  (an object whose == is not a truth value)
        return False


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor {tuple(x.shape)} {x.dtype} on {x.device}"
    return type(x).__name__
