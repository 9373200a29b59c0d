"""MNIST MLP of the papers: 784 → (20 × n_layers) → 10, softmax cross-entropy, batch 128."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizees.batched import VmapBatched
from l2o_pipeline.optimizees.layout import ParamLayout
from l2o_pipeline.registry import optimizees
from l2o_pipeline.utils import check_one_of, check_positive

ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
}

# act'(a) from the activation's output a, for the hand-written backward in loss_and_grad
# (all four are invertible enough: elu' = 1 for a > 0, a + 1 otherwise; relu' = [a > 0]).
_DERIVATIVES = {
    "sigmoid": lambda a: a - a * a,
    "tanh": lambda a: 1.0 - a * a,
    "relu": lambda a: (a > 0).to(a.dtype),
    "elu": lambda a: torch.clamp_max(a, 0.0) + 1.0,
}

if TYPE_CHECKING:
    from l2o_pipeline.data import ArrayDataset


def activation(name: str):
    check_one_of("activation", name, ACTIVATIONS)
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

    def sample_indices(self, generator: torch.Generator) -> torch.Tensor:
        """A minibatch's example indices, drawn with replacement from a CPU generator: paired
        runs reproduce them exactly on any device."""
        return torch.randint(len(self.dataset), (self.batch_size,), generator=generator)

    def sample_batch(self, generator: torch.Generator):
        idx = self.sample_indices(generator).to(self.device, non_blocking=True)  # no host sync
        return self.dataset.gather(idx)

    @classmethod
    def batched(cls, instances):
        return BatchedClassification(instances)


class MLPTask(ClassificationTask):
    def __init__(self, dataset: ArrayDataset, hidden: int = 20, n_layers: int = 1,
                 activation_name: str = "sigmoid", batch_size: int = 128, init_std: float = 0.1):
        check_positive("hidden", hidden, "a positive integer")
        check_positive("n_layers", n_layers, "a positive integer")
        self.act = activation(activation_name)
        self.activation_name = activation_name
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
        h = x.reshape(x.shape[0], -1).to(params.dtype)
        for i in range(self.n_linear):
            h = torch.addmm(p[f"b{i}"], h, p[f"w{i}"])
            if i < self.n_linear - 1:
                h = self.act(h)
        return F.cross_entropy(h, y)

    def loss_and_grad(self, params, batch):
        """Loss and gradient with a hand-written backward (no autograd graph, ~1.5× faster
        than autograd; pinned against it in tests/test_fast_path.py). ``loss`` itself stays
        plain autograd, so compositions (tricks) and second-order meta-gradients use that."""
        x, y = batch
        params = params.detach()
        p = self.layout.unflatten(params)
        outs = [x.reshape(x.shape[0], -1).to(params.dtype)]
        for i in range(self.n_linear):
            h = torch.addmm(p[f"b{i}"], outs[-1], p[f"w{i}"])
            outs.append(self.act(h) if i < self.n_linear - 1 else h)
        logits = outs.pop()
        loss = F.cross_entropy(logits, y)
        d = torch.softmax(logits, dim=1)  # d loss / d logits = (softmax − onehot) / batch
        d[torch.arange(len(y), device=d.device), y] -= 1.0
        d.mul_(1.0 / len(y))
        grad = torch.empty_like(params)
        g = self.layout.unflatten(grad)
        derivative = _DERIVATIVES[self.activation_name]
        for i in reversed(range(self.n_linear)):
            a = outs[i]
            torch.mm(a.t(), d, out=g[f"w{i}"])
            torch.sum(d, 0, out=g[f"b{i}"])
            if i:
                d = torch.mm(d, p[f"w{i}"].t()).mul_(derivative(a))
        return loss, grad

    @classmethod
    def batched(cls, instances):
        return BatchedMLP(instances)


def _settings_side_by_side(t: torch.Tensor) -> torch.Tensor:
    """[S, R, K, H] → [R, K, S·H], setting s in columns s·H..(s+1)·H: one copy per setting
    (ATen's copy of the whole permuted tensor is 2-4× slower)."""
    S, R, K, H = t.shape
    out = t.new_empty(R, K, S * H)
    for s in range(S):
        out[..., s * H:(s + 1) * H] = t[s]  # a slice, not split(): autograd tracks it
    return out


class BatchedClassification(VmapBatched):
    """Dataset-backed tasks: every run's indices drawn on the CPU, one gather for all runs."""

    def sample_batch(self, generators):
        task = self.instances[0]
        idx = torch.stack([task.sample_indices(g) for g in generators])
        return task.dataset.gather(idx.to(self.device, non_blocking=True))


class BatchedMLP(BatchedClassification):
    """The MLP over θ ``[S, R, n]`` with batched matmuls and the hand-written backward of
    ``MLPTask.loss_and_grad``. The first layer, whose input is the run's minibatch shared by
    all S settings, is one [B, D]·[D, S·H] matmul per run instead of S narrow ones. The
    logits are computed transposed, [C, B] per row: a softmax over C = 10 contiguous values
    per example is ~10× slower in ATen than one over a [C, B] column.

    θ stored settings-minor, ``[R, n, S]`` (:func:`settings_minor`, the engine's layout for a
    learning-rate grid), makes a run's first-layer weights of every setting one [D, H·S]
    matrix in place, so the first layer's matmuls and its gradient's read and write θ with
    no copy; otherwise (any other layout) they are gathered side by side, a copy of θ's
    largest part per pass."""

    settings_minor_layout = True

    def _layers(self, theta):
        """The task and the parameters but ``w0`` as ``[S·R, *shape]`` (a copy unless θ is
        stored ``[S, R, n]``; they are small)."""
        task = self.instances[0]
        return task, {name: t.flatten(0, 1) for name, t in task.layout.split(theta).items()
                      if name != "w0"}

    def _w0_side_by_side(self, theta):
        """A run's first-layer weights of its S settings as ``[R, D, S·H]`` (columns
        setting-major) or, when θ is settings-minor, ``[R, D, H·S]`` (hidden-unit-major, a
        view); and whether it is the latter."""
        task = self.instances[0]
        (D, H), off = task.layout.shapes["w0"], task.layout.offsets["w0"]
        S, R = theta.shape[:2]
        if settings_minor(theta):
            return theta.permute(1, 2, 0)[:, off:off + D * H].view(R, D, H * S), True
        w0 = task.layout.split(theta)["w0"]
        return _settings_side_by_side(w0), False

    def _forward(self, theta, x):
        """The inputs of every layer ([R, B, D] for the first, [S·R, B, ·] after) and the
        transposed logits [S·R, C, B]."""
        task, p = self._layers(theta)
        S, R = theta.shape[:2]
        x = x.reshape(R, x.shape[1], -1).to(theta.dtype)
        B = x.shape[1]
        w0, hidden_major = self._w0_side_by_side(theta)
        H = w0.shape[-1] // S
        if hidden_major:  # one matmul per run: bmm over the strided runs is slower here
            h = torch.stack([x[r] @ w0[r] for r in range(R)]).view(R, B, H, S)
            h = h.permute(3, 0, 1, 2)  # [S, R, B, H]
        else:
            h = torch.bmm(x, w0).view(R, B, S, H).permute(2, 0, 1, 3)  # [S, R, B, H]
        h = (h + p["b0"].view(S, R, 1, H)).reshape(S * R, B, H)
        outs = [x]
        last = task.n_linear - 1
        for i in range(1, last):
            outs.append(task.act(h))
            h = torch.baddbmm(p[f"b{i}"].unsqueeze(1), outs[-1], p[f"w{i}"])
        outs.append(task.act(h))
        logits_t = torch.baddbmm(p[f"b{last}"].unsqueeze(2), p[f"w{last}"].transpose(1, 2),
                                 outs[-1].transpose(1, 2))
        return outs, logits_t

    @staticmethod
    def _losses(log_probs_t, y, shape):
        """Mean cross-entropy per row from the transposed log-probabilities [S·R, C, B]."""
        labels = y.expand(*shape, -1).flatten(0, 1).unsqueeze(1)  # [S·R, 1, B]
        return -log_probs_t.gather(1, labels).mean(-1).view(shape), labels

    def loss(self, theta, batch):
        x, y = batch
        _, logits_t = self._forward(theta, x)
        return self._losses(torch.log_softmax(logits_t, dim=1), y, theta.shape[:2])[0]

    def loss_and_grad(self, theta, batch):
        """The gradient is laid out as θ (``empty_like``), settings-minor or not."""
        x, y = batch
        theta = theta.detach()
        task, p = self._layers(theta)
        S, R = theta.shape[:2]
        outs, logits_t = self._forward(theta, x)
        log_probs_t = torch.log_softmax(logits_t, dim=1)
        loss, labels = self._losses(log_probs_t, y, (S, R))
        B = labels.shape[-1]
        d = log_probs_t.exp_()  # d loss / d logits = (softmax − onehot) / batch, [S·R, C, B]
        d.scatter_(1, labels, d.gather(1, labels) - 1.0)
        d.mul_(1.0 / B).transpose_(1, 2)  # [S·R, B, C] (a strided view)
        grad = torch.empty_like(theta)
        g = task.layout.split(grad)  # [S, R, *shape] views of grad, whatever its layout
        derivative = _DERIVATIVES[task.activation_name]
        for i in reversed(range(1, task.n_linear)):
            a = outs[i]  # [S·R, B, in]
            # the weight gradient transposed, dᵀ·a: ATen's bmm of aᵀ and the strided d is ~5×
            # slower
            w_grad_t = torch.bmm(d.transpose(1, 2), a)  # [S·R, out, in]
            g[f"w{i}"].copy_(w_grad_t.view(S, R, *w_grad_t.shape[1:]).transpose(-1, -2))
            g[f"b{i}"].copy_(d.sum(1).view(S, R, -1))
            d = torch.bmm(d, p[f"w{i}"].transpose(1, 2)).mul_(derivative(a))
        H = d.shape[-1]
        g["b0"].copy_(d.sum(1).view(S, R, H))
        w0_grad, hidden_major = self._w0_side_by_side(grad)
        x = outs[0]
        if hidden_major:  # written in place into grad, one run at a time
            d = d.view(S, R, B, H).permute(1, 2, 3, 0).reshape(R, B, H * S)
            for r in range(R):
                torch.mm(x[r].t(), d[r], out=w0_grad[r])
        else:
            d = _settings_side_by_side(d.view(S, R, B, H))
            w0_grad = torch.bmm(x.transpose(1, 2), d)
            for s, block in enumerate(w0_grad.split(H, dim=-1)):  # [R, D, S·H]
                g["w0"][s].copy_(block)
        return loss, grad


def settings_minor(theta: torch.Tensor) -> bool:
    """Whether θ ``[S, R, n]`` (S > 1) is stored ``[R, n, S]`` (settings innermost)."""
    return theta.shape[0] > 1 and theta.permute(1, 2, 0).is_contiguous()


def dataset_key(dataset: str) -> str:
    """A dataset's part of a tuning key (``synthetic_mnist`` -> ``synthetic-mnist``)."""
    return str(dataset or "").replace("synthetic_", "synthetic-")


def _mlp_key(spec) -> str:
    key = (f"{dataset_key(spec.get('dataset'))}-mlp-{spec.get('activation') or 'sigmoid'}"
           f"-l{spec['n_layers']}")
    return key + (f"-h{spec['hidden']}" if spec.get("hidden", 20) != 20 else "")


@optimizees.register("mlp", label="MLP", tuning_key=_mlp_key)
def mlp(dataset: str = "mnist", hidden: int = 20, n_layers: int = 1,
        activation: str = "sigmoid", batch_size: int = 128, init_std: float = 0.1, *,
        load_dataset) -> MLPTask:
    """The MLP task on a named dataset (``optimizee=mnist_mlp``)."""
    return MLPTask(load_dataset(dataset), hidden, n_layers, activation, batch_size, init_std)
