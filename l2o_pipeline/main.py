"""The Hydra entrypoint: ``l2o ...`` or ``python -m l2o_pipeline ...``.

A thin wrapper: compose the config, hand it to :func:`l2o_pipeline.pipeline.run`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Idle OpenMP threads that spin steal the CPU from every other process on a shared machine
# (several sweep cells on one node): 5-40x slower steps were measured. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra
from omegaconf import DictConfig

from l2o_pipeline.config import register_configs

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
