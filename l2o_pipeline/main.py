"""The Hydra entrypoint: ``l2o ...`` or ``python -m l2o_pipeline ...``.

A thin wrapper: compose the config, hand it to :func:`l2o_pipeline.pipeline.run`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path


def choose_omp_wait_policy() -> str | None:
    """Let idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) only on a busy machine.

    Spinning idle threads steal the CPU from every other process on a shared machine (several
    sweep cells on one node): 5-40x slower steps were measured. On a machine of its own, the
    sleeping threads' wake-up latency costs ~35 % instead (meta-training RNNprop 40.8 vs 26.5
    steps/s, bench/bench_speed.py with and without --omp-passive). So: PASSIVE when the load
    average exceeds half the CPUs we may use; a value set by the user always wins. Must run
    before torch is imported (OpenMP reads it once)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if os.getloadavg()[0] > (cpus or 1) / 2:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return "PASSIVE"
    return None


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
