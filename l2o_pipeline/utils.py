"""Small shared helpers: argument checks whose errors name the offending key."""

from __future__ import annotations

import math
from collections.abc import Iterable


class ArgumentError(ValueError):
    """An impossible constructor argument. ``key`` is the argument's name and ``owner`` what
    it belongs to (``adam``), so a caller that knows where the value came from can name the
    config key instead (:meth:`at`: ``optimizer.lr``)."""

    def __init__(self, key: str, value, must: str, owner: str | None = None):
        self.key, self.value, self.must, self.owner = key, value, must, owner
        where = f"{owner}.{key}" if owner else key
        super().__init__(f"{where} must be {must}, got {value!r}")

    def at(self, prefix: str) -> str:
        """The message with the key as ``<prefix>.<key>=<value>``."""
        return f"{prefix}.{self.key}={self.value!r} must be {self.must}"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_positive(name: str, value, what: str = "a positive number", owner: str | None = None,
                   at_most: float | None = None) -> None:
    """A finite number > 0 (and <= ``at_most``): nan, inf and booleans are refused. ``what``
    containing "integer" also refuses non-integral values."""
    ok = _is_number(value) and math.isfinite(value) and value > 0
    if ok and "integer" in what:
        ok = float(value).is_integer()
    if not ok:
        raise ArgumentError(name, value, what.replace("a positive", "a finite positive")
                            if "integer" not in what else what, owner)
    if at_most is not None and value > at_most:
        raise ArgumentError(name, value, f"at most {at_most:g} (absurdly large)", owner)


def check_fraction(name: str, value, owner: str | None = None) -> None:
    """A number in [0, 1) (a decay, a momentum); nan is refused."""
    if not (_is_number(value) and 0 <= value < 1):
        raise ArgumentError(name, value, "in [0, 1)", owner)


def check_one_of(name: str, value, valid: Iterable, owner: str | None = None) -> None:
    valid = list(valid)
    if value not in valid:
        raise ArgumentError(name, value, f"one of {valid}", owner)


def switch_mode(what: str, mode, valid: tuple[str, ...], on: str) -> str:
    """A switch's mode from a config or environment value: ``True``/``False`` mean ``on`` and
    ``"false"``; strings are case-insensitive and must be one of ``valid``."""
    if isinstance(mode, bool):
        mode = on if mode else "false"
    mode = str(mode).lower()
    if mode not in valid:
        raise ValueError(f"{what} must be one of {valid}, got {mode!r}")
    return mode
