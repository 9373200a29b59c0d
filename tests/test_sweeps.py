"""Every sweep file composes and expands to the expected number of jobs."""

from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from l2o_pipeline.config import validate_config
from tests.conftest import SWEEPS_DIR, compose_config

EXPECTED_JOBS = {
    "paper_meta_train": 6 * 3,
    "table2": 2 * 4 * 3,
    "fig2": 2 * 3,
    "fig5_6": 2 * 10 * 3,
    "fig7": 2 * 3 * 3,
    "fig8_table3": 2 * 3 * 3,
    "table4": 2 * 2 * 4 * 3,
    "fig9": 4 * 3,
    "dm_paper": 4 * 3,
    "dm_quadratic_eval": 3,
    # one cell per (optimizer, task, horizons), the whole rate grid inside (stage=tune)
    "tune_activations": 6 * 4,
    "tune_horizons": 6,
    "tune_depth": 6 * 9,
    "tune_cnn": 6 * 3,
    "tune_lstm": 6 * 3,
    "tune_dm_paper": 3 * 5 * 2,
}


def sweep_files():
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def expand(name, tmp_path, extra=()):
    cfg = compose_config(list(extra), tmp_path / "x", config_name=name,
                         config_dir=str(SWEEPS_DIR))
    params = cfg.hydra.sweeper.params
    overrides = [f"{k}={v}" for k, v in params.items()] + list(extra)
    parsed = OverridesParser.create().parse_overrides(overrides)
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    return cfg, jobs


def test_every_sweep_is_listed():
    assert sweep_files() == sorted(EXPECTED_JOBS)


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_sweep_composes_and_expands(name, tmp_path):
    cfg, jobs = expand(name, tmp_path)
    assert len(jobs) == EXPECTED_JOBS[name]
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert "${paths.runs_dir}/paper/" in cfg.hydra.sweep._get_node("dir")._value()
    # every job of the sweep composes and passes validation (a sample, to stay fast)
    for job in jobs[:: max(1, len(jobs) // 4)]:
        job_cfg = compose_config(job, tmp_path / "y", config_name=name,
                                 config_dir=str(SWEEPS_DIR))
        validate_config(job_cfg)


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED_JOBS) if n.startswith("tune_")])
def test_tuning_cells_run_the_whole_sqrt2_grid(name, tmp_path):
    from l2o_pipeline.baselines import LR_GRID

    cfg, jobs = expand(name, tmp_path)
    assert cfg.stage == "tune" and cfg.tuning.lrs is None and cfg.tuning.protocol == "full"
    assert not any(o.startswith("optimizer.lr=") for job in jobs for o in job)
    assert list(LR_GRID) == pytest.approx([2 ** (-k / 2) for k in range(27)], rel=1e-12)


def test_evaluation_cells_point_at_their_meta_training_cell(tmp_path):
    cfg = compose_config(["experiment=rnnprop_no_cc", "seed=2"], tmp_path / "x",
                         config_name="table4", config_dir=str(SWEEPS_DIR))
    assert cfg.evaluation.checkpoint.endswith("paper/meta_train/experiment=rnnprop_no_cc/seed_2")
    assert "paper_meta_train" in cfg.evaluation.produced_by
    assert not cfg.tricks.convex_combination.enabled and cfg.tricks.random_scaling.enabled


def test_sweeps_dir_exists():
    assert Path(SWEEPS_DIR).is_dir()
