"""Small shared helpers."""

from __future__ import annotations


def check_positive(name: str, value, what: str = "a positive number") -> None:
    """Raise a ValueError that names the offending key."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be {what}, got {value!r}")
