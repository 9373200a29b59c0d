"""Batched evaluation: a whole comparison (every optimizer × every run, × every learning rate
when tuning) as one computation, the same numbers as ``evaluate.evaluate``.

Parameters are one tensor ``[S, R, n]``: S settings (an optimizer, or one rate of a
hand-designed optimizer) × R runs. Run r is what the sequential path's run r is: its instance
and θ0 from ``run_seed(seed, r, 0)``, its minibatches from ``run_seed(seed, r, 1)``, drawn once
per step and shared by all S settings (pairing). The task computes every row's loss and
gradient in one batched call (``Task.batched``); hand-designed optimizers of one kind step all
their rates at once with one rate per row; a learned optimizer steps the R·n coordinates of its
rows in cache-sized blocks (it is coordinatewise, so blocking changes nothing). The final loss
(frozen final θ averaged over every minibatch seen), the curves and the per-run final losses
are those of the sequential path, which stays as the reference (``tests/test_batched.py``).

A learning-rate grid (one group of S > 1 settings) on a task that asks for it
(``BatchedTask.settings_minor_layout``) has θ stored ``[R, n, S]``, settings innermost, seen
as ``[S, R, n]``: the MLP's first layer then reads a run's weights of every rate as one
matrix in place, and the optimizer's rates are one per column.

The work is split into chunks of runs (and, if one run of every setting does not fit, of
settings) so that the estimated working memory stays under ``memory_budget_gb``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from l2o_pipeline import cuda_graphs
from l2o_pipeline.evaluate import EvalResult, check_evaluation_args, run_seed
from l2o_pipeline.optimizees.base import Batch, Task
from l2o_pipeline.optimizers import kernels
from l2o_pipeline.optimizers.base import Optimizer
from l2o_pipeline.optimizers.hand_designed import HandDesigned
from l2o_pipeline.progress import Progress
from l2o_pipeline.tricks import batch_instances

log = logging.getLogger(__name__)

# A 24 GB machine that also runs a meta-training; on a GPU, about half its memory (README).
DEFAULT_MEMORY_BUDGET_GB = 4.0
# Coordinates per optimizer call (whole rows, at least one), so that what a step makes many
# passes over stays in cache. Measured on the base MLP (n = 15,910, 27 rates × 20 runs, one
# thread): Adam's in-place step is ~10% faster in blocks of 2^19 than of 2^17 and ~2× faster
# than over all rows at once (2^14: 2-3× slower, per-call overhead); RMSprop and Adadelta are
# flat from 2^17 to 2^19. RNNprop's, whose [block, 80] gate tensors are 5 MB per run, is
# fastest one run per call.
HAND_BLOCK_COORDS = 1 << 19
LEARNED_BLOCK_COORDS = 1 << 14


@dataclass(frozen=True)
class ChunkPlan:
    """How a batched evaluation is split: chunks of ``settings_per_chunk`` × ``runs_per_chunk``
    rows, each estimated at ``bytes_per_chunk`` (``row_bytes`` per row plus ``run_bytes`` per
    run for what a run's settings share: its minibatch, θ0)."""

    n_settings: int
    n_runs: int
    settings_per_chunk: int
    runs_per_chunk: int
    row_bytes: int
    run_bytes: int

    @property
    def bytes_per_chunk(self) -> int:
        return self.runs_per_chunk * (self.settings_per_chunk * self.row_bytes + self.run_bytes)

    @property
    def n_chunks(self) -> int:
        return (math.ceil(self.n_settings / self.settings_per_chunk)
                * math.ceil(self.n_runs / self.runs_per_chunk))


def _group_key(optimizer: Optimizer):
    """Settings with equal keys step as one optimizer: a hand-designed kind with the same
    hyper-parameters but its learning rate; every other optimizer alone."""
    if isinstance(optimizer, HandDesigned) and not isinstance(optimizer.lr, torch.Tensor):
        return type(optimizer), tuple(sorted((k, v) for k, v in optimizer.hparams().items()
                                             if k != "lr"))
    return id(optimizer)


def _settings(optimizers: Mapping[str, Optimizer]) -> list[tuple[str, Optimizer]]:
    """(name, optimizer) with the members of each group adjacent, groups in first-seen order."""
    order: dict = {}
    for name, opt in optimizers.items():
        order.setdefault(_group_key(opt), []).append((name, opt))
    return [setting for members in order.values() for setting in members]


class _GroupStepper:
    """Steps the rows ``[k, R, n]`` of k adjacent settings that share a group key, in blocks
    of about ``*_BLOCK_COORDS`` coordinates: a step makes many passes over its block (a dozen
    for Adam, two LSTM layers for RNNprop), which then stay in cache. Blocks are whole rows,
    or, when θ is stored settings-minor (``[R, n, k]``, one group), whole coordinates of all
    k settings, the rates then one per column."""

    def __init__(self, settings: Sequence[tuple[str, Optimizer]], n_runs: int, n: int,
                 device, dtype, settings_minor: bool = False, in_place: bool = False):
        self.k, self.n_runs, self.n = len(settings), n_runs, n
        self.settings_minor, self.in_place = settings_minor, in_place
        hand = isinstance(settings[0][1], HandDesigned)
        block_coords = HAND_BLOCK_COORDS if hand else LEARNED_BLOCK_COORDS
        if settings_minor:
            rows, self.width = n_runs * n, self.k
        else:
            rows, self.width = self.k * n_runs, n
        per_block = max(1, block_coords // self.width)
        rates = None
        if hand and self.k > 1:
            rates = torch.tensor([o.lr for _, o in settings], dtype=dtype, device=device)
            if not settings_minor:
                rates = rates.repeat_interleave(n_runs).unsqueeze(1)  # one rate per row
        self.blocks = []
        for a in range(0, rows, per_block):
            b = min(a + per_block, rows)
            opt = settings[0][1]
            if rates is not None:
                opt = opt.with_lr(rates if settings_minor else rates[a:b])
            state = opt.init_state((b - a) * self.width, device, dtype)
            if isinstance(opt, HandDesigned):  # elementwise over the block's [rows, width]
                state = tuple(s.view(b - a, self.width) if s.dim() == 1 else s for s in state)
            self.blocks.append((a, b, opt, state))

    def step(self, grad: torch.Tensor, theta: torch.Tensor) -> None:
        """θ ← θ + Δθ in place for the gradients ``grad``; both ``[k, R, n]``."""
        if self.settings_minor:
            grad = grad.permute(1, 2, 0).reshape(-1, self.k)
            theta = theta.permute(1, 2, 0).view(-1, self.k)  # a view: updated in place
        else:
            grad, theta = grad.reshape(-1, self.n), theta.view(-1, self.n)
        for j, (a, b, opt, state) in enumerate(self.blocks):
            if isinstance(opt, HandDesigned):
                state = opt.step_(grad[a:b], state, theta[a:b])
            else:  # coordinatewise over the block's rows·n coordinates
                update, state = opt.step(grad[a:b].reshape(-1), state)
                theta[a:b] += update.view(b - a, self.width)
            if self.in_place:  # the buffers a CUDA graph replays keep their storage
                cuda_graphs.copy_into(self.blocks[j][3], state)
            else:
                self.blocks[j] = (a, b, opt, state)

    def buffers(self) -> list[torch.Tensor]:
        """The state tensors a step advances."""
        return [s for *_, state in self.blocks for s in state]


def _groups(settings: Sequence[tuple[str, Optimizer]]) -> list[tuple[int, int]]:
    """[start, end) of each run of adjacent settings with one group key."""
    bounds, start = [], 0
    for i in range(1, len(settings) + 1):
        if i == len(settings) or _group_key(settings[i][1]) != _group_key(settings[start][1]):
            bounds.append((start, i))
            start = i
    return bounds


def _run_instances(task: Task, seed: int, runs: range) -> tuple[list[Task], torch.Tensor]:
    """Each run's instance and θ0, drawn as the sequential path draws them."""
    instances, thetas = [], []
    for run in runs:
        gen = torch.Generator().manual_seed(run_seed(seed, run, 0))
        instance = task.sample_instance(gen)
        instances.append(instance)
        thetas.append(instance.init_params(gen))
    return instances, torch.stack(thetas)


def _tensor_bytes(obj) -> int:
    if obj is None:
        return 0
    if isinstance(obj, tuple | list):
        return sum(_tensor_bytes(o) for o in obj)
    return obj.numel() * obj.element_size() if isinstance(obj, torch.Tensor) else 0


def _storages(obj) -> set[int]:
    if isinstance(obj, tuple | list):
        return set().union(*(_storages(o) for o in obj)) if obj else set()
    return {obj.untyped_storage().data_ptr()} if isinstance(obj, torch.Tensor) else set()


def _activation_bytes(btask, theta: torch.Tensor, batch: Batch) -> int:
    """Bytes autograd keeps for one row's backward (``theta`` ``[1, 1, n]``), without the
    minibatch itself (shared by the run's settings, counted per run)."""
    shared, seen = _storages(batch), {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in shared:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        btask.loss(theta.detach().requires_grad_(True), batch)
    return sum(seen.values())


def _optimizer_row_bytes(optimizer: Optimizer, n: int, device, dtype) -> int:
    """A row's optimizer state, twice (old and new are alive together during a step)."""
    state = optimizer.init_state(n, device, dtype)
    return 2 * sum(s.numel() * s.element_size() for s in state if s.dim() > 0)


def plan_chunks(task: Task, optimizers: Mapping[str, Optimizer], n_steps: int, n_runs: int,
                seed: int = 0, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> ChunkPlan:
    """The chunking that keeps the estimated working memory under the budget: as many runs
    of every setting per chunk as fit; if not even one run of every setting fits, as many
    settings of one run as fit (at least one; a warning says the budget is exceeded)."""
    if not memory_budget_gb > 0:
        raise ValueError(f"memory_budget_gb must be positive, got {memory_budget_gb!r}")
    instances, theta0 = _run_instances(task, seed, range(1))
    probe = batch_instances(instances)
    batch = probe.sample_batch([torch.Generator().manual_seed(run_seed(seed, 0, 1))])
    n, elem = theta0.shape[1], theta0.element_size()
    device, dtype = theta0.device, theta0.dtype
    # θ, gradient, update and loss temporaries, the curve, and twice the saved activations
    # (the backward's gradients of them are as large).
    task_row = (4 * n + n_steps) * elem + 2 * _activation_bytes(probe, theta0[None], batch)
    settings = _settings(optimizers)
    row_bytes = task_row + max(_optimizer_row_bytes(opt, n, device, dtype)
                               for _, opt in settings)
    run_bytes = 2 * _tensor_bytes(batch) + n * elem  # the stacked batch and its gather, θ0
    budget = memory_budget_gb * 1e9
    n_settings = len(settings)
    runs = int(budget // (n_settings * row_bytes + run_bytes))
    if runs >= 1:
        return ChunkPlan(n_settings, n_runs, n_settings, min(runs, n_runs), row_bytes,
                         run_bytes)
    per_chunk = max(1, int((budget - run_bytes) // row_bytes))
    if per_chunk == 1 and row_bytes + run_bytes > budget:
        log.warning("one evaluation row needs ~%.3g GB, over evaluation.memory_budget_gb=%g; "
                    "running one row at a time", (row_bytes + run_bytes) / 1e9,
                    memory_budget_gb)
    return ChunkPlan(n_settings, n_runs, per_chunk, 1, row_bytes, run_bytes)


@torch.no_grad()
def _evaluate_chunk(task: Task, settings: Sequence[tuple[str, Optimizer]], runs: range,
                    seed: int, n_steps: int, final_loss: str, bar: Progress):
    """Curves ``[S, R, n_steps]`` and final losses ``[S, R]`` of one chunk."""
    instances, theta0 = _run_instances(task, seed, runs)
    btask = batch_instances(instances)
    S, (R, n) = len(settings), theta0.shape
    device, dtype = theta0.device, theta0.dtype
    groups = _groups(settings)
    # One group of several settings (a learning-rate grid) on a task that computes faster so:
    # θ stored [R, n, S], seen as [S, R, n].
    minor = S > 1 and len(groups) == 1 and btask.settings_minor_layout
    in_place = cuda_graphs.enabled(device)
    steppers = [_GroupStepper(settings[a:b], R, n, device, dtype, minor, in_place)
                for a, b in groups]
    if minor:
        theta = theta0.unsqueeze(-1).expand(R, n, S).clone().permute(2, 0, 1)
    else:
        theta = theta0.expand(S, R, n).clone()
    curves = torch.empty(S, R, n_steps, device=device, dtype=dtype)

    def generators():
        return [torch.Generator().manual_seed(run_seed(seed, run, 1)) for run in runs]

    def step(batch) -> torch.Tensor:
        loss, grad = btask.loss_and_grad(theta, batch)
        for stepper, (a, b) in zip(steppers, groups):
            stepper.step(grad[a:b], theta[a:b])
        return loss

    def record(t: int, loss: torch.Tensor) -> None:
        curves[:, :, t] = loss
        bar.update(1)

    gens = generators()
    batches = (btask.sample_batch(gens) for _ in range(n_steps))
    # On CUDA, replays of one captured step: θ is updated in place already, and the steppers
    # keep their state's storage (in_place).
    buffers = [theta, *(b for s in steppers for b in s.buffers())]
    cuda_graphs.replay_steps(step, batches, record, restore=buffers,
                             capture_graph=cuda_graphs.captures(device))
    # The same minibatches again, for the frozen final θ (as evaluate.run_optimizer).
    gens = generators()
    total, count = torch.zeros(S, R, device=device, dtype=dtype), 0
    for t in range(n_steps):
        batch = btask.sample_batch(gens)
        if final_loss == "average_over_seen" or t == n_steps - 1:
            total, count = total + btask.loss(theta, batch), count + 1
    return curves, total / count


def evaluate_batched(task: Task, optimizers: Mapping[str, Optimizer], n_steps: int, n_runs: int,
                     seed: int = 0, final_loss: str = "average_over_seen",
                     memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                     progress: bool | None = None, desc: str | None = None
                     ) -> dict[str, EvalResult]:
    """``evaluate.evaluate`` (same arguments, same results) as one batched computation.
    Its progress counts steps of the chunks (one unit: one step of every row of a chunk).

    Hand-designed optimizers of one kind with equal hyper-parameters but their rates are
    stepped together, so a learning-rate grid is ``{f"adam@{lr}": Adam(lr) for lr in grid}``.
    """
    check_evaluation_args(optimizers, n_steps, n_runs, final_loss)
    if task.device.type == "cpu":
        kernels.keep_freed_memory(every_size=True)
    plan = plan_chunks(task, optimizers, n_steps, n_runs, seed, memory_budget_gb)
    log.info("batched evaluation: %d settings × %d runs × %d steps in %d chunk(s) of up to "
             "%d × %d rows, ~%.3g GB each (budget %g GB)", plan.n_settings, n_runs, n_steps,
             plan.n_chunks, plan.settings_per_chunk, plan.runs_per_chunk,
             plan.bytes_per_chunk / 1e9, memory_budget_gb)
    settings = _settings(optimizers)
    out_dtype = torch.get_default_dtype()  # as the sequential path's curves and finals
    curves = {name: torch.empty(n_runs, n_steps, dtype=out_dtype) for name in optimizers}
    finals = {name: torch.empty(n_runs, dtype=out_dtype) for name in optimizers}
    with Progress(plan.n_chunks * n_steps, desc or f"evaluate {n_steps} steps", unit="step",
                  enabled=progress) as bar:
        for s0 in range(0, len(settings), plan.settings_per_chunk):
            chunk = settings[s0:s0 + plan.settings_per_chunk]
            for r0 in range(0, n_runs, plan.runs_per_chunk):
                runs = range(r0, min(r0 + plan.runs_per_chunk, n_runs))
                chunk_curves, chunk_finals = _evaluate_chunk(task, chunk, runs, seed, n_steps,
                                                             final_loss, bar)
                chunk_curves, chunk_finals = chunk_curves.cpu(), chunk_finals.cpu()
                for i, (name, _) in enumerate(chunk):
                    curves[name][runs.start:runs.stop] = chunk_curves[i]
                    finals[name][runs.start:runs.stop] = chunk_finals[i]
    return {name: EvalResult(name, curves[name], finals[name]) for name in optimizers}
