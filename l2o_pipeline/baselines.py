"""Tuned learning rates of the hand-designed baselines, per task and horizon.

A tuning sweep (``sweeps/tune_*.yaml``, ``stage=tune``) records the best rate of the √2 grid
per cell (``l2o_pipeline.tuning``); where none was recorded, the rates of the official RNNprop
code (spec §4) are used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from l2o_pipeline.records import read_json_record

# The √2 grid of spec §4: 2^(-k/2) for k = 0..26 (1.0 down to ~1.2e-4).
LR_GRID = tuple(2.0 ** (-k / 2) for k in range(0, 27))

# Official code's best traditional optimizer per test task (RC test_list.py, spec §4).
PAPER_TUNED_LRS: dict[str, dict[str, float]] = {
    "mnist-mlp-sigmoid-l1@100": {"adam": 2**-5},
    "mnist-mlp-sigmoid-l1@2000": {"adam": 2**-6},
    "mnist-mlp-sigmoid-l1@10000": {"adam": 2**-7},
    "mnist-mlp-relu-l1@100": {"adam": 2**-5.5},
    "mnist-mlp-elu-l1@100": {"adam": 2**-5.5},
    "mnist-mlp-tanh-l1@100": {"adam": 2**-6.5},
    **{f"mnist-mlp-sigmoid-l{n}@100": {"adam": 2**-5} for n in (2, 3)},
    **{f"mnist-mlp-sigmoid-l{n}@100": {"adam": 2**-6} for n in (4, 5, 6)},
    "mnist-mlp-sigmoid-l7@100": {"adam": 2**-6.5},
    "mnist-mlp-sigmoid-l8@100": {"adam": 2**-11},
    **{f"mnist-mlp-sigmoid-l{n}@100": {"adam": 2**-10.5} for n in (9, 10)},
    "mnist-cnn-c-c-p-f@100": {"adam": 2**-6},
    "cifar10-cnn-c-c-p-f@100": {"adam": 2**-7},
    "mnist-cnn-c-c-p-c-c-p-f-f@100": {"adam": 2**-7.5},
    "sine_lstm-l1-noise0.1@100": {"adagrad": 0.5},
    "sine_lstm-l2-noise0.1@100": {"adam": 2**-5.5},
    "sine_lstm-l1-noise0.01@100": {"adam": 2**-5},
}


def task_key(optimizee: Mapping) -> str:
    """A stable name for an optimizee config, used to file tuned learning rates: its option's
    ``tuning_key`` (``l2o_pipeline.registry``), else the option's name."""
    from l2o_pipeline.registry import load_builtins, optimizees

    load_builtins()
    name = optimizee["name"]
    entry = optimizees[name] if name in optimizees else None
    rule = entry.extra.get("tuning_key") if entry is not None else None
    return rule(optimizee) if rule is not None else name


def scan_tuning(tuning_dir: str | Path | None) -> dict[str, dict[str, dict]]:
    """Best learning rate per ``task@horizon`` and optimizer below a tuning sweep's folder.

    A tuning cell (``stage=tune``) names its tuned rate per horizon in its record,
    ``tune/summary.json`` (``l2o_pipeline.tuning``). Older cells, one ``stage=evaluate`` run of
    one optimizer at one rate each, are read too: their best rate by mean final loss. Where
    both exist, the lower loss wins. Reading the cells (rather than a table that each cell
    appends to) keeps concurrent SLURM jobs from racing on one file.
    """
    from l2o_pipeline.tuning import rate_loss, read_tuning_records

    best: dict[str, dict[str, dict]] = {}

    def offer(key: str, name: str, lr: float, loss: float, cell: Path, protocol: str) -> None:
        entry = best.setdefault(key, {}).get(name)
        if entry is None or loss < entry["loss"]:
            best[key][name] = {"lr": lr, "loss": loss, "cell": str(cell), "protocol": protocol}

    for cell, record in read_tuning_records(tuning_dir):
        for horizon, block in record.get("horizons", {}).items():
            tuned = next(r for r in block["table"] if r["lr"] == block["tuned_lr"])
            offer(f"{record['task']}@{horizon}", record["optimizer"], block["tuned_lr"],
                  rate_loss(tuned), cell, record.get("protocol", "full"))
    if tuning_dir is None or not Path(tuning_dir).is_dir():
        return best
    for path in sorted(Path(tuning_dir).glob("**/eval/summary.json")):
        # Written atomically: an unreadable one is damaged, not being written; refused rather
        # than skipped, since skipping it could silently change the best rate.
        summary = read_json_record(path, "a tuning cell's evaluation summary",
                                   f"rerun that cell with skip_if_done=false, or delete "
                                   f"{path.parents[1]}")
        name = summary.get("optimizer")
        for horizon, block in summary.get("horizons", {}).items():
            result = block.get(name) if name else None
            if not result or result.get("lr") is None:
                continue
            offer(f"{summary['task']}@{horizon}", name, result["lr"], rate_loss(result),
                  path.parents[1], "one cell per rate")
    return best


def resolve_lr(optimizer: str, lr, key: str, horizon: int, tuning_dir=None,
               tuning: dict | None = None) -> tuple[float, str]:
    """A number stays; "tuned" is looked up: the tuning sweep's best, then the official code's."""
    if lr != "tuned":
        return float(lr), "given"
    full = f"{key}@{horizon}"
    tuning = scan_tuning(tuning_dir) if tuning is None else tuning
    entry = tuning.get(full, {}).get(optimizer)
    if entry is not None and math.isfinite(entry["loss"]):
        return float(entry["lr"]), f"tuned in {entry['cell']} ({entry['protocol']})"
    paper = PAPER_TUNED_LRS.get(full.replace("synthetic-", ""), {}).get(optimizer)
    if paper is not None:
        return paper, "official code"
    raise ValueError(
        f"evaluation.baselines.{optimizer}=tuned: no tuned learning rate for task {full!r}. "
        f"Run its tuning sweep first (one of sweeps/tune_*.yaml, e.g. l2o --config-name "
        f"tune_activations), or give a number, e.g. "
        f"evaluation.baselines.{optimizer}=0.01")
