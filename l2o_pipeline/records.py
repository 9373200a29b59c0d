"""The run folder's records: written atomically by one helper, read with errors that say what
to do, and one writer per folder at a time.

Every record (DONE, summaries, evaluation results, the resolved config, checkpoints, training
state, report outputs) goes through :func:`write_bytes`: a temporary file in the same folder,
flushed and fsynced, then ``os.replace``-d over the target and the folder fsynced. A crash or a
full disk leaves the old record or the new one, never half of one; the temporary file of a
failed write is removed, and one left by a killed process is removed by the next run in that
folder (:func:`remove_leftover_tmp`).

:func:`lock_run_folder` holds an OS lock (``flock``) on ``<folder>/.lock`` while a process
works in the folder; the OS releases it on any exit, SIGKILL included.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from l2o_pipeline.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# A tuning cell's record, and the passes it has finished while it is not done, relative to the
# cell (here, with the other records, for readers that do not import torch: l2o-grid).
TUNING_RECORD = Path("tune") / "summary.json"
TUNING_PASSES = Path("tune") / "passes.json"
# Where files that a restart replaces are moved (never deleted): <folder>/discarded/<time>/.
DISCARDED_DIR = "discarded"
# `.<name>.<pid>.tmp`: hidden, and unique per process so that two writers never share one.
_TMP_NAME = re.compile(r"\..+\.\d+\.tmp")


class RecordError(UserError):
    """A record that cannot be read (empty, torn, not JSON); the message names the file, what
    it is and what to do."""


class RecordWriteError(OSError):
    """A record that could not be written (full or read-only disk, ...); the message names the
    file. The previous version of the record, if any, is intact."""


class RunLockedError(UserError):
    """Another process works in the run folder."""


# ----------------------------------------------------------------------------- JSON values


def to_scalar(value: Any) -> Any:
    """Python scalar for tensors / numpy scalars; TypeError for anything that is not one."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return float(value)  # np.float64 subclasses float; store the builtin
    item = getattr(value, "item", None)
    if callable(item):
        try:
            # torch tensors and numpy arrays with exactly one element, numpy scalars
            return to_scalar(item())
        except (ValueError, RuntimeError, TypeError):
            pass
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"not a scalar: {type(value).__name__}") from None


def json_safe(value: Any) -> Any:
    """Recursively make ``value`` strict JSON: scalars converted, paths as text, NaN/inf ->
    None (JSON has no NaN; readers take None as "not a number")."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    value = to_scalar(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- writing


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (tmp file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # a full disk gets its space back
        hint = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only"}.get(exc.errno)
        what = f"{hint}: " if hint else ""
        raise RecordWriteError(
            exc.errno, f"could not write {path} ({what}{exc.strerror or exc}); the previous "
            "version, if any, is intact. Free space or fix the folder, then run the same "
            "command again") from exc  # the path is in the message: not repeated after it
    except BaseException:  # interrupted (SIGINT, SystemExit from a signal): no leftover
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every file system lets a folder be fsynced.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = None,
               sort_keys: bool = False) -> Path:
    """Strict JSON (NaN/inf as null, see :func:`json_safe`), one trailing newline."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    return write_text(path, text + "\n")


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` atomically: serialised in memory first, so a write error is one OSError
    naming the file instead of torch's C++ stream error."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer())


def remove_leftover_tmp(folder: str | Path, subfolders: tuple[str, ...] = ("checkpoints", "eval")
                        ) -> list[Path]:
    """Remove the temporary files of writes that a killed process left in ``folder`` (and its
    ``subfolders``). Only this module's own naming is touched; call it with the folder locked,
    so that no live writer's file is taken."""
    removed = []
    for where in (Path(folder), *(Path(folder) / s for s in subfolders)):
        if not where.is_dir():
            continue
        for path in where.iterdir():
            if _TMP_NAME.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write: %s", len(removed),
                 ", ".join(str(p) for p in removed))
    return removed


def move_aside(folder: str | Path, names: Iterable[str]) -> Path:
    """Move the files or folders ``names`` of ``folder`` (those that exist) into a new
    ``<folder>/discarded/<time>/``; return that folder."""
    folder = Path(folder)
    dest = folder / DISCARDED_DIR / time.strftime("%Y%m%d-%H%M%S")
    while dest.exists():  # two restarts within a second
        dest = dest.with_name(dest.name + "+")
    dest.mkdir(parents=True)
    for name in names:
        if (folder / name).exists():
            (folder / name).replace(dest / name)
    return dest


# ----------------------------------------------------------------------------- reading


def read_json_record(path: str | Path, what: str, fix: str) -> dict:
    """A JSON-object record; a :class:`RecordError` naming the file, ``what`` it is and the
    ``fix`` (e.g. "delete it to run the cell again") when it is empty, torn or not an
    object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordError(f"{path} ({what}) does not exist; {fix}") from None
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path} is unreadable ({what}, not text: {exc}); {fix}") from None
    if not text.strip():
        raise RecordError(f"{path} is unreadable ({what}, empty or torn, e.g. by a full disk); "
                          f"{fix}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path} is unreadable ({what}, torn or not JSON: {exc}); "
                          f"{fix}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{path} is unreadable ({what}: a JSON {type(obj).__name__}, not an "
                          f"object); {fix}")
    return obj


# ----------------------------------------------------------------------------- one writer


@contextmanager
def lock_run_folder(folder: str | Path, timeout_s: float = 0) -> Iterator[Path]:
    """Hold ``<folder>/.lock`` (an exclusive ``flock``) while the block runs.

    Held by another process: refuse at once with :class:`RunLockedError` naming the holder's
    pid and host, or with ``timeout_s > 0`` wait up to that long for it. The lock file is
    never deleted (a process that opened it could lock a deleted file beside a new one); it
    holds the last holder's pid, host and start time for these messages.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _acquire(fd, path, timeout_s):
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def folder_holder(folder: str | Path) -> str | None:
    """Who works in ``folder`` now (its lock's holder, as :func:`lock_run_folder`'s messages
    name it), or None when no process holds its lock (or the file system has no locks). A
    shared probe, released at once: it never blocks, nor writes."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, timeout_s: float) -> bool:
    """True once locked; False where the file system has no locks (a warning says so)."""
    deadline = time.monotonic() + max(timeout_s, 0)
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as exc:  # e.g. Lustre mounted without -o flock
            if exc.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
                raise
            log.warning("cannot lock %s (%s): this file system has no file locks, so nothing "
                        "stops a second process from working in %s at the same time",
                        path, exc.strerror, path.parent)
            return False
        holder = _holder(fd)
        if time.monotonic() >= deadline:
            waited_text = f" after waiting {timeout_s:g} s" if timeout_s > 0 else ""
            raise RunLockedError(
                f"{path.parent} is in use by another process ({holder}){waited_text}. Wait "
                "for it to finish, or let this run wait for it with lock_timeout_s=<seconds>; "
                "to run a copy elsewhere, give another hydra.run.dir")
        if not waited:
            log.info("%s is in use by %s; waiting up to %g s for it", path.parent, holder,
                     timeout_s)
            waited = True
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on host {info['host']}, since {since}"
    except (ValueError, KeyError, TypeError, OSError):
        return "pid unknown: it has just started"  # locked, but not yet written
