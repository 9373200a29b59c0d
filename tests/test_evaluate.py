"""What an evaluation summary calls diverged, and what its mean is over."""

from __future__ import annotations

import json
import math

import pytest
import torch

from l2o_pipeline.baselines import scan_tuning
from l2o_pipeline.evaluate import DIVERGED_FACTOR, EvalResult
from l2o_pipeline.pipeline import run


def result(initial, final) -> EvalResult:
    curves = torch.tensor(initial).unsqueeze(1).repeat(1, 3)
    return EvalResult("opt", curves, torch.tensor(final))


def test_a_run_diverges_when_its_final_loss_is_non_finite_or_far_above_its_start():
    above = 2.0 * DIVERGED_FACTOR
    res = result([2.0, 2.0, 2.0, 2.0, 1.0], [1.0, above * 2.0, math.nan, math.inf, 1.01])
    assert res.diverged().tolist() == [False, True, True, True, False]
    s = res.summary()
    assert (s["n_runs"], s["n_diverged"], s["n_in_mean"]) == (5, 3, 2)
    assert s["final_loss_mean"] == pytest.approx((1.0 + 1.01) / 2)  # over the other runs


def test_all_runs_diverged_has_no_mean():
    s = result([1.0, 1.0], [50.0, 80.0]).summary()
    assert s["n_diverged"] == 2 and s["n_in_mean"] == 0 and math.isnan(s["final_loss_mean"])


def test_a_finite_but_exploding_baseline_is_reported_as_diverged(make_cfg, tmp_path):
    """SGD at lr = 1e3 on the tiny MLP: every final loss is finite (thousands) but far above
    its start; a sane rate on the same runs is not diverged."""
    summaries = {}
    for lr in (1e3, 0.5):
        out = tmp_path / f"sgd_{lr:g}"
        run(make_cfg("debug=default", "stage=evaluate", "optimizer=sgd", f"optimizer.lr={lr}",
                     "evaluation.n_runs=3", output_dir=out))
        summary = json.loads((out / "eval" / "summary.json").read_text())
        summaries[lr] = summary["horizons"]["10"]["sgd"]
        assert "diverged" in summary["diverged_rule"]
        finals = torch.load(out / "eval" / "curves_10.pt")["sgd"]
        assert torch.isfinite(finals).all()
    # no run left for a mean: NaN, which the strict-JSON summary writes as null
    assert summaries[1e3]["n_diverged"] == 3 and summaries[1e3]["final_loss_mean"] is None
    assert summaries[0.5]["n_diverged"] == 0 and summaries[0.5]["n_in_mean"] == 3


def test_a_tuning_rate_with_diverged_runs_is_never_the_tuned_one(tmp_path):
    """Its mean leaves the diverged runs out, so it may look best; it is not chosen."""
    for lr, mean, diverged in ((0.5, 0.1, 2), (0.25, 0.4, 0)):
        cell = tmp_path / f"optimizer.lr={lr}" / "seed_0" / "eval"
        cell.mkdir(parents=True)
        block = {"sgd": {"final_loss_mean": mean, "n_diverged": diverged, "lr": lr}}
        (cell / "summary.json").write_text(json.dumps(
            {"optimizer": "sgd", "task": "t", "horizons": {"100": block}}))
    assert scan_tuning(tmp_path)["t@100"]["sgd"]["lr"] == 0.25
