"""Tuning a hand-designed optimizer's learning rate: the whole grid in one batched evaluation.

A tuning cell is one (optimizer, task, horizons) process. Every rate of the grid (the √2 grid
of spec §4 unless ``tuning.lrs`` says otherwise) is evaluated over the same paired runs, and
one record, ``<cell>/tune/summary.json``, holds per horizon the tuned rate, the full
loss-vs-rate table and every rate's per-run final losses. The "tuned" lookup
(``baselines.scan_tuning``) and the report read it (``read_tuning_records``).

Protocols (``tuning.protocol``):

- ``full`` (the paper's, the default): every rate over all ``evaluation.n_runs`` runs.
- ``coarse_to_fine``: every rate over the first ``tuning.coarse_runs`` runs, then the
  ``tuning.top_k`` rates of lowest mean final loss in that pass over all runs; the tuned rate
  is the best of those. Runs are seeded by (evaluation.seed, run) alone, so the coarse runs
  are the first runs of the full pass, not other problems. The record keeps both tables.

Either way the tuned rate is the rate of lowest mean final loss among the rates evaluated over
all runs, a non-finite mean (a diverged run) counting as +∞ (:func:`best_rate`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from l2o_pipeline.batched import DEFAULT_MEMORY_BUDGET_GB, evaluate_batched
from l2o_pipeline.evaluate import EvalResult, evaluate
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers.hand_designed import HandDesigned
from l2o_pipeline.records import read_json_record, write_json

PROTOCOLS = ("full", "coarse_to_fine")
RECORD = Path("tune") / "summary.json"  # a tuning cell's record, relative to the cell


def _row(lr: float, result: EvalResult) -> dict:
    return {"lr": lr, **result.summary(), "final_losses": result.final_losses.tolist()}


def rate_loss(row: dict) -> float:
    """What a rate is tuned by: its mean final loss, or +∞ when the mean is not finite or any
    run diverged (the mean leaves those runs out, so it would favour an unstable rate)."""
    loss = row["final_loss_mean"]
    if row.get("n_diverged") or loss is None or not math.isfinite(loss):
        return math.inf
    return loss


def best_rate(rows: Sequence[dict]) -> dict:
    """The row of lowest :func:`rate_loss` (the first on ties)."""
    return min(rows, key=rate_loss)


def _evaluate_rates(task: Task, optimizer: HandDesigned, lrs: Sequence[float], n_steps: int,
                    n_runs: int, seed: int, final_loss: str, engine: str,
                    memory_budget_gb: float) -> list[dict]:
    grid = {f"{optimizer.name}@{lr:.10g}": optimizer.with_lr(lr) for lr in lrs}
    desc = f"tune {optimizer.name} ({len(lrs)} rates x {n_runs} runs) {n_steps} steps"
    if engine == "sequential":
        results = evaluate(task, grid, n_steps, n_runs, seed=seed, final_loss=final_loss,
                           desc=desc)
    else:
        results = evaluate_batched(task, grid, n_steps, n_runs, seed=seed,
                                   final_loss=final_loss, memory_budget_gb=memory_budget_gb,
                                   desc=desc)
    return [_row(lr, results[key]) for lr, key in zip(lrs, grid)]


def tune_learning_rate(task: Task, optimizer: HandDesigned, lrs: Sequence[float], n_steps: int,
                       n_runs: int, seed: int = 0, final_loss: str = "average_over_seen",
                       protocol: str = "full", coarse_runs: int = 10, top_k: int = 3,
                       engine: str = "batched",
                       memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> dict:
    """One horizon's block of the tuning record: ``tuned_lr``, ``tuned_loss``, ``table`` (one
    row per rate evaluated over all runs, with its per-run final losses) and, for the coarse
    protocol, ``coarse_table``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown tuning protocol {protocol!r}; valid: {list(PROTOCOLS)}")
    if not lrs:
        raise ValueError("tuning needs at least one learning rate")
    coarse = protocol == "coarse_to_fine"
    if coarse and not (0 < coarse_runs < n_runs and 0 < top_k < len(lrs)):
        raise ValueError(f"the coarse_to_fine protocol needs 0 < coarse_runs < n_runs and "
                         f"0 < top_k < the number of rates, got coarse_runs={coarse_runs}, "
                         f"n_runs={n_runs}, top_k={top_k}, {len(lrs)} rates")
    args = (n_steps, n_runs, seed, final_loss, engine, memory_budget_gb)
    start = time.perf_counter()
    block: dict = {}
    if coarse:
        rows = _evaluate_rates(task, optimizer, lrs, n_steps, coarse_runs, *args[2:])
        best = sorted(range(len(rows)), key=lambda i: rate_loss(rows[i]))[:top_k]
        block["coarse_table"] = rows
        table = _evaluate_rates(task, optimizer, [lrs[i] for i in sorted(best)], *args)
    else:
        table = _evaluate_rates(task, optimizer, lrs, *args)
    best = best_rate(table)
    return {"tuned_lr": best["lr"], "tuned_loss": best["final_loss_mean"], "table": table,
            **block, "_seconds": time.perf_counter() - start}


def write_record(cell: str | Path, record: dict) -> Path:
    """Write a cell's tuning record atomically."""
    return write_json(Path(cell) / RECORD, record, indent=1)


def read_tuning_records(root: str | Path | None) -> Iterator[tuple[Path, dict]]:
    """(cell, record) of every readable tuning record below ``root``; a record being written
    right now or not a tuning record is skipped."""
    if root is None or not Path(root).is_dir():
        return
    for path in sorted(Path(root).glob(f"**/{RECORD.as_posix()}")):
        # Written atomically: an unreadable one is damaged, not being written; refused rather
        # than skipped, since skipping it could silently change the tuned rate.
        record = read_json_record(path, "a tuning record", f"rerun that cell with "
                                  f"skip_if_done=false, or delete {path.parents[1]}")
        if isinstance(record, dict) and record.get("kind") == "tuning":
            yield path.parents[1], record
