"""The papers' figures: loss curves (mean over runs, 25-75 % band), final loss against the
learning rate and the depth, and the meta-training curves."""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2o_pipeline.catalog import (
    ACTIVATIONS,
    BASE,
    CNNS,
    DEPTHS,
    DM_TESTS,
    EXPERIMENTS,
    LSTMS,
    RELU,
    needs,
)
from l2o_pipeline.report.claims import fig5_depth, quadratic_task
from l2o_pipeline.report.index import MetaCell, RunIndex
from l2o_pipeline.report.readers import finite_nan
from l2o_pipeline.report.stats import Stat, rel
from l2o_pipeline.report.style import HAND, color, fmt_lr, label
from l2o_pipeline.report.tables import Table, render_table

FIGURE_FILES = ("fig2_horizons.png", "fig3_learning_rates.png", "fig4_activations.png",
                "fig5_depth.png", "fig6_depth.png", "fig7_cnn.png", "fig8_lstm.png",
                "fig9_control.png", "dm_quadratic.png", "dm_generalisation.png",
                "meta_training.png")


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


def _label_panel(ax, xlabel: str, ylabel: str, title: str | None = None,
                 legend: int | None = 6) -> None:
    """A panel's title, axis names, grid and legend (of ``legend`` pt; None: no legend)."""
    if title is not None:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if legend is not None:
        ax.legend(fontsize=legend)


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
                c = finite_nan(c)
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
            ax.plot(steps, mean[keep], label=text, color=color(name), lw=1.1)
            if n > 1:
                ax.fill_between(steps, lo[keep], hi[keep], color=color(name), alpha=0.15,
                                lw=0)
            shown.append(mean[keep])
        if not lines:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            _auto_y(ax, np.concatenate(shown))
        _label_panel(ax, "step", "loss", ptitle, legend=6 if lines else None)
    path = out / file
    _finish(plt, fig, title, path)
    return Figure(key, title, caption, needs, file, data)


def fig3_figure(idx: RunIndex, out: Path) -> Figure:
    title = "Fig. 3: final loss against learning rate, base MLP"
    caption = ("Every traditional algorithm over the √2 grid of the tuning sweep; the "
               "horizontal line is RNNprop's final loss (pooled over seeds).")
    sweeps = needs("fig3")
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
        return Figure("fig3", title, caption, sweeps, None, data)
    plt, fig, axes = _grid(len(data["panels"]))
    for ax, panel in zip(axes, data["panels"]):
        h = panel["horizon"]
        for o in HAND:
            g = idx.hand_by_lr(o, BASE, h)
            pts = [(lr, s.mean) for lr, s in g.items()
                   if lr is not None and math.isfinite(s.mean) and s.mean > 0]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, lw=1, label=label(o), color=color(o))
        r = idx.learned("rnnprop", BASE, h)
        if r is not None and math.isfinite(r.mean):
            ax.axhline(r.mean, color=color("rnnprop"), ls="--", lw=1.2, label="RNNprop")
        _log_axis(ax, "x", base=2)
        _auto_y(ax, [s.mean for o in HAND for s in idx.hand_by_lr(o, BASE, h).values()]
                + ([r.mean] if r is not None else []))
        _label_panel(ax, "learning rate", "final loss", f"{h} steps")
    _finish(plt, fig, title, out / "fig3_learning_rates.png")
    return Figure("fig3", title, caption, sweeps, "fig3_learning_rates.png", data)


def fig6_figure(idx: RunIndex, out: Path) -> Figure:
    title = "Fig. 6: final loss against the number of hidden layers (100 steps)"
    caption = "Mean final loss; RNNprop and DMoptimizer pooled over seeds, Adam tuned per depth."
    sweeps = needs("fig6")
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
        return Figure("fig6", title, caption, sweeps, None, data)
    plt, fig, axes = _grid(1)
    ax = axes[0]
    for name, pts in series.items():
        pts = {d: s.mean for d, s in pts.items() if math.isfinite(s.mean) and s.mean > 0}
        if pts:
            ax.plot(list(pts), list(pts.values()), marker="o", label=label(name),
                    color=color(name))
    _auto_y(ax, [s.mean for v in series.values() for s in v.values()])
    ax.set_xticks(list(DEPTHS))
    _label_panel(ax, "hidden layers", "final loss", legend=7)
    _finish(plt, fig, title, out / "fig6_depth.png")
    return Figure("fig6", title, caption, sweeps, "fig6_depth.png", data)


def meta_figure(idx: RunIndex, out: Path) -> Figure:
    title = "Meta-training: meta/loss per iteration (thin) and its moving average (thick)"
    sweeps = needs("meta")
    by_exp: dict[str, list[MetaCell]] = defaultdict(list)
    for c in idx.meta:
        by_exp[c.experiment].append(c)
    order = list(EXPERIMENTS)
    names = sorted(by_exp, key=lambda e: (order.index(e) if e in order else 99, e))
    data = {e: [{"cell": rel(c.path, idx.root), "seed": c.seed, "done": c.done,
                 "step": [c.steps[i] for i in _thin(len(c.steps))],
                 "loss": [c.loss[i] for i in _thin(len(c.steps))],
                 "loss_ema": [c.ema[i] for i in _thin(len(c.steps))]}
                for c in sorted(by_exp[e], key=lambda c: (c.seed is None, c.seed or 0))]
            for e in names}
    if not any(c.steps for c in idx.meta):
        return Figure("meta", title, "", sweeps, None, data)
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
        _label_panel(ax, "iteration", "meta/loss", e)
    _finish(plt, fig, title, out / "meta_training.png")
    return Figure("meta", title, "", sweeps, "meta_training.png", data)


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
        needs("fig2"),
        [(f"{h} steps", BASE, h, _series(idx, BASE, h, two, HAND)) for h in (100, 2000, 10000)])
    figs["fig3"] = fig3_figure(idx, out)
    figs["fig4"] = curve_figure(
        idx, out, "fig4", "fig4_activations.png", "Fig. 4 / Table 2: base MLP with each "
        "activation, 100 steps", "Paper 1 Fig. 4 shows ReLU; the other activations are Table "
        "2's.", needs("fig4"),
        [(act, task, 100, _series(idx, task, 100, two, HAND)) for act, task in
         ACTIVATIONS.items()])
    depth = depth if depth is not None else fig5_depth(idx)
    task = DEPTHS.get(depth or 0)
    figs["fig5"] = curve_figure(
        idx, out, "fig5", "fig5_depth.png",
        f"Fig. 5: MLP with {depth} hidden layers, 100 steps" if task else "Fig. 5",
        "The depth is Fig. 5's unrecoverable choice: by default the depth ≥ 2 where RNNprop's "
        "lead over tuned Adam is largest (--fig5-depth to pick one).",
        needs("fig5"), [(f"{depth} hidden layers", task, 100,
                                _series(idx, task, 100, two, HAND))] if task else [])
    figs["fig6"] = fig6_figure(idx, out)
    figs["fig7"] = curve_figure(
        idx, out, "fig7", "fig7_cnn.png", "Fig. 7: CNNs, 100 steps", "", needs("fig7"),
        [(name, task, 100, _series(idx, task, 100, two, HAND)) for name, task in CNNS.items()])
    figs["fig8"] = curve_figure(
        idx, out, "fig8", "fig8_lstm.png", "Fig. 8: LSTM task, 100 steps",
        "Paper 1 Fig. 8 shows the default task; the other two are Table 3's settings.",
        "fig8_table3, tune_lstm",
        [(name, task, 100, _series(idx, task, 100, two, HAND)) for name, task in LSTMS.items()])
    figs["fig9"] = curve_figure(
        idx, out, "fig9", "fig9_control.png", "Fig. 9: control experiment, ReLU MLP, 100 steps",
        "", needs("fig9"),
        [("ReLU MLP", RELU, 100, _series(idx, RELU, 100, ["rnnprop", "rnnprop_no_rs",
                                                          "dmoptimizer", "dmoptimizer_tricks"],
                                         ["adam"]))])
    quad = quadratic_task(idx)
    dm_hand = ["sgd", "rmsprop", "adam"]
    figs["dm_quadratic"] = curve_figure(
        idx, out, "dm_quadratic", "dm_quadratic.png", "Paper 2: quadratics, 100 steps", "",
        needs("dm_quadratic"),
        [(quad, quad, 100, _series(idx, quad, 100, ["dm_quadratic"], dm_hand))])
    figs["dm_generalisation"] = curve_figure(
        idx, out, "dm_generalisation", "dm_generalisation.png",
        "Paper 2: the MNIST DMoptimizer's generalisation, 200 steps", "",
        needs("dm_generalisation"),
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
