"""The evaluate stage on the batched engine (the default) and on the sequential one."""

import json

import pytest
import torch

from l2o_pipeline.config import ConfigError, validate_config
from l2o_pipeline.pipeline import run

DEBUG = ["debug=default", "stage=evaluate", "optimizer=sgd", "optimizer.lr=0.5",
         "evaluation.baselines.adagrad=0.1", "evaluation.n_runs=3"]


def summary_of(out):
    return json.loads((out / "eval" / "summary.json").read_text())


def test_batched_and_sequential_engines_agree_and_save_per_run_final_losses(make_cfg, tmp_path):
    runs = {}
    for engine in ("batched", "sequential"):
        out = tmp_path / engine
        metric = run(make_cfg(*DEBUG, f"evaluation.engine={engine}", output_dir=out))
        summary = summary_of(out)
        assert summary["engine"] == engine
        block = summary["horizons"]["10"]
        for name in ("sgd", "adam", "adagrad"):
            finals = block[name]["final_losses"]
            assert len(finals) == 3
            assert block[name]["final_loss_mean"] == pytest.approx(sum(finals) / 3, rel=1e-6)
        assert block["sgd"]["final_loss_mean"] == pytest.approx(metric)
        runs[engine] = block, torch.load(out / "eval" / "curves_10.pt")
    (batched, curves_b), (sequential, curves_s) = runs["batched"], runs["sequential"]
    for name in ("sgd", "adam", "adagrad"):  # float32: equal up to rounding
        assert batched[name]["final_losses"] == pytest.approx(sequential[name]["final_losses"],
                                                              rel=1e-4)
        torch.testing.assert_close(curves_b[name], curves_s[name], rtol=1e-4, atol=1e-6)


def test_a_tiny_memory_budget_runs_row_by_row_and_says_so(make_cfg, tmp_path, caplog):
    out = tmp_path / "tiny"
    with caplog.at_level("INFO", logger="l2o_pipeline.batched"):
        run(make_cfg(*DEBUG, "evaluation.memory_budget_gb=0.0001", output_dir=out))
    assert "over evaluation.memory_budget_gb=0.0001" in caplog.text
    assert "3 settings × 3 runs × 10 steps in 9 chunk(s)" in caplog.text
    assert len(summary_of(out)["horizons"]["10"]["adam"]["final_losses"]) == 3


@pytest.mark.parametrize("override, key", [
    ("evaluation.engine=parallel", "evaluation.engine"),
    ("evaluation.memory_budget_gb=0", "evaluation.memory_budget_gb"),
    ("evaluation.memory_budget_gb=-4", "evaluation.memory_budget_gb"),
])
def test_bad_engine_settings_name_the_key(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        validate_config(make_cfg(*DEBUG, override))
