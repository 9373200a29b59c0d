"""K independent meta-trainings in one process, as one batched computation (issue #13).

K learned optimizers of one architecture (different seeds, or different experiments that
share a model, e.g. rnnprop, rnnprop_no_rs and rnnprop_no_cc) step K optimizee trajectories
together. On a GPU their meta-parameters are stacked ``[K, ...]`` for every truncation period
(:mod:`l2o_pipeline.optimizers.stacked`), θ is ``[K, n]``, and the task is computed for the
K runs as one batched task (:mod:`l2o_pipeline.optimizees.batched`) when their instances batch
(same kind and size), else run by run. On a CPU each run's period is its single run's
computation, one run after another (``stacked.runs_one_by_one``: stacking buys a CPU nothing).
Nothing couples the runs: each keeps its own model, Adam, generator, tricks, settings,
selection and output folder, and writes exactly what
:func:`l2o_pipeline.meta.train.meta_train` writes (checkpoints, training states, metrics), so
either can resume the other's folder. The loop goes period by period; a run whose period was
non-finite skips its update and restarts its optimizee run while the others go on, as a
single run would. ``tests/test_batched_k.py`` pins it to K separate ``meta_train`` runs.

    results = meta_train_batched([MetaTrainJob(model_k, task_k, settings_k, out_k, seed=k)
                                  for k in range(3)])

From the command line (experiments × seeds composed as ``l2o`` composes them):
``python -m l2o_pipeline.batched_meta_train --experiments rnnprop --seeds 0,1,2 --out DIR``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from l2o_pipeline.checkpoint import optimizer_payload
from l2o_pipeline.errors import UserError
from l2o_pipeline.meta.meta_adam import MetaAdam
from l2o_pipeline.meta.period import meta_gradient_of_period, meta_loss_weights, period_is_finite
from l2o_pipeline.meta.train import (
    MetaTrainResult,
    MetaTrainSettings,
    load_training_state,
    save_training_state,
    select_checkpoint,
)
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers import kernels, stacked
from l2o_pipeline.optimizers.base import LearnedOptimizer, detach_state
from l2o_pipeline.progress import Progress
from l2o_pipeline.records import save_torch
from l2o_pipeline.tricks import batch_instances

log = logging.getLogger(__name__)


@dataclass
class MetaTrainJob:
    """One meta-training, as the arguments of :func:`meta_train` name it."""

    model: LearnedOptimizer
    task: Task
    settings: MetaTrainSettings
    output_dir: str | Path
    seed: int = 0
    variant: str | None = None
    config: dict | None = None
    writer: object = None
    validation_task: Task | None = None


def check_jobs(jobs: Sequence[MetaTrainJob]) -> None:
    """Refuse, before any work, K jobs that cannot run as one computation (a UserError
    naming the job and what would be valid)."""
    if not jobs:
        raise UserError("batched meta-training needs at least one job")
    first = jobs[0]
    for i, job in enumerate(jobs):
        job.settings.validate()
        if not stacked.supports(job.model):
            raise UserError(f"job {i}: batched meta-training supports "
                             f"{sorted(c.name for c in stacked.STACKED_FEATURES)}, not "
                             f"{job.model.name!r}")
        if type(job.model) is not type(first.model) or job.model.hparams() != \
                first.model.hparams():
            raise UserError(f"job {i}: optimizer {job.model.name} {job.model.hparams()} differs "
                             f"from job 0's {first.model.name} {first.model.hparams()}; batched "
                             "jobs share one architecture (run the others as another batch)")
        if job.settings.unroll != first.settings.unroll:
            raise UserError(f"job {i}: horizon.unroll={job.settings.unroll}, job 0's is "
                             f"{first.settings.unroll}; batched jobs share the truncation")
        if job.settings.second_order:
            raise UserError(f"job {i}: meta_train.second_order=true is not batched; run it "
                             "with meta_train")
        if job.settings.selection == "validation" and job.validation_task is None:
            raise UserError(f"job {i}: meta_train.selection=validation needs a validation task")
        device = next(job.model.parameters()).device
        if device != next(first.model.parameters()).device:
            raise UserError(f"job {i}: its model is on {device}, job 0's is not")
    outs = [Path(j.output_dir).resolve() for j in jobs]
    if len(set(outs)) != len(outs):
        raise UserError("batched jobs need one output folder each; got the same one twice")


class _Run:
    """One job's meta-training state: what :func:`meta_train` keeps in its locals."""

    def __init__(self, job: MetaTrainJob):
        self.job, self.s = job, job.settings
        self.model, self.task, self.out = job.model, job.task, Path(job.output_dir)
        self.variant = job.variant or job.model.name
        self.device = next(self.model.parameters()).device
        self.meta_opt = MetaAdam(self.model.parameters(), lr=self.s.meta_lr)
        self.generator = torch.Generator().manual_seed(job.seed)
        self.weights = meta_loss_weights(self.s.meta_loss, self.s.unroll)
        self.n_periods = self.s.steps_per_run // self.s.unroll
        self.progress = {"iteration": 0, "nonfinite_skips": 0, "ema": None,
                         "best_score": math.inf, "best_iteration": None, "losses": [],
                         "elapsed": 0.0}
        resumed = load_training_state(self.out)
        if resumed is not None:
            self.model.load_state_dict(resumed["model"])
            self.meta_opt.load_state_dict(resumed["meta_opt"])
            self.generator.set_state(resumed["generator"])
            self.progress.update(resumed["progress"])
            log.info("resumed meta-training at iteration %d from %s",
                     self.progress["iteration"], self.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter() - self.progress["elapsed"]
        self.instance = self.theta = self.state = None  # the optimizee run under way
        self.period, self.period_losses = 0, []
        self.interrupted = False

    @property
    def done(self) -> bool:
        return self.progress["iteration"] >= self.s.n_iterations

    def start_optimizee_run(self) -> None:
        self.instance = self.task.sample_instance(self.generator)
        self.theta = self.instance.init_params(self.generator).to(self.device)
        self.state = self.model.init_state(self.theta.numel(), self.device, self.theta.dtype)
        self.period, self.period_losses = 0, []

    def end_period(self, value: float, finite: bool) -> bool:
        """Apply the meta-update (or skip it); True when the iteration ended."""
        if not finite:
            self.progress["nonfinite_skips"] += 1
            log.warning("%s: non-finite meta-loss or meta-gradient at iteration %d: update "
                        "skipped, optimizee run restarted (%d so far)", self.out,
                        self.progress["iteration"], self.progress["nonfinite_skips"])
            self.period_losses = []
            self._end_iteration()
            return True
        self.meta_opt.step()
        self.period_losses.append(value)
        self.period += 1
        if self.period == self.n_periods:
            self._end_iteration()
            return True
        return False

    def _end_iteration(self) -> None:
        s, p, writer = self.s, self.progress, self.job.writer
        self.instance = self.theta = self.state = None
        it = p["iteration"] + 1
        p["iteration"] = it
        if self.period_losses:
            loss = sum(self.period_losses) / len(self.period_losses)
            p["losses"].append(loss)
            p["ema"] = loss if p["ema"] is None else (
                s.ema_decay * p["ema"] + (1 - s.ema_decay) * loss)
            if writer is not None and (it % s.log_every == 0 or it == 1):
                writer.log({"meta/loss": loss, "meta/loss_ema": p["ema"],
                            "meta/nonfinite_skips": p["nonfinite_skips"]}, step=it)
        if it % s.checkpoint_every == 0 or it == s.n_iterations:
            self._select(it)
        p["elapsed"] = time.perf_counter() - self.start
        if it % s.state_every == 0 or it == s.n_iterations or it % s.checkpoint_every == 0:
            self.save_state()

    def save_state(self) -> None:
        save_training_state(self.out, self.model, self.meta_opt, self.generator,
                            self.progress, self.s, self.job.config)

    def _select(self, iteration: int) -> None:
        select_checkpoint(self.model, self.variant, self.job.config, self.s, self.progress,
                          iteration, self.out, self.job.validation_task, self.job.seed,
                          self.job.writer)

    def result(self) -> MetaTrainResult:
        final = None
        if not self.interrupted:
            final = save_torch(self.out / "final.pt", optimizer_payload(
                self.model, self.variant, self.job.config, iteration=self.progress["iteration"]))
        best = self.out / "best.pt"
        p = self.progress
        return MetaTrainResult(
            iterations=p["iteration"], best_checkpoint=best if best.exists() else None,
            final_checkpoint=final, losses=list(p["losses"]),
            nonfinite_skips=p["nonfinite_skips"], interrupted=self.interrupted,
            selection={"rule": self.s.selection, "best_iteration": p["best_iteration"],
                       "best_score": p["best_score"]},
            seconds=p["elapsed"])


def _loss_and_grad(runs: list[_Run], theta: torch.Tensor, batched, sizes: list[int]):
    """Losses ``[K]`` and detached gradients ``[K, n_max]`` (zero on padded coordinates), each
    run's minibatch drawn from its own generator as in its single run."""
    if batched is not None:
        batch = batched.sample_batch([r.generator for r in runs])
        loss, grad = batched.loss_and_grad(theta.unsqueeze(0), batch)
        return loss[0], grad[0]
    grad = theta.new_zeros(theta.shape)
    losses = []
    for k, (r, n) in enumerate(zip(runs, sizes)):
        loss, grad[k, :n] = r.instance.loss_and_grad(theta[k, :n],
                                                      r.instance.sample_batch(r.generator))
        losses.append(loss)
    return torch.stack(losses), grad


def _batched_task(runs: list[_Run]):
    """The K instances as one batched task, or None when they do not batch (different kinds
    or sizes, or per-job task objects that the batched kinds cannot share)."""
    instances = [r.instance for r in runs]
    if len({type(t) for t in instances}) != 1 or len({t.n_params for t in instances}) != 1:
        return None
    try:
        return batch_instances(instances)
    except TypeError:  # VmapBatched: tasks built per job are distinct objects
        return None


def _unroll_period_run_by_run(runs: list[_Run]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`unroll_period` on a CPU: each run's period as its single run computes it
    (``meta_gradient_of_period``, the C++ kernels), one run after another. Stacking the K runs
    buys a CPU nothing (no launch to amortise) and costs copies and cache: the stacked step,
    even with per-run layers, measured 0.87-0.92x of K single runs."""
    values, finite = [], []
    for r in runs:
        value, ok, theta, state = meta_gradient_of_period(
            r.model, r.meta_opt, r.instance, r.theta, r.state, r.generator, r.weights)
        values.append(value.detach())
        finite.append(ok)
        r.theta, r.state = theta.detach(), detach_state(state)
    return torch.stack(values), torch.stack(finite)


def unroll_period(runs: list[_Run], batch_tasks: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One truncation period of every run, batched; backward done, nothing stepped. Returns
    each run's meta-loss value ``[K]`` and whether it and its meta-gradient are finite."""
    if stacked.runs_one_by_one(runs[0].device):
        return _unroll_period_run_by_run(runs)
    template = runs[0].model
    sizes = [r.theta.numel() for r in runs]
    n_max, unroll = max(sizes), runs[0].s.unroll
    params = stacked.stack_parameters([r.model for r in runs])
    theta = torch.stack([stacked._pad_rows(r.theta.detach(), n, n_max)
                         for r, n in zip(runs, sizes)])
    state = stacked.stack_states([detach_state(r.state) for r in runs], sizes)
    batched = _batched_task(runs) if batch_tasks else None
    # per-step weights [unroll + 1, K] on the device once per period; which are non-zero,
    # as Python booleans, for the control flow (no host sync)
    weights = torch.tensor([r.weights for r in runs], dtype=theta.dtype).t().to(theta.device)
    nonzero = [[r.weights[t] != 0 for r in runs] for t in range(unroll + 1)]
    surrogate = theta.new_zeros(len(runs))
    value = theta.new_zeros(len(runs))
    for t in range(unroll + 1):
        w, active = weights[t], nonzero[t]
        if t == unroll and not any(active):
            break
        if t == unroll and not all(active):
            # only the runs that weigh f(θ_unroll) draw its minibatch, as in their single runs
            idx = [i for i, on in enumerate(active) if on]
            sub = [runs[i] for i in idx]
            loss, grad = _loss_and_grad(sub, theta[idx],
                                        _batched_task(sub) if batch_tasks else None,
                                        [sizes[i] for i in idx])
            surrogate[idx] = surrogate[idx] + w[idx] * (grad * theta[idx]).sum(-1)
            value[idx] = value[idx] + w[idx] * loss
            break
        loss, grad = _loss_and_grad(runs, theta, batched, sizes)
        if any(active):
            # a zero weight leaves its run untouched even where its gradient is not finite
            mask = w != 0
            dot = (torch.where(mask.unsqueeze(1), grad, 0.0) * theta).sum(-1)
            surrogate = surrogate + w * dot
            value = value + torch.where(mask, w * loss, 0.0)
        if t < unroll:
            update, state = stacked.stacked_step(template, params, grad, state)
            theta = theta + update
    for r in runs:
        r.meta_opt.zero_grad(set_to_none=True)
    if surrogate.requires_grad:
        surrogate.sum().backward()  # the runs share no weights: each gets its own gradient
    ok = torch.stack([period_is_finite(v, r.model) for v, r in zip(value.unbind(), runs)])
    for k, (r, n) in enumerate(zip(runs, sizes)):
        r.theta = theta[k, :n].detach()
        r.state = detach_state(stacked.unstack_state(state, k, r.state, n))
    return value.detach(), ok


def meta_train_batched(jobs: Sequence[MetaTrainJob],
                       should_stop: Callable[[], bool] = lambda: False,
                       progress: bool | None = None, batch_tasks: bool = True
                       ) -> list[MetaTrainResult]:
    """Meta-train K jobs together; their results (and folders) as K :func:`meta_train` calls
    would give them. Each resumes from its folder's training state if it has one.
    ``batch_tasks=False``: the task run by run even where the instances batch (the oracle)."""
    check_jobs(jobs)
    if next(jobs[0].model.parameters()).device.type == "cpu":
        kernels.keep_freed_memory(every_size=True)  # per-step tensors grow K-fold (> 32 MiB)
    runs = [_Run(job) for job in jobs]
    total = sum(r.s.n_iterations for r in runs)
    with Progress(total, f"meta-train x{len(runs)}", enabled=progress,
                  initial=sum(min(r.progress["iteration"], r.s.n_iterations) for r in runs)
                  ) as bar:
        stopping = False
        while True:
            # A stop lets every run finish its iteration (its state is saved at iteration
            # boundaries only, so that a resume is exact), then saves them all.
            active = [r for r in runs if not r.done and not (stopping and r.theta is None)]
            if not active:
                break
            for r in active:
                if r.theta is None:
                    r.start_optimizee_run()
            values, finite = unroll_period(active, batch_tasks)
            # one host sync per period for all K runs (per step nowhere)
            for r, value, ok in zip(active, values.tolist(), finite.tolist()):
                if r.end_period(value, ok):
                    bar.update(1)
            stopping = stopping or should_stop()
    if stopping:
        for r in runs:
            if not r.done:
                r.save_state()
                r.interrupted = True
        log.info("stop requested: the batched runs' states are saved")
    return [r.result() for r in runs]
