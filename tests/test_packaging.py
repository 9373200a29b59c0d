"""The package as a user gets it: a wheel with the configs and sweeps, sweeps found by name,
and a command line that starts without torch where it needs none (tab completion, --help)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from l2o_pipeline.catalog import PAPER_GRID

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "l2o_pipeline"
# What the wheel must hold besides Python modules: every file of these folders.
DATA_FOLDERS = ("conf", "sweeps", "embedded", "pretrained")
# What a build reads. Built from a copy: an in-tree build would leave build/ behind, whose
# stale files (a config deleted since) setuptools would put in later wheels.
BUILD_INPUTS = ("pyproject.toml", "setup.cfg", "README.md", "l2o_pipeline", "hydra_plugins")


def _l2o(*args: str, cwd: Path, env: dict | None = None, python: str = sys.executable,
         timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([python, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def _imported_modules(importtime_log: str) -> set[str]:
    """Module names from ``python -X importtime``'s report (``... | <indent>name``)."""
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s*([\w.]+)\s*$", importtime_log,
                                            re.M)}


def test_tab_completion_does_not_import_torch(tmp_path):
    """The TAB query runs `l2o` each time: importing torch there cost 4.6 s per TAB."""
    line = "l2o optimizer="
    proc = _l2o("-X", "importtime", "-m", "l2o_pipeline", "-sc", "query=bash", cwd=tmp_path,
                env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "optimizer=rnnprop" in proc.stdout.split() and "optimizer=adam" in proc.stdout.split()
    imported = _imported_modules(proc.stderr)
    assert "l2o_pipeline.main" in imported and "hydra" in imported  # the report is read right
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "torchvision", "wandb",
                                                             "matplotlib"))
    assert not heavy, f"shell completion imports {heavy[:5]}"


def test_help_lists_every_sweep_of_the_grid(tmp_path):
    proc = _l2o("-m", "l2o_pipeline", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweeps = proc.stdout.split("== Sweeps ==")[1].split("== Config ==")[0]
    listed = [line.split()[0] for line in sweeps.splitlines()[3:] if line.strip()]
    assert listed == [s.name for s in PAPER_GRID]
    assert "--config-name <sweep>" in sweeps


@pytest.mark.parametrize("config_dir", [False, True])
def test_a_sweep_by_name_from_any_folder(tmp_path, config_dir):
    """`l2o --config-name table2` from a folder that has no sweeps/ (the search-path plugin),
    and the older `--config-dir sweeps` form from the repository, give the same config."""
    args = ["--config-dir", str(ROOT / "sweeps")] if config_dir else []
    proc = _l2o("-m", "l2o_pipeline", *args, "--config-name", "table2", "--cfg", "hydra",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dir: ${paths.runs_dir}/paper/table2" in proc.stdout
    assert "experiment: rnnprop,dmoptimizer" in proc.stdout


def test_an_unknown_config_name_names_the_search_path(tmp_path):
    proc = _l2o("-m", "l2o_pipeline", "--config-name", "tabel2", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "tabel2" in proc.stderr and "l2o_pipeline/sweeps" in proc.stderr


def _wheel_data_files() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for folder in DATA_FOLDERS
            for p in (PACKAGE / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@pytest.mark.slow
def test_the_wheel_installed_in_a_fresh_venv_runs_from_anywhere(tmp_path):
    """Build the wheel, install it (no dependencies: they come from this environment) into a
    new virtualenv, and run `l2o debug=default`, a sweep by name and `l2o-report` outside the
    repository (what .ci/run does too)."""
    pytest.importorskip("setuptools")  # offline: the build uses this environment's setuptools
    source, dist = tmp_path / "source", tmp_path / "dist"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(dist), str(source)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("l2o_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _wheel_data_files() - names
    assert not missing, f"the wheel lacks {sorted(missing)[:5]}"
    assert "hydra_plugins/l2o_pipeline_sweeps/__init__.py" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = str(bindir / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]

    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}  # the installed package, not this checkout
    where = subprocess.run([python, "-c", "import l2o_pipeline; print(l2o_pipeline.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout + where.stderr

    run = subprocess.run([str(bindir / "l2o"), "debug=default", "hydra.run.dir=out"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "out" / "DONE").is_file() and (work / "out" / "eval" / "summary.json").is_file()

    sweep = subprocess.run([str(bindir / "l2o"), "--config-name", "table2", "--cfg", "job"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert sweep.returncode == 0 and "stage: evaluate" in sweep.stdout, sweep.stderr[-2000:]

    report = subprocess.run([str(bindir / "l2o-report"), "--runs", "out", "--out", "report",
                             "--no-figures"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (work / "report" / "report.md").is_file()
