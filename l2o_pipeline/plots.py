"""PNG figures of loss curves (mean and spread over runs), log-scale as in the papers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from l2o_pipeline.eval_metrics import mean_curve


def plot_loss_curves(curves: Mapping[str, torch.Tensor], path: str | Path, title: str,
                     xlabel: str = "step", ylabel: str = "loss") -> Path:
    """``curves`` maps a name to a [runs, steps] tensor; shades the 25–75 % band.

    Non-finite losses (diverged runs) are left out of the mean and band; a curve with no
    finite value at all is listed as "diverged" instead of drawn. The y axis is logarithmic
    only when there is a positive value to draw (matplotlib refuses a log axis without one).
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: SLURM nodes and CI have no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    positive = False
    for name, c in curves.items():
        c = c.float()
        finite = torch.where(torch.isfinite(c), c, torch.nan)
        if torch.isnan(finite).all():
            ax.plot([], [], ls="none", label=f"{name}: diverged")
            continue
        positive = positive or bool((finite > 0).any())
        mean = mean_curve(c)
        lo, hi = finite.nanquantile(0.25, dim=0), finite.nanquantile(0.75, dim=0)
        steps = torch.arange(1, c.shape[1] + 1)
        (line,) = ax.plot(steps, mean, label=name, lw=1.2)
        if c.shape[0] > 1:
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
