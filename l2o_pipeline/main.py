"""The Hydra entrypoint: ``l2o ...`` or ``python -m l2o_pipeline ...``.

A thin wrapper: compose the config, hand it to :func:`l2o_pipeline.pipeline.run`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path


def choose_omp_wait_policy(sample_s: float = 0.2) -> str | None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) only on a busy machine.

    Spinning idle threads steal the CPU from every other process on a shared machine (several
    sweep cells on one node): 5-40x slower steps were measured. On a machine of its own, the
    sleeping threads' wake-up latency costs ~35 % instead (meta-training RNNprop 40.8 vs 26.5
    steps/s, bench/bench_speed.py with and without --omp-passive). So: PASSIVE when other
    processes keep more than half the CPUs busy, measured over ``sample_s`` seconds now (the
    load average lags by a minute: right after a previous job it still counts that job). A
    value set by the user always wins. Must run before torch is imported (OpenMP reads it
    once)."""
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


choose_omp_wait_policy()

import hydra  # noqa: E402  (after the OpenMP setting: these import torch)
from omegaconf import DictConfig  # noqa: E402

from l2o_pipeline.config import register_configs  # noqa: E402

# Absolute path: a relative one breaks under `python -m` and console scripts (Hydra resolves
# it as a Python package when the task function's module is not __main__).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

register_configs()


log = logging.getLogger("l2o_pipeline")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from l2o_pipeline.pipeline import run

    try:
        return run(cfg)
    except Exception:
        # Hydra (and submitit) report only the message; keep the traceback in the run's log.
        log.exception("the run failed")
        raise


if __name__ == "__main__":
    main()
