"""Straightforward reference implementation of RNNprop / DMoptimizer and their training loop.

Written the obvious way and optimised in nothing, as the yardstick for the fast path in
``l2o_pipeline`` (``bench/bench_speed.py`` times both, ``tests/test_fast_path.py`` checks that
they agree):

- two ``nn.LSTMCell`` layers over all coordinates (PyTorch gate order, forget bias folded into
  ``bias_ih``), ``F.elu``, ``torch.tanh``;
- the optimizee gradient by ``torch.autograd.grad`` at every step;
- the meta-loss Σ_t w_t f(θ_t) built from the losses themselves, with the optimizee's graph
  kept alive until the meta-backward.

``from_model`` copies the weights of a production ``RNNprop`` / ``DMOptimizer`` (TF layout
[in+hid, 4·hid], gates i, j, f, o); ``tf_layout_grads`` maps the reference's gradients back to
the production parameter names so meta-gradients can be compared one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _tf_to_torch_perm(hidden: int) -> torch.Tensor:
    """TF column blocks (i, j, f, o) → PyTorch row blocks (i, f, g, o)."""
    H = hidden
    return torch.cat([torch.arange(0, H), torch.arange(2 * H, 3 * H), torch.arange(H, 2 * H),
                      torch.arange(3 * H, 4 * H)])


class _ReferenceCore(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, n_layers: int):
        super().__init__()
        self.hidden_size, self.n_layers = hidden_size, n_layers
        sizes = [input_size] + [hidden_size] * n_layers
        self.cells = nn.ModuleList(nn.LSTMCell(a, hidden_size) for a in sizes[:-1])
        for cell in self.cells:  # TF has one bias: keep bias_hh at 0 (exact reparametrisation)
            cell.bias_hh.requires_grad_(False)
        self.output = nn.Linear(hidden_size, 1)

    def _copy_from(self, model) -> None:
        with torch.no_grad():
            for ref, cell in zip(self.cells, model.cells):
                perm = _tf_to_torch_perm(cell.hidden_size).to(cell.weight.device)
                n_in, H = cell.input_size, cell.hidden_size
                w, b = cell.weight[:, perm], cell.bias[perm].clone()
                b[H:2 * H] += cell.forget_bias
                ref.weight_ih.copy_(w[:n_in].t())
                ref.weight_hh.copy_(w[n_in:].t())
                ref.bias_ih.copy_(b)
                ref.bias_hh.zero_()
            self.output.load_state_dict(model.output.state_dict())

    def tf_layout_grads(self) -> dict[str, torch.Tensor]:
        """The reference's parameter gradients under the production parameter names."""
        out = {}
        for i, ref in enumerate(self.cells):
            H = ref.hidden_size
            perm = _tf_to_torch_perm(H).to(ref.weight_ih.device)
            w = torch.cat([ref.weight_ih.grad.t(), ref.weight_hh.grad.t()])
            dw = torch.empty_like(w)
            dw[:, perm] = w
            db = torch.empty_like(ref.bias_ih.grad)
            db[perm] = ref.bias_ih.grad
            out[f"cells.{i}.weight"], out[f"cells.{i}.bias"] = dw, db
        out["output.weight"], out["output.bias"] = self.output.weight.grad, self.output.bias.grad
        return out

    def init_state(self, n, device="cpu", dtype=torch.float32):
        return tuple(torch.zeros(n, self.hidden_size, device=device, dtype=dtype)
                     for _ in range(2 * self.n_layers))

    def _lstm(self, x, state):
        new_state = []
        for layer, cell in enumerate(self.cells):
            h, c = cell(x, (state[2 * layer], state[2 * layer + 1]))
            new_state += [h, c]
            x = h
        return self.output(x).squeeze(-1), tuple(new_state)


class ReferenceRNNprop(_ReferenceCore):
    def __init__(self, hidden_size=20, n_layers=2, beta1=0.95, beta2=0.95, eps=1e-8, alpha=0.1):
        super().__init__(hidden_size, hidden_size, n_layers)
        self.beta1, self.beta2, self.eps, self.alpha = beta1, beta2, eps, alpha
        self.preprocess = nn.Linear(2, hidden_size)

    @classmethod
    def from_model(cls, model) -> ReferenceRNNprop:
        ref = cls(model.hidden_size, model.n_layers, model.beta1, model.beta2, model.eps,
                  model.alpha)
        p = next(model.parameters())
        ref = ref.to(p.device, p.dtype)
        ref._copy_from(model)
        ref.preprocess.load_state_dict(model.preprocess.state_dict())
        return ref

    def tf_layout_grads(self):
        out = super().tf_layout_grads()
        out["preprocess.weight"] = self.preprocess.weight.grad
        out["preprocess.bias"] = self.preprocess.bias.grad
        return out

    def init_state(self, n, device="cpu", dtype=torch.float32):
        z = torch.zeros(n, device=device, dtype=dtype)
        one = torch.ones((), device=device, dtype=dtype)
        return (z, z.clone(), one, one.clone()) + super().init_state(n, device, dtype)

    def step(self, grad, state):
        m, v, b1t, b2t = state[:4]
        m = self.beta1 * m + (1 - self.beta1) * grad
        v = self.beta2 * v + (1 - self.beta2) * grad * grad
        b1t, b2t = b1t * self.beta1, b2t * self.beta2
        s = torch.sqrt(v / (1 - b2t)) + self.eps
        features = torch.stack([grad / s, m / (1 - b1t) / s], dim=-1)
        x = F.elu(self.preprocess(features))
        out, lstm_state = self._lstm(x, state[4:])
        return -self.alpha * torch.tanh(out), (m, v, b1t, b2t) + lstm_state


class ReferenceDMOptimizer(_ReferenceCore):
    def __init__(self, hidden_size=20, n_layers=2, preprocess_p=10.0, output_scale=0.1):
        super().__init__(2, hidden_size, n_layers)
        self.preprocess_p, self.output_scale = preprocess_p, output_scale

    @classmethod
    def from_model(cls, model) -> ReferenceDMOptimizer:
        ref = cls(model.hidden_size, model.n_layers, model.preprocess_p, model.output_scale)
        p = next(model.parameters())
        ref = ref.to(p.device, p.dtype)
        ref._copy_from(model)
        return ref

    def step(self, grad, state):
        p = self.preprocess_p
        log_part = torch.log(torch.clamp(torch.abs(grad), min=math.exp(-p))) / p
        sign_part = torch.clamp(grad * math.exp(p), -1.0, 1.0)
        out, lstm_state = self._lstm(torch.stack([log_part, sign_part], dim=-1), state)
        return self.output_scale * out, lstm_state


def reference_from(model):
    """The reference twin of a production RNNprop / DMOptimizer, with the same weights."""
    if model.name == "rnnprop":
        return ReferenceRNNprop.from_model(model)
    return ReferenceDMOptimizer.from_model(model)


def meta_loss(model, task, theta, state, generator, weights):
    """One truncation period: Σ_t w_t f(θ_t), the optimizee graph kept in the meta-graph.

    Returns (meta_loss, θ_end, state_end). The optimizee gradient is detached (first order).
    """
    theta = theta.detach().requires_grad_(True)
    unroll = len(weights) - 1
    total = theta.new_zeros(())
    for t in range(unroll + 1):
        if t == unroll and weights[t] == 0.0:
            break
        loss = task.loss(theta, task.sample_batch(generator))
        if weights[t]:
            total = total + weights[t] * loss
        if t < unroll:
            (grad,) = torch.autograd.grad(loss, theta, retain_graph=True)
            update, state = model.step(grad.detach(), state)
            theta = theta + update
    return total, theta, state


def meta_train_run(model, meta_opt, task, generator, weights, n_periods):
    """One optimizee run of ``n_periods`` truncation periods, one Adam meta-update each."""
    instance = task.sample_instance(generator)
    theta = instance.init_params(generator)
    state = model.init_state(theta.numel(), theta.device, theta.dtype)
    values = []
    for _ in range(n_periods):
        state = tuple(s.detach() for s in state)
        loss, theta, state = meta_loss(model, instance, theta, state, generator, weights)
        meta_opt.zero_grad(set_to_none=True)
        loss.backward()
        if torch.isfinite(loss) and all(torch.isfinite(p.grad).all()
                                        for p in model.parameters() if p.grad is not None):
            meta_opt.step()
        values.append(loss.item())
        theta = theta.detach()
    return values


def run(task, model, theta0, batch_seed, n_steps, on_step=None):
    """Apply the optimizer for ``n_steps`` (no gradient through it).

    Returns (θ after every step [n_steps, n], loss curve [n_steps]).
    """
    gen = torch.Generator().manual_seed(batch_seed)
    theta = theta0.clone()
    state = model.init_state(theta.numel(), theta.device, theta.dtype)
    thetas, curve = [], []
    for t in range(n_steps):
        p = theta.detach().requires_grad_(True)
        loss = task.loss(p, task.sample_batch(gen))
        (grad,) = torch.autograd.grad(loss, p)
        with torch.no_grad():
            update, state = model.step(grad, state)
            theta = theta + update
        thetas.append(theta)
        curve.append(loss.detach())
        if on_step is not None:
            on_step(t)
    return torch.stack(thetas), torch.stack(curve)
