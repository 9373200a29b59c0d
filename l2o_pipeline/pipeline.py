"""The entrypoint's plain function: ``run(cfg) -> float``, testable without ``@hydra.main``.

Stages: meta-train a learned optimizer, evaluate one (or a hand-designed optimizer) against
baselines, or both. Everything is written under ``cfg.paths.output_dir``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from l2o_pipeline import progress
from l2o_pipeline.baselines import resolve_lr, scan_tuning, task_key
from l2o_pipeline.batched import evaluate_batched
from l2o_pipeline.checkpoint import CheckpointError, load_optimizer, resolve_checkpoint
from l2o_pipeline.config import (
    ConfigError,
    meta_train_settings,
    optimizer_keys,
    validate_config,
)
from l2o_pipeline.eval_metrics import log_evaluation
from l2o_pipeline.evaluate import DIVERGED_RULE, evaluate
from l2o_pipeline.fingerprint import check_run_folder, semantic_config, write_fingerprint
from l2o_pipeline.meta import load_training_state, meta_train
from l2o_pipeline.optimizees import build_task
from l2o_pipeline.optimizers import HAND_DESIGNED, LEARNED, build_optimizer, learned
from l2o_pipeline.records import (
    lock_run_folder,
    read_json_record,
    remove_leftover_tmp,
    save_torch,
    write_json,
    write_text,
)
from l2o_pipeline.tracking import model_artifact_name
from l2o_pipeline.tricks import Combined, RandomScaling

log = logging.getLogger(__name__)

def config_dict(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node (saved in checkpoints and W&B)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # composed with return_hydra_config (tests): not ours to save
    return OmegaConf.to_container(cfg, resolve=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu")
    return torch.device(name)


def build_model(cfg: DictConfig):
    """The optimizer named by ``cfg.optimizer`` with its configured keys (None = default)."""
    opt = cfg.optimizer
    kwargs = {k: opt[k] for k in optimizer_keys(opt.name) if opt.get(k) is not None}
    return build_optimizer(opt.name, **kwargs)


def build_training_task(cfg: DictConfig, device) -> tuple:
    """(task with the tricks applied, the plain task) for meta-training."""
    plain = build_task(cfg.optimizee, cfg.data.dir, cfg.data.download, cfg.data.mnist_fallback,
                       device)
    rs, cc = cfg.tricks.random_scaling, cfg.tricks.convex_combination
    from l2o_pipeline.optimizees import SquareTask

    task = RandomScaling(plain, rs.k) if rs.enabled else plain
    if cc.enabled:
        convex = SquareTask(cc.dim, cc.x0, cc.clip, device)
        # The convex part is scaled only under Random Scaling (its own k): "RNNprop without
        # Random Scaling" then means no scaling at all.
        task = Combined([task, RandomScaling(convex, cc.scale_k) if rs.enabled else convex])
    return task, plain


@contextmanager
def stop_on_signals(phase: dict):
    """SIGINT (Ctrl-C), SIGTERM and SIGUSR2 (SLURM's pre-emption warning) stop meta-training at
    the end of the current iteration, after its state is saved; then a handler that was
    installed before ours (submitit's, which requeues the job) runs. Outside meta-training it
    runs at once. A second Ctrl-C, at any moment after the first (also while the process shuts
    down), exits at once with no cleanup: every record is whole (atomic writes), the last saved
    state stays, and the next start removes the temporary file of a write it cut short.

    The process never carries on after that: if the previous handler returns (submitit's
    SIGTERM handler only logs "Bypassing signal"), it exits with 128 + signum and no result, so
    a job that SLURM requeues (``scontrol requeue``, SIGTERM-only preemption) resumes instead of
    reporting a NaN success for an unfinished cell. Ctrl-C exits with 130, as shells expect."""
    usr2 = getattr(signal, "SIGUSR2", None)
    requested: dict = {"signal": None}
    previous = {}

    def handler(signum, frame):
        if signum == signal.SIGINT and requested["signal"] == signal.SIGINT:
            _exit_now(signum, frame)
        if requested["signal"] is None or signum == usr2:  # a later SIGTERM never hides USR2
            requested["signal"] = signum
        if not phase.get("meta_train"):
            log.warning("stopped by %s outside meta-training: the stage did not finish; run "
                        "the same command again to redo it", signal.Signals(signum).name)
            _chain(signum, frame)

    def _chain(signum, frame):
        prev = previous.get(signum)
        # Python's own SIGINT handler would raise KeyboardInterrupt (exit status -2, and a
        # traceback): exit like the other signals instead.
        if callable(prev) and prev is not signal.default_int_handler:
            prev(signum, frame)  # submitit's USR2 handler requeues, then exits
        raise SystemExit(128 + signum)

    signals = [signal.SIGINT, signal.SIGTERM] + ([usr2] if usr2 is not None else [])
    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals alone
        signals = []
    try:
        yield requested, _chain
    finally:
        for s in signals:
            signal.signal(s, previous[s])
        if signals and requested["signal"] is not None:  # exiting: Python's handler would
            signal.signal(signal.SIGINT, _exit_now)  # print a KeyboardInterrupt traceback


def _exit_now(signum, frame):
    os.write(2, b"stopped at once by a second Ctrl-C; the last saved state is kept: run the "
                b"same command again to resume\n")
    os._exit(128 + signum)



def run(cfg: DictConfig) -> float:
    """Run the configured stages; return the headline metric (lower is better).

    The run folder is locked while this runs (a second process on it refuses, or waits up to
    ``lock_timeout_s``); temporary files of writes interrupted in an earlier run are removed.
    """
    validate_config(cfg)
    out = Path(cfg.paths.output_dir)
    semantic = semantic_config(config_dict(cfg))
    check_run_folder(out, semantic)  # another config's folder is refused before it is touched
    with lock_run_folder(out, cfg.lock_timeout_s):
        check_run_folder(out, semantic)  # again: a process that held the lock may have begun it
        remove_leftover_tmp(out)
        return _run_in(out, cfg, semantic)


def _run_in(out: Path, cfg: DictConfig, semantic: dict) -> float:
    done = out / "DONE"
    record = (read_json_record(done, "the cell's DONE marker", "delete it to run the cell again")
              if cfg.skip_if_done and done.is_file() else None)
    skipping = "%s is finished (metric %.6g); skipping. skip_if_done=false to run again"
    if record is not None and cfg.stage in ("meta_train", "both"):
        if record.get("iterations", 0) >= cfg.meta_train.n_iterations:
            log.info(skipping, out, _metric(record))
            return _metric(record)
        log.info("%s finished %d iterations; continuing to %d", out, record["iterations"],
                 cfg.meta_train.n_iterations)
    device = resolve_device(cfg.device)
    # Missing inputs fail before any work: tuned rates, the checkpoint to evaluate.
    baseline_lrs = _resolve_baselines(cfg)
    checkpoint = _resolve_eval_checkpoint(cfg)
    inputs = _evaluation_inputs(cfg, checkpoint, baseline_lrs)
    if record is not None and cfg.stage in ("evaluate", "tune"):
        changed = _changed_inputs(record.get("inputs"), inputs)
        if not changed:
            log.info(skipping, out, _metric(record))
            return _metric(record)
        log.info("%s is finished but what it evaluated changed (%s); evaluating again", out,
                 changed)
    done.unlink(missing_ok=True)  # only now: a failed check leaves a finished run finished
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    progress.configure(every_s=cfg.progress_every_s)
    learned.set_compile(cfg.compile)
    learned.set_memory_saving(cfg.save_memory)
    config = config_dict(cfg)
    write_text(out / "config_resolved.yaml", OmegaConf.to_yaml(config))
    write_fingerprint(out, semantic)

    from l2o_pipeline.tracking import METRICS_FILE, RUN_ID_FILE, SUMMARY_FILE, make_writer

    wandb_cfg = dict(config["logger"]["wandb"])
    wandb_cfg.setdefault("tags", [])
    wandb_cfg["tags"] = list(wandb_cfg["tags"]) + [cfg.optimizer.name, cfg.optimizee.name,
                                                    cfg.stage]
    if not wandb_cfg.get("name"):
        group = wandb_cfg.get("group") or cfg.optimizer.name
        wandb_cfg["name"] = f"{group}/seed={cfg.seed}"
    # Read once, here: metrics.jsonl is cut back to the iteration of the state that is
    # resumed (state.prev.pt when state.pt is unusable; 0 when there is none), so no step is
    # logged twice. Restarting after both states are unusable moves the metrics aside too,
    # and the W&B run id: the restarted run is a new W&B run, not steps going backwards.
    resumed, resume_step = None, None
    if cfg.stage in ("meta_train", "both"):
        resumed = load_training_state(out, discard_with=(METRICS_FILE, SUMMARY_FILE,
                                                         RUN_ID_FILE))
        resume_step = int(resumed["progress"]["iteration"]) if resumed is not None else 0
    writer = make_writer(out, wandb_cfg, config, resume_step=resume_step)
    phase: dict = {}
    metric, iterations = math.nan, 0
    try:
        with stop_on_signals(phase) as (requested, chain):
            if cfg.stage in ("meta_train", "both"):
                phase["meta_train"] = True
                result = _meta_train_stage(cfg, device, out, config, writer, resumed,
                                           lambda: requested["signal"] is not None)
                phase["meta_train"] = False
                if result.interrupted:
                    log.warning("stopped by %s at iteration %d, its state saved in %s; to "
                                "resume, %s", signal.Signals(requested["signal"]).name,
                                result.iterations, out, _resume_hint(out))
                    chain(requested["signal"], None)
                    return math.nan
                checkpoint = result.best_checkpoint or result.final_checkpoint
                metric = result.selection["best_score"]
                iterations = result.iterations
            if cfg.stage == "tune":
                metric = _tune_stage(cfg, device, out, writer)
            if cfg.stage in ("evaluate", "both"):
                metric = _evaluate_stage(cfg, device, out, writer, checkpoint, baseline_lrs)
        writer.summary({"metric": metric})
        write_json(done, {"metric": metric, "finished": time.time(), "stage": cfg.stage,
                          "iterations": iterations, "inputs": inputs})
    finally:
        writer.close()
    return metric


def _metric(record: dict) -> float:
    """A finished cell's metric; null in its DONE is a non-finite one (strict JSON)."""
    value = record.get("metric")
    return math.nan if value is None else float(value)


def _resume_hint(out: Path) -> str:
    """How to continue an interrupted run: the same command, pointed at the same folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return (f"launch the same sweep again with hydra.sweep.dir="
                f"{HydraConfig.get().sweep.dir}")
    return f"run the same command again with hydra.run.dir={out}"


def _evaluation_inputs(cfg, checkpoint, baseline_lrs) -> dict | None:
    """What a stage=evaluate result depends on beyond its cell's name, kept in DONE: the
    evaluated checkpoint (its meta-training may have continued since), the baselines' rates
    ("tuned" ones change when tuning is rerun) and the run count (not part of the name)."""
    if cfg.stage == "tune":
        return _tuning_inputs(cfg)
    if cfg.stage != "evaluate":
        return None
    payload = checkpoint[1] if checkpoint is not None else {}
    return {"checkpoint": str(payload["path"]) if payload else None,
            "checkpoint_iteration": payload.get("iteration"),
            "n_runs": cfg.evaluation.n_runs,
            "eval_steps": list(cfg.horizon.eval_steps),
            "baselines": {str(h): {b: lr for b, (lr, _) in lrs.items()}
                          for h, lrs in baseline_lrs.items()}}


def _tuning_inputs(cfg) -> dict:
    """What a tuning cell's record depends on beyond its name, kept in DONE."""
    return {"n_runs": cfg.evaluation.n_runs, "eval_steps": list(cfg.horizon.eval_steps),
            "evaluation_seed": cfg.evaluation.seed, "final_loss": cfg.evaluation.final_loss,
            "tuning": OmegaConf.to_container(cfg.tuning, resolve=True)}


def _tune_stage(cfg, device, out, writer) -> float:
    """stage=tune: the whole rate grid of one hand-designed optimizer on the task per horizon,
    batched; the record in tune/summary.json. Returns the tuned loss at the first horizon."""
    from l2o_pipeline.baselines import LR_GRID
    from l2o_pipeline.tuning import tune_learning_rate, write_record

    ev, tu = cfg.evaluation, cfg.tuning
    optimizer = build_model(cfg)
    task = build_task(cfg.optimizee, cfg.data.dir, cfg.data.download, cfg.data.mnist_fallback,
                      device)
    lrs = [float(lr) for lr in tu.lrs] if tu.lrs is not None else list(LR_GRID)
    record = {"kind": "tuning", "optimizer": optimizer.name, "task": task_key(cfg.optimizee),
              "task_name": task.name, "protocol": tu.protocol,
              "protocol_settings": ({"coarse_runs": tu.coarse_runs, "top_k": tu.top_k}
                                    if tu.protocol == "coarse_to_fine" else {}),
              "lrs": lrs, "n_runs": ev.n_runs, "final_loss": ev.final_loss, "seed": cfg.seed,
              "evaluation_seed": ev.seed, "engine": ev.engine, "horizons": {}}
    for horizon in cfg.horizon.eval_steps:
        log.info("tuning %s on %s at %d steps: %d rates x %d runs (%s protocol)",
                 optimizer.name, task.name, horizon, len(lrs), ev.n_runs, tu.protocol)
        block = tune_learning_rate(task, optimizer, lrs, horizon, ev.n_runs, seed=ev.seed,
                                   final_loss=ev.final_loss, protocol=tu.protocol,
                                   coarse_runs=tu.coarse_runs, top_k=tu.top_k,
                                   engine=ev.engine, memory_budget_gb=ev.memory_budget_gb)
        record["horizons"][str(horizon)] = block
        log.info("tuned %s at %d steps: lr %.6g, final loss %.5g", optimizer.name, horizon,
                 block["tuned_lr"], block["tuned_loss"])
        writer.log_table(f"tune/final_loss_{horizon}", ["lr", "final_loss_mean",
                                                         "final_loss_std", "n_diverged"],
                         [[r["lr"], r["final_loss_mean"], r["final_loss_std"], r["n_diverged"]]
                          for r in block["table"]])
        writer.summary({f"tune/{horizon}/lr": block["tuned_lr"],
                        f"tune/{horizon}/final_loss": block["tuned_loss"]})
    write_record(out, record)
    return record["horizons"][str(cfg.horizon.eval_steps[0])]["tuned_loss"]


def _changed_inputs(before: dict | None, now: dict) -> str:
    """'' when a finished evaluation's recorded inputs equal the current ones, else what
    changed, e.g. "checkpoint_iteration: 150 -> 600"."""
    if before is None:
        return "no record of its inputs"
    return "; ".join(f"{key}: {before.get(key)} -> {value}" for key, value in now.items()
                     if before.get(key) != value)


def _resolve_baselines(cfg) -> dict[int, dict[str, tuple[float, str]]]:
    if cfg.stage in ("meta_train", "tune"):
        return {}
    key = task_key(cfg.optimizee)
    # Only "tuned" rates need the tuning sweep (a damaged cell of it is refused, by name).
    tuned = "tuned" in cfg.evaluation.baselines.values()
    tuning = scan_tuning(cfg.evaluation.tuning_dir) if tuned else {}
    table = {}
    for horizon in cfg.horizon.eval_steps:
        table[horizon] = {}
        for base, lr in cfg.evaluation.baselines.items():
            if lr is not None and base != cfg.optimizer.name:
                try:
                    table[horizon][base] = resolve_lr(base, lr, key, horizon,
                                                      tuning=tuning)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
    return table


def _meta_train_stage(cfg, device, out, config, writer, resumed, should_stop):
    torch.manual_seed(cfg.seed)  # meta-parameter init; task sampling has its own generator
    model = build_model(cfg).to(device)
    task, plain = build_training_task(cfg, device)
    opt = cfg.optimizer
    settings = meta_train_settings(cfg)
    log.info("meta-training %s on %s (%d coordinates) for %d iterations -> %s",
             opt.name, task.name, task.n_params, settings.n_iterations, out)
    result = meta_train(model, task, settings, out, seed=cfg.seed, variant=opt.name,
                        config=config, writer=writer, validation_task=plain,
                        should_stop=should_stop, resume_from=resumed)
    if not result.interrupted:
        log.info("meta-training done: %d iterations in %.1f s, %d non-finite skips; selected "
                 "iteration %s (%s = %.5g)", result.iterations, result.seconds,
                 result.nonfinite_skips, result.selection["best_iteration"],
                 result.selection["rule"], result.selection["best_score"])
        writer.summary({"meta/iterations": result.iterations,
                        "meta/seconds": result.seconds,
                        "meta/nonfinite_skips": result.nonfinite_skips,
                        "meta/best_iteration": result.selection["best_iteration"],
                        "meta/best_score": result.selection["best_score"]})
        if result.best_checkpoint is not None:
            writer.log_artifact(result.best_checkpoint, model_artifact_name(
                opt.name, config["logger"]["wandb"].get("group"), cfg.seed), "model",
                metadata=result.selection)
    return result


def _resolve_eval_checkpoint(cfg) -> tuple | None:
    """(model, payload) of the checkpoint a stage=evaluate run of a learned optimizer needs."""
    if cfg.stage != "evaluate" or cfg.optimizer.name not in LEARNED:
        return None
    ev = cfg.evaluation
    if ev.checkpoint is None:
        raise ConfigError(
            f"evaluation.checkpoint is not set: evaluating {cfg.optimizer.name} needs a "
            "meta-trained optimizer (a .pt file, a run folder or a packaged name). Produce "
            f"one with: l2o stage=meta_train optimizer={cfg.optimizer.name} ..., or use "
            "stage=both")
    try:
        path = resolve_checkpoint(ev.checkpoint, ev.checkpoint_iteration)
    except CheckpointError as exc:
        hint = f" Produce it with: {ev.produced_by}" if ev.produced_by else ""
        raise CheckpointError(f"{exc}.{hint}") from None
    # loaded once, here: the right model and a readable file, before any work
    model, payload = load_optimizer(path, expected_class=_family(cfg.optimizer.name))
    _adopt_checkpoint_hparams(cfg, payload)
    return model, payload


def _adopt_checkpoint_hparams(cfg, payload) -> None:
    """A checkpoint is evaluated as it was trained: its own variant and hyper-parameters win
    over config keys, and the config takes them, so that what is recorded is what runs. A key
    that said otherwise gets one warning."""
    opt = cfg.optimizer
    values = dict(payload["hparams"])
    if payload.get("variant") in LEARNED:
        values["name"] = payload["variant"]
    contradicted = [f"optimizer.{key}: {opt[key]} -> {value}" for key, value in values.items()
                    if key in opt and opt[key] is not None and opt[key] != value]
    if contradicted:
        log.warning("evaluating %s with its own hyper-parameters, not the config's (recorded "
                    "as such): %s", payload["path"], "; ".join(contradicted))
    with read_write(opt):
        for key, value in values.items():
            if key in opt:
                opt[key] = value


def _choice(group: str) -> str | None:
    """The option chosen for a config group (e.g. the experiment), when run through Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def _family(name: str) -> str:
    return "dmoptimizer" if name.startswith("dmoptimizer") else name


def _run_evaluation(cfg, task, optimizers, horizon):
    """The configured engine's paired evaluation (``evaluation.engine``)."""
    ev = cfg.evaluation
    if ev.engine == "sequential":
        return evaluate(task, optimizers, horizon, ev.n_runs, seed=ev.seed,
                        final_loss=ev.final_loss)
    return evaluate_batched(task, optimizers, horizon, ev.n_runs, seed=ev.seed,
                            final_loss=ev.final_loss, memory_budget_gb=ev.memory_budget_gb)


def _evaluate_stage(cfg, device, out, writer, checkpoint, baseline_lrs) -> float:
    from l2o_pipeline.plots import plot_loss_curves

    name = cfg.optimizer.name
    if name in LEARNED:
        # stage=both: this run's own checkpoint; stage=evaluate: the one loaded up front
        main, payload = (load_optimizer(checkpoint, expected_class=_family(name))
                         if isinstance(checkpoint, Path) else checkpoint)
        main = main.to(device)
        checkpoint = payload["path"]
        log.info("evaluating %s from %s (iteration %s)", name, checkpoint,
                 payload.get("iteration"))
    else:
        main = build_model(cfg)
    task = build_task(cfg.optimizee, cfg.data.dir, cfg.data.download, cfg.data.mnist_fallback,
                      device)
    key = task_key(cfg.optimizee)
    eval_dir = out / "eval"
    eval_dir.mkdir(exist_ok=True)
    dataset = getattr(task, "dataset", None)
    summary = {"task": key, "task_name": task.name, "n_runs": cfg.evaluation.n_runs,
               "final_loss": cfg.evaluation.final_loss, "optimizer": name,
               "experiment": _choice("experiment"), "seed": cfg.seed,
               "evaluation_seed": cfg.evaluation.seed, "diverged_rule": DIVERGED_RULE,
               "engine": cfg.evaluation.engine,
               "checkpoint": str(checkpoint) if checkpoint else None,
               "checkpoint_iteration": payload.get("iteration") if name in LEARNED else None,
               "optimizer_hparams": payload["hparams"] if name in LEARNED else None,
               "data_source": dataset.source if dataset is not None else None,
               "horizons": {}}
    headline, finished = math.nan, []
    for horizon in cfg.horizon.eval_steps:
        optimizers = {name: main}
        lrs = {name: getattr(main, "lr", None)}
        for base, (value, source) in baseline_lrs[horizon].items():
            optimizers[base] = HAND_DESIGNED[base](lr=value)
            lrs[base] = value
            log.info("baseline %s lr=%.6g (%s) at %d steps", base, value, source, horizon)
        start = time.perf_counter()
        results = _run_evaluation(cfg, task, optimizers, horizon)
        seconds = time.perf_counter() - start
        block = {}
        for opt_name, res in results.items():
            s = res.summary() | {"lr": lrs[opt_name],
                                 "final_losses": res.final_losses.tolist()}
            block[opt_name] = s
            log.info("%-10s %5d steps: final loss %.5g ± %.3g (%d of %d runs diverged)",
                     opt_name, horizon, s["final_loss_mean"], s["final_loss_std"],
                     s["n_diverged"], s["n_runs"])
        summary["horizons"][str(horizon)] = block | {"_seconds": seconds}
        curves = {k: r.curves for k, r in results.items()}
        save_torch(eval_dir / f"curves_{horizon}.pt", curves)
        finished.append((horizon, block, curves))
        if math.isnan(headline):
            headline = block[name]["final_loss_mean"]
    # The results first: nothing optional below (plots, W&B) can lose them.
    write_json(eval_dir / "summary.json", summary, indent=1)
    for horizon, block, curves in finished:
        title = f"{task.name}, {horizon} steps, {cfg.evaluation.n_runs} runs"
        try:
            png = plot_loss_curves(curves, eval_dir / f"loss_curves_{horizon}.png", title)
        except Exception as exc:  # a figure is optional; the summary is already written
            log.warning("could not plot the loss curves at %d steps (%s: %s); the results "
                        "are in %s", horizon, type(exc).__name__, exc, eval_dir)
            log.debug("plotting failed", exc_info=True)
        else:
            writer.log_image(f"eval/loss_curves_{horizon}", png)
        log_evaluation(writer, horizon, name, block, curves)
    return headline
