"""Measurements, their pooling over runs and seeds, and paired comparisons.

Every evaluation is paired: run ``i`` of every optimizer in a cell starts from the same θ0 and
sees the same minibatches, drawn from (``evaluation.seed``, ``i``) alone, so run ``i`` is the
same test problem in every cell with that evaluation seed. A comparison of A with B is made on
the per-problem differences of their final losses (:func:`paired`): their mean with a 95 %
Student-t confidence interval, and the two-sided Wilcoxon signed-rank test (scipy).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95


@dataclass
class Measurement:
    """One optimizer's runs in one evaluation cell at one horizon."""

    kind: str  # "learned" | "hand"
    name: str  # the experiment or cell (learned) or the optimizer (hand-designed)
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
    # Per-run final losses (None: not finite) as the record keeps them; None for a record
    # written before they were kept. Run i is problem (eval_seed, mode, i).
    finals: list | None = None
    eval_seed: int | None = None
    mode: str | None = None
    where: str = ""  # the cell's overrides (what makes it that cell)
    # every cell that ran these same runs (this one and the duplicates counted once)
    also_in: set = field(default_factory=set)

    @property
    def n_finite(self) -> int:
        return max(self.n_runs - self.n_diverged, 0) if math.isfinite(self.mean) else 0

    def problems(self) -> dict[tuple, float]:
        if self.finals is None:
            return {}
        return {(self.eval_seed, self.mode, i): math.nan if v is None else float(v)
                for i, v in enumerate(self.finals)}


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
    # problem -> final loss, averaged over the meta-training seeds that ran it
    per_problem: dict = field(repr=False, default_factory=dict)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def to_json(self) -> dict:
        cells = sorted({rel(m.cell, self.root) for m in self.measurements})
        return {"optimizer": self.name, "kind": self.kind, "mean": self.mean, "std": self.std,
                "n_runs": self.n_runs, "n_diverged": self.n_diverged, "n_seeds": self.n_seeds,
                "seeds": self.seeds, "lr": self.lr, "per_seed_mean": self.per_seed,
                "cells": cells}


def rel(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def _pool_moments(ms) -> tuple[float, float, int]:
    # The exact moments of the union from each part's mean, std and count: a part's mean
    # leaves out its diverged runs (evaluate.DIVERGED_RULE), which its per-run losses alone
    # cannot tell (the rule needs each run's initial loss).
    fin = [m for m in ms if m.n_finite > 0]
    n = sum(m.n_finite for m in fin)
    if not n:
        return math.nan, math.nan, 0
    mean = sum(m.n_finite * m.mean for m in fin) / n
    ss = sum((m.n_finite - 1) * (m.std if math.isfinite(m.std) else 0.0) ** 2
             + m.n_finite * (m.mean - mean) ** 2 for m in fin)
    return mean, math.sqrt(ss / (n - 1)) if n > 1 else 0.0, n


def _per_problem(ms) -> dict[tuple, float]:
    """Problem -> its final loss averaged over the seeds that ran it (non-finite if any)."""
    runs: dict[tuple, list[float]] = defaultdict(list)
    for m in ms:
        for k, v in m.problems().items():
            runs[k].append(v)
    return {k: float(np.mean(v)) for k, v in sorted(runs.items(), key=lambda kv: str(kv[0]))}


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
                lrs.pop() if len(lrs) == 1 else None, per_seed, list(ms), root,
                _per_problem(ms))


@dataclass(frozen=True)
class Paired:
    """A − B over their common test problems: the mean difference of the final losses with
    its 95 % t-interval, and the two-sided Wilcoxon signed-rank p-value."""

    n: int  # problems where both final losses are finite (the sample)
    mean: float
    ci_low: float
    ci_high: float
    p_wilcoxon: float
    ref_mean: float  # B's mean final loss over the same problems
    n_nonfinite_a: int  # common problems where A's final loss is not finite (left out)
    n_nonfinite_b: int

    def to_json(self) -> dict:
        return {"n_pairs": self.n, "mean_difference": self.mean, "ci95": [self.ci_low,
                                                                          self.ci_high],
                "ci": "student-t", "p_wilcoxon": self.p_wilcoxon, "reference_mean": self.ref_mean,
                "n_nonfinite_a": self.n_nonfinite_a, "n_nonfinite_b": self.n_nonfinite_b}


def t_interval(d: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """mean ± t_{(1+c)/2, n−1} · s / √n; NaN bounds with fewer than 2 values."""
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    half = sps.t.ppf((1 + confidence) / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``d``; 1 when every difference is 0."""
    if len(d) == 0:
        return math.nan
    if not np.any(d):
        return 1.0
    return float(sps.wilcoxon(d).pvalue)


def paired(a: Stat | None, b: Stat | None) -> Paired | None:
    """A against B on the problems both ran; None when they share none (a record without
    per-run final losses, or other evaluation seeds)."""
    if a is None or b is None:
        return None
    common = [k for k in a.per_problem if k in b.per_problem]
    if not common:
        return None
    x = np.array([a.per_problem[k] for k in common])
    y = np.array([b.per_problem[k] for k in common])
    both = np.isfinite(x) & np.isfinite(y)
    d = x[both] - y[both]
    low, high = t_interval(d)
    return Paired(int(both.sum()), float(d.mean()) if len(d) else math.nan, low, high,
                  wilcoxon_p(d), float(y[both].mean()) if len(d) else math.nan,
                  int((~np.isfinite(x)).sum()), int((~np.isfinite(y)).sum()))
