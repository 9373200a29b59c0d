"""Progress of the long loops (meta-training, evaluation, tuning), on a terminal and off it.

On a terminal (stderr is a TTY) a tqdm bar, with the log lines routed around it
(``logging_redirect_tqdm``). Off a terminal (SLURM logs, ``| tee``, CI), where a bar would be
a carriage-return mess or nothing at all, one INFO line every ``every_s`` seconds::

    meta-train 120/1000 (12%) loss=0.231 ema=0.254 | 3.1 it/s, elapsed 0:00:39, ETA 0:04:44

``every_s`` is the config key ``progress_every_s`` (:func:`configure`, called once per run by
the pipeline); 0 logs every update (tests).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import ExitStack
from datetime import timedelta

log = logging.getLogger(__name__)

DEFAULT_EVERY_S = 60.0
_settings = {"every_s": DEFAULT_EVERY_S}


def configure(every_s: float) -> None:
    """Seconds between two progress lines off a terminal, for every loop of this process."""
    _settings["every_s"] = float(every_s)


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=round(seconds)))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """``with Progress(total, "meta-train") as p: ... p.update(1, loss=...)``.

    ``enabled``: None = a bar on a terminal, log lines elsewhere; False = nothing at all (for
    nested loops such as meta-training's validation); True = a bar even off a terminal.
    ``initial``: work already done (a resumed run); the rate and ETA count only this run's.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0,
                 enabled: bool | None = None, every_s: float | None = None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = self._start_n = int(initial)
        self.every_s = _settings["every_s"] if every_s is None else float(every_s)
        self.metrics: dict = {}
        self._stack = ExitStack()
        self._bar = None
        self._log = False
        if enabled is False:
            return
        if enabled or _on_terminal():
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm())
            self._bar = self._stack.enter_context(tqdm(
                total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=1.0))
        else:
            self._log = True
        self._t0 = self._last = time.monotonic()

    def update(self, n: int = 1, **metrics) -> None:
        """``n`` more units done; ``metrics`` (e.g. loss, ema) are shown from now on."""
        self.n += n
        self.metrics.update(metrics)
        if self._bar is not None:
            if metrics:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.metrics.items()},
                                      refresh=False)
            self._bar.update(n)
        elif self._log:
            now = time.monotonic()
            if now - self._last >= self.every_s or self.n >= self.total:
                self._last = now
                self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else math.nan
        eta = (self.total - self.n) / rate if rate > 0 else math.nan
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())
        log.info("%s %d/%d (%.0f%%)%s | %.3g %s/s, elapsed %s, ETA %s", self.desc, self.n,
                 self.total, 100 * self.n / max(self.total, 1), f" {shown}" if shown else "",
                 rate, self.unit, _duration(elapsed), _duration(eta))

    def close(self) -> None:
        self._stack.close()
        self._bar = None
        self._log = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
