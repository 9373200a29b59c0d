"""The entrypoint's plain function: ``run(cfg) -> float``, testable without ``@hydra.main``.

Which stages run, in which folder, and what is skipped or resumed: a finished cell (its DONE
record) is skipped, or evaluated again when what it evaluated changed; an interrupted
meta-training resumes from its saved state. The stages themselves are in
:mod:`l2o_pipeline.stages`, signal handling in :mod:`l2o_pipeline.signals`. Everything is
written under ``cfg.paths.output_dir``.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from l2o_pipeline import progress
from l2o_pipeline.config import validate_config
from l2o_pipeline.fingerprint import (
    check_run_folder,
    fingerprint,
    semantic_config,
    write_fingerprint,
)
from l2o_pipeline.meta import load_training_state
from l2o_pipeline.optimizers import kernels
from l2o_pipeline.records import (
    lock_run_folder,
    read_json_record,
    remove_leftover_tmp,
    write_json,
    write_text,
)
from l2o_pipeline.signals import stop_on_signals
from l2o_pipeline.stages import (  # noqa: F401  (build_model, config_dict: the API)
    build_model,
    config_dict,
    evaluate_stage,
    meta_train_stage,
    resolve_baselines,
    resolve_device,
    resolve_eval_checkpoint,
    tune_stage,
)

log = logging.getLogger(__name__)


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


HYDRA_RECORD = ".hydra"  # what Hydra itself would write there (hydra.output_subdir)


def write_hydra_record(out: Path, cfg: DictConfig) -> None:
    """The job's Hydra record, as Hydra writes it (config.yaml: the job's config unresolved;
    hydra.yaml; overrides.yaml: the job's overrides), when run by Hydra. The config sets
    ``hydra.output_subdir: null`` so that it is written here, after the fingerprint check."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = out / HYDRA_RECORD
    write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra_cfg}))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))


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
    baseline_lrs = resolve_baselines(cfg)
    checkpoint = resolve_eval_checkpoint(cfg)
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
    kernels.set_compile(cfg.compile)
    kernels.set_memory_saving(cfg.save_memory)
    config = config_dict(cfg)
    write_hydra_record(out, cfg)
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
                result = meta_train_stage(cfg, device, out, config, writer, resumed,
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
                metric = tune_stage(cfg, device, out, writer, fingerprint(semantic))
            if cfg.stage in ("evaluate", "both"):
                metric = evaluate_stage(cfg, device, out, writer, checkpoint, baseline_lrs)
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


def _changed_inputs(before: dict | None, now: dict) -> str:
    """'' when a finished evaluation's recorded inputs equal the current ones, else what
    changed, e.g. "checkpoint_iteration: 150 -> 600"."""
    if before is None:
        return "no record of its inputs"
    return "; ".join(f"{key}: {before.get(key)} -> {value}" for key, value in now.items()
                     if before.get(key) != value)
