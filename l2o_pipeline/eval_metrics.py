"""What an evaluation logs to the writers, under names a W&B dashboard can rely on.

Per horizon ``h`` (README "W&B dashboards" says which panel to make from which key):

* curves with their own x axis ``eval/<h>/step`` (``define_metric``), the mean over the
  evaluation's runs at each step: ``eval/<h>/loss`` (the run's own optimizer, the same key in
  every run of a sweep, so a line panel grouped by the W&B group averages the seeds of a cell)
  and ``eval/<h>/<optimizer>/loss`` (every optimizer of the run, baselines included);
* tables ``eval/<h>/final_losses`` (one row per optimizer and evaluation run: the paired
  design's raw data) and ``eval/<h>/final_loss_summary`` (one row per optimizer);
* summary ``eval/<h>/final_loss``, ``eval/<h>/final_loss_std``, ``eval/<h>/n_diverged`` (the
  run's own optimizer: one bar or parallel-coordinates panel over a sweep) and
  ``eval/<h>/<optimizer>/final_loss`` (each optimizer).
"""

from __future__ import annotations

import torch

from l2o_pipeline.evaluate import EvalResult

MAX_CURVE_POINTS = 1000  # per curve; W&B's line plots sample ~1,500 points anyway


def curve_steps(n_steps: int, max_points: int = MAX_CURVE_POINTS) -> list[int]:
    """The steps a curve is logged at: every step, or ``max_points`` evenly spaced ones
    including the first and the last."""
    if n_steps <= max_points:
        return list(range(n_steps))
    return sorted({round(i * (n_steps - 1) / (max_points - 1)) for i in range(max_points)})


def mean_curve(curves: torch.Tensor) -> torch.Tensor:
    """[runs, steps] -> [steps]: the mean over the runs whose loss is finite at that step."""
    return torch.where(torch.isfinite(curves), curves, torch.nan).nanmean(0)


def log_evaluation(writer, horizon: int, main: str, block: dict,
                   curves: dict[str, torch.Tensor]) -> None:
    """Log one horizon of an evaluation: ``block`` is its summary block (per optimizer: the
    summary, ``lr`` and ``final_losses``), ``curves`` its loss curves ``[runs, steps]``;
    ``main`` the optimizer the run is about (the others are its baselines)."""
    prefix = f"eval/{horizon}"
    steps = curve_steps(horizon)
    index = torch.tensor(steps)
    means = {name: mean_curve(c.float())[index].tolist() for name, c in curves.items()}
    series = {f"{prefix}/{name}/loss": values for name, values in means.items()}
    series[f"{prefix}/loss"] = means[main]
    writer.log_curves(f"{prefix}/step", steps, series)

    rows = []
    for name, c in curves.items():
        finals = torch.tensor(block[name]["final_losses"], dtype=c.dtype)
        diverged = EvalResult(name, c, finals).diverged().tolist()
        rows += [[horizon, name, name == main, block[name]["lr"], run, final, initial, div]
                 for run, (final, initial, div) in enumerate(zip(
                     finals.tolist(), c[:, 0].tolist(), diverged))]
    writer.log_table(f"{prefix}/final_losses", ["horizon", "optimizer", "main", "lr", "run",
                                                 "final_loss", "initial_loss", "diverged"], rows)
    writer.log_table(f"{prefix}/final_loss_summary",
                     ["horizon", "optimizer", "main", "lr", "final_loss_mean",
                      "final_loss_std", "n_diverged", "n_runs"],
                     [[horizon, k, k == main, v["lr"], v["final_loss_mean"], v["final_loss_std"],
                       v["n_diverged"], v["n_runs"]] for k, v in block.items()])
    own = block[main]
    writer.summary({f"{prefix}/final_loss": own["final_loss_mean"],
                    f"{prefix}/final_loss_std": own["final_loss_std"],
                    f"{prefix}/n_diverged": own["n_diverged"]}
                   | {f"{prefix}/{k}/final_loss": v["final_loss_mean"] for k, v in block.items()})
