"""The report's rules: what "beats", "comparable", "fails" ... mean, in numbers and in words.

Comparisons of two optimizers are paired (:func:`l2o_pipeline.report.stats.paired`): A beats B
when the 95 % t-interval of the mean per-problem difference A − B lies below 0. The Wilcoxon
signed-rank p-value is reported beside it; the verdict is the interval's.
"""

from __future__ import annotations

import math

from l2o_pipeline.report.stats import CONFIDENCE, Paired

COMPARABLE = 0.10  # "comparable": at most 10 % worse than the reference
SIGNIFICANT = 0.10  # "significantly outperforms": better by more than 10 %
FAIL_RATIO = 2.0  # "fails": mean final loss >= 2x the best tuned traditional algorithm
DIVERGED_FRACTION = 0.10  # "fails": >= 10 % of the runs diverged
STALL_FRACTION = 0.95  # "cannot decrease the loss": final >= 95 % of the initial loss
RISE_RATIO = 2.0  # "rises dramatically": end of the curve >= 2x its minimum
NARROW_FACTOR = 4.0  # "narrow interval" of learning rates: b / a <= 4 (5 rates of the grid)
SMOOTH_FRACTION = 0.02  # moving-average window of the curve rules, as a share of the steps
MIN_PAIRS = 2  # a t-interval needs two differences

RULES: list[tuple[str, str]] = [
    ("paired difference", "run i of every optimizer evaluated with one `evaluation.seed` is "
                          "the same test problem (θ0 and minibatches); A − B is the mean over "
                          "the common problems of A's final loss minus B's (a learned "
                          "optimizer's loss on a problem: its mean over its meta-training "
                          f"seeds), with its {CONFIDENCE:.0%} Student-t confidence interval "
                          "and the two-sided Wilcoxon signed-rank p-value (scipy). Problems "
                          "where either final loss is not finite are left out and counted."),
    ("beats", f"A beats B when the {CONFIDENCE:.0%} CI of the mean paired difference A − B "
              "lies entirely below 0 (its upper end < 0), over at least "
              f"{MIN_PAIRS} pairs, and A has no more non-finite final losses than B. Without "
              "per-run final losses in the records the comparison is not run."),
    ("comparable", f"A is comparable with or better than B when the upper end of the "
                   f"{CONFIDENCE:.0%} CI of A − B is ≤ {COMPARABLE:.0%} of B's mean final "
                   "loss over the same problems (non-inferiority)."),
    ("significantly outperforms", f"A beats B by more than {SIGNIFICANT:.0%}: the upper end "
                                  f"of the CI of A − B is < −{SIGNIFICANT:.0%} of B's mean."),
    ("fails", f"an optimizer fails on a task when ≥ {DIVERGED_FRACTION:.0%} of its runs "
              "diverged (the evaluation's rule, each summary's diverged_rule: final loss "
              "non-finite or far above its initial loss), or its mean final loss is ≥ the "
              "mean initial "
              "loss (the step-1 loss of the same paired runs), or it is ≥ "
              f"{FAIL_RATIO:g}× the best tuned traditional algorithm's."),
    ("traditional algorithms", "the hand-designed optimizers evaluated on that task and "
                               "horizon, each at its tuned rate: the rate its tuning record "
                               "names, else the rate of lowest mean final loss among all the "
                               "cells that evaluated it, a rate with a diverged run counting "
                               "as +∞ (the pipeline's rule, `tuning.rate_loss`); the best of "
                               "them: the lowest mean."),
    ("cannot decrease the loss", f"mean final loss ≥ {STALL_FRACTION:g}× the mean initial "
                                 "loss."),
    ("keeps decreasing", "the mean loss curve averaged over the last 10 % of the steps is "
                         "below its average over the 10 % before."),
    ("rises dramatically", f"the mean loss over the last 10 % of the steps is ≥ "
                           f"{RISE_RATIO:g}× the minimum of the mean curve (smoothed over "
                           f"{SMOOTH_FRACTION:.0%} of the steps); N is the step of that "
                           "minimum."),
    ("narrow interval", "the rates of the √2 grid at which Adam beats RNNprop are one "
                        "contiguous run of the tested rates, with a tested rate on each side "
                        f"at which Adam does not, and b / a ≤ {NARROW_FACTOR:g} "
                        f"(≤ {round(2 * math.log2(NARROW_FACTOR)) + 1} rates of the grid)."),
    ("verdict", "**reproduced**: every required check passes; **not reproduced**: at least one "
                "required check fails; **not run**: no required check fails but some lack "
                "their runs. Checks marked (info) are shown but do not count."),
]


def _usable(p: Paired | None) -> bool:
    return p is not None and p.n >= MIN_PAIRS


def beats(p: Paired | None, margin: float = 0.0) -> bool | None:
    """Rule "beats" (with ``margin``: "by more than margin × B's mean"); None: not run."""
    if not _usable(p):
        return None
    if p.n_nonfinite_a > p.n_nonfinite_b:
        return False
    return bool(p.ci_high < -margin * p.ref_mean)


def comparable(p: Paired | None) -> bool | None:
    """Rule "comparable" (non-inferiority within :data:`COMPARABLE`); None: not run."""
    if not _usable(p):
        return None
    if p.n_nonfinite_a > p.n_nonfinite_b:
        return False
    return bool(p.ci_high <= COMPARABLE * p.ref_mean)


def fmt_paired(p: Paired | None) -> str:
    """``Δ −0.051 [−0.060, −0.042], Wilcoxon p 0.002, 100 pairs``."""
    if p is None:
        return "no paired runs"
    if not p.n:
        return "no pair with two finite final losses"
    text = (f"Δ {p.mean:+.3g} [{p.ci_low:+.3g}, {p.ci_high:+.3g}], Wilcoxon p "
            f"{p.p_wilcoxon:.2g}, {p.n} pairs")
    if p.n_nonfinite_a or p.n_nonfinite_b:
        text += f" (left out, non-finite: {p.n_nonfinite_a} vs {p.n_nonfinite_b})"
    return text
