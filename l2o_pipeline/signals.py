"""Signals during a run: stop meta-training cleanly at the end of an iteration, then exit.

SLURM warns a job before preemption or its time limit with SIGUSR2 (submitit's requeue
handler), stops it with SIGTERM; a user presses Ctrl-C. What each does is
:func:`stop_on_signals`.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(phase: dict):
    """SIGINT (Ctrl-C), SIGTERM and SIGUSR2 (SLURM's pre-emption warning) stop meta-training at
    the end of the current iteration, after its state is saved; then a handler that was
    installed before ours (submitit's, which requeues the job) runs. Outside meta-training it
    runs at once. A second Ctrl-C, at any moment after the first (also while the process shuts
    down), exits at once with no cleanup: every record is whole (atomic writes), the last saved
    state stays, and the next start removes the temporary file of a write it cut short.

    The process never carries on after that: if the previous handler returns (submitit's
    SIGTERM handler only logs "Bypassing signal"), it exits with 128 + signum and no result, so
    a job that SLURM requeues (``scontrol requeue``, SIGTERM-only preemption) resumes instead of
    reporting a NaN success for an unfinished cell. Ctrl-C exits with 130, as shells expect."""
    usr2 = getattr(signal, "SIGUSR2", None)
    requested: dict = {"signal": None}
    previous = {}

    def handler(signum, frame):
        if signum == signal.SIGINT and requested["signal"] == signal.SIGINT:
            _exit_now(signum, frame)
        if requested["signal"] is None or signum == usr2:  # a later SIGTERM never hides USR2
            requested["signal"] = signum
        if not phase.get("meta_train"):
            log.warning("stopped by %s outside meta-training: the stage did not finish; run "
                        "the same command again to redo it", signal.Signals(signum).name)
            _chain(signum, frame)

    def _chain(signum, frame):
        prev = previous.get(signum)
        # Python's own SIGINT handler would raise KeyboardInterrupt (exit status -2, and a
        # traceback): exit like the other signals instead.
        if callable(prev) and prev is not signal.default_int_handler:
            prev(signum, frame)  # submitit's USR2 handler requeues, then exits
        raise SystemExit(128 + signum)

    signals = [signal.SIGINT, signal.SIGTERM] + ([usr2] if usr2 is not None else [])
    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals alone
        signals = []
    try:
        yield requested, _chain
    finally:
        for s in signals:
            signal.signal(s, previous[s])
        if signals and requested["signal"] is not None:  # exiting: Python's handler would
            signal.signal(signal.SIGINT, _exit_now)  # print a KeyboardInterrupt traceback


def _exit_now(signum, frame):
    os.write(2, b"stopped at once by a second Ctrl-C; the last saved state is kept: run the "
                b"same command again to resume\n")
    os._exit(128 + signum)
