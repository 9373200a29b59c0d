"""Shared fixtures: compose the Hydra config in-process, keep W&B off the network."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from l2o_pipeline.config import register_configs
from l2o_pipeline.data import synthetic_dataset
from l2o_pipeline.main import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
SWEEPS_DIR = ROOT / "sweeps"


@pytest.fixture(autouse=True)
def _isolated_wandb(tmp_path_factory, monkeypatch):
    """No test talks to W&B's servers or writes to $HOME; tests opt in to offline runs."""
    home = tmp_path_factory.mktemp("wandb_home")
    monkeypatch.setenv("WANDB_MODE", os.environ.get("L2O_TEST_WANDB_MODE", "disabled"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("L2O_DATA_DIR", str(home / "data"))  # never the developer's datasets


@pytest.fixture(scope="module")
def mnist():
    """A small synthetic MNIST (256 images): the optimizee data of the engine's tests."""
    return synthetic_dataset("synthetic_mnist", n=256, seed=0)


@pytest.fixture
def eager_kernels_one_thread():
    """Eager kernels (no torch.compile) on one thread, restored afterwards: runs compared
    bit for bit must not differ by code generation or thread count."""
    import torch

    from l2o_pipeline.optimizers import kernels

    mode, threads = kernels.get_compile(), torch.get_num_threads()
    kernels.set_compile("false")
    torch.set_num_threads(1)
    yield
    kernels.set_compile(mode)
    torch.set_num_threads(threads)


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "config",
                   config_dir: str = CONFIG_DIR):
    """Compose like the CLI does (with Hydra's node, so ${hydra:...} resolves).

    ``config_dir=SWEEPS_DIR`` mirrors ``l2o --config-dir sweeps``: both folders are searched.
    """
    register_configs()
    GlobalHydra.instance().clear()
    extra = [] if str(config_dir) == CONFIG_DIR else [f"hydra.searchpath=[file://{CONFIG_DIR}]"]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        cfg = compose(config_name, overrides=overrides + extra, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.runs_dir = str(output_dir.parent / "runs")
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, output_dir: Path | None = None):
        return compose_config(list(overrides), output_dir or tmp_path / "run")

    yield _make
    GlobalHydra.instance().clear()


@contextmanager
def mounted_tmpfs(folder: Path, options: str):
    """A tmpfs mounted on ``folder`` (e.g. ``size=2m``; ``ro,size=64k``), unmounted afterwards.
    The test is skipped, with the reason, where it cannot be mounted (not root, no mount)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
