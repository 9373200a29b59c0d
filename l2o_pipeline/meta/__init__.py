"""Outer training: truncated BPTT, meta-loss weights, checkpoints, model selection."""

from l2o_pipeline.meta.period import truncated_meta_loss
from l2o_pipeline.meta.train import (
    META_LOSSES,
    SELECTION_RULES,
    MetaTrainResult,
    MetaTrainSettings,
    load_training_state,
    meta_train,
)

__all__ = ["META_LOSSES", "SELECTION_RULES", "MetaTrainResult", "MetaTrainSettings",
           "load_training_state", "meta_train", "truncated_meta_loss"]
