"""The entrypoint in-process (debug settings) and as a CLI: stages, outputs, resume, W&B."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from l2o_pipeline.checkpoint import load_optimizer
from l2o_pipeline.config import ConfigError
from l2o_pipeline.pipeline import run
from l2o_pipeline.tracking import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ["debug=default"]


def test_meta_train_stage_writes_checkpoints_metrics_and_config(make_cfg, tmp_path):
    cfg = make_cfg(*DEBUG, "stage=meta_train")
    metric = run(cfg)
    out = tmp_path / "run"
    assert metric == pytest.approx(json.loads((out / "DONE").read_text())["metric"])
    assert (out / "best.pt").is_file() and (out / "final.pt").is_file()
    assert (out / "config_resolved.yaml").is_file()
    model, payload = load_optimizer(out / "best.pt", expected_class="rnnprop")
    assert payload["config"]["optimizer"]["name"] == "rnnprop"
    assert payload["config"]["tricks"]["random_scaling"]["enabled"]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "meta/loss" in r] == [1, 2, 3, 4]
    assert not (out / "eval").exists()


def test_save_memory_switch_is_applied_and_changes_only_rounding(make_cfg, tmp_path):
    """``save_memory=true`` recomputes the gates in the backward: the run must really use it
    (the process-wide switch is on) and end with the same meta-parameters as the default."""
    from l2o_pipeline.optimizers import kernels

    outs = {flag: tmp_path / f"save_memory_{flag}" for flag in ("false", "true")}
    try:
        for flag, out in outs.items():
            run(make_cfg(*DEBUG, "stage=meta_train", f"save_memory={flag}", output_dir=out))
            assert kernels._memory_saving["on"] is (flag == "true")
    finally:
        kernels.set_memory_saving(False)
    eager, saved = (final_params(out) for out in outs.values())
    for key, value in eager.items():
        torch.testing.assert_close(saved[key], value, rtol=1e-4, atol=1e-6)


def test_both_stages_write_an_evaluation_summary_and_plots(make_cfg, tmp_path):
    cfg = make_cfg(*DEBUG, "stage=both", "evaluation.baselines.sgd=0.1")
    metric = run(cfg)
    out = tmp_path / "run"
    summary = json.loads((out / "eval" / "summary.json").read_text())
    block = summary["horizons"]["10"]
    assert set(block) == {"rnnprop", "adam", "sgd", "_seconds"}
    assert block["rnnprop"]["final_loss_mean"] == pytest.approx(metric)
    assert block["adam"]["lr"] == 0.03125 and block["sgd"]["lr"] == 0.1
    assert (out / "eval" / "loss_curves_10.png").stat().st_size > 1000
    curves = torch.load(out / "eval" / "curves_10.pt")
    assert curves["adam"].shape == (2, 10)


def test_evaluate_stage_with_a_checkpoint_and_a_hand_designed_optimizer(make_cfg, tmp_path):
    train_dir = tmp_path / "train"
    run(make_cfg(*DEBUG, "stage=meta_train", output_dir=train_dir))
    learned = run(make_cfg(*DEBUG, "stage=evaluate", f"evaluation.checkpoint={train_dir}",
                           output_dir=tmp_path / "eval_learned"))
    again = run(make_cfg(*DEBUG, "stage=evaluate", f"evaluation.checkpoint={train_dir}/best.pt",
                         "skip_if_done=false", output_dir=tmp_path / "eval_learned"))
    assert learned == pytest.approx(again)  # paired, seeded: the same number twice
    hand = run(make_cfg(*DEBUG, "stage=evaluate", "optimizer=sgd", "optimizer.lr=0.5",
                        output_dir=tmp_path / "eval_sgd"))
    summary = json.loads((tmp_path / "eval_sgd" / "eval" / "summary.json").read_text())
    assert summary["horizons"]["10"]["sgd"]["final_loss_mean"] == pytest.approx(hand)


def test_evaluate_without_a_checkpoint_says_how_to_make_one(make_cfg):
    with pytest.raises(ConfigError, match="stage=meta_train"):
        run(make_cfg(*DEBUG, "stage=evaluate"))


def test_a_finished_run_is_skipped(make_cfg, tmp_path):
    cfg = make_cfg(*DEBUG, "stage=meta_train")
    first = run(cfg)
    mtime = (tmp_path / "run" / "final.pt").stat().st_mtime
    assert run(cfg) == first
    assert (tmp_path / "run" / "final.pt").stat().st_mtime == mtime


def test_a_finished_evaluation_reruns_only_when_what_it_evaluated_changed(make_cfg, tmp_path):
    """Relaunching skips a finished evaluation cell, unless its checkpoint moved on (the
    meta-training cell was continued), its run count or its baselines' rates changed."""
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.selection=last",
                 output_dir=train_dir))

    def evaluate(*extra):
        run(make_cfg(*DEBUG, "stage=evaluate", f"evaluation.checkpoint={train_dir}", *extra,
                     output_dir=eval_dir))
        summary = json.loads((eval_dir / "eval" / "summary.json").read_text())
        return summary, (eval_dir / "eval" / "summary.json").stat().st_mtime_ns

    first, stamp = evaluate()
    assert first["checkpoint_iteration"] == 4
    assert evaluate()[1] == stamp  # unchanged: skipped
    run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.selection=last",
                 "meta_train.n_iterations=6", output_dir=train_dir))  # continued: best.pt moved
    second, stamp2 = evaluate()
    assert stamp2 != stamp and second["checkpoint_iteration"] == 6
    third, stamp3 = evaluate("evaluation.n_runs=3")
    assert stamp3 != stamp2 and third["n_runs"] == 3
    fourth, stamp4 = evaluate("evaluation.n_runs=3", "evaluation.baselines.adam=0.1")
    assert stamp4 != stamp3 and fourth["horizons"]["10"]["adam"]["lr"] == 0.1
    assert evaluate("evaluation.n_runs=3", "evaluation.baselines.adam=0.1")[1] == stamp4


def test_a_checkpoint_is_evaluated_with_its_own_hyper_parameters_and_recorded_so(
        make_cfg, tmp_path, caplog):
    """A hidden-size-5 checkpoint under a config that says 20 (rnnprop's default): the
    size-5 net runs, the recorded config and summary say 5, and a warning names the key."""
    train, out = tmp_path / "train", tmp_path / "eval"
    run(make_cfg(*DEBUG, "stage=meta_train", "optimizer.hidden_size=5", output_dir=train))
    cfg = make_cfg(*DEBUG, "stage=evaluate", f"evaluation.checkpoint={train}", output_dir=out)
    assert cfg.optimizer.hidden_size == 20
    with caplog.at_level("WARNING", logger="l2o_pipeline.stages"):
        run(cfg)
    assert "optimizer.hidden_size: 20 -> 5" in caplog.text
    recorded = yaml_load(out / "config_resolved.yaml")
    assert recorded["optimizer"]["hidden_size"] == 5
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["optimizer_hparams"]["hidden_size"] == 5


def yaml_load(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def test_cli_refuses_a_changed_config_in_a_finished_folder(tmp_path):
    """Through the CLI: a non-zero exit naming the key, and the folder's records untouched
    (Hydra's own .hydra/ copy of the launch is rewritten before the pipeline runs)."""
    out = tmp_path / "run"
    assert cli(*DEBUG, "stage=meta_train", "meta_train.n_iterations=1",
               f"hydra.run.dir={out}", timeout=300).returncode == 0
    records = {name: (out / name).read_bytes()
               for name in ("DONE", "config_resolved.yaml", "fingerprint.json", "final.pt")}
    proc = cli(*DEBUG, "stage=meta_train", "meta_train.n_iterations=1", "seed=3",
               f"hydra.run.dir={out}", timeout=300)
    assert proc.returncode != 0 and "seed: 0 -> 3" in proc.stdout + proc.stderr
    assert {name: (out / name).read_bytes() for name in records} == records


def cli(*args, env=None, **kw):
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "l2o_pipeline", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, **kw)


def test_cli_introspection():
    job = cli("--cfg", "job", "optimizer=dmoptimizer")
    assert job.returncode == 0 and "preprocess_p: 10.0" in job.stdout
    info = cli("--info", "defaults")
    assert info.returncode == 0 and "optimizer/rnnprop" in info.stdout


def test_cli_bad_override_names_the_key():
    proc = cli("horizon.unroll=0")
    assert proc.returncode != 0 and "horizon.unroll" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_local_multirun_gives_one_wandb_run_per_job(tmp_path):
    from tests.wandb_offline_reader import load_run

    sweep = tmp_path / "sweep"
    proc = cli("-m", *DEBUG, "logger=default", "stage=meta_train",
               "optimizer=rnnprop,dmoptimizer", "seed=0,1", f"hydra.sweep.dir={sweep}",
               "meta_train.n_iterations=2", env={"WANDB_MODE": "offline", "WANDB_SILENT": "false"},
               timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [load_run(d) for d in sorted(sweep.glob("*/seed_*/wandb/offline-run-*"))]
    assert len(runs) == 4
    # the console is the user's: no W&B boilerplate, one line per run on where it is
    console = (proc.stdout + proc.stderr).splitlines()
    assert not [ln for ln in console if ln.startswith("wandb:")]
    assert len([ln for ln in console if "upload with: wandb sync" in ln]) == 4
    # group = the grid cell: the overrides without the seed (and without logger, stage and
    # the meta-training length, which are not part of a cell's name); debug is part of it
    assert {r["group"] for r in runs} == {"debug=default,optimizer=rnnprop",
                                          "debug=default,optimizer=dmoptimizer"}
    assert len({r["id"] for r in runs}) == 4
    for r in runs:
        assert r["job_type"] == "meta_train"
        assert r["name"] == f"{r['group']}/seed={r['config']['seed']}"
        assert r["config"]["optimizer"]["name"] in r["group"]
        steps = [h["_step"] for h in r["history"] if "meta/loss" in h]
        assert steps == [1, 2]


RESUME_ARGS = [*DEBUG, "stage=meta_train", "meta_train.n_iterations=25",
               "meta_train.checkpoint_every=10", "meta_train.state_every=1"]


def final_params(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=False)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_interrupted_meta_training_resumes_bit_exactly(tmp_path, sig):
    reference = tmp_path / "reference"
    assert cli(*RESUME_ARGS, f"hydra.run.dir={reference}", timeout=600).returncode == 0

    out = tmp_path / "interrupted"
    stop_at = random.Random(sig).randint(3, 15)
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "l2o_pipeline", *RESUME_ARGS,
                             f"hydra.run.dir={out}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(read_jsonl(metrics)) >= stop_at:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert not (out / "final.pt").exists(), "the run finished before it was interrupted"
    if sig != signal.SIGKILL:
        assert "stop requested: state saved" in output  # Hydra logs to stdout
        assert proc.returncode == 128 + sig
    resumed = cli(*RESUME_ARGS, f"hydra.run.dir={out}", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed meta-training" in resumed.stdout
    a, b = final_params(reference), final_params(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "meta/loss" in r]
    assert steps == list(range(1, 26))  # no step lost, none logged twice


def test_relaunching_with_more_iterations_continues_training(make_cfg, tmp_path):
    run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.n_iterations=2"))
    run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.n_iterations=4"))
    out = tmp_path / "run"
    assert json.loads((out / "DONE").read_text())["iterations"] == 4
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "meta/loss" in r]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("busy, preset, expected", [
    (0.5, None, None),          # a machine of its own: OpenMP's default (threads spin briefly)
    (1.8, None, "PASSIVE"),     # busy: idle threads sleep instead of stealing the CPU
    (1.8, "ACTIVE", "ACTIVE"),  # the user's setting always wins
])
def test_openmp_wait_policy_follows_the_machine_load(monkeypatch, busy, preset, expected):
    from l2o_pipeline import main

    monkeypatch.setenv("OMP_WAIT_POLICY", "unset")  # recorded, so teardown restores it
    monkeypatch.delenv("OMP_WAIT_POLICY")
    if preset:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    monkeypatch.setattr(main, "busy_cpus", lambda sample_s: busy)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert main.choose_omp_wait_policy() == expected
    assert os.environ.get("OMP_WAIT_POLICY") == expected


def test_busy_cpus_sees_a_busy_process():
    """/proc/stat, sampled while this test keeps a child process spinning: at least ~half a
    CPU is busy (whatever else the machine does)."""
    from l2o_pipeline.main import busy_cpus

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert busy_cpus(0.5) > 0.5
    finally:
        spinner.kill()
        spinner.wait()
