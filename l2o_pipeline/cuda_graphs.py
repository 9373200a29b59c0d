"""CUDA graphs: a step on static buffers captured once, then replayed for every step.

An RNNprop step on the paper's task is ~100 small kernels, and a meta-training period a few
thousand, so on a GPU their launches, not their arithmetic, set the pace; a graph replays them
with one launch. What varies between steps (the minibatch, drawn by a CPU generator as in
every paired run) is copied into the graph's static input first; the state a step advances
lives in buffers it updates in place. The numbers are those of the eager loops (the same
kernels in the same order; ``bench/gpu_check.py`` compares them on a GPU).

Used by applying (``evaluate.run_optimizer``, each chunk of ``batched.evaluate_batched``) and
by meta-training (``meta.graphed_period``). Switched by ``L2O_CUDA_GRAPHS``:

- ``auto`` (the default): captured on CUDA; on a CPU the eager loops run as they are;
- ``false``: the eager loops everywhere;
- ``static``: the static-buffer steps of the graphed paths, run without capture on any device
  (how the tests check those paths on a CPU: they must give the eager loops' numbers).

A failed capture logs once and the same steps run eagerly.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable, Sequence

import torch

log = logging.getLogger(__name__)
MODES = ("auto", "false", "static")
_NONE = object()


class GraphUnavailable(RuntimeError):
    """A step cannot be captured (or a captured one cannot compute this input)."""


def mode() -> str:
    value = os.environ.get("L2O_CUDA_GRAPHS", "auto").lower()
    if value not in MODES:
        raise ValueError(f"L2O_CUDA_GRAPHS must be one of {MODES}, got {value!r}")
    return value


def enabled(device: torch.device | str) -> bool:
    """Whether work on ``device`` takes the static-buffer (graphed) path."""
    value = mode()
    return value == "static" or (value == "auto" and torch.device(device).type == "cuda")


def captures(device: torch.device | str) -> bool:
    """Whether that path records a real CUDA graph on ``device`` (else it runs eagerly)."""
    return mode() == "auto" and torch.device(device).type == "cuda"


def clone_tree(tree):
    """A copy of the tensors in a tree of tuples and lists (the rest shared)."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, (list, tuple)):
        return type(tree)(clone_tree(x) for x in tree)
    return tree


def copy_into(static, values) -> None:
    """``static``'s tensors ← ``values``' (trees of one shape); a tensor onto itself is left."""
    if isinstance(static, torch.Tensor):
        if static is not values:
            static.copy_(values, non_blocking=True)
    elif isinstance(static, (list, tuple)):
        for s, v in zip(static, values, strict=True):
            copy_into(s, v)
    elif static is not values and static != values:  # a Python number would not advance
        raise TypeError(f"a static buffer cannot hold {values!r} in place of {static!r}")


def _all_tensors(tree) -> bool:
    if isinstance(tree, (list, tuple)):
        return all(_all_tensors(x) for x in tree)
    return tree is None or isinstance(tree, torch.Tensor)


def capture(step: Callable[[], object], warmup: int = 3,
            restore: Sequence[torch.Tensor] = ()) -> tuple[torch.cuda.CUDAGraph, object]:
    """(graph, what ``step`` returned while captured: its static outputs). ``step`` runs
    ``warmup`` times first on a side stream (lazy initialisation, the allocator); the buffers
    in ``restore``, which the warm-up advanced, get their starting values back."""
    start = [b.clone() for b in restore]
    graph = torch.cuda.CUDAGraph()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            outputs = step()
    except RuntimeError as exc:
        raise GraphUnavailable(f"capture failed ({exc})") from exc
    finally:
        for buf, value in zip(restore, start):
            buf.copy_(value)
    return graph, outputs


def replay_steps(step: Callable[[object], torch.Tensor], batches: Iterable,
                 record: Callable[[int, torch.Tensor], None],
                 restore: Sequence[torch.Tensor] = (), capture_graph: bool = True,
                 warmup: int = 3) -> bool:
    """``record(t, step(batch))`` for the t-th of ``batches``, where ``step`` advances its
    buffers in place (``restore``: every buffer it advances). With ``capture_graph``, as
    replays of one graph of ``step`` on a static copy of the first batch; returns whether a
    graph ran (a failed capture logs and the steps run eagerly)."""
    batches = iter(batches)
    first = next(batches, _NONE)  # a minibatch may be None (a task without data)
    if first is _NONE:
        return False
    graph = None
    if capture_graph:
        static = clone_tree(first)
        try:
            if not _all_tensors(first):
                raise GraphUnavailable(f"a minibatch holds more than tensors ({first!r:.80})")
            graph, loss = capture(lambda: step(static), warmup, restore)
        except GraphUnavailable as exc:
            log.warning("CUDA graph unavailable (%s); stepping eagerly", exc)
    if graph is None:
        for t, batch in enumerate(itertools.chain([first], batches)):
            record(t, step(batch))
        return False
    for t, batch in enumerate(itertools.chain([first], batches)):
        if t:
            copy_into(static, batch)
        graph.replay()
        record(t, loss)
    return True
