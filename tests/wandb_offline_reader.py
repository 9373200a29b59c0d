"""Read an offline W&B run back with no network, with W&B's own reader: ``wandb leet inspect
--json <run_dir>`` (wandb >= 0.31) prints every record of the run's ``.wandb`` log as one JSON
line (header, run, history, summary, artifact, exit, ...).

Offline runs write no ``config.yaml`` or ``wandb-summary.json``: that log is the only place the
data lives. The CLI's JSON is W&B's documented output, unlike the log's binary layout and
protobufs, which a hand-written parser had to follow before. What its JSON does differently:
non-finite floats come as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (turned back
into floats here), and nested keys are joined with dots. A media value (``wandb.Table``) is a
reference in history (``<key>._type``, ``<key>.path``) to a file under ``<run_dir>/files/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _floats(value: Any) -> Any:
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    return value


def records(run_dir: str | Path, wait_s: float = 10.0) -> list[dict]:
    """The run's records, as ``wandb leet inspect --json`` prints them.

    wandb 0.31 offline: ``run.finish()`` can return before wandb-core has flushed the log (seen:
    1 in 12 finishes left only the header for ~20 ms), so wait up to ``wait_s`` for the exit
    record; a run still running or crashed gives what is there."""
    if not list(Path(run_dir).glob("*.wandb")):
        raise FileNotFoundError(f"no *.wandb file in {run_dir}")
    deadline = time.monotonic() + wait_s
    while True:
        proc = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"wandb leet inspect --json {run_dir} failed: {proc.stderr}")
        out = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        if any(r["type"] == "exit" for r in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def load_run(run_dir: str | Path, wait_s: float = 10.0) -> dict[str, Any]:
    """One ``offline-run-*`` dir -> {id, name, group, job_type, tags, project, start_time,
    config, history, summary, metrics, artifacts, exit_code, dir}. History rows keep W&B's
    ``_step``; ``metrics``: the ``define_metric`` records ({name or glob: step_metric})."""
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": [],
                           "metrics": {}, "exit_code": None, "dir": Path(run_dir)}
    for r in records(run_dir, wait_s):
        kind, body = r["type"], r.get(r["type"], {})
        if kind == "run":
            out.update(id=body["run_id"], name=body.get("display_name", ""),
                       group=body.get("run_group", ""), job_type=body.get("job_type", ""),
                       tags=list(body.get("tags", [])), project=body.get("project", ""),
                       start_time=body.get("start_time", ""))
            out["config"].update(body.get("config", {}).get("update", {}))
        elif kind == "config":
            out["config"].update(body.get("update", {}))
        elif kind == "history":
            out["history"].append(_floats(body.get("item", {})))
        elif kind == "summary":
            out["summary"].update(_floats(body.get("update", {})))
            for key in body.get("remove", []):
                out["summary"].pop(key if isinstance(key, str) else key.get("key"), None)
        elif kind == "metric":
            name = body.get("name") or body.get("glob_name")
            out["metrics"][name] = body.get("step_metric")
        elif kind == "artifact":
            out["artifacts"].append({
                "name": body["name"], "type": body["type"],
                "metadata": json.loads(body["metadata"]) if body.get("metadata") else {},
                "aliases": list(body.get("aliases", [])),
                "files": [e["path"] for e in body.get("manifest", {}).get("contents", [])],
            })
        elif kind == "exit":
            out["exit_code"] = body.get("exit_code", 0)
    out["config"].pop("_wandb", None)
    return out


def table(run: dict, key: str) -> dict:
    """The last ``wandb.Table`` logged under ``key``: {"columns": [...], "data": [[...]]}."""
    rows = [h for h in run["history"] if h.get(f"{key}._type") == "table-file"]
    if not rows:
        raise KeyError(f"no table {key!r} in the history of {run['dir']}")
    return json.loads((Path(run["dir"]) / "files" / rows[-1][f"{key}.path"]).read_text())


def run_dirs(output_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """``<output_dir>/wandb/offline-run-*`` dirs (optionally of one id), oldest first.

    Names start with a second-resolution timestamp, so same-second segments of one resumed run
    are ordered by the start time recorded in their logs.
    """
    # A segment resumed within the same second as the previous one gets a '-1' suffix.
    pattern = f"offline-run-*-{run_id}*" if run_id else "offline-run-*"
    dirs = [d for d in (Path(output_dir) / "wandb").glob(pattern) if d.is_dir()]
    if len({d.name.split("-")[2] for d in dirs}) == len(dirs):
        return sorted(dirs)
    return sorted(dirs, key=lambda d: (d.name.split("-")[2], _start_time(d)))


def _start_time(run_dir: Path) -> str:
    # ISO 8601 in UTC ("2026-12-02T01:14:15.293513Z"): orders as a string
    return next((r["run"].get("start_time", "") for r in records(run_dir, wait_s=0)
                 if r["type"] == "run"), "")


def load_resumed_run(output_dir: str | Path, run_id: str) -> dict[str, Any]:
    """Concatenate the segments of a resumed run: later config/summary win, histories append."""
    parts = [load_run(d) for d in run_dirs(output_dir, run_id)]
    if not parts:
        raise FileNotFoundError(f"no offline-run-*-{run_id} under {output_dir}/wandb")
    merged = dict(parts[-1], config={}, summary={}, history=[], artifacts=[])
    for p in parts:
        merged["config"].update(p["config"])
        merged["summary"].update(p["summary"])
        merged["history"] += p["history"]
        merged["artifacts"] += p["artifacts"]
    merged["segments"] = len(parts)
    return merged
