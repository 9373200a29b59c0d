"""Paper 1's qualitative claims (spec §6, items 1-9) and paper 2's results, checked against
finished runs with the rules of :mod:`l2o_pipeline.report.rules`."""

from __future__ import annotations

import math

from l2o_pipeline.catalog import (
    ACTIVATIONS,
    BASE,
    CNNS,
    DEPTHS,
    DM_TESTS,
    LSTMS,
    QUADRATIC,
    RELU,
    needs,
)
from l2o_pipeline.report.checks import (
    Check,
    Claim,
    check_beats_all,
    check_comparable,
    check_exactly_one_beats,
    check_fails,
    check_keeps_decreasing,
    check_lower,
    check_lr_interval,
    check_rises,
    fmt_paired,
    mean_of,
    missing,
    num,
    numbers,
    winners_over,
)
from l2o_pipeline.report.rules import SIGNIFICANT, STALL_FRACTION, beats
from l2o_pipeline.report.stats import paired
from l2o_pipeline.report.style import label


def claim_1(idx) -> Claim:
    r, d = idx.learned("rnnprop", BASE, 100), idx.learned("dmoptimizer", BASE, 100)
    what = "base MLP, 100 steps"
    return Claim(
        "1", "On the training task (base MLP, 100 steps) both DMoptimizer and RNNprop beat all "
             "traditional algorithms; DMoptimizer is better (possibly overfitting).",
        "Fig. 2 left, Table 2 (sigmoid)", needs("meta", "fig2", "table2"),
        [check_beats_all(idx, "rnnprop", r, BASE, 100, what),
         check_beats_all(idx, "dmoptimizer", d, BASE, 100, what),
         check_lower("dmoptimizer", d, "rnnprop", r, f"{what}: DMoptimizer beats RNNprop")])


def claim_2(idx) -> Claim:
    r, d = idx.learned("rnnprop", BASE, 2000), idx.learned("dmoptimizer", BASE, 2000)
    what = "base MLP, 2000 steps"
    return Claim(
        "2", "For 2000 steps RNNprop is comparable with the traditional algorithms, and "
             "DMoptimizer fails.", "Fig. 2 centre", needs("fig2"),
        [check_comparable(idx, "rnnprop", r, BASE, 2000, what),
         check_fails(idx, "dmoptimizer", d, BASE, 2000, what)])


def claim_3(idx) -> Claim:
    r, d = idx.learned("rnnprop", BASE, 10000), idx.learned("dmoptimizer", BASE, 10000)
    what = "base MLP, 10000 steps"
    base = idx.baselines(BASE, 10000)
    over = check_lower("best_baseline", min(base.values(), key=mean_of) if base else None,
                       "rnnprop", r, f"{what}: some tuned traditional algorithm overtakes "
                       "RNNprop")
    if base and r is not None:
        winners, ran = winners_over(base, r)
        over.passed = True if winners else (False if ran else None)
        over.detail = (f"RNNprop {num(r)} vs " + "; ".join(
            f"{label(b)} {num(s)}: {fmt_paired(paired(s, r))}" for b, s in base.items())
            + f"; beating RNNprop: {', '.join(map(label, winners)) or 'none'}")
        over.numbers = numbers(rnnprop=r, **base) | {"winners": winners}
    return Claim(
        "3", "For 10000 steps RNNprop keeps decreasing the loss but some tuned traditional "
             "algorithms overtake it; DMoptimizer stops decreasing after some step N and its "
             "loss rises dramatically.", "Fig. 2 right", needs("fig2"),
        [check_keeps_decreasing(idx, "rnnprop", r, what), over,
         check_rises(idx, "dmoptimizer", d, what)])


def claim_4(idx) -> Claim:
    long = [h for h in (10000, 2000) if len(idx.hand_by_lr("adam", BASE, h)) >= 3]
    main = long[0] if long else 10000
    checks = [check_lr_interval(idx, BASE, main)]
    checks += [check_lr_interval(idx, BASE, h, required=False) for h in (10000, 2000) if h != main]
    return Claim(
        "4", "Fig. 3 (final loss against learning rate, traditional algorithms re-tuned per "
             "horizon): Adam outperforms RNNprop only for learning rates in a narrow interval "
             "[a, b]. Its horizon (2000 or 10000) is unrecoverable: checked at 10000 steps "
             "when Adam was tuned there, else at 2000.",
        "Fig. 3", needs("fig3"), checks)


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
        "Fig. 4, Table 2", needs("table2"), checks)


def fig5_depth(idx) -> int | None:
    """The depth (≥ 2) where RNNprop's lead over tuned Adam is largest (Fig. 5's choice)."""
    best, pick = -math.inf, None
    for depth, task in DEPTHS.items():
        r, a = idx.learned("rnnprop", task, 100), idx.tuned("adam", task, 100)
        if depth < 2 or r is None or a is None or not math.isfinite(mean_of(a)):
            continue
        lead = mean_of(a) / mean_of(r) if mean_of(r) > 0 else math.inf
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
            checks.append(Check(text, None, missing("runs", rnnprop=r, adam=a), depth > 1,
                                numbers(rnnprop=r, adam=a)))
            continue
        init = idx.initial_loss(task, 100)
        p = paired(r, a)
        won = beats(p)
        stalled = init is not None and all(mean_of(s) >= STALL_FRACTION * init for s in (r, a))
        detail = f"RNNprop {num(r)} vs Adam {num(a)}: {fmt_paired(p)}"
        detail += f"; initial loss {init:.4g}" if init is not None else "; no initial loss"
        if stalled:
            detail += " (neither decreases it)"
        passed = True if (won or stalled) else (None if won is None else False)
        checks.append(Check(text, passed, detail, depth > 1,
                            numbers(rnnprop=r, adam=a, initial_loss=init)
                            | {"paired": p.to_json() if p is not None else None}))
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
        "Figs. 5-6", needs("fig5", "fig6"), checks)


def claim_7(idx) -> Claim:
    names = list(CNNS)
    checks = [(CNNS[names[0]], check_beats_all(
        idx, "rnnprop", idx.learned("rnnprop", CNNS[names[0]], 100), CNNS[names[0]], 100,
        names[0]))]
    for name in names[1:]:
        checks.append((CNNS[name], check_exactly_one_beats(
            idx, idx.learned("rnnprop", CNNS[name], 100), CNNS[name], name)))
    for name in names:
        checks.append((CNNS[name], check_fails(
            idx, "dmoptimizer", idx.learned("dmoptimizer", CNNS[name], 100), CNNS[name], 100,
            name)))
    for task, check in checks:
        if check.passed is None and (dataset := idx.no_data_for(task)):
            check.detail += f" (no data: {dataset} was absent where the grid ran)"
    checks = [check for _, check in checks]
    return Claim(
        "7", "CNNs: on c-c-p-f MNIST RNNprop beats the traditional algorithms; on the other two "
             "CNNs only the best traditional algorithm beats it; DMoptimizer fails to train "
             "any of them.", "Fig. 7", needs("fig7"), checks)


def claim_8(idx) -> Claim:
    checks = [check_comparable(idx, "rnnprop", idx.learned("rnnprop", task, 100), task, 100,
                               f"LSTM task, {name.lower()}") for name, task in LSTMS.items()]
    return Claim(
        "8", "LSTM task: RNNprop is comparable with or better than the traditional algorithms, "
             "also with 2 layers and with small noise.", "Fig. 8, Table 3",
        needs("table3"), checks)


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
        checks.append(Check(text, None, missing("runs", rnnprop=r, rnnprop_no_rs=no_rs,
                                                 rnnprop_no_cc=no_cc), False))
    else:
        rs_cost, cc_cost = mean_of(no_rs) / mean_of(r), mean_of(no_cc) / mean_of(r_cc)
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
        "Fig. 9, Table 4", needs("fig9", "table4"), checks)


def evaluate_claims(idx) -> list[Claim]:
    """Paper 1's claims 1-9 (spec §6)."""
    return [f(idx) for f in (claim_1, claim_2, claim_3, claim_4, claim_5, claim_6, claim_7,
                             claim_8, claim_9)]


def quadratic_task(idx) -> str:
    tasks = [t for t in idx.tasks_of("dm_quadratic") if t.startswith("quadratic")]
    return tasks[0] if tasks else QUADRATIC


def evaluate_dm_claims(idx) -> list[Claim]:
    """Paper 2's results as claims (supplementary: paper 2 reports curves only)."""
    quad = quadratic_task(idx)
    p1 = Claim("P2-1", "Quadratics: the DMoptimizer meta-trained on random 10-dim quadratics "
                       "beats the tuned baselines on fresh ones (100 steps).",
               "paper 2 Fig. 2 left", needs("meta", "dm_quadratic"),
               [check_beats_all(idx, "dm_quadratic", idx.learned("dm_quadratic", quad, 100),
                                quad, 100, "quadratic, 100 steps")])
    d = idx.learned
    p2 = Claim("P2-2", "The DMoptimizer meta-trained on the base MLP (100 steps) generalises to "
                       "200 steps, 40 hidden units and 2 hidden layers (beats the tuned "
                       "baselines).", "paper 2 Fig. 4", needs("dm_generalisation"),
               [check_beats_all(idx, "dmoptimizer", d("dmoptimizer", BASE, 200), BASE, 200,
                                "base MLP, 200 steps"),
                check_beats_all(idx, "dmoptimizer", d("dmoptimizer", DM_TESTS["40 hidden units"],
                                                      100), DM_TESTS["40 hidden units"], 100,
                                "40 hidden units, 100 steps"),
                check_beats_all(idx, "dmoptimizer", d("dmoptimizer",
                                                      DM_TESTS["2 hidden layers"], 100),
                                DM_TESTS["2 hidden layers"], 100, "2 hidden layers, 100 steps")])
    p3 = Claim("P2-3", "It fails on the ReLU MLP.", "paper 2 Fig. 4 / Fig. 5",
               needs("dm_generalisation"),
               [check_fails(idx, "dmoptimizer", d("dmoptimizer", RELU, 100), RELU, 100,
                            "ReLU MLP, 100 steps")])
    return [p1, p2, p3]
