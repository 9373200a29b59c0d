"""The Hydra entrypoint: ``l2o ...`` or ``python -m l2o_pipeline ...``.

A thin wrapper: compose the config, hand it to :func:`l2o_pipeline.pipeline.run`; report a
user error as one message (no traceback on the console, exit status 2).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from l2o_pipeline.catalog import PAPER_GRID
from l2o_pipeline.config import register_configs
from l2o_pipeline.errors import USER_ERROR_EXIT, user_error_message

# Absolute path: a relative one breaks under `python -m` and console scripts (Hydra resolves
# it as a Python package when the task function's module is not __main__).
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

# Registration only (the schema, the ${cell:} and ${choice_overrides:} resolvers), no work:
# a submitit job's process imports this module to unpickle run_job, and needs the resolvers
# before Hydra sets up the job's folder. The typed schemas come from the registered classes
# (torch); a shell-completion query (one process per TAB) composes with untyped stand-ins
# and imports no torch (tests/test_packaging.py checks).
SHELL_COMPLETION_FLAGS = ("-sc", "--shell-completion")
register_configs(typed=not any(a in SHELL_COMPLETION_FLAGS or a.startswith("--shell-completion=")
                               for a in sys.argv[1:]))


def sweep_listing() -> str:
    """The paper grid's sweeps for ``l2o --help``: name, stage, what each feeds."""
    width = max(len(s.name) for s in PAPER_GRID)
    return "\n".join(f"{s.name:<{width}}  {s.stage:<10}  {s.results}" for s in PAPER_GRID)


OmegaConf.register_new_resolver("l2o_sweeps", sweep_listing, replace=True)


def choose_omp_wait_policy(sample_s: float = 0.2) -> str | None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) only on a busy machine.

    Spinning idle threads steal the CPU from every other process on a shared machine (several
    sweep cells on one node): 5-40x slower steps were measured. On a machine of its own, the
    sleeping threads' wake-up latency costs ~35 % instead (meta-training RNNprop 40.8 vs 26.5
    steps/s, bench/bench_speed.py with and without --omp-passive). So: PASSIVE when other
    processes keep more than half the CPUs busy, measured over ``sample_s`` seconds now (the
    load average lags by a minute: right after a previous job it still counts that job). A
    value set by the user always wins. Must run before torch is imported (OpenMP reads it
    once): :func:`run_job` calls it, so a job (a submitit job too) pays the 0.2 s and tab
    completion, --help and --cfg do not."""
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"]
    if busy_cpus(sample_s) > (os.cpu_count() or 1) / 2:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return "PASSIVE"
    return None


def busy_cpus(sample_s: float) -> float:
    """How many CPUs other processes keep busy: from /proc/stat over ``sample_s`` seconds on
    Linux, else the 1-minute load average."""

    def snapshot():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    try:
        total0, idle0 = snapshot()
        time.sleep(sample_s)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return busy * (os.cpu_count() or 1)


log = logging.getLogger("l2o_pipeline")

RUN_FOLDER_HINT = ("check the path (run folders are set by paths.runs_dir, hydra.run.dir and "
                   "hydra.sweep.dir)")


def run_job(cfg: DictConfig) -> float:
    """Hydra's task function: one run (one job of a multirun)."""
    if "torch" not in sys.modules:  # the first job of this process: OpenMP not started
        choose_omp_wait_policy()
    from l2o_pipeline.pipeline import run  # imports torch

    try:
        return run(cfg)
    except Exception as exc:
        _report_job_failure(exc, multirun=_in_multirun())
        raise


hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(run_job)


def main() -> None:
    """The console script (``l2o``, ``python -m l2o_pipeline``): Hydra's command line, with a
    user error (:mod:`l2o_pipeline.errors`) printed as one message and exit status 2, and a
    bug with its traceback. ``HYDRA_FULL_ERROR=1`` shows every traceback, as in Hydra."""
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    # Hydra then raises errors instead of printing its own report and exiting 1: composition
    # errors, and the run folder it creates (a file in its place, a read-only disk), are raised
    # before run_job runs.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except Exception as exc:
        message = user_error_message(exc, RUN_FOLDER_HINT)
        if message is None or full_error == "1":
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _report_job_failure(exc: Exception, multirun: bool) -> None:
    """The traceback goes to the job's log file only: a single run's console gets the message
    (a user error) or the traceback (a bug) once, from :func:`main`. A multirun's console gets
    each failed job's now, since the launcher runs the other jobs and re-raises only the first
    failure at the end."""
    message = user_error_message(exc, RUN_FOLDER_HINT)
    header = f"the run failed: {message}" if message else "the run failed"
    _log(header, exc, files=True)
    if multirun:
        _log(message or header, None if message else exc, files=False)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _log(message: str, exc: Exception | None, files: bool) -> None:
    """An ERROR record to the root logger's file handlers (Hydra's job log) or to the others
    (the console); with ``exc``, its traceback too."""
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) == files:
            handler.handle(record)


if __name__ == "__main__":
    main()
