"""How the report names and draws each optimizer and experiment: one table of display labels
and matplotlib colours (the one place to switch to the optimizers' own registry), and the
hand-designed optimizers' names from that package."""

from __future__ import annotations

import math

from l2o_pipeline.optimizers.hand_designed import HAND_DESIGNED

# The hand-designed ("traditional") optimizers, in the optimizers package's order.
HAND: tuple[str, ...] = tuple(HAND_DESIGNED)

# name -> (label, colour): optimizers by their config name, the papers' experiments by theirs.
STYLE: dict[str, tuple[str, str | None]] = {
    "rnnprop": ("RNNprop", "C3"), "dmoptimizer": ("DMoptimizer", "C0"),
    "dmoptimizer_official": ("DMoptimizer (official)", "C0"),
    "sgd": ("SGD", "C7"), "momentum": ("Momentum", "C8"), "adagrad": ("Adagrad", "C4"),
    "adadelta": ("Adadelta", "C6"), "rmsprop": ("RMSprop", "C2"), "adam": ("Adam", "k"),
    # experiments (conf/experiment) that are not one optimizer's default
    "rnnprop_no_rs": ("RNNprop w/o RS", "C1"), "rnnprop_no_cc": ("No CC", "C5"),
    "dmoptimizer_tricks": ("DMoptimizer + tricks", "C9"), "dm_quadratic": ("DMoptimizer", "C0"),
    "best_baseline": ("best tuned baseline", None),
}


def label(name: str) -> str:
    return STYLE.get(name, (name, None))[0]


def color(name: str) -> str | None:
    return STYLE.get(name, (name, None))[1]


def fmt_lr(lr) -> str:
    """A rate of the √2 grid as a power of two (2^-5.5), anything else in %.3g."""
    if lr is None:
        return "?"
    if lr > 0:
        k = math.log2(lr)
        if abs(k * 2 - round(k * 2)) < 1e-3:
            return f"2^{round(k * 2) / 2:g}"
    return f"{lr:.3g}"
