"""Reading what a run folder holds that is not a record of :mod:`l2o_pipeline.records`:
Hydra's override lists and configs, metrics lines, curve files."""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path


def read_yaml(path: Path):
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)


def split_overrides(text: str) -> dict[str, str]:
    """``a=1,b.c=x`` (Hydra's override_dirname) as a dict; commas inside values survive."""
    out = {}
    for part in re.split(r",(?=[+~]*[\w./@-]+=)", text):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def join_overrides(overrides: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))


def norm_task(task: str) -> str:
    """Synthetic stand-ins (smoke runs) file under the real task's name; the header says so."""
    return task.replace("synthetic-", "")


def int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def read_metrics(path: Path) -> tuple[list, list, list, int]:
    """(steps, meta/loss, meta/loss_ema, unreadable lines) of a meta-training metrics.jsonl."""
    steps, loss, ema, bad = [], [], [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if (isinstance(rec, dict) and isinstance(rec.get("meta/loss"), (int, float))
                and isinstance(rec.get("step"), int)):
            steps.append(rec["step"])
            loss.append(rec["meta/loss"])
            ema.append(rec.get("meta/loss_ema", math.nan))
    return steps, loss, ema, bad


@functools.lru_cache(maxsize=4)
def load_curves(path: str):
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torn or foreign file
        return None
    return data if isinstance(data, dict) else None


def finite_nan(t):
    import torch

    return torch.where(torch.isfinite(t), t, torch.full_like(t, math.nan))
