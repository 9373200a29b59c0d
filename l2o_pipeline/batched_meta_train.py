"""Meta-train several experiments × seeds in one process, batched (``meta.batched_k``).

    python -m l2o_pipeline.batched_meta_train --experiments rnnprop,rnnprop_no_rs,rnnprop_no_cc \\
        --seeds 0,1,2 --out runs/batched [--time-budget-s 600] [-- device=cuda debug=default ...]

Each (experiment, seed) is composed as ``l2o experiment=<e> seed=<s> <overrides>`` would
compose it (W&B off: ``logger=none``, JSONL metrics only), and written to
``<out>/<experiment>/seed_<s>/``: ``config_resolved.yaml``, ``metrics.jsonl`` and what
``meta_train`` writes (checkpoints, ``best.pt``, ``final.pt``, resumable ``state.pt``), so
``l2o stage=evaluate evaluation.checkpoint=<that folder>`` evaluates it. These are not the
grid's cells (no fingerprint, no DONE record). Jobs that share an architecture run as one
batch; the batches run one after another. ``--time-budget-s``: each batch gets an equal share
of what is left of the budget and stops at an iteration boundary once its share is spent (the
states are saved; rerunning continues).
``<out>/batched_summary.json`` records what each job did.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from l2o_pipeline.meta.batched_k import MetaTrainJob, meta_train_batched
from l2o_pipeline.records import write_json, write_text

log = logging.getLogger(__name__)


def compose_job_config(experiment: str, seed: int, overrides: list[str], out: Path):
    """The config ``l2o experiment=<experiment> seed=<seed> <overrides>`` would run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from l2o_pipeline.config import register_configs, validate_config
    from l2o_pipeline.main import CONFIG_DIR

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=["logger=none", "stage=meta_train",
                                           f"experiment={experiment}", f"seed={seed}",
                                           *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    validate_config(cfg)
    return cfg


def build_jobs(experiments: list[str], seeds: list[int], overrides: list[str], out: Path):
    """One job per (experiment, seed); runs of one experiment share their task object (its
    instances then batch as one task), and the datasets are read once."""
    from l2o_pipeline.config import meta_train_settings
    from l2o_pipeline.stages import (
        build_model,
        build_training_task,
        config_dict,
        resolve_device,
    )

    jobs, tasks = [], {}
    for experiment in experiments:
        for seed in seeds:
            folder = out / experiment / f"seed_{seed}"
            cfg = compose_job_config(experiment, seed, overrides, folder)
            device = resolve_device(cfg.device)
            key = OmegaConf.to_yaml({k: cfg[k] for k in ("optimizee", "tricks", "data",
                                                         "device")})
            if key not in tasks:
                tasks[key] = build_training_task(cfg, device)
            task, plain = tasks[key]
            torch.manual_seed(cfg.seed)  # the meta-parameter init, as meta_train_stage
            model = build_model(cfg).to(device)
            job = MetaTrainJob(model, task, meta_train_settings(cfg), folder, seed=cfg.seed,
                               variant=cfg.optimizer.name, config=config_dict(cfg),
                               validation_task=plain)
            jobs.append((experiment, cfg, job))
    return jobs


def architecture(job: MetaTrainJob) -> tuple:
    """What jobs must share to run as one batch."""
    return type(job.model).__name__, repr(sorted(job.model.hparams().items())), \
        job.settings.unroll


def run_batched(experiments: list[str], seeds: list[int], out: str | Path,
                overrides: list[str] = (), time_budget_s: float | None = None,
                progress: bool | None = None) -> list[dict]:
    """Meta-train every (experiment, seed), batched per architecture; returns their records
    (also written to ``<out>/batched_summary.json``)."""
    from l2o_pipeline.optimizers import kernels
    from l2o_pipeline.tracking import make_writer

    out = Path(out)
    jobs = build_jobs(experiments, seeds, list(overrides), out)  # every config checked first
    cfg0 = jobs[0][1]
    if cfg0.threads:
        torch.set_num_threads(int(cfg0.threads))
    kernels.set_compile(cfg0.compile)
    kernels.set_memory_saving(cfg0.save_memory)
    for _, _, job in jobs:
        folder = Path(job.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "config_resolved.yaml", OmegaConf.to_yaml(job.config))
        job.writer = make_writer(folder, None, job.config)
    end = None if time_budget_s is None else time.perf_counter() + time_budget_s
    groups: dict[tuple, list] = {}
    for entry in jobs:
        groups.setdefault(architecture(entry[2]), []).append(entry)
    records = []
    for g, members in enumerate(groups.values()):
        # each batch gets an equal share of what is left of the budget
        deadline = None if end is None else time.perf_counter() + (
            end - time.perf_counter()) / (len(groups) - g)
        log.info("batched meta-training of %d jobs: %s", len(members),
                 ", ".join(f"{e}/seed_{c.seed}" for e, c, _ in members))
        start = time.perf_counter()
        try:
            results = meta_train_batched(
                [job for _, _, job in members], progress=progress,
                should_stop=lambda d=deadline: d is not None and time.perf_counter() > d)
        finally:
            for _, _, job in members:
                job.writer.close()
        seconds = time.perf_counter() - start
        for (name, cfg, job), result in zip(members, results):
            records.append({
                "experiment": name, "seed": cfg.seed, "folder": str(job.output_dir),
                "optimizer": cfg.optimizer.name, "batch_size_k": len(members),
                "iterations": result.iterations, "interrupted": result.interrupted,
                "nonfinite_skips": result.nonfinite_skips,
                "last_loss": result.losses[-1] if result.losses else None,
                "selection": result.selection, "batch_seconds": round(seconds, 2),
                "device": str(cfg.device)})
    write_json(out / "batched_summary.json", {"jobs": records}, indent=1)
    return records


def main(argv: list[str] | None = None) -> int:
    from l2o_pipeline.errors import USER_ERROR_EXIT, user_error_message

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", required=True,
                        help="comma-separated experiment names (conf/experiment)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="stop at an iteration boundary after this many seconds")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for l2o")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    try:
        records = run_batched(args.experiments.split(","), seeds, args.out, args.overrides,
                              args.time_budget_s)
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT
    for r in records:
        print(f"{r['experiment']}/seed_{r['seed']}: {r['iterations']} iterations "
              f"(K={r['batch_size_k']}), last loss {r['last_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
