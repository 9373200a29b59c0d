"""Learned and hand-designed optimizers behind one ``init_state`` / ``step`` interface.

Each registers itself (``l2o_pipeline.registry``) in its own module; the names below are
views of the registries."""

from __future__ import annotations

from collections.abc import Mapping

from l2o_pipeline.optimizers.base import LearnedOptimizer, Optimizer, State, detach_state
from l2o_pipeline.optimizers.hand_designed import HandDesigned
from l2o_pipeline.optimizers.learned import DMOptimizer, LSTMOptimizer, RNNprop
from l2o_pipeline.registry import hand_designed, learned_optimizers, optimizer


class _HandDesignedClasses(Mapping):
    """``HAND_DESIGNED[name]`` is the class of a hand-designed optimizer: a live view of the
    registry, so that options registered later appear too."""

    def __getitem__(self, name):
        return hand_designed[name].cls

    def __iter__(self):
        return iter(hand_designed)

    def __len__(self):
        return len(hand_designed.names())


HAND_DESIGNED = _HandDesignedClasses()


def build_optimizer(name: str, **kwargs) -> Optimizer:
    """Build an optimizer by its config name from its keys; hand-designed ones need ``lr``.
    An impossible argument raises an ``ArgumentError`` (a ValueError) naming ``<name>.<key>``."""
    entry = optimizer(name)
    registry = learned_optimizers if name in learned_optimizers else hand_designed
    return registry.build(entry.name, **kwargs)


__all__ = ["Optimizer", "State", "detach_state", "RNNprop", "DMOptimizer", "LearnedOptimizer",
           "LSTMOptimizer", "HandDesigned", "build_optimizer", "HAND_DESIGNED"]
