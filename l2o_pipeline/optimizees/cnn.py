"""The paper's VGG-style CNNs (spec §5): 3×3 SAME convs + ReLU, 2×2/2 SAME max-pool, FC."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from l2o_pipeline.optimizees.layout import ParamLayout
from l2o_pipeline.optimizees.mlp import BatchedClassification, ClassificationTask, dataset_key
from l2o_pipeline.registry import optimizees
from l2o_pipeline.utils import check_one_of

ARCHITECTURES = ("c-c-p-f", "c-c-p-c-c-p-f-f")

if TYPE_CHECKING:
    from l2o_pipeline.data import ArrayDataset


class CNNTask(ClassificationTask):
    """``c`` = conv (filters 16 in the first block, 32 in the second), ``p`` = max-pool,
    ``f`` = fully connected (hidden width 64, ReLU; the last ``f`` is the 10-way readout)."""

    def __init__(self, dataset: ArrayDataset, architecture: str = "c-c-p-f",
                 batch_size: int = 128, init_std: float = 0.1):
        check_one_of("architecture", architecture, ARCHITECTURES)
        self.ops = architecture.split("-")
        channels, height, width = dataset.x.shape[1:]
        shapes: dict[str, tuple[int, ...]] = {}
        block, n_fc = 0, self.ops.count("f")
        fc_index = 0
        features = None
        for i, op in enumerate(self.ops):
            if op == "c":
                out = 2 ** (block + 4)
                shapes[f"conv{i}.w"], shapes[f"conv{i}.b"] = (out, channels, 3, 3), (out,)
                channels = out
            elif op == "p":
                block += 1
                height, width = math.ceil(height / 2), math.ceil(width / 2)  # SAME pooling
            else:
                if features is None:
                    features = channels * height * width
                fc_index += 1
                out = 10 if fc_index == n_fc else 2 ** (block + 4)
                shapes[f"fc{i}.w"], shapes[f"fc{i}.b"] = (features, out), (out,)
                features = out
        super().__init__(dataset, ParamLayout(shapes), batch_size, init_std)
        self.name = f"cnn[{architecture}]-{dataset.name}"

    def loss(self, params, batch):
        x, y = batch
        p = self.layout.unflatten(params)
        h = x.to(params.dtype)
        last_fc = max(i for i, op in enumerate(self.ops) if op == "f")
        for i, op in enumerate(self.ops):
            if op == "c":
                h = F.relu(F.conv2d(h, p[f"conv{i}.w"], p[f"conv{i}.b"], padding=1))
            elif op == "p":
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            else:
                h = torch.addmm(p[f"fc{i}.b"], h.flatten(1), p[f"fc{i}.w"])
                if i != last_fc:
                    h = F.relu(h)
        return F.cross_entropy(h, y)

    @classmethod
    def batched(cls, instances):
        return BatchedCNN(instances)


class BatchedCNN(BatchedClassification):
    """On CUDA, the vmapped loss (grouped convolutions over the rows). On CPU, row by row with
    the plain convolutions: a CNN step is compute-bound, so batching saves no arithmetic
    there, and oneDNN's grouped convolutions (and the pointwise passes over their
    channel-interleaved outputs) cost 2-3× more per row than the plain ones."""

    def loss(self, theta, batch):
        if self.device.type != "cpu":
            return super().loss(theta, batch)
        task, (x, y) = self.instances[0], batch
        return torch.stack([torch.stack([task.loss(theta[s, r], (x[r], y[r]))
                                         for r in range(theta.shape[1])])
                            for s in range(theta.shape[0])])

    def loss_and_grad(self, theta, batch):
        if self.device.type != "cpu":
            return super().loss_and_grad(theta, batch)
        task, (x, y) = self.instances[0], batch
        loss = theta.new_empty(theta.shape[:2])
        grad = torch.empty_like(theta)
        for s in range(theta.shape[0]):
            for r in range(theta.shape[1]):
                loss[s, r], grad[s, r] = task.loss_and_grad(theta[s, r], (x[r], y[r]))
        return loss, grad


@optimizees.register("cnn", label="CNN", tuning_key=lambda s: (
    f"{dataset_key(s.get('dataset'))}-cnn-{s['architecture']}"))
def cnn(dataset: str = "mnist", architecture: str = "c-c-p-f", batch_size: int = 128,
        init_std: float = 0.1, *, load_dataset) -> CNNTask:
    """The CNN task on a named dataset (``optimizee=mnist_cnn``)."""
    return CNNTask(load_dataset(dataset), architecture, batch_size, init_std)
