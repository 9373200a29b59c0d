"""Every optimizer cell found, per task and horizon: the comparison of any multirun, paper
grid or not. A row is a learned optimizer as its cells name it (their experiment, else their
overrides) pooled over seeds, or a hand-designed optimizer at its tuned rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from l2o_pipeline.report.index import RunIndex
from l2o_pipeline.report.rules import beats
from l2o_pipeline.report.stats import Paired, Stat, paired
from l2o_pipeline.report.style import HAND, label
from l2o_pipeline.report.tables import MARK, MISSING, fmt_stat


@dataclass
class Row:
    name: str  # the index's name: experiment or cell overrides (learned), optimizer (hand)
    text: str  # as the table shows it
    cells: list[str]  # the overrides of the cells its runs come from
    stat: Stat
    note: str = ""
    versus: Paired | None = None  # the lowest mean of the table minus this row

    def to_json(self) -> dict:
        return {"name": self.name, "label": self.text, "cells": self.cells, "note": self.note,
                "final_loss": self.stat.to_json(),
                "lowest_minus_this": self.versus.to_json() if self.versus else None,
                "lowest_beats_this": beats(self.versus)}


def cells_of(stat: Stat) -> list[str]:
    return sorted({w for m in stat.measurements for w in m.also_in | {m.where}})


def comparison(idx: RunIndex, task: str, horizon: int) -> list[Row]:
    """The rows at ``task`` and ``horizon``, lowest mean first; each with the paired
    difference of the lowest-mean row minus it."""
    rows = []
    for name, ckpt in idx.learned_at(task, horizon):
        stat = idx.learned(name, task, horizon, ckpt)
        optimizer = stat.measurements[0].key  # the optimizer the cells evaluated
        text = label(name) if label(name) != name else label(optimizer)
        if ckpt is not None:
            text += f" (iteration {ckpt})"
        rows.append(Row(name, text, cells_of(stat), stat))
    for opt in HAND:
        grid = idx.hand_by_lr(opt, task, horizon)
        stat = idx.tuned(opt, task, horizon)
        if stat is None:
            continue
        rows.append(Row(opt, label(opt),
                        cells_of(stat), stat,
                        f"tuned: best of {len(grid)} rates" if len(grid) > 1 else ""))
    rows.sort(key=lambda r: (not math.isfinite(r.stat.mean), r.stat.mean, r.text))
    for r in rows[1:]:
        r.versus = paired(rows[0].stat, r.stat)
    return rows


def build_comparisons(idx: RunIndex) -> dict[str, list[Row]]:
    return {f"{task}@{h}": comparison(idx, task, h) for task, h in idx.evaluated()}


def render_comparisons(comparisons: dict[str, list[Row]]) -> str:
    out = ["## Every evaluated cell, per task", "",
           "Each optimizer as its cells name it: a learned optimizer by the experiment its "
           "cells chose, else by their overrides (seeds pooled); a hand-designed one at its "
           "tuned rate. Δ: the lowest mean minus this row, over the common runs (95 % "
           "Student-t CI; Wilcoxon signed-rank p).", ""]
    if not comparisons:
        return "\n".join(out + ["_No evaluation cells found._", ""])
    for key, rows in comparisons.items():
        task, horizon = key.rsplit("@", 1)
        out += [f"### {task}, {horizon} steps", "",
                "| Optimizer | Cells (overrides) | Seeds | Final loss | Δ lowest − this "
                "[95 % CI] | Wilcoxon p | Pairs | Lowest beats it |",
                "|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(rows):
            cells = ", ".join(f"`{c}`" if c else "(no overrides)" for c in r.cells)
            if r.note:
                cells += f" ({r.note})"
            seeds = ", ".join(map(str, r.stat.seeds)) or MISSING
            p = r.versus
            if i == 0:
                diff = ["lowest mean", MISSING, MISSING, MISSING]
            elif p is None or not p.n:
                diff = ["no paired runs", MISSING, MISSING, MISSING]
            else:
                diff = [f"{p.mean:+.3g} [{p.ci_low:+.3g}, {p.ci_high:+.3g}]",
                        f"{p.p_wilcoxon:.2g}", str(p.n), MARK[beats(p)]]
            out.append("| " + " | ".join([r.text, cells, seeds, fmt_stat(r.stat)] + diff)
                       + " |")
        out.append("")
    return "\n".join(out)
