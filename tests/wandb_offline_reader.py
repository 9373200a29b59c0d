"""Read an offline W&B run back with no network (wandb 0.31: no datastore module, no --view).

The ``run-<id>.wandb`` file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version),
then 32 KiB blocks of ``[crc:4][len:2][type:1][payload]`` records, each payload a
``wandb_internal_pb2.Record``. Offline runs write no ``config.yaml``/``wandb-summary.json``,
so this log is the only place the data lives. Relies on wandb internals: pin wandb in tests.
See docs in /work/shared/notes/hydra_wandb_submitit.md §2b.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7  # b":W&B" + uint16 magic + uint8 version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, buf = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # too little room for a record header: block padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if pos + n > len(data):  # the writer is mid-record: stop at the last complete one
            break
        chunk, pos = data[pos : pos + n], pos + n
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(buf + chunk if kind == LAST else chunk)
            buf = b""
            yield rec
        elif kind == FIRST:
            buf = chunk
        elif kind == MIDDLE:
            buf += chunk


def _items(items) -> dict[str, Any]:
    return {
        "/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json) for i in items
    }


def _records(run_dir: str | Path, wait_s: float) -> list[pb.Record]:
    # wandb 0.31 offline: run.finish() can return before wandb-core has flushed the log (seen:
    # 1 in 12 finishes left only the 7-byte header for ~20 ms), so wait for the exit record.
    deadline = time.monotonic() + wait_s
    while True:
        files = list(Path(run_dir).glob("*.wandb"))
        records = list(iter_records(files[0])) if files else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            if not files:
                raise FileNotFoundError(f"no *.wandb file in {run_dir}")
            return records  # still running or crashed: return what is there (exit_code None)
        time.sleep(0.02)


def load_run(run_dir: str | Path, wait_s: float = 10.0) -> dict[str, Any]:
    """One ``offline-run-*`` dir -> {id, name, group, job_type, tags, project, config, history,
    summary, artifacts, exit_code}. History rows keep W&B's ``_step``.

    Waits up to ``wait_s`` for the run's exit record (use 0 for a run still in progress).
    """
    out: dict[str, Any] = {
        "config": {},
        "summary": {},
        "history": [],
        "artifacts": [],
        "exit_code": None,
    }
    for r in _records(run_dir, wait_s):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(
                id=r.run.run_id,
                name=r.run.display_name,
                group=r.run.run_group,
                job_type=r.run.job_type,
                tags=list(r.run.tags),
                project=r.run.project,
            )
            out["config"].update(_items(r.run.config.update))
        elif kind == "config":
            out["config"].update(_items(r.config.update))
        elif kind == "history":
            out["history"].append(_items(r.history.item))
        elif kind == "summary":
            out["summary"].update(_items(r.summary.update))
            for item in r.summary.remove:
                out["summary"].pop("/".join(item.nested_key) or item.key, None)
        elif kind == "artifact":
            a = r.artifact
            out["artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "metadata": json.loads(a.metadata) if a.metadata else {},
                    "files": [e.path for e in a.manifest.contents],
                }
            )
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    out["config"].pop("_wandb", None)
    return out


def run_dirs(output_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """``<output_dir>/wandb/offline-run-*`` dirs (optionally of one id), oldest first.

    Names start with a second-resolution timestamp, so same-second segments of one resumed run
    are ordered by the start time recorded in their logs.
    """
    # A segment resumed within the same second as the previous one gets a '-1' suffix.
    pattern = f"offline-run-*-{run_id}*" if run_id else "offline-run-*"
    dirs = [d for d in (Path(output_dir) / "wandb").glob(pattern) if d.is_dir()]
    return sorted(dirs, key=lambda d: (d.name.split("-")[2], _start_time(d)))


def _start_time(run_dir: Path) -> float:
    for f in run_dir.glob("*.wandb"):
        for r in iter_records(f):
            if r.WhichOneof("record_type") == "run":
                return r.run.start_time.ToNanoseconds() / 1e9
    return 0.0


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
