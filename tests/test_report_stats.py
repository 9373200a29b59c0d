"""The report's paired statistics against a hand computation, and the rules built on them."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from l2o_pipeline.report import Measurement, paired, pool
from l2o_pipeline.report.rules import beats, comparable

T_975_DF4 = 2.7764451051977987  # Student-t 97.5 % quantile, 4 degrees of freedom (tables)


def measurement(name: str, finals, seed=None, kind="learned", eval_seed=1000) -> Measurement:
    x = np.array([np.nan if v is None else v for v in finals], dtype=float)
    kept = x[np.isfinite(x)]
    return Measurement(kind, name, "task", 100, float(kept.mean()),
                       float(kept.std(ddof=1)) if len(kept) > 1 else 0.0,
                       len(x), int((~np.isfinite(x)).sum()), None, seed, None, Path("."), "s",
                       None, name, finals=list(finals), eval_seed=eval_seed,
                       mode="average_over_seen")


def exact_wilcoxon(d: np.ndarray) -> float:
    """Two-sided exact signed-rank p-value by enumerating every sign pattern (no ties)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w = ranks[d > 0].sum()
    null = [sum(r for r, s in zip(ranks, signs) if s)
            for signs in itertools.product([0, 1], repeat=len(d))]
    null = np.array(null)
    return min(1.0, 2 * min((null <= w).mean(), (null >= w).mean()))


A = [0.31, 0.27, 0.35, 0.22, 0.30]
B = [0.36, 0.30, 0.34, 0.29, 0.38]


def test_paired_difference_ci_and_wilcoxon_match_the_formulas():
    p = paired(pool([measurement("a", A)]), pool([measurement("b", B, kind="hand")]))
    d = np.array(A) - np.array(B)
    half = T_975_DF4 * d.std(ddof=1) / math.sqrt(len(d))
    assert p.n == 5 and p.mean == pytest.approx(d.mean())
    assert (p.ci_low, p.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert p.p_wilcoxon == pytest.approx(exact_wilcoxon(d))
    assert p.ref_mean == pytest.approx(np.mean(B))
    # the interval just reaches above 0 (mean −0.044, half-width 0.0444): not "beats"
    assert d.mean() + half > 0 and beats(p) is False


def test_seeds_are_averaged_per_problem_and_nonfinite_pairs_are_left_out():
    seed0 = [0.2, 0.4, 0.3, None]
    seed1 = [0.4, 0.2, 0.5, 0.1]
    base = [0.5, 0.6, 0.45, 0.2]
    a = pool([measurement("a", seed0, seed=0), measurement("a", seed1, seed=1)])
    p = paired(a, pool([measurement("b", base, kind="hand")]))
    d = (np.array([0.2, 0.4, 0.3]) + np.array([0.4, 0.2, 0.5])) / 2 - np.array(base[:3])
    assert p.n == 3 and p.mean == pytest.approx(d.mean())
    assert (p.n_nonfinite_a, p.n_nonfinite_b) == (1, 0)
    assert beats(p) is False  # more non-finite runs than B: never "beats"
    # another evaluation seed: other test problems, no pairs
    other = pool([measurement("b", base, kind="hand", eval_seed=7)])
    assert paired(a, other) is None and beats(paired(a, other)) is None


def test_rules_beats_and_comparable():
    b = pool([measurement("b", B, kind="hand")])
    clearly = pool([measurement("a", [v - 0.1 for v in B])])
    p = paired(clearly, b)
    assert beats(p) is True and comparable(p) is True
    # 0.1 below B's mean of 0.334: by more than 20 % of it (0.067), not by 40 % (0.134)
    assert beats(p, margin=0.2) is True and beats(p, margin=0.4) is False
    slightly_worse = pool([measurement("a", [v + 0.01 for v in B])])
    p = paired(slightly_worse, b)
    assert beats(p) is False and comparable(p) is True  # within 10 % of B
    much_worse = pool([measurement("a", [v * 1.5 for v in B])])
    assert comparable(paired(much_worse, b)) is False
    single = paired(pool([measurement("a", [0.1])]), pool([measurement("b", [0.2])]))
    assert single.n == 1 and beats(single) is None  # one pair: no interval
