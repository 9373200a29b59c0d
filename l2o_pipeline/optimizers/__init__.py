"""Learned and hand-designed optimizers behind one ``init_state`` / ``step`` interface."""

from __future__ import annotations

from l2o_pipeline.optimizers.base import Optimizer, State, detach_state
from l2o_pipeline.optimizers.hand_designed import HAND_DESIGNED
from l2o_pipeline.optimizers.learned import DMOptimizer, LearnedOptimizer, RNNprop

LEARNED = ("rnnprop", "dmoptimizer", "dmoptimizer_official")
OPTIMIZERS = LEARNED + tuple(HAND_DESIGNED)


def build_optimizer(name: str, **kwargs) -> Optimizer:
    """Build an optimizer by its config name; hand-designed ones need ``lr``."""
    if name == "rnnprop":
        return RNNprop(**kwargs)
    if name == "dmoptimizer":
        return DMOptimizer.paper(**kwargs)
    if name == "dmoptimizer_official":
        return DMOptimizer.official(**kwargs)
    if name in HAND_DESIGNED:
        return HAND_DESIGNED[name](**kwargs)
    raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")


__all__ = ["Optimizer", "State", "detach_state", "RNNprop", "DMOptimizer", "LearnedOptimizer",
           "build_optimizer", "LEARNED", "OPTIMIZERS", "HAND_DESIGNED"]
