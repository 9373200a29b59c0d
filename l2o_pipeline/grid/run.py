"""Running the grid: ``run`` (cells one by one into an archive, within a time budget) and
``launch`` (each sweep as one Hydra multirun through any launcher)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from l2o_pipeline.catalog import META_TRAIN_SWEEP
from l2o_pipeline.grid.cells import (
    CONSOLE_LOGS,
    GRID_LOG,
    SWEEPS_DIR,
    Cell,
    GridError,
    Protocol,
    _hours,
    assess,
    expand,
    expand_all,
    last_outcomes,
    start_order,
    wanted_sweeps,
)
from l2o_pipeline.records import write_text

L2O = [sys.executable, "-m", "l2o_pipeline"]
# A cell that saved its state and exited on SIGTERM (ours) or on the terminal's Ctrl-C.
STOPPED_EXIT_STATUSES = (128 + signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGINT)


def _sweep_args(sweep: str, *overrides: str) -> list[str]:
    """``l2o``'s arguments for sweep ``sweep`` with ``overrides``."""
    return ["--config-dir", str(SWEEPS_DIR), "--config-name", sweep, *overrides]


def _command(c: Cell, archive: Path, threads: int) -> list[str]:
    return L2O + _sweep_args(c.sweep, *c.overrides, f"paths.runs_dir={archive}",
                             f"threads={threads}")


def _log(archive: Path, record: dict) -> None:
    path = archive / "paper" / GRID_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _log_file(logs: Path, c: Cell) -> Path:
    return logs / (c.name.replace("/", "__") + ".log")


def matches(c: Cell, where: dict[str, str]) -> bool:
    """Whether none of the cell's overrides contradicts ``where`` (key -> value): a cell
    that does not set a key matches it."""
    values = dict(o.split("=", 1) for o in c.overrides if "=" in o)
    return all(values.get(key, value) == value for key, value in where.items())


def run_grid(archive: Path, protocol: Protocol, hours: float, only: list[str] | None = None,
             jobs: int = 1, poll_s: float = 5.0, echo=print,
             where: dict[str, str] | None = None) -> dict[str, int]:
    """Start ready cells (in :func:`start_order`) until ``hours`` are spent; returns counts.
    ``where``: start only the cells it :func:`matches` (every cell is still assessed, so what
    they wait for stays what it is)."""
    deadline = time.monotonic() + hours * 3600
    # SIGTERM (SLURM, `kill`) or Ctrl-C stops the run as its deadline would: each running
    # cell gets SIGTERM and saves its state. Without this the runner died alone and its
    # cells ran on, orphaned (or, on Ctrl-C, it printed a traceback).
    # SIGUSR1 drains it instead: the running cells finish, no more start (to hand the archive
    # to a runner with another protocol or budget without losing the work under way).
    stop_signal: list[int] = []
    drain: list[int] = []
    previous = {}
    try:
        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, lambda signum, frame: stop_signal.append(signum))
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1,
                                                 lambda signum, frame: drain.append(signum))
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        return _run_cells(archive, protocol, deadline, only, jobs, poll_s, echo, stop_signal,
                          drain, where or {})
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run_cells(archive, protocol, deadline, only, jobs, poll_s, echo, stop_signal, drain,
               where):
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    logs = archive / "paper" / CONSOLE_LOGS
    running: dict[str, tuple[subprocess.Popen, Cell, float]] = {}
    counts = {"finished": 0, "stopped": 0, "failed": 0}
    tried: set[str] = set()  # one attempt per cell and run: a failing cell does not spin
    logged = last_outcomes(archive / "paper")
    # Composed once per run (data copied in meanwhile counts from the next run); each poll
    # only re-reads the archive.
    cells = expand_all(archive, protocol, only)
    if where and not any(matches(c, where) for cs in cells.values() for c in cs):
        raise GridError("no cell of " + (", ".join(only) if only else "the grid") + " matches "
                        + " ".join(f"--where {k}={v}" for k, v in where.items()))
    # The report prints the protocol the archive's cells were run under.
    write_text(archive / "paper" / "protocol.yaml", protocol.path.read_text())
    logs.mkdir(parents=True, exist_ok=True)
    draining = False

    def reap(stop: bool = False) -> None:
        for key, (proc, cell, started) in list(running.items()):
            if stop and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # meta-training saves its state and exits
            if proc.poll() is None:
                continue
            del running[key]
            outcome = "finished" if proc.returncode == 0 else (
                "stopped" if proc.returncode in STOPPED_EXIT_STATUSES
                else "failed")
            counts[outcome] += 1
            tail = _log_file(logs, cell).read_text(errors="replace").strip()
            message = tail.splitlines()[-1][-300:] if tail else ""
            _log(archive, {"cell": cell.name, "outcome": outcome, "rc": proc.returncode,
                           "seconds": round(time.monotonic() - started, 1),
                           "protocol": protocol.name, "time": time.time(),
                           **({"message": message} if outcome == "failed" else {})})
            echo(f"{outcome}: {cell.name} ({_hours(time.monotonic() - started)})"
                 + (f": {message}" if outcome == "failed" else ""))

    while True:
        reap()
        left = deadline - time.monotonic()
        if left <= 0 or stop_signal:
            break
        assess(cells)
        for c in (c for cs in cells.values() for c in cs if c.state == "no data"):
            if logged.get(c.name, {}).get("outcome") != "no data":
                # once in the log (the report says which data the grid lacked), never tried
                logged[c.name] = {"cell": c.name, "outcome": "no data",
                                  "dataset": c.extra["dataset"], "protocol": protocol.name,
                                  "time": time.time(), "message": c.detail}
                _log(archive, logged[c.name])
                echo(f"no data: {c.name}")
        ready = start_order([c for cs in cells.values() for c in cs
                             if c.state in ("pending", "partial") and c.name not in running
                             and c.name not in tried and matches(c, where)], cells)
        # A cell starts when what stopping it at the deadline would lose fits: a meta-training
        # always (it saves its state), a tuning when its largest pass does, an evaluation whole.
        fits = [c for c in ready if c.sweep == META_TRAIN_SWEEP
                or c.estimate_s * c.extra["unsaved_share"] <= left]
        if drain:
            if not draining:
                draining = True
                echo(f"SIGUSR1: starting no more cells; the {len(running)} running will finish")
            fits = []
        while fits and len(running) < jobs:
            c = fits.pop(0)
            tried.add(c.name)
            log_file = open(_log_file(logs, c), "w")
            echo(f"start: {c.name} (~{_hours(c.estimate_s)}{', ' + c.detail if c.detail else ''})")
            # In the current folder, as `l2o` itself would run (data.dir=data is relative).
            proc = subprocess.Popen(_command(c, archive, threads), stdout=log_file,
                                    stderr=subprocess.STDOUT)
            running[c.name] = (proc, c, time.monotonic())
        if not running:
            break  # nothing ready that fits: the rest waits for inputs or for more time
        time.sleep(min(poll_s, max(left, 0.1)))
    if running:
        why = signal.Signals(stop_signal[0]).name if stop_signal else "time is up"
        echo(f"{why}: stopping {len(running)} cell(s); a meta-training saves its state, a "
             "tuning resumes from its last finished pass, an evaluation will start over")
        reap(stop=True)
        while running:
            time.sleep(0.5)
            reap()
    return counts


def launch_commands(runs: Path, protocol: Protocol, only: list[str] | None,
                    overrides: list[str]) -> list[list[str]]:
    """One Hydra multirun per sweep, in dependency order, through whatever launcher
    ``overrides`` choose (``hydra/launcher=slurm_gpu``: every cell of a sweep at once on the
    cluster; Hydra returns when they all have). The protocol's overrides come first and the
    user's last, so the user's win. The meta-training sweep is split by the protocol's
    iteration target per experiment."""
    commands = []  # l2o's arguments, one list per multirun
    for name in wanted_sweeps(only):
        base = _sweep_args(name, f"paths.runs_dir={runs}", *protocol.overrides,
                           *protocol.sweeps.get(name, []))
        if name != META_TRAIN_SWEEP:
            commands.append(base + list(overrides))
            continue
        by_target: dict[int, list[str]] = {}
        for c in expand(name, runs, protocol):
            if c.experiment not in by_target.setdefault(c.target, []):
                by_target[c.target].append(c.experiment)
        for target, experiments in by_target.items():
            commands.append(base + [f"experiment={','.join(experiments)}",
                                    f"meta_train.n_iterations={target}", *overrides])
    return commands


def launch(runs: Path, protocol: Protocol, only: list[str] | None, overrides: list[str],
           report: Path | None, echo=print) -> int:
    """Run the grid sweep by sweep (``l2o-grid launch``); stop at the first failing sweep
    (its cells' logs say why; a relaunch skips what finished and resumes the rest)."""
    for command in launch_commands(runs, protocol, only, overrides):
        echo("=== l2o " + " ".join(command))
        rc = subprocess.call(L2O + command)
        if rc != 0:
            echo(f"l2o-grid: the sweep failed (exit status {rc}); fix it and launch again: "
                 "finished cells are skipped, meta-trainings resume")
            return rc
    if report is not None:
        from l2o_pipeline.report import main as write_report

        return write_report(["--runs", str(runs / "paper"), "--out", str(report)])
    return 0


