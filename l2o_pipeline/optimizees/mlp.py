"""MNIST MLP of the papers: 784 → (20 × n_layers) → 10, softmax cross-entropy, batch 128."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizees.layout import ParamLayout
from l2o_pipeline.utils import check_positive

ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
}

if TYPE_CHECKING:
    from l2o_pipeline.data import ArrayDataset


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class ClassificationTask(Task):
    """Shared minibatch sampling and N(0, init_std²) init for the dataset-backed tasks."""

    def __init__(self, dataset: ArrayDataset, layout: ParamLayout, batch_size: int,
                 init_std: float):
        check_positive("batch_size", batch_size, "a positive integer")
        check_positive("init_std", init_std)
        self.dataset, self.layout = dataset, layout
        self.batch_size, self.init_std = batch_size, init_std
        self.n_params = layout.n_params

    @property
    def device(self) -> torch.device:
        return self.dataset.x.device

    def init_params(self, generator: torch.Generator) -> torch.Tensor:
        theta = torch.randn(self.n_params, generator=generator) * self.init_std
        return theta.to(self.device)

    def sample_batch(self, generator: torch.Generator):
        # Indices drawn with replacement from a CPU generator: paired runs reproduce them
        # exactly on any device.
        idx = torch.randint(len(self.dataset), (self.batch_size,), generator=generator)
        idx = idx.to(self.device)
        return self.dataset.x[idx], self.dataset.y[idx]


class MLPTask(ClassificationTask):
    def __init__(self, dataset: ArrayDataset, hidden: int = 20, n_layers: int = 1,
                 activation_name: str = "sigmoid", batch_size: int = 128, init_std: float = 0.1):
        check_positive("hidden", hidden, "a positive integer")
        check_positive("n_layers", n_layers, "a positive integer")
        self.act = activation(activation_name)
        in_dim = math.prod(dataset.x.shape[1:])
        dims = [in_dim] + [hidden] * n_layers + [dataset.n_classes]
        shapes = {}
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            shapes[f"w{i}"], shapes[f"b{i}"] = (a, b), (b,)
        super().__init__(dataset, ParamLayout(shapes), batch_size, init_std)
        self.n_linear = len(dims) - 1
        self.name = f"mlp{n_layers}x{hidden}-{activation_name}"

    def loss(self, params, batch):
        x, y = batch
        p = self.layout.unflatten(params)
        h = x.reshape(x.shape[0], -1)
        for i in range(self.n_linear):
            h = torch.addmm(p[f"b{i}"], h, p[f"w{i}"])
            if i < self.n_linear - 1:
                h = self.act(h)
        return F.cross_entropy(h, y)
