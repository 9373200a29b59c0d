"""W&B's naming rules: run ids and artifact names (which characters, how long)."""

from __future__ import annotations

import hashlib
import re
import secrets
import string


def new_run_id() -> str:
    # Own generator: wandb.util.generate_id is gone in 0.31 and its replacement is private.
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def artifact_name(name: str) -> str:
    # W&B artifact names allow only alphanumerics, '-', '_' and '.'.
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "artifact"


def model_artifact_name(optimizer: str, cell: str | None, seed: int) -> str:
    """The W&B artifact of a meta-trained optimizer: one per grid cell and seed (its versions:
    relaunches of that cell), e.g. ``rnnprop-experiment-rnnprop_no_rs-seed0``. W&B names
    hold at most 128 characters: a longer one keeps its start and a hash of the whole."""
    cell = cell or "default"
    name = artifact_name(f"{cell}-seed{seed}" if f"optimizer={optimizer}" in cell.split(",")
                         else f"{optimizer}-{cell}-seed{seed}")
    if len(name) > 128:
        name = f"{name[:119]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name
