"""How the report names and draws each optimizer and experiment: the optimizers' labels and
colours from their registration (``l2o_pipeline.registry``), the papers' experiments' here."""

from __future__ import annotations

import math

from l2o_pipeline import registry

registry.load_builtins()
# The hand-designed ("traditional") optimizers, in their registration order.
HAND: tuple[str, ...] = tuple(registry.hand_designed.names())

# The papers' experiments (conf/experiment) that are not one optimizer's default: name ->
# (label, colour).
EXPERIMENTS: dict[str, tuple[str, str | None]] = {
    "rnnprop_no_rs": ("RNNprop w/o RS", "C1"), "rnnprop_no_cc": ("No CC", "C5"),
    "dmoptimizer_tricks": ("DMoptimizer + tricks", "C9"), "dm_quadratic": ("DMoptimizer", "C0"),
    "best_baseline": ("best tuned baseline", None),
}


def label(name: str) -> str:
    return EXPERIMENTS[name][0] if name in EXPERIMENTS else registry.label(name)


def color(name: str) -> str | None:
    return EXPERIMENTS[name][1] if name in EXPERIMENTS else registry.color(name)


def grid_edge(tuned: dict) -> str:
    """" (grid's top)" where a tuned rate is an end of the grid it was tuned over, else ""."""
    return f" (grid's {tuned['edge']})" if tuned.get("edge") else ""


def fmt_lr(lr) -> str:
    """A rate of the √2 grid as a power of two (2^-5.5), anything else in %.3g."""
    if lr is None:
        return "?"
    if lr > 0:
        k = math.log2(lr)
        if abs(k * 2 - round(k * 2)) < 1e-3:
            return f"2^{round(k * 2) / 2:g}"
    return f"{lr:.3g}"
