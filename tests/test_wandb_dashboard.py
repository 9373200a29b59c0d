"""What a W&B dashboard reads: evaluation curves on their own axis, final-loss tables,
consistent summary keys, one artifact per cell, and a console that is the user's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2o_pipeline.eval_metrics import curve_steps, mean_curve
from l2o_pipeline.pipeline import run
from l2o_pipeline.wandb_names import model_artifact_name

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    import wandb_offline_reader as reader
except ImportError:  # pragma: no cover
    from tests import wandb_offline_reader as reader

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ["debug=default", "logger=default"]  # the debug preset turns W&B off: back on


@pytest.fixture
def offline(monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # no stdout hooks fighting pytest's capture


def the_run(out: Path) -> dict:
    dirs = reader.run_dirs(out)
    assert len(dirs) == 1, dirs
    return reader.load_run(dirs[0])


def test_an_evaluation_run_holds_curves_final_loss_tables_and_its_artifact(
        make_cfg, tmp_path, offline):
    out = tmp_path / "run"
    run(make_cfg(*OFFLINE, "stage=both", "evaluation.baselines.sgd=0.1"))
    wb = the_run(out)
    curves = torch.load(out / "eval" / "curves_10.pt")
    summary = json.loads((out / "eval" / "summary.json").read_text())["horizons"]["10"]

    # curves: history series on their own x axis, the mean over the evaluation's runs
    for key in ("eval/10/loss", "eval/10/rnnprop/loss", "eval/10/adam/loss"):
        assert wb["metrics"][key] == "eval/10/step"
    rows = [h for h in wb["history"] if "eval/10/step" in h]
    assert [h["eval/10/step"] for h in rows] == list(range(10))
    for name in ("rnnprop", "adam", "sgd"):
        logged = [h[f"eval/10/{name}/loss"] for h in rows]
        assert logged == pytest.approx(curves[name].mean(0).tolist(), rel=1e-6)
    assert [h["eval/10/loss"] for h in rows] == [h["eval/10/rnnprop/loss"] for h in rows]

    # final losses per run and optimizer, as a table read back from the run's files
    table = reader.table(wb, "eval/10/final_losses")
    col = {c: i for i, c in enumerate(table["columns"])}
    got = {(r[col["optimizer"]], r[col["run"]]): r[col["final_loss"]] for r in table["data"]}
    assert got == pytest.approx({(name, i): v for name in ("rnnprop", "adam", "sgd")
                                 for i, v in enumerate(summary[name]["final_losses"])})
    assert {r[col["optimizer"]] for r in table["data"] if r[col["main"]]} == {"rnnprop"}
    per_optimizer = reader.table(wb, "eval/10/final_loss_summary")
    assert len(per_optimizer["data"]) == 3

    # one summary key per role, the same in every run of a sweep, and one per optimizer
    assert wb["summary"]["eval/10/final_loss"] == pytest.approx(
        summary["rnnprop"]["final_loss_mean"])
    assert wb["summary"]["eval/10/adam/final_loss"] == pytest.approx(
        summary["adam"]["final_loss_mean"])
    assert wb["summary"]["eval/10/n_diverged"] == summary["rnnprop"]["n_diverged"]

    # the meta-trained optimizer is an artifact named after its cell
    models = [a for a in wb["artifacts"] if a["type"] == "model"]
    assert [a["name"] for a in models] == [model_artifact_name("rnnprop", wb["group"], 0)]
    assert models[0]["files"] == ["best.pt"]


def test_artifact_names_differ_across_experiments(make_cfg, tmp_path, offline):
    names = {}
    for cell in ("experiment=rnnprop_no_rs", "optimizer=rnnprop"):
        out = tmp_path / cell
        run(make_cfg(*OFFLINE, "stage=meta_train", "meta_train.n_iterations=2", cell,
                     output_dir=out))
        wb = the_run(out)
        assert cell in wb["group"]
        names[cell] = [a["name"] for a in wb["artifacts"] if a["type"] == "model"]
    assert all(len(n) == 1 for n in names.values()), names
    assert names["experiment=rnnprop_no_rs"] != names["optimizer=rnnprop"]


def test_model_artifact_names():
    assert model_artifact_name("rnnprop", "optimizer=rnnprop", 3) == "optimizer-rnnprop-seed3"
    assert model_artifact_name("rnnprop", "experiment=rnnprop_no_rs", 0) == \
        "rnnprop-experiment-rnnprop_no_rs-seed0"
    assert model_artifact_name("dmoptimizer", None, 0) == "dmoptimizer-default-seed0"
    long = [model_artifact_name("rnnprop", f"experiment=x,{'k' * 200}={i}", 0) for i in (1, 2)]
    assert all(len(n) <= 128 and re.fullmatch(r"[\w.-]+", n) for n in long)
    assert long[0] != long[1]


def test_curve_steps_and_mean_curve():
    assert curve_steps(5) == [0, 1, 2, 3, 4]
    steps = curve_steps(10_000, max_points=1000)
    assert len(steps) == 1000 and steps[0] == 0 and steps[-1] == 9_999
    curves = torch.tensor([[1.0, float("inf")], [3.0, 2.0]])
    assert mean_curve(curves).tolist() == [2.0, 2.0]  # a diverged run leaves the mean


def cli(*args, env):
    full = {**os.environ, "HYDRA_FULL_ERROR": "1", **env}
    return subprocess.run([sys.executable, "-m", "l2o_pipeline", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=600)


# What a run says about its W&B run: one line, where it is and how to upload it.
SYNC_LINE = re.compile(r"W&B run (\w+) logged offline in (\S+); upload with: wandb sync (\S+)")


def test_the_console_holds_no_wandb_boilerplate(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    # WANDB_SILENT off (the test suite sets it): the silence must come from the pipeline
    proc = cli(*OFFLINE, "stage=meta_train", "meta_train.n_iterations=1",
               f"hydra.run.dir={out}", env={"WANDB_MODE": "offline", "WANDB_SILENT": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert not [ln for ln in console.splitlines() if ln.startswith("wandb:")], console
    lines = SYNC_LINE.findall(console)
    assert len(lines) == 1
    run_id, run_dir, pattern = lines[0]
    assert Path(run_dir) == reader.run_dirs(out)[0] and run_id in pattern
