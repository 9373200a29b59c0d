"""The LSTM task of paper 1 (spec §5): predict A·sin(10ω + φ) from 10 noisy samples."""

from __future__ import annotations

import math

import torch

from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizees.batched import BatchedTask, stack_batches
from l2o_pipeline.optimizees.layout import ParamLayout
from l2o_pipeline.registry import optimizees
from l2o_pipeline.utils import ArgumentError, check_positive


@optimizees.register("sine_lstm", label="sine LSTM",
                     tuning_key=lambda s: f"sine_lstm-l{s['n_layers']}-noise{s['noise']:g}")
class SineLSTMTask(Task):
    def __init__(self, n_layers: int = 1, hidden: int = 20, noise: float = 0.1,
                 seq_len: int = 10, batch_size: int = 128, init_std: float = 0.1,
                 device: str | torch.device = "cpu"):
        for key, value in (("n_layers", n_layers), ("hidden", hidden), ("seq_len", seq_len),
                           ("batch_size", batch_size), ("init_std", init_std)):
            check_positive(key, value)
        if not (isinstance(noise, int | float) and 0 <= noise < math.inf):
            raise ArgumentError("noise", noise, "a finite number >= 0")
        self.n_layers, self.hidden, self.noise = n_layers, hidden, noise
        self.seq_len, self.batch_size, self.init_std = seq_len, batch_size, init_std
        self._device = torch.device(device)
        shapes: dict[str, tuple[int, ...]] = {}
        in_dim = 1
        for layer in range(n_layers):
            shapes[f"lstm{layer}.w"] = (in_dim + hidden, 4 * hidden)
            shapes[f"lstm{layer}.b"] = (4 * hidden,)
            in_dim = hidden
        shapes["out.w"], shapes["out.b"] = (hidden, 1), (1,)
        self.layout = ParamLayout(shapes)
        self.n_params = self.layout.n_params
        self.name = f"sine_lstm{n_layers}x{hidden}-noise{noise:g}"

    @property
    def device(self) -> torch.device:
        return self._device

    def init_params(self, generator):
        return (torch.randn(self.n_params, generator=generator) * self.init_std).to(self.device)

    def sample_batch(self, generator):
        x, target = self.sample_cpu_batch(generator)
        return x.to(self.device), target.to(self.device)

    def sample_cpu_batch(self, generator):
        """A minibatch drawn and built on the CPU (the same draws on every device)."""
        b = self.batch_size
        amp = torch.rand(b, 1, generator=generator) * 10
        omega = torch.rand(b, 1, generator=generator) * (math.pi / 2)
        phase = torch.rand(b, 1, generator=generator) * (2 * math.pi)
        k = torch.arange(self.seq_len, dtype=torch.float32)
        x = amp * torch.sin(k * omega + phase)
        x = x + self.noise * torch.randn(b, self.seq_len, generator=generator)
        target = amp * torch.sin(self.seq_len * omega + phase)  # noise-free target
        return x, target.squeeze(1)

    @classmethod
    def batched(cls, instances):
        return BatchedSineLSTM(instances)

    def loss(self, params, batch):
        x, target = batch
        p = self.layout.unflatten(params)
        b, hid = x.shape[0], self.hidden
        hs = [x.new_zeros(b, hid) for _ in range(self.n_layers)]
        cs = [x.new_zeros(b, hid) for _ in range(self.n_layers)]
        for t in range(self.seq_len):
            inp = x[:, t:t + 1]
            for layer in range(self.n_layers):
                gates = torch.addmm(p[f"lstm{layer}.b"], torch.cat([inp, hs[layer]], 1),
                                    p[f"lstm{layer}.w"])
                # Gate order (i, f, o, g) and no forget bias, as in the official optimizee.
                i, f, o, g = gates.chunk(4, dim=1)
                cs[layer] = torch.sigmoid(f) * cs[layer] + torch.sigmoid(i) * torch.tanh(g)
                hs[layer] = torch.sigmoid(o) * torch.tanh(cs[layer])
                inp = hs[layer]
        pred = torch.addmm(p["out.b"], hs[-1], p["out.w"]).squeeze(1)
        return ((pred - target) ** 2).mean()


class BatchedSineLSTM(BatchedTask):
    """The LSTM over θ ``[S, R, n]`` with batched matmuls, computed transposed: gates are
    [4·hidden, batch] per row, so that each gate's block is contiguous (elementwise passes over
    the [batch, hidden] column blocks of the usual layout are ~8× slower per element in ATen).
    Every run's minibatch is built on the CPU and moved in one transfer."""

    def sample_batch(self, generators):
        task = self.instances[0]
        x, target = stack_batches([task.sample_cpu_batch(g) for g in generators])
        return x.to(self.device), target.to(self.device)

    def loss(self, theta, batch):
        task = self.instances[0]
        x, target = batch  # [R, B, T], [R, B]
        S, R = theta.shape[:2]
        B, H = x.shape[1], task.hidden
        p = {name: t.flatten(0, 1) for name, t in task.layout.split(theta).items()}
        x = x.to(theta.dtype)
        hs = [theta.new_zeros(S * R, H, B) for _ in range(task.n_layers)]
        cs = [theta.new_zeros(S * R, H, B) for _ in range(task.n_layers)]
        for t in range(task.seq_len):
            inp = x[:, None, :, t].expand(S, R, 1, B).flatten(0, 1)  # [S·R, 1, B]
            for layer in range(task.n_layers):
                gates = torch.baddbmm(p[f"lstm{layer}.b"].unsqueeze(2),
                                      p[f"lstm{layer}.w"].transpose(1, 2),
                                      torch.cat([inp, hs[layer]], 1))  # [S·R, 4H, B]
                # Gate order (i, f, o, g) and no forget bias, as in SineLSTMTask.loss.
                ifo, g = gates.split([3 * H, H], dim=1)
                i, f, o = torch.sigmoid(ifo).chunk(3, dim=1)
                cs[layer] = f * cs[layer] + i * torch.tanh(g)
                hs[layer] = o * torch.tanh(cs[layer])
                inp = hs[layer]
        pred = torch.baddbmm(p["out.b"].unsqueeze(2), p["out.w"].transpose(1, 2), hs[-1])
        residual = pred.view(S, R, B) - target.to(theta.dtype)
        return (residual**2).mean(-1)
