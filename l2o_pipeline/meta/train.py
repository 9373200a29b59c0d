"""Meta-training by truncated BPTT (spec §3), in one loop that reads top to bottom.

One *iteration* = one optimizee run of ``steps_per_run`` steps from a fresh task instance and θ0,
split into periods of ``unroll`` steps. Each period ends with one meta-update; the optimizee
state (θ and the optimizer's recurrent state) crosses period boundaries without gradient.

A period's unroll and meta-gradient: :mod:`l2o_pipeline.meta.period` (on a GPU, replayed as
one CUDA graph: :mod:`l2o_pipeline.meta.graphed_period`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from l2o_pipeline.checkpoint import STATE_FORMAT, CheckpointError, load_file, optimizer_payload
from l2o_pipeline.evaluate import evaluate
from l2o_pipeline.meta.graphed_period import period_runner
from l2o_pipeline.meta.meta_adam import MetaAdam
from l2o_pipeline.meta.period import meta_loss_weights
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers.base import LearnedOptimizer
from l2o_pipeline.progress import Progress
from l2o_pipeline.records import move_aside, save_torch

log = logging.getLogger(__name__)

META_LOSSES = ("last", "mean", "sum_all")
SELECTION_RULES = ("ema_train_loss", "validation", "last")
STATE_FILE, PREV_STATE_FILE = "state.pt", "state.prev.pt"
# What a meta-training run writes into its folder (moved aside together when it restarts).
RUN_FILES = (STATE_FILE, PREV_STATE_FILE, "best.pt", "final.pt", "checkpoints")


@dataclass
class MetaTrainSettings:
    n_iterations: int = 1000
    steps_per_run: int = 100
    unroll: int = 20
    meta_lr: float = 1e-4
    # "last": f at the last step of each period (official RNNprop); "mean": mean over the
    # period (paper 1's DMoptimizer); "sum_all": sum of f(θ_0..θ_unroll) (DeepMind's code).
    meta_loss: str = "last"
    checkpoint_every: int = 1000
    state_every: int = 10
    selection: str = "ema_train_loss"
    ema_decay: float = 0.99
    validation_runs: int = 10
    validation_steps: int = 100
    second_order: bool = False
    log_every: int = 10

    def validate(self) -> None:
        for key in ("n_iterations", "steps_per_run", "unroll", "checkpoint_every",
                    "state_every", "validation_runs", "validation_steps", "log_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                # named as in the config: the run length and truncation live in `horizon`
                group = "horizon" if key in ("steps_per_run", "unroll") else "meta_train"
                raise ValueError(f"{group}.{key} must be a positive integer, got {value!r}")
        if self.unroll > self.steps_per_run:
            raise ValueError(f"horizon.unroll ({self.unroll}) is longer than the run "
                             f"(horizon.steps_per_run = {self.steps_per_run})")
        if self.steps_per_run % self.unroll:
            raise ValueError(f"horizon.steps_per_run ({self.steps_per_run}) must be a multiple "
                             f"of horizon.unroll ({self.unroll})")
        if not self.meta_lr > 0:
            raise ValueError(f"meta_train.meta_lr must be positive, got {self.meta_lr!r}")
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_train.meta_loss: unknown {self.meta_loss!r}; "
                             f"valid: {META_LOSSES}")
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"meta_train.selection: unknown {self.selection!r}; "
                             f"valid: {SELECTION_RULES}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"meta_train.ema_decay must be in [0, 1), got {self.ema_decay!r}")


@dataclass
class MetaTrainResult:
    iterations: int
    best_checkpoint: Path | None
    final_checkpoint: Path | None
    losses: list[float] = field(default_factory=list)
    nonfinite_skips: int = 0
    interrupted: bool = False
    selection: dict = field(default_factory=dict)
    seconds: float = 0.0


def select_checkpoint(model: LearnedOptimizer, variant: str, config, settings: MetaTrainSettings,
                      progress_state: dict, iteration: int, out: Path, validation_task,
                      seed: int, writer=None) -> None:
    """Checkpoint the meta-parameters at ``iteration`` and apply the model-selection rule:
    ``best.pt`` and ``progress_state``'s best when the score is the best so far."""
    if settings.selection == "ema_train_loss":
        score = progress_state["ema"]
    elif settings.selection == "validation":
        results = evaluate(validation_task, {"model": model}, settings.validation_steps,
                           settings.validation_runs, seed=seed + 1, progress=False)
        # The mean over the finite runs, not the summary's mean (which also leaves out
        # runs far above their initial loss): a resumed meta-training must score its
        # checkpoints as it did before that rule existed.
        final = results["model"].final_losses
        finite = final[torch.isfinite(final)]
        score = finite.mean().item() if len(finite) else math.inf
    else:
        score = -iteration
    score = math.inf if score is None or not math.isfinite(score) else float(score)
    record = {"rule": settings.selection, "score": score, "iteration": iteration,
              "ema_decay": settings.ema_decay}
    payload = optimizer_payload(model, variant, config, iteration=iteration, selection=record)
    save_torch(out / "checkpoints" / f"iter_{iteration:07d}.pt", payload)
    if score <= progress_state["best_score"] or progress_state["best_iteration"] is None:
        progress_state["best_score"], progress_state["best_iteration"] = score, iteration
        payload["selection"] = {**record, "chosen": True}
        save_torch(out / "best.pt", payload)
    if writer is not None:
        writer.log({"meta/selection_score": score}, step=iteration)


def meta_train(
    model: LearnedOptimizer,
    task: Task,
    settings: MetaTrainSettings,
    output_dir: str | Path,
    seed: int = 0,
    variant: str | None = None,
    config: dict | None = None,
    writer=None,
    validation_task: Task | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: bool | None = None,
    resume_from: dict | None = None,
) -> MetaTrainResult:
    """Meta-train ``model`` on ``task``; resume from ``output_dir``'s training state if it has
    one (:func:`load_training_state`). ``resume_from``: that state, already read by the caller
    (the pipeline reads it first to cut its metrics back to the same iteration)."""
    settings.validate()
    if settings.selection == "validation" and validation_task is None:
        raise ValueError("meta_train.selection=validation needs a validation task")
    out = Path(output_dir)
    variant = variant or model.name
    device = next(model.parameters()).device
    meta_opt = MetaAdam(model.parameters(), lr=settings.meta_lr)  # torch.optim.Adam's update
    generator = torch.Generator().manual_seed(seed)
    weights = meta_loss_weights(settings.meta_loss, settings.unroll)
    n_periods = settings.steps_per_run // settings.unroll
    run_period = period_runner(model, meta_opt, task, weights, settings.second_order, device)

    # Everything the loop depends on lives in `progress_state`, so a resume is exact.
    progress_state = {"iteration": 0, "nonfinite_skips": 0, "ema": None, "best_score": math.inf,
                      "best_iteration": None, "losses": [], "elapsed": 0.0}
    resumed = load_training_state(out) if resume_from is None else resume_from
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        meta_opt.load_state_dict(resumed["meta_opt"])
        generator.set_state(resumed["generator"])
        progress_state.update(resumed["progress"])
        log.info("resumed meta-training at iteration %d from %s", progress_state["iteration"], out)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    def save_state():
        save_training_state(out, model, meta_opt, generator, progress_state, settings, config)

    def select(iteration: int) -> None:
        select_checkpoint(model, variant, config, settings, progress_state, iteration, out,
                          validation_task, seed, writer)

    start = time.perf_counter() - progress_state["elapsed"]
    interrupted = False
    with Progress(settings.n_iterations, "meta-train", initial=progress_state["iteration"],
                  enabled=progress) as bar:
        while progress_state["iteration"] < settings.n_iterations:
            it = progress_state["iteration"]
            instance = task.sample_instance(generator)
            theta = instance.init_params(generator).to(device)
            state = model.init_state(theta.numel(), device, theta.dtype)
            period_losses = []
            for _ in range(n_periods):
                value, finite, theta, state = run_period(instance, theta, state, generator)
                # One host sync per period for the whole check (it is per step nowhere).
                if not bool(finite):
                    # Never let a non-finite loss or gradient touch φ: skip, restart the run.
                    progress_state["nonfinite_skips"] += 1
                    log.warning("non-finite meta-loss or meta-gradient at iteration %d: update "
                                "skipped, optimizee run restarted (%d so far)", it,
                                progress_state["nonfinite_skips"])
                    period_losses = []
                    break
                meta_opt.step()
                period_losses.append(value.item())
            it += 1
            progress_state["iteration"] = it
            if period_losses:
                loss = sum(period_losses) / len(period_losses)
                progress_state["losses"].append(loss)
                ema = progress_state["ema"]
                progress_state["ema"] = loss if ema is None else (
                    settings.ema_decay * ema + (1 - settings.ema_decay) * loss)
                if writer is not None and (it % settings.log_every == 0 or it == 1):
                    writer.log({"meta/loss": loss, "meta/loss_ema": progress_state["ema"],
                                "meta/nonfinite_skips": progress_state["nonfinite_skips"]},
                               step=it)
            bar.update(1, **({"loss": loss, "ema": progress_state["ema"]} if period_losses
                             else {}))
            if it % settings.checkpoint_every == 0 or it == settings.n_iterations:
                select(it)
            progress_state["elapsed"] = time.perf_counter() - start
            if it % settings.state_every == 0 or it == settings.n_iterations or it % \
                    settings.checkpoint_every == 0:
                save_state()
            if should_stop() and it < settings.n_iterations:
                save_state()
                interrupted = True
                log.info("stop requested: state saved at iteration %d in %s", it, out)
                break

    final = None
    if not interrupted:
        final = save_torch(out / "final.pt", optimizer_payload(
            model, variant, config, iteration=progress_state["iteration"]))
    best = out / "best.pt"
    return MetaTrainResult(
        iterations=progress_state["iteration"],
        best_checkpoint=best if best.exists() else None,
        final_checkpoint=final,
        losses=list(progress_state["losses"]),
        nonfinite_skips=progress_state["nonfinite_skips"],
        interrupted=interrupted,
        selection={"rule": settings.selection, "best_iteration": progress_state["best_iteration"],
                   "best_score": progress_state["best_score"]},
        seconds=progress_state["elapsed"],
    )


def save_training_state(out: Path, model: LearnedOptimizer, meta_opt, generator: torch.Generator,
                        progress_state: dict, settings: MetaTrainSettings, config) -> None:
    """The full training state (what a resume needs), in ``out/state.pt``. Keep the previous
    good state beside the new one: a corrupt file falls back to it. A rename, not a copy: at
    every moment one of the two is a whole state, and a full disk costs no second copy."""
    path = out / STATE_FILE
    if path.exists():
        path.replace(out / PREV_STATE_FILE)
    save_torch(path, {
        "format": STATE_FORMAT, "model": model.state_dict(),
        "meta_opt": meta_opt.state_dict(), "generator": generator.get_state(),
        "progress": progress_state, "settings": asdict(settings), "config": config,
    })


def load_training_state(out: str | Path, discard_with: Iterable[str] = ()) -> dict | None:
    """The newest usable training state in ``out`` (``state.pt``, else ``state.prev.pt``), or
    None: meta-training then starts at iteration 0.

    When state files exist but none can be read, they, everything meta-training made with them
    (``RUN_FILES``) and the files named in ``discard_with`` (the run's metrics) are moved into
    ``out/discarded/<time>/``, never deleted, and a warning says that training restarts."""
    out = Path(out)
    unusable = []
    for name in (STATE_FILE, PREV_STATE_FILE):
        path = out / name
        if not path.exists():
            continue
        try:
            state = load_file(path, STATE_FORMAT)
        except CheckpointError as exc:
            log.warning("ignoring unusable training state %s: %s", path, exc)
            unusable.append(path)
            continue
        if unusable:
            log.warning("resuming from the previous training state %s (iteration %d)", path,
                        state["progress"]["iteration"])
        return state
    if unusable:
        moved = move_aside(out, [*RUN_FILES, *discard_with])
        log.warning("both training states in %s are unusable: meta-training restarts from "
                    "iteration 0; the old run's files are kept in %s", out, moved)
    return None
