"""A miniature of the paper grid, end to end: meta-training sweep → Table 2 sweep → report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sweep(name, runs, *overrides):
    env = {**os.environ, "L2O_RUNS": str(runs), "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "l2o_pipeline", "--config-dir", "sweeps",
                           "--config-name", name, "debug=default", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_miniature_meta_train_and_table2_sweeps_into_a_report(tmp_path):
    runs = tmp_path / "runs"
    # An evaluation cell without its meta-training cell names the command that makes it.
    missing = sweep("table2", runs, "experiment=rnnprop", "optimizee.activation=sigmoid",
                    "seed=0", "evaluation.baselines.adam=0.03125")
    assert missing.returncode != 0
    assert ("paper_meta_train experiment=rnnprop debug=default seed=0"
            in missing.stdout + missing.stderr)

    meta = sweep("paper_meta_train", runs, "experiment=rnnprop,dmoptimizer", "seed=0",
                 "meta_train.n_iterations=2")
    assert meta.returncode == 0, meta.stderr[-3000:]
    cells = sorted(p.parent.name for p in (runs / "paper" / "meta_train").glob("*/seed_0"))
    # debug is part of a cell's name: a debug cell never shares a real cell's folder
    assert cells == ["debug=default,experiment=dmoptimizer", "debug=default,experiment=rnnprop"]

    table2 = sweep("table2", runs, "experiment=rnnprop,dmoptimizer",
                   "optimizee.activation=sigmoid,relu", "seed=0",
                   "evaluation.baselines.adam=0.03125")
    assert table2.returncode == 0, table2.stderr[-3000:]
    summaries = list((runs / "paper" / "table2").glob("*/seed_0/eval/summary.json"))
    assert len(summaries) == 4
    assert {json.loads(p.read_text())["experiment"] for p in summaries} == {
        "rnnprop", "dmoptimizer"}

    # relaunching skips the finished cells
    again = sweep("table2", runs, "experiment=rnnprop", "optimizee.activation=sigmoid", "seed=0",
                  "evaluation.baselines.adam=0.03125")
    assert again.returncode == 0 and "is finished" in again.stdout

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "l2o_pipeline.report", "--runs",
                             str(runs / "paper"), "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "Table 2" in text and "not run" in text  # the rest of the grid is missing
    assert list(out.glob("*.png"))
