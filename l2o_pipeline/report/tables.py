"""The papers' tables: mean ± std per cell, the lowest mean in bold, and under each table the
paired comparison of each row's lowest mean with every other column."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from l2o_pipeline.catalog import ACTIVATIONS, BASE, CNNS, DEPTHS, DM_TESTS, LSTMS, RELU, needs
from l2o_pipeline.report.claims import quadratic_task
from l2o_pipeline.report.index import RunIndex
from l2o_pipeline.report.rules import beats
from l2o_pipeline.report.stats import Paired, Stat, paired
from l2o_pipeline.report.style import HAND, fmt_lr, label

MISSING = "—"
MARK = {True: "✓", False: "✗", None: MISSING}


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

    def comparisons(self) -> list[tuple[tuple[str, ...], str, str, Paired | None]]:
        """(row labels, A, B, A − B) for each row's lowest mean A against every other column
        B that has runs."""
        out = []
        for labels, cells in self.rows:
            ran = {c: s for c, s in cells.items() if s is not None and math.isfinite(s.mean)}
            if len(ran) < 2:
                continue
            best = min(ran, key=lambda c: ran[c].mean)
            out += [(labels, best, c, paired(ran[best], cells[c])) for c in self.columns
                    if c != best and cells.get(c) is not None]
        return out

    def to_json(self) -> dict:
        return {"title": self.title, "caption": self.caption, "needs": self.needs,
                "empty": self.empty, "label_columns": self.label_columns,
                "columns": self.columns,
                "rows": [{"labels": list(labels), "cells": {
                    c: (cells.get(c).to_json() if cells.get(c) is not None else None)
                    for c in self.columns}} for labels, cells in self.rows],
                "paired": [{"labels": list(labels), "a": a, "b": b, "beats": beats(p),
                            **(p.to_json() if p is not None else {})}
                           for labels, a, b, p in self.comparisons()],
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


def value_range(values) -> str:
    values = sorted(set(values))
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def runs_line(columns: list[str], rows) -> str:
    parts = []
    for col in columns:
        stats = [cells[col] for _, cells in rows if cells.get(col) is not None]
        if not stats:
            parts.append(f"{col}: not run")
            continue
        text = f"{col}: {value_range(s.n_runs for s in stats)} runs"
        if stats[0].kind == "learned":
            text += f" over {value_range(s.n_seeds for s in stats)} meta-training seed(s)"
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
    out += render_comparisons(t.label_columns, t.comparisons())
    for n in t.notes:
        out += f"\n{n}\n"
    return out


def render_comparisons(label_columns: list[str], comparisons) -> str:
    """The paired comparisons under a table; nothing when no pair has per-run losses."""
    rows = [(labels, a, b, p) for labels, a, b, p in comparisons if p is not None and p.n]
    if not rows:
        return ""
    lines = ["", "Paired: each row's lowest mean A against every other column B (Δ = mean of "
             "A − B over the common runs, 95 % Student-t CI; Wilcoxon signed-rank p; A beats B "
             "when the CI lies below 0):", "",
             "| " + " | ".join(label_columns + ["A", "B", "Δ [95 % CI]", "Wilcoxon p",
                                                "Pairs", "A beats B"]) + " |",
             "|" + "---|" * (len(label_columns) + 6)]
    for labels, a, b, p in rows:
        lines.append("| " + " | ".join(list(labels) + [
            a, b, f"{p.mean:+.3g} [{p.ci_low:+.3g}, {p.ci_high:+.3g}]", f"{p.p_wilcoxon:.2g}",
            str(p.n), MARK[beats(p)]]) + " |")
    return "\n".join(lines) + "\n"


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
        "Paper 1 Table 2; Adam at its tuned rate.", needs("table2"),
        ["Activation"], cols,
        [((act,), _cols(idx, task, 100, ["dmoptimizer", "rnnprop"], ["adam"]))
         for act, task in ACTIVATIONS.items()])
    tables["table3"] = Table(
        "table3", "Table 3: the LSTM task in different settings (final loss, 100 steps)",
        "Paper 1 Table 3; Adam and Adagrad at their tuned rates.", needs("table3"),
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
        "selection rule (best.pt).", needs("table4"),
        ["Optimizee", "#Iter"], ["Adam", "RNNprop", "No CC"], rows)
    every = ["RNNprop", "DMoptimizer"] + [label(h) for h in HAND]
    tables["fig2"] = Table(
        "fig2", "Final losses of Fig. 2: base MLP at each horizon",
        "Every traditional algorithm re-tuned for each horizon.", needs("fig2"),
        ["Steps"], every,
        [((str(h),), _cols(idx, BASE, h, ["rnnprop", "dmoptimizer"], list(HAND)))
         for h in (100, 2000, 10000)])
    tables["fig6"] = Table(
        "fig6", "Final losses of Figs. 5-6: MLPs of 1-10 hidden layers (100 steps)",
        "Each hidden layer has 20 sigmoid units; Adam tuned per depth.",
        needs("fig6"), ["Hidden layers"], cols,
        [((str(d),), _cols(idx, task, 100, ["dmoptimizer", "rnnprop"], ["adam"]))
         for d, task in DEPTHS.items()])
    tables["fig7"] = Table(
        "fig7", "Final losses of Fig. 7: the three CNNs (100 steps)", "", needs("fig7"),
        ["CNN"], every,
        [((name,), _cols(idx, task, 100, ["rnnprop", "dmoptimizer"], list(HAND)))
         for name, task in CNNS.items()])
    control = ["rnnprop", "rnnprop_no_rs", "dmoptimizer", "dmoptimizer_tricks"]
    tables["fig9"] = Table(
        "fig9", "Final losses of Fig. 9: control experiment, ReLU MLP (100 steps)",
        "RS: Random Scaling; tricks: Random Scaling and the convex combination.",
        needs("fig9"), ["Task"], [label(e) for e in control] + ["Adam"],
        [(("ReLU MLP",), _cols(idx, RELU, 100, control, ["adam"]))])
    quad = quadratic_task(idx)
    dm_hand = ["sgd", "rmsprop", "adam"]
    tables["dm_quadratic"] = Table(
        "dm_quadratic", "Paper 2: quadratics (final loss, 100 steps)",
        f"Task {quad}; DMoptimizer meta-trained on quadratics (DeepMind's settings).",
        needs("dm_quadratic"), ["Task"],
        [label(h) for h in dm_hand] + ["DMoptimizer"],
        [(("quadratic",), {label(h): idx.tuned(h, quad, 100) for h in dm_hand}
          | {"DMoptimizer": idx.learned("dm_quadratic", quad, 100)})])
    tables["dm_generalisation"] = Table(
        "dm_generalisation", "Paper 2: generalisation of the MNIST DMoptimizer (final loss)",
        "Meta-trained on the base MLP for 100 steps; NAG (paper 2) is not run.",
        needs("dm_generalisation"), ["Test", "Steps"],
        [label(h) for h in dm_hand] + ["DMoptimizer"],
        [((name, str(h)), _cols(idx, task, h, ["dmoptimizer"], dm_hand))
         for name, task in DM_TESTS.items() for h in (100, 200)])
    return tables
