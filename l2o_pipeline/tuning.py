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

A cell stopped before its record is written resumes from its last finished pass (a horizon's
coarse or full pass): each is saved in ``<cell>/tune/passes.json`` as it ends
(:class:`SavedPasses`), keyed by the folder's fingerprint and what the pass evaluates, and
removed with the record.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from l2o_pipeline.batched import DEFAULT_MEMORY_BUDGET_GB, evaluate_batched
from l2o_pipeline.evaluate import EvalResult, evaluate
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers.hand_designed import HandDesigned
from l2o_pipeline.records import TUNING_PASSES, TUNING_RECORD, read_json_record, write_json

log = logging.getLogger(__name__)
PROTOCOLS = ("full", "coarse_to_fine")


class SavedPasses:
    """The finished passes of an unfinished tuning cell, so that a stopped cell (SIGTERM at a
    grid's deadline, preemption) resumes from its last finished pass. A pass is found again
    only under the same key: the folder's fingerprint (what it computes) and the pass's own
    horizon, rates, run count, evaluation seed and final-loss rule."""

    def __init__(self, cell: str | Path, fingerprint: str):
        self.path, self.fingerprint = Path(cell) / TUNING_PASSES, fingerprint
        self.passes: dict = {}
        if self.path.is_file():
            try:
                self.passes = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:  # written atomically: damaged, so start over
                log.warning("%s is unreadable (%s); its passes run again", self.path, exc)

    def key(self, **what) -> str:
        return json.dumps({"fingerprint": self.fingerprint, **what}, sort_keys=True)

    def get(self, key: str) -> dict | None:
        return self.passes.get(key)

    def put(self, key: str, rows: list[dict], seconds: float) -> None:
        self.passes[key] = {"rows": rows, "seconds": seconds}
        write_json(self.path, self.passes)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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
                    memory_budget_gb: float, saved: SavedPasses | None
                    ) -> tuple[list[dict], float]:
    """(one row per rate, seconds the pass took: when it ran before, as recorded then)."""
    key = saved and saved.key(horizon=n_steps, lrs=list(lrs), n_runs=n_runs, seed=seed,
                              final_loss=final_loss)
    if saved and (hit := saved.get(key)):
        log.info("%s at %d steps, %d rates x %d runs: resumed from %s", optimizer.name,
                 n_steps, len(lrs), n_runs, saved.path)
        return hit["rows"], hit["seconds"]
    start = time.perf_counter()
    grid = {f"{optimizer.name}@{lr:.10g}": optimizer.with_lr(lr) for lr in lrs}
    desc = f"tune {optimizer.name} ({len(lrs)} rates x {n_runs} runs) {n_steps} steps"
    if engine == "sequential":
        results = evaluate(task, grid, n_steps, n_runs, seed=seed, final_loss=final_loss,
                           desc=desc)
    else:
        results = evaluate_batched(task, grid, n_steps, n_runs, seed=seed,
                                   final_loss=final_loss, memory_budget_gb=memory_budget_gb,
                                   desc=desc)
    rows = [_row(lr, results[name]) for lr, name in zip(lrs, grid)]
    seconds = time.perf_counter() - start
    if saved:
        saved.put(key, rows, seconds)
    return rows, seconds


def tune_learning_rate(task: Task, optimizer: HandDesigned, lrs: Sequence[float], n_steps: int,
                       n_runs: int, seed: int = 0, final_loss: str = "average_over_seen",
                       protocol: str = "full", coarse_runs: int = 10, top_k: int = 3,
                       engine: str = "batched",
                       memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
                       saved: SavedPasses | None = None) -> dict:
    """One horizon's block of the tuning record: ``tuned_lr``, ``tuned_loss``, ``table`` (one
    row per rate evaluated over all runs, with its per-run final losses) and, for the coarse
    protocol, ``coarse_table``; ``_seconds``, what its passes took. ``saved``: the passes
    finished before (taken as they are) and where this call's are saved."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown tuning protocol {protocol!r}; valid: {list(PROTOCOLS)}")
    if not lrs:
        raise ValueError("tuning needs at least one learning rate")
    coarse = protocol == "coarse_to_fine"
    if coarse and not (0 < coarse_runs < n_runs and 0 < top_k < len(lrs)):
        raise ValueError(f"the coarse_to_fine protocol needs 0 < coarse_runs < n_runs and "
                         f"0 < top_k < the number of rates, got coarse_runs={coarse_runs}, "
                         f"n_runs={n_runs}, top_k={top_k}, {len(lrs)} rates")
    args = (n_steps, n_runs, seed, final_loss, engine, memory_budget_gb, saved)
    block: dict = {}
    seconds = 0.0
    if coarse:
        rows, seconds = _evaluate_rates(task, optimizer, lrs, n_steps, coarse_runs, *args[2:])
        best = sorted(range(len(rows)), key=lambda i: rate_loss(rows[i]))[:top_k]
        block["coarse_table"] = rows
        lrs = [lrs[i] for i in sorted(best)]
    table, fine_seconds = _evaluate_rates(task, optimizer, lrs, *args)
    best = best_rate(table)
    return {"tuned_lr": best["lr"], "tuned_loss": best["final_loss_mean"], "table": table,
            **block, "_seconds": seconds + fine_seconds}


def write_record(cell: str | Path, record: dict) -> Path:
    """Write a cell's tuning record atomically."""
    return write_json(Path(cell) / TUNING_RECORD, record, indent=1)


def read_tuning_records(root: str | Path | None) -> Iterator[tuple[Path, dict]]:
    """(cell, record) of every readable tuning record below ``root``; a record being written
    right now or not a tuning record is skipped."""
    if root is None or not Path(root).is_dir():
        return
    for path in sorted(Path(root).glob(f"**/{TUNING_RECORD.as_posix()}")):
        # Written atomically: an unreadable one is damaged, not being written; refused rather
        # than skipped, since skipping it could silently change the tuned rate.
        record = read_json_record(path, "a tuning record", f"rerun that cell with "
                                  f"skip_if_done=false, or delete {path.parents[1]}")
        if isinstance(record, dict) and record.get("kind") == "tuning":
            yield path.parents[1], record
