"""Paper 1's qualitative claims (spec §6, items 1-9), checked against finished runs.

Every claim is a list of checks; a check holds the numbers behind it and passes, fails, or
was not run (its runs are missing). The thresholds below are the report's rules; ``RULES``
states them in words and the report prints them beside the verdicts.

The index passed to :func:`evaluate_claims` (``report.RunIndex``) answers:
``learned(experiment, task, horizon, ckpt=None)``, ``tuned(optimizer, task, horizon)``,
``baselines(task, horizon)``, ``hand_by_lr(optimizer, task, horizon)``,
``initial_loss(task, horizon)``, ``mean_curve(stat)``, ``ckpt_iterations(experiment, task,
horizon)`` and ``tasks_of(experiment)``; a stat has ``mean``, ``std``, ``n_runs``,
``n_diverged``, ``lr``, ``name`` and ``to_json()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------- rules

COMPARABLE = 0.10  # "comparable": within 10 % of the reference's mean final loss
SIGNIFICANT = 0.10  # "significantly outperforms": lower by more than 10 %
FAIL_RATIO = 2.0  # "fails": mean final loss >= 2x the best tuned traditional algorithm
DIVERGED_FRACTION = 0.10  # "fails": >= 10 % of the runs diverged
STALL_FRACTION = 0.95  # "cannot decrease the loss": final >= 95 % of the initial loss
RISE_RATIO = 2.0  # "rises dramatically": end of the curve >= 2x its minimum
NARROW_FACTOR = 4.0  # "narrow interval" of learning rates: b / a <= 4 (5 rates of the grid)
SMOOTH_FRACTION = 0.02  # moving-average window of the curve rules, as a share of the steps

RULES: list[tuple[str, str]] = [
    ("beats", "A beats B when A's mean final loss (pooled over all runs and seeds) is lower "
              "than B's. No significance test is made; the spreads are in the tables."),
    ("comparable", f"A is comparable with B when |A − B| ≤ {COMPARABLE:.0%} of B; "
                   "'comparable or better' also accepts any A < B."),
    ("significantly outperforms", f"A's mean final loss is lower than B's by more than "
                                  f"{SIGNIFICANT:.0%}."),
    ("fails", f"an optimizer fails on a task when ≥ {DIVERGED_FRACTION:.0%} of its runs "
              "diverged (the evaluation's rule, each summary's diverged_rule: final loss "
              "non-finite or far above its initial loss), or its mean final loss is ≥ the "
              "mean initial "
              "loss (the step-1 loss of the same paired runs), or it is ≥ "
              f"{FAIL_RATIO:g}× the best tuned traditional algorithm's."),
    ("traditional algorithms", "the hand-designed optimizers evaluated on that task and "
                               "horizon, each at its tuned rate: the rate of lowest mean final "
                               "loss among all the cells that evaluated it (the rule of "
                               "`baselines.scan_tuning`)."),
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

# ----------------------------------------------------------------------------- tasks

BASE = "mnist-mlp-sigmoid-l1"
ACTIVATIONS = {a: f"mnist-mlp-{a}-l1" for a in ("sigmoid", "relu", "elu", "tanh")}
RELU = ACTIVATIONS["relu"]
DEPTHS = {d: f"mnist-mlp-sigmoid-l{d}" for d in range(1, 11)}
CNNS = {"c-c-p-f, MNIST": "mnist-cnn-c-c-p-f",
        "c-c-p-c-c-p-f-f, MNIST": "mnist-cnn-c-c-p-c-c-p-f-f",
        "c-c-p-f, CIFAR-10": "cifar10-cnn-c-c-p-f"}
LSTMS = {"Default": "sine_lstm-l1-noise0.1", "2 Layers": "sine_lstm-l2-noise0.1",
         "Small Noise": "sine_lstm-l1-noise0.01"}
DM_TESTS = {"base MLP": BASE, "40 hidden units": "mnist-mlp-sigmoid-l1-h40",
            "2 hidden layers": "mnist-mlp-sigmoid-l2", "ReLU": RELU}
HAND = ("sgd", "momentum", "adagrad", "adadelta", "rmsprop", "adam")
LABELS = {"rnnprop": "RNNprop", "dmoptimizer": "DMoptimizer",
          "rnnprop_no_rs": "RNNprop w/o RS", "rnnprop_no_cc": "No CC",
          "dmoptimizer_tricks": "DMoptimizer + tricks", "dm_quadratic": "DMoptimizer",
          "dmoptimizer_official": "DMoptimizer (official)",
          "sgd": "SGD", "momentum": "Momentum", "adagrad": "Adagrad", "adadelta": "Adadelta",
          "rmsprop": "RMSprop", "adam": "Adam", "best_baseline": "best tuned baseline"}


def label(name: str) -> str:
    return LABELS.get(name, name)


def fmt_lr(lr) -> str:
    """A rate of the √2 grid as a power of two (2^-5.5), anything else in %.3g."""
    if lr is None:
        return "?"
    if lr > 0:
        k = math.log2(lr)
        if abs(k * 2 - round(k * 2)) < 1e-3:
            return f"2^{round(k * 2) / 2:g}"
    return f"{lr:.3g}"


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


def _mean(stat) -> float:
    return stat.mean if stat is not None and math.isfinite(stat.mean) else math.inf


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


def _numbers(**stats) -> dict:
    return {k: (v.to_json() if hasattr(v, "to_json") else v) for k, v in stats.items()}


def _missing(what: str, **stats) -> str:
    gone = [label(k) for k, v in stats.items() if v is None]
    return f"missing: {', '.join(gone)} ({what})" if gone else ""


def _missing_vs_baselines(text: str, who: str, stat, base: dict,
                          required: bool = True) -> Check:
    """The not-run Check of a comparison with the tuned baselines when a side has no runs."""
    gone = ([label(who)] if stat is None else []) + ([] if base else ["tuned baselines"])
    return Check(text, None, f"missing: {', '.join(gone)}", required,
                 _numbers(**{who: stat}, **base))


# ----------------------------------------------------------------------------- checks


def check_beats_all(idx, who: str, stat, task: str, horizon: int, what: str,
                    required: bool = True) -> Check:
    """``who`` beats every tuned traditional algorithm on ``task`` at ``horizon``."""
    text = f"{what}: {label(who)} beats every tuned traditional algorithm"
    base = idx.baselines(task, horizon)
    if stat is None or not base:
        return _missing_vs_baselines(text, who, stat, base, required)
    losers = [b for b, s in base.items() if not _mean(stat) < _mean(s)]
    detail = f"{label(who)} {num(stat)} vs " + ", ".join(
        f"{label(b)} {num(s)}" for b, s in base.items()) + _coverage(base)
    if losers:
        detail += "; not beaten: " + ", ".join(label(b) for b in losers)
    return Check(text, not losers, detail, required, _numbers(**{who: stat}, **base))


def check_comparable(idx, who: str, stat, task: str, horizon: int, what: str,
                     required: bool = True) -> Check:
    """``who`` is comparable with, or better than, the best tuned traditional algorithm."""
    text = f"{what}: {label(who)} comparable with or better than the best traditional algorithm"
    base = idx.baselines(task, horizon)
    if stat is None or not base:
        return _missing_vs_baselines(text, who, stat, base, required)
    best_name, best = min(base.items(), key=lambda kv: _mean(kv[1]))
    ref = _mean(best)
    ok = _mean(stat) <= ref * (1 + COMPARABLE) if math.isfinite(ref) else True
    rel = (_mean(stat) - ref) / ref if math.isfinite(ref) and ref else math.nan
    detail = (f"{label(who)} {num(stat)} vs best {label(best_name)} {num(best)}: "
              f"{rel:+.1%} (limit +{COMPARABLE:.0%})" + _coverage(base))
    return Check(text, bool(ok), detail, required,
                 _numbers(**{who: stat, "best_baseline": best_name}, **base) | {"relative": rel})


def failure(idx, stat, task: str, horizon: int) -> tuple[bool | None, str]:
    """Does ``stat`` fail on the task (rule "fails")? (verdict, the numbers behind it)."""
    if stat is None:
        return None, "missing"
    init = idx.initial_loss(task, horizon)
    base = idx.baselines(task, horizon)
    best = min(base.items(), key=lambda kv: _mean(kv[1])) if base else None
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
        if best is not None and math.isfinite(_mean(best[1])):
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
                 _numbers(**{who: stat}, initial_loss=idx.initial_loss(task, horizon)))


def _deciles(curve: np.ndarray) -> tuple[float, float]:
    n = len(curve)
    last = float(np.nanmean(curve[int(0.9 * n):]))
    prev = float(np.nanmean(curve[int(0.8 * n):int(0.9 * n)]))
    return prev, last


def check_keeps_decreasing(idx, who: str, stat, what: str) -> Check:
    text = f"{what}: {label(who)} keeps decreasing the loss"
    curve = idx.mean_curve(stat) if stat is not None else None
    if curve is None or len(curve) < 20:
        return Check(text, None, f"missing: {label(who)} loss curves", numbers=_numbers(
            **{who: stat}))
    prev, last = _deciles(curve)
    detail = (f"mean loss over steps {int(0.8 * len(curve)) + 1}-{int(0.9 * len(curve))}: "
              f"{prev:.4g}, over the last 10 %: {last:.4g}")
    return Check(text, bool(last < prev), detail,
                 numbers=_numbers(**{who: stat}) | {"prev_decile": prev, "last_decile": last})


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
        return Check(text, None, f"missing: {label(who)} loss curves", numbers=_numbers(
            **{who: stat}))
    risen, step, low, last = rise(curve)
    detail = (f"minimum {low:.4g} of the smoothed mean curve at step ≈ {step} (the paper's "
              f"unrecoverable N), mean over the last 10 %: {last:.4g} "
              f"({last / low if low > 0 else math.inf:.3g}× the minimum; limit "
              f"{RISE_RATIO:g}×)")
    return Check(text, risen, detail, numbers=_numbers(**{who: stat}) | {
        "min_step": step, "min_loss": low, "last_decile": last})


def check_lr_interval(idx, horizon: int, required: bool = True) -> Check:
    text = (f"base MLP, {horizon} steps: Adam beats RNNprop only in a narrow interval of "
            "learning rates")
    r = idx.learned("rnnprop", BASE, horizon)
    grid = {lr: s for lr, s in idx.hand_by_lr("adam", BASE, horizon).items() if lr is not None}
    if r is None or len(grid) < 3:
        gone = ([] if r is not None else ["RNNprop"]) + (
            [] if len(grid) >= 3 else [f"Adam tuning cells ({len(grid)} rates, need ≥ 3)"])
        return Check(text, None, f"missing: {', '.join(gone)}", required,
                     _numbers(rnnprop=r) | {"adam_by_lr": {str(k): v.to_json()
                                                             for k, v in grid.items()}})
    lrs = sorted(grid)
    wins = [i for i, lr in enumerate(lrs) if _mean(grid[lr]) < _mean(r)]
    numbers = _numbers(rnnprop=r) | {
        "adam_by_lr": {str(lr): grid[lr].to_json() for lr in lrs},
        "tested": [lrs[0], lrs[-1]], "winning_lrs": [lrs[i] for i in wins]}
    if not wins:
        return Check(text, False, f"no tested rate of Adam ({fmt_lr(lrs[0])} … "
                     f"{fmt_lr(lrs[-1])}, {len(lrs)} rates) beats RNNprop {num(r)}", required,
                     numbers)
    a, b = lrs[wins[0]], lrs[wins[-1]]
    contiguous = wins == list(range(wins[0], wins[-1] + 1))
    bounded = wins[0] > 0 and wins[-1] < len(lrs) - 1
    narrow = b / a <= NARROW_FACTOR * (1 + 1e-6)
    numbers |= {"interval": [a, b], "contiguous": contiguous, "bounded": bounded,
                "narrow": narrow}
    best_lr = min(lrs, key=lambda lr: _mean(grid[lr]))
    detail = (f"Adam beats RNNprop {num(r)} at {len(wins)} of {len(lrs)} tested rates: "
              f"[{fmt_lr(a)}, {fmt_lr(b)}] = [{a:.4g}, {b:.4g}], factor {b / a:.3g} "
              f"(limit {NARROW_FACTOR:g}); contiguous: {contiguous}; bounded by losing rates "
              f"on both sides: {bounded}; best Adam {num(grid[best_lr])}")
    return Check(text, contiguous and bounded and narrow, detail, required, numbers)


def check_exactly_one_beats(idx, stat, task: str, what: str) -> Check:
    text = f"{what}: only the best traditional algorithm beats RNNprop"
    base = idx.baselines(task, 100)
    if stat is None or not base:
        return _missing_vs_baselines(text, "rnnprop", stat, base)
    winners = [b for b, s in base.items() if _mean(s) < _mean(stat)]
    detail = (f"RNNprop {num(stat)} vs " + ", ".join(f"{label(b)} {num(s)}"
                                                     for b, s in base.items())
              + f"; beating RNNprop: {', '.join(label(b) for b in winners) or 'none'}")
    return Check(text, len(winners) == 1, detail,
                 numbers=_numbers(rnnprop=stat, **base) | {"winners": winners})


def check_lower(a_name: str, a, b_name: str, b, text: str, required: bool = True,
                margin: float = 0.0) -> Check:
    """``a`` has a lower mean final loss than ``b`` (by more than ``margin``, relative)."""
    if a is None or b is None:
        return Check(text, None, _missing("runs", **{a_name: a, b_name: b}), required,
                     _numbers(**{a_name: a, b_name: b}))
    ok = _mean(a) < _mean(b) * (1 - margin)
    detail = f"{label(a_name)} {num(a)} vs {label(b_name)} {num(b)}"
    if math.isfinite(_mean(b)) and _mean(b) > 0:
        detail += f" ({_mean(a) / _mean(b) - 1:+.1%})"
    return Check(text, bool(ok), detail, required, _numbers(**{a_name: a, b_name: b}))


# ----------------------------------------------------------------------------- claims


def claim_1(idx) -> Claim:
    r, d = idx.learned("rnnprop", BASE, 100), idx.learned("dmoptimizer", BASE, 100)
    what = "base MLP, 100 steps"
    return Claim(
        "1", "On the training task (base MLP, 100 steps) both DMoptimizer and RNNprop beat all "
             "traditional algorithms; DMoptimizer is better (possibly overfitting).",
        "Fig. 2 left, Table 2 (sigmoid)", "paper_meta_train, fig2 or table2, tune_horizons",
        [check_beats_all(idx, "rnnprop", r, BASE, 100, what),
         check_beats_all(idx, "dmoptimizer", d, BASE, 100, what),
         check_lower("dmoptimizer", d, "rnnprop", r, f"{what}: DMoptimizer beats RNNprop")])


def claim_2(idx) -> Claim:
    r, d = idx.learned("rnnprop", BASE, 2000), idx.learned("dmoptimizer", BASE, 2000)
    what = "base MLP, 2000 steps"
    return Claim(
        "2", "For 2000 steps RNNprop is comparable with the traditional algorithms, and "
             "DMoptimizer fails.", "Fig. 2 centre", "fig2, tune_horizons",
        [check_comparable(idx, "rnnprop", r, BASE, 2000, what),
         check_fails(idx, "dmoptimizer", d, BASE, 2000, what)])


def claim_3(idx) -> Claim:
    r, d = idx.learned("rnnprop", BASE, 10000), idx.learned("dmoptimizer", BASE, 10000)
    what = "base MLP, 10000 steps"
    base = idx.baselines(BASE, 10000)
    over = check_lower("best_baseline", min(base.values(), key=_mean) if base else None,
                       "rnnprop", r, f"{what}: some tuned traditional algorithm overtakes "
                       "RNNprop")
    if base and r is not None:
        winners = [b for b, s in base.items() if _mean(s) < _mean(r)]
        over.detail = (f"RNNprop {num(r)} vs " + ", ".join(f"{label(b)} {num(s)}"
                                                          for b, s in base.items())
                       + f"; ahead of RNNprop: {', '.join(map(label, winners)) or 'none'}")
        over.numbers = _numbers(rnnprop=r, **base)
    return Claim(
        "3", "For 10000 steps RNNprop keeps decreasing the loss but some tuned traditional "
             "algorithms overtake it; DMoptimizer stops decreasing after some step N and its "
             "loss rises dramatically.", "Fig. 2 right", "fig2, tune_horizons",
        [check_keeps_decreasing(idx, "rnnprop", r, what), over,
         check_rises(idx, "dmoptimizer", d, what)])


def claim_4(idx) -> Claim:
    long = [h for h in (10000, 2000) if len(idx.hand_by_lr("adam", BASE, h)) >= 3]
    main = long[0] if long else 10000
    checks = [check_lr_interval(idx, main)]
    checks += [check_lr_interval(idx, h, required=False) for h in (10000, 2000) if h != main]
    return Claim(
        "4", "Fig. 3 (final loss against learning rate, traditional algorithms re-tuned per "
             "horizon): Adam outperforms RNNprop only for learning rates in a narrow interval "
             "[a, b]. Its horizon (2000 or 10000) is unrecoverable: checked at 10000 steps "
             "when Adam was tuned there, else at 2000.",
        "Fig. 3", "tune_horizons, fig2", checks)


def claim_5(idx) -> Claim:
    checks = [check_beats_all(idx, "rnnprop", idx.learned("rnnprop", RELU, 100), RELU, 100,
                              "ReLU MLP, 100 steps"),
              check_fails(idx, "dmoptimizer", idx.learned("dmoptimizer", RELU, 100), RELU,
                          100, "ReLU MLP, 100 steps")]
    for act in ("elu", "tanh"):
        task = ACTIVATIONS[act]
        checks.append(check_comparable(idx, "rnnprop", idx.learned("rnnprop", task, 100),
                                       task, 100, f"{act} MLP, 100 steps"))
    return Claim(
        "5", "With ReLU, RNNprop beats the traditional algorithms while DMoptimizer fails; "
             "RNNprop also generalises well to ELU and tanh ('comparable or better').",
        "Fig. 4, Table 2", "table2, tune_activations", checks)


def fig5_depth(idx) -> int | None:
    """The depth (≥ 2) where RNNprop's lead over tuned Adam is largest (Fig. 5's choice)."""
    best, pick = -math.inf, None
    for depth, task in DEPTHS.items():
        r, a = idx.learned("rnnprop", task, 100), idx.tuned("adam", task, 100)
        if depth < 2 or r is None or a is None or not math.isfinite(_mean(a)):
            continue
        lead = _mean(a) / _mean(r) if _mean(r) > 0 else math.inf
        if lead > best:
            best, pick = lead, depth
    return pick


def claim_6(idx) -> Claim:
    checks = []
    for depth, task in DEPTHS.items():
        r, a = idx.learned("rnnprop", task, 100), idx.tuned("adam", task, 100)
        text = (f"{depth} hidden layer{'s' if depth > 1 else ''}: RNNprop beats Adam, or "
                "neither can decrease the loss")
        if r is None or a is None:
            checks.append(Check(text, None, _missing("runs", rnnprop=r, adam=a), depth > 1,
                                _numbers(rnnprop=r, adam=a)))
            continue
        init = idx.initial_loss(task, 100)
        beats = _mean(r) < _mean(a)
        stalled = init is not None and all(_mean(s) >= STALL_FRACTION * init for s in (r, a))
        detail = f"RNNprop {num(r)} vs Adam {num(a)}"
        detail += f"; initial loss {init:.4g}" if init is not None else "; no initial loss"
        if stalled:
            detail += " (neither decreases it)"
        checks.append(Check(text, bool(beats or stalled), detail, depth > 1,
                            _numbers(rnnprop=r, adam=a, initial_loss=init)))
    depth = fig5_depth(idx)
    text = "Fig. 5: at some depth RNNprop significantly outperforms Adam"
    if depth is None:
        checks.append(Check(text, None, "missing: RNNprop and Adam at any depth ≥ 2"))
    else:
        task = DEPTHS[depth]
        c = check_lower("rnnprop", idx.learned("rnnprop", task, 100), "adam",
                        idx.tuned("adam", task, 100), text, margin=SIGNIFICANT)
        c.detail = f"largest lead at {depth} hidden layers: {c.detail}"
        c.numbers["depth"] = depth
        checks.append(c)
    return Claim(
        "6", "Deeper MLPs: RNNprop always outstrips the traditional algorithms (Adam) until the "
             "MLP becomes so deep that none of them can decrease its loss in 100 steps; at one "
             "depth (Fig. 5) it significantly outperforms them.",
        "Figs. 5-6", "fig5_6, tune_depth, tune_activations", checks)


def claim_7(idx) -> Claim:
    names = list(CNNS)
    checks = [check_beats_all(idx, "rnnprop", idx.learned("rnnprop", CNNS[names[0]], 100),
                              CNNS[names[0]], 100, names[0])]
    for name in names[1:]:
        checks.append(check_exactly_one_beats(idx, idx.learned("rnnprop", CNNS[name], 100),
                                              CNNS[name], name))
    for name in names:
        checks.append(check_fails(idx, "dmoptimizer", idx.learned("dmoptimizer", CNNS[name],
                                                                  100), CNNS[name], 100, name))
    return Claim(
        "7", "CNNs: on c-c-p-f MNIST RNNprop beats the traditional algorithms; on the other two "
             "CNNs only the best traditional algorithm beats it; DMoptimizer fails to train "
             "any of them.", "Fig. 7", "fig7, tune_cnn", checks)


def claim_8(idx) -> Claim:
    checks = [check_comparable(idx, "rnnprop", idx.learned("rnnprop", task, 100), task, 100,
                               f"LSTM task, {name.lower()}") for name, task in LSTMS.items()]
    return Claim(
        "8", "LSTM task: RNNprop is comparable with or better than the traditional algorithms, "
             "also with 2 layers and with small noise.", "Fig. 8, Table 3",
        "fig8_table3, tune_lstm", checks)


def claim_9(idx) -> Claim:
    r = idx.learned("rnnprop", RELU, 100)
    no_rs = idx.learned("rnnprop_no_rs", RELU, 100)
    checks = [check_lower("rnnprop", r, "rnnprop_no_rs", no_rs,
                          "ReLU MLP: RNNprop beats RNNprop without Random Scaling"),
              check_lower("dmoptimizer_tricks", idx.learned("dmoptimizer_tricks", RELU, 100),
                          "dmoptimizer", idx.learned("dmoptimizer", RELU, 100),
                          "ReLU MLP: the tricks help DMoptimizer", required=False)]
    # Random Scaling against the convex combination: which removal hurts more.
    text = "ReLU MLP: removing Random Scaling hurts more than removing the convex combination"
    r_cc, no_cc, basis = r, idx.learned("rnnprop_no_cc", RELU, 100), "selected checkpoints"
    if no_cc is None:
        common = sorted(set(idx.ckpt_iterations("rnnprop", RELU, 100))
                        & set(idx.ckpt_iterations("rnnprop_no_cc", RELU, 100)))
        if common:
            basis = f"iteration {common[-1]} (Table 4)"
            r_cc = idx.learned("rnnprop", RELU, 100, ckpt=common[-1])
            no_cc = idx.learned("rnnprop_no_cc", RELU, 100, ckpt=common[-1])
    if None in (r, no_rs, r_cc, no_cc):
        checks.append(Check(text, None, _missing("runs", rnnprop=r, rnnprop_no_rs=no_rs,
                                                 rnnprop_no_cc=no_cc), False))
    else:
        rs_cost, cc_cost = _mean(no_rs) / _mean(r), _mean(no_cc) / _mean(r_cc)
        checks.append(Check(
            text, bool(rs_cost > cc_cost),
            f"w/o RS / RNNprop = {rs_cost:.3g}; No CC / RNNprop = {cc_cost:.3g} ({basis})",
            False, {"rs_cost": rs_cost, "cc_cost": cc_cost, "basis": basis}))
    for name, task in (("base MLP", BASE), ("ReLU MLP", RELU)):
        text = f"Table 4, {name}: with the fewest meta-training iterations RNNprop beats No CC"
        common = sorted(set(idx.ckpt_iterations("rnnprop", task, 100))
                        & set(idx.ckpt_iterations("rnnprop_no_cc", task, 100)))
        if not common:
            checks.append(Check(text, None, "missing: RNNprop and No CC at a common "
                                            "checkpoint iteration"))
            continue
        it = common[0]
        c = check_lower("rnnprop", idx.learned("rnnprop", task, 100, ckpt=it), "rnnprop_no_cc",
                        idx.learned("rnnprop_no_cc", task, 100, ckpt=it), text)
        c.detail = f"after {it} iterations: {c.detail}"
        c.numbers["iteration"] = it
        checks.append(c)
    return Claim(
        "9", "Control: Random Scaling is the most effective trick (Fig. 9); the combination with "
             "convex functions gives a good result with fewer iterations of training (Table 4).",
        "Fig. 9, Table 4", "fig9, table4, tune_activations", checks)


def evaluate_claims(idx) -> list[Claim]:
    """Paper 1's claims 1-9 (spec §6)."""
    return [f(idx) for f in (claim_1, claim_2, claim_3, claim_4, claim_5, claim_6, claim_7,
                             claim_8, claim_9)]


def quadratic_task(idx) -> str:
    tasks = [t for t in idx.tasks_of("dm_quadratic") if t.startswith("quadratic")]
    return tasks[0] if tasks else "quadratic-uniform-d10"


def evaluate_dm_claims(idx) -> list[Claim]:
    """Paper 2's results as claims (supplementary: paper 2 reports curves only)."""
    quad = quadratic_task(idx)
    p1 = Claim("P2-1", "Quadratics: the DMoptimizer meta-trained on random 10-dim quadratics "
                       "beats the tuned baselines on fresh ones (100 steps).",
               "paper 2 Fig. 2 left", "paper_meta_train, dm_quadratic_eval, tune_dm_paper",
               [check_beats_all(idx, "dm_quadratic", idx.learned("dm_quadratic", quad, 100),
                                quad, 100, "quadratic, 100 steps")])
    d = idx.learned
    p2 = Claim("P2-2", "The DMoptimizer meta-trained on the base MLP (100 steps) generalises to "
                       "200 steps, 40 hidden units and 2 hidden layers (beats the tuned "
                       "baselines).", "paper 2 Fig. 4", "dm_paper, tune_dm_paper",
               [check_beats_all(idx, "dmoptimizer", d("dmoptimizer", BASE, 200), BASE, 200,
                                "base MLP, 200 steps"),
                check_beats_all(idx, "dmoptimizer", d("dmoptimizer", DM_TESTS["40 hidden units"],
                                                      100), DM_TESTS["40 hidden units"], 100,
                                "40 hidden units, 100 steps"),
                check_beats_all(idx, "dmoptimizer", d("dmoptimizer",
                                                      DM_TESTS["2 hidden layers"], 100),
                                DM_TESTS["2 hidden layers"], 100, "2 hidden layers, 100 steps")])
    p3 = Claim("P2-3", "It fails on the ReLU MLP.", "paper 2 Fig. 4 / Fig. 5",
               "dm_paper, tune_dm_paper",
               [check_fails(idx, "dmoptimizer", d("dmoptimizer", RELU, 100), RELU, 100,
                            "ReLU MLP, 100 steps")])
    return [p1, p2, p3]
