"""The checks a claim is made of: each holds the numbers behind it and passes, fails, or was
not run (its runs, or their per-run final losses, are missing). Comparisons of two optimizers
follow :mod:`l2o_pipeline.report.rules` on paired differences.

The index passed in (:class:`l2o_pipeline.report.index.RunIndex`) answers ``learned``,
``tuned``, ``baselines``, ``hand_by_lr``, ``initial_loss``, ``mean_curve``,
``ckpt_iterations`` and ``tasks_of``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from l2o_pipeline.report.rules import (
    COMPARABLE,
    DIVERGED_FRACTION,
    FAIL_RATIO,
    NARROW_FACTOR,
    RISE_RATIO,
    SMOOTH_FRACTION,
    beats,
    comparable,
    fmt_paired,
)
from l2o_pipeline.report.stats import paired
from l2o_pipeline.report.style import HAND, fmt_lr, label


def num(stat) -> str:
    """One stat in a check's text: the mean, with the rate of a hand-designed optimizer."""
    if stat is None:
        return "—"
    text = f"{stat.mean:.4g}" if math.isfinite(stat.mean) else "diverged"
    if stat.n_diverged:
        text += f" ({stat.n_diverged}/{stat.n_runs} diverged)"
    if getattr(stat, "kind", None) == "hand":
        text += f" (lr {fmt_lr(stat.lr)})"
    return text


def _coverage(base: dict) -> str:
    return f" [{len(base)} of {len(HAND)} traditional algorithms evaluated on this task]"


def mean_of(stat) -> float:
    return stat.mean if stat is not None and math.isfinite(stat.mean) else math.inf


def _all_known(verdicts) -> bool | None:
    """False if any is False, else None if any is None, else True."""
    verdicts = list(verdicts)
    if any(v is False for v in verdicts):
        return False
    return None if any(v is None for v in verdicts) else True


# ----------------------------------------------------------------------------- results


@dataclass
class Check:
    text: str  # what is checked
    passed: bool | None  # None: not run
    detail: str = ""  # the numbers
    required: bool = True
    numbers: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"check": self.text, "passed": self.passed, "required": self.required,
                "detail": self.detail, "numbers": self.numbers}


@dataclass
class Claim:
    id: str
    claim: str  # the paper's claim, paraphrased from spec §6
    where: str  # the figure or table behind it
    needs: str  # the sweeps that produce its runs
    checks: list[Check]

    @property
    def verdict(self) -> str:
        required = [c for c in self.checks if c.required]
        if any(c.passed is False for c in required):
            return "not reproduced"
        if not required or any(c.passed is None for c in required):
            return "not run"
        return "reproduced"

    @property
    def status(self) -> str:
        """The verdict, with how much of a "not run" claim did run."""
        required = [c for c in self.checks if c.required]
        ran = [c for c in required if c.passed is not None]
        if self.verdict == "not run" and ran:
            return f"not run ({len(ran)} of {len(required)} checks ran, all pass)"
        return self.verdict

    def to_json(self) -> dict:
        return {"id": self.id, "claim": self.claim, "where": self.where, "needs": self.needs,
                "verdict": self.verdict, "status": self.status,
                "checks": [c.to_json() for c in self.checks]}


def numbers(**stats) -> dict:
    return {k: (v.to_json() if hasattr(v, "to_json") else v) for k, v in stats.items()}


def missing(what: str, **stats) -> str:
    gone = [label(k) for k, v in stats.items() if v is None]
    return f"missing: {', '.join(gone)} ({what})" if gone else ""


def _missing_vs_baselines(text: str, who: str, stat, base: dict,
                          required: bool = True) -> Check:
    """The not-run Check of a comparison with the tuned baselines when a side has no runs."""
    gone = ([label(who)] if stat is None else []) + ([] if base else ["tuned baselines"])
    return Check(text, None, f"missing: {', '.join(gone)}", required,
                 numbers(**{who: stat}, **base))


def _no_pairs(verdict: bool | None, detail: str) -> str:
    return detail + ("; not run: no paired per-run final losses for some comparison"
                     if verdict is None else "")


# ----------------------------------------------------------------------------- checks


def check_beats_all(idx, who: str, stat, task: str, horizon: int, what: str,
                    required: bool = True) -> Check:
    """``who`` beats every tuned traditional algorithm on ``task`` at ``horizon``."""
    text = f"{what}: {label(who)} beats every tuned traditional algorithm"
    base = idx.baselines(task, horizon)
    if stat is None or not base:
        return _missing_vs_baselines(text, who, stat, base, required)
    pairs = {b: paired(stat, s) for b, s in base.items()}
    verdicts = {b: beats(p) for b, p in pairs.items()}
    passed = _all_known(verdicts.values())
    detail = f"{label(who)} {num(stat)} vs " + "; ".join(
        f"{label(b)} {num(s)}: {fmt_paired(pairs[b])}" for b, s in base.items()) + _coverage(base)
    losers = [label(b) for b, v in verdicts.items() if v is False]
    if losers:
        detail += "; not beaten: " + ", ".join(losers)
    return Check(text, passed, _no_pairs(passed, detail), required,
                 numbers(**{who: stat}, **base) | {"paired": numbers(**pairs)})


def check_comparable(idx, who: str, stat, task: str, horizon: int, what: str,
                     required: bool = True) -> Check:
    """``who`` is comparable with, or better than, the best tuned traditional algorithm."""
    text = f"{what}: {label(who)} comparable with or better than the best traditional algorithm"
    base = idx.baselines(task, horizon)
    if stat is None or not base:
        return _missing_vs_baselines(text, who, stat, base, required)
    best_name, best = min(base.items(), key=lambda kv: mean_of(kv[1]))
    p = paired(stat, best)
    ok = comparable(p)
    limit = f"limit +{COMPARABLE:.0%} of {label(best_name)}"
    if p is not None and math.isfinite(p.ref_mean):
        limit += f" = {COMPARABLE * p.ref_mean:+.3g}"
    detail = (f"{label(who)} {num(stat)} vs best {label(best_name)} {num(best)}: "
              f"{fmt_paired(p)} ({limit})" + _coverage(base))
    return Check(text, ok, _no_pairs(ok, detail), required,
                 numbers(**{who: stat, "best_baseline": best_name}, **base)
                 | {"paired": p.to_json() if p is not None else None})


def failure(idx, stat, task: str, horizon: int) -> tuple[bool | None, str]:
    """Does ``stat`` fail on the task (rule "fails")? (verdict, the numbers behind it)."""
    if stat is None:
        return None, "missing"
    init = idx.initial_loss(task, horizon)
    base = idx.baselines(task, horizon)
    best = min(base.items(), key=lambda kv: mean_of(kv[1])) if base else None
    reasons, fine = [], []
    if stat.n_runs and stat.n_diverged / stat.n_runs >= DIVERGED_FRACTION:
        reasons.append(f"{stat.n_diverged}/{stat.n_runs} runs diverged")
    elif stat.n_runs:
        fine.append(f"{stat.n_diverged}/{stat.n_runs} runs diverged")
    m = stat.mean
    if not math.isfinite(m):
        reasons.append("no finite final loss")
    else:
        if init is not None and math.isfinite(init):
            (reasons if m >= init else fine).append(
                f"final {m:.4g} {'≥' if m >= init else '<'} initial {init:.4g}")
        if best is not None and math.isfinite(mean_of(best[1])):
            limit = FAIL_RATIO * best[1].mean
            (reasons if m >= limit else fine).append(
                f"final {m:.4g} {'≥' if m >= limit else '<'} {FAIL_RATIO:g}× best "
                f"{label(best[0])} {num(best[1])}")
    if reasons:
        return True, "; ".join(reasons)
    if init is None and best is None:
        return None, "no initial loss (curves) and no tuned baseline to compare with"
    return False, "; ".join(fine)


def check_fails(idx, who: str, stat, task: str, horizon: int, what: str,
                required: bool = True) -> Check:
    text = f"{what}: {label(who)} fails"
    failed, detail = failure(idx, stat, task, horizon)
    return Check(text, failed, f"{label(who)}: {detail}", required,
                 numbers(**{who: stat}, initial_loss=idx.initial_loss(task, horizon)))


def _deciles(curve: np.ndarray) -> tuple[float, float]:
    n = len(curve)
    last = float(np.nanmean(curve[int(0.9 * n):]))
    prev = float(np.nanmean(curve[int(0.8 * n):int(0.9 * n)]))
    return prev, last


def check_keeps_decreasing(idx, who: str, stat, what: str) -> Check:
    text = f"{what}: {label(who)} keeps decreasing the loss"
    curve = idx.mean_curve(stat) if stat is not None else None
    if curve is None or len(curve) < 20:
        return Check(text, None, f"missing: {label(who)} loss curves", numbers=numbers(
            **{who: stat}))
    prev, last = _deciles(curve)
    detail = (f"mean loss over steps {int(0.8 * len(curve)) + 1}-{int(0.9 * len(curve))}: "
              f"{prev:.4g}, over the last 10 %: {last:.4g}")
    return Check(text, bool(last < prev), detail,
                 numbers=numbers(**{who: stat}) | {"prev_decile": prev, "last_decile": last})


def rise(curve: np.ndarray) -> tuple[bool, int, float, float]:
    """(rises dramatically, step of the smoothed minimum, that minimum, last-decile mean)."""
    w = max(1, int(len(curve) * SMOOTH_FRACTION))
    finite = np.where(np.isfinite(curve), curve, np.nan)
    smooth = np.convolve(np.nan_to_num(finite, nan=np.inf), np.ones(w) / w, mode="valid")
    i = int(np.nanargmin(smooth)) if np.isfinite(smooth).any() else 0
    low = float(smooth[i])
    last = float(np.nanmean(finite[int(0.9 * len(curve)):]))
    step = i + (w + 1) // 2  # centre of the window, 1-based
    return bool(not math.isfinite(last) or last >= RISE_RATIO * low), step, low, last


def check_rises(idx, who: str, stat, what: str) -> Check:
    text = f"{what}: {label(who)}'s loss stops decreasing, then rises dramatically"
    curve = idx.mean_curve(stat) if stat is not None else None
    if curve is None or len(curve) < 20:
        return Check(text, None, f"missing: {label(who)} loss curves", numbers=numbers(
            **{who: stat}))
    risen, step, low, last = rise(curve)
    detail = (f"minimum {low:.4g} of the smoothed mean curve at step ≈ {step} (the paper's "
              f"unrecoverable N), mean over the last 10 %: {last:.4g} "
              f"({last / low if low > 0 else math.inf:.3g}× the minimum; limit "
              f"{RISE_RATIO:g}×)")
    return Check(text, risen, detail, numbers=numbers(**{who: stat}) | {
        "min_step": step, "min_loss": low, "last_decile": last})


def check_lr_interval(idx, base_task: str, horizon: int, required: bool = True) -> Check:
    text = (f"base MLP, {horizon} steps: Adam beats RNNprop only in a narrow interval of "
            "learning rates")
    r = idx.learned("rnnprop", base_task, horizon)
    grid = {lr: s for lr, s in idx.hand_by_lr("adam", base_task, horizon).items()
            if lr is not None}
    if r is None or len(grid) < 3:
        gone = ([] if r is not None else ["RNNprop"]) + (
            [] if len(grid) >= 3 else [f"Adam tuning cells ({len(grid)} rates, need ≥ 3)"])
        return Check(text, None, f"missing: {', '.join(gone)}", required,
                     numbers(rnnprop=r) | {"adam_by_lr": {str(k): v.to_json()
                                                            for k, v in grid.items()}})
    lrs = sorted(grid)
    pairs = {lr: paired(grid[lr], r) for lr in lrs}
    verdicts = [beats(pairs[lr]) for lr in lrs]
    nums = numbers(rnnprop=r) | {
        "adam_by_lr": {str(lr): grid[lr].to_json() for lr in lrs},
        "paired_by_lr": {str(lr): p.to_json() if p else None for lr, p in pairs.items()},
        "tested": [lrs[0], lrs[-1]]}
    if None in verdicts:
        return Check(text, None, "not run: no paired per-run final losses of Adam and RNNprop "
                     f"at {verdicts.count(None)} of {len(lrs)} rates", required, nums)
    wins = [i for i, v in enumerate(verdicts) if v]
    nums["winning_lrs"] = [lrs[i] for i in wins]
    if not wins:
        return Check(text, False, f"no tested rate of Adam ({fmt_lr(lrs[0])} … "
                     f"{fmt_lr(lrs[-1])}, {len(lrs)} rates) beats RNNprop {num(r)}", required,
                     nums)
    a, b = lrs[wins[0]], lrs[wins[-1]]
    contiguous = wins == list(range(wins[0], wins[-1] + 1))
    bounded = wins[0] > 0 and wins[-1] < len(lrs) - 1
    narrow = b / a <= NARROW_FACTOR * (1 + 1e-6)
    nums |= {"interval": [a, b], "contiguous": contiguous, "bounded": bounded,
             "narrow": narrow}
    best_lr = min(lrs, key=lambda lr: mean_of(grid[lr]))
    detail = (f"Adam beats RNNprop {num(r)} at {len(wins)} of {len(lrs)} tested rates: "
              f"[{fmt_lr(a)}, {fmt_lr(b)}] = [{a:.4g}, {b:.4g}], factor {b / a:.3g} "
              f"(limit {NARROW_FACTOR:g}); contiguous: {contiguous}; bounded by losing rates "
              f"on both sides: {bounded}; best Adam {num(grid[best_lr])}: "
              f"{fmt_paired(pairs[best_lr])}")
    return Check(text, contiguous and bounded and narrow, detail, required, nums)


def winners_over(base: dict, stat) -> tuple[list[str], bool]:
    """The baselines that beat ``stat`` (paired), and whether every comparison ran."""
    verdicts = {b: beats(paired(s, stat)) for b, s in base.items()}
    return [b for b, v in verdicts.items() if v], None not in verdicts.values()


def check_exactly_one_beats(idx, stat, task: str, what: str) -> Check:
    text = f"{what}: only the best traditional algorithm beats RNNprop"
    base = idx.baselines(task, 100)
    if stat is None or not base:
        return _missing_vs_baselines(text, "rnnprop", stat, base)
    winners, ran = winners_over(base, stat)
    detail = (f"RNNprop {num(stat)} vs " + "; ".join(
        f"{label(b)} {num(s)}: {fmt_paired(paired(s, stat))}" for b, s in base.items())
        + f"; beating RNNprop: {', '.join(label(b) for b in winners) or 'none'}")
    passed = (len(winners) == 1) if ran else (False if len(winners) > 1 else None)
    return Check(text, passed, _no_pairs(passed, detail),
                 numbers=numbers(rnnprop=stat, **base) | {"winners": winners})


def check_lower(a_name: str, a, b_name: str, b, text: str, required: bool = True,
                margin: float = 0.0) -> Check:
    """``a`` beats ``b`` (by more than ``margin`` of b's mean), paired."""
    if a is None or b is None:
        return Check(text, None, missing("runs", **{a_name: a, b_name: b}), required,
                     numbers(**{a_name: a, b_name: b}))
    p = paired(a, b)
    ok = beats(p, margin)
    detail = f"{label(a_name)} {num(a)} vs {label(b_name)} {num(b)}: {fmt_paired(p)}"
    if margin:
        detail += f" (margin {margin:.0%} of {label(b_name)})"
    return Check(text, ok, _no_pairs(ok, detail), required,
                 numbers(**{a_name: a, b_name: b})
                 | {"paired": p.to_json() if p is not None else None})
