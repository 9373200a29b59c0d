"""The learned optimizers: RNNprop (paper 1, spec §1) and DMoptimizer (paper 2, spec §2).

Both are coordinatewise: every optimizee coordinate is one row of a batch that runs through the
same small network, with its own recurrent state. All state tensors are ``(n, ...)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from l2o_pipeline.optimizers.base import Optimizer, State


class CoordinatewiseLSTM(nn.Module):
    """TF 0.12 ``LSTMCell`` semantics: one weight [in+hid, 4·hid], one bias, gate order
    (i, j, f, o) and a constant forget bias, so the official weights map one to one."""

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0):
        super().__init__()
        self.input_size, self.hidden_size, self.forget_bias = input_size, hidden_size, forget_bias
        self.weight = nn.Parameter(torch.empty(input_size + hidden_size, 4 * hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))

    def forward(self, x, h, c):
        w_x, w_h = self.weight[: self.input_size], self.weight[self.input_size:]
        gates = torch.addmm(self.bias, x, w_x).addmm_(h, w_h)
        i, j, f, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def _trunc_normal(t: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)  # TF truncates at ±2σ


def init_official_rnnprop(module: nn.Module) -> None:
    """RC init: FC ~ truncated N(0, 0.1²), bias 0; LSTM ~ U(±√(3/fan_in)) (TF 0.12's
    uniform_unit_scaling default, fan_in = in + hid), bias 0 plus forget_bias 1."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            _trunc_normal(m.weight, 0.1)
            nn.init.zeros_(m.bias)
        elif isinstance(m, CoordinatewiseLSTM):
            bound = math.sqrt(3.0 / m.weight.shape[0])
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def init_sonnet(module: nn.Module) -> None:
    """DeepMind's code (Sonnet): gates and linear layers ~ truncated N(0, 1/fan_in)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            std = 1.0 / math.sqrt(m.in_features)
            _trunc_normal(m.weight, std)
            _trunc_normal(m.bias, std)
        elif isinstance(m, CoordinatewiseLSTM):
            std = 1.0 / math.sqrt(m.weight.shape[0])
            _trunc_normal(m.weight, std)
            _trunc_normal(m.bias, std)


INIT_SCHEMES = {"official_rnnprop": init_official_rnnprop, "sonnet": init_sonnet}


class LearnedOptimizer(Optimizer):
    """Shared 2-layer coordinatewise LSTM core; subclasses define inputs and the update."""

    learned = True

    def __init__(self, input_size: int, hidden_size: int, n_layers: int):
        super().__init__()
        if hidden_size <= 0 or n_layers <= 0:
            raise ValueError(f"hidden_size and n_layers must be positive, got "
                             f"{hidden_size}, {n_layers}")
        self.hidden_size, self.n_layers = hidden_size, n_layers
        sizes = [input_size] + [hidden_size] * n_layers
        self.cells = nn.ModuleList(
            CoordinatewiseLSTM(a, hidden_size) for a in sizes[:-1]
        )
        self.output = nn.Linear(hidden_size, 1)

    def hparams(self) -> dict:
        """Constructor arguments, saved in checkpoints so the model can be rebuilt."""
        raise NotImplementedError

    def _zero_lstm_state(self, n, device, dtype) -> State:
        z = torch.zeros(n, self.hidden_size, device=device, dtype=dtype)
        return tuple(z.clone() for _ in range(2 * self.n_layers))

    def _lstm(self, x, lstm_state: State) -> tuple[torch.Tensor, State]:
        new_state = []
        for layer, cell in enumerate(self.cells):
            h, c = cell(x, lstm_state[2 * layer], lstm_state[2 * layer + 1])
            new_state += [h, c]
            x = h
        return self.output(x).squeeze(-1), tuple(new_state)


class RNNprop(LearnedOptimizer):
    """Adam-like normalised inputs (g̃, m̃) → FC 2→20 + ELU → 2-layer LSTM(20) → α·tanh."""

    name = "rnnprop"

    def __init__(self, hidden_size: int = 20, n_layers: int = 2, beta1: float = 0.95,
                 beta2: float = 0.95, eps: float = 1e-8, alpha: float = 0.1,
                 init: str = "official_rnnprop"):
        super().__init__(hidden_size, hidden_size, n_layers)
        for key, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= value < 1:
                raise ValueError(f"rnnprop.{key} must be in [0, 1), got {value!r}")
        if alpha <= 0:
            raise ValueError(f"rnnprop.alpha must be positive, got {alpha!r}")
        if init not in INIT_SCHEMES:
            raise ValueError(f"unknown init {init!r}; valid: {sorted(INIT_SCHEMES)}")
        self.beta1, self.beta2, self.eps, self.alpha, self.init = beta1, beta2, eps, alpha, init
        self.preprocess = nn.Linear(2, hidden_size)
        INIT_SCHEMES[init](self)

    def hparams(self):
        return dict(hidden_size=self.hidden_size, n_layers=self.n_layers, beta1=self.beta1,
                    beta2=self.beta2, eps=self.eps, alpha=self.alpha, init=self.init)

    def init_state(self, n, device="cpu", dtype=torch.float32):
        z = torch.zeros(n, device=device, dtype=dtype)
        one = torch.ones((), device=device, dtype=dtype)
        # (m, v, β1^t, β2^t, h, c per layer)
        return (z, z.clone(), one, one.clone()) + self._zero_lstm_state(n, device, dtype)

    def inputs(self, grad, state):
        """(g̃, m̃) and the updated moment state; ε outside the sqrt as in the official code."""
        m, v, b1t, b2t = state[:4]
        m = self.beta1 * m + (1 - self.beta1) * grad
        v = self.beta2 * v + (1 - self.beta2) * grad * grad
        b1t, b2t = b1t * self.beta1, b2t * self.beta2
        s = (v / (1 - b2t)).sqrt() + self.eps
        features = torch.stack([grad / s, m / (1 - b1t) / s], dim=-1)
        return features, (m, v, b1t, b2t)

    def step(self, grad, state):
        features, moments = self.inputs(grad, state)
        x = F.elu(self.preprocess(features))
        out, lstm_state = self._lstm(x, state[4:])
        # The official code subtracts α·tanh(a); keep the sign so official weights load.
        return -self.alpha * torch.tanh(out), moments + lstm_state


class DMOptimizer(LearnedOptimizer):
    """Andrychowicz et al.: log/sign preprocessing with parameter p, linear output × scale.

    ``DMOptimizer.paper()`` is the variant paper 1 compared against (p = 10, × 0.1, RC init);
    ``DMOptimizer.official()`` is what DeepMind's code ships (k = 5, × 0.01, Sonnet init).
    """

    name = "dmoptimizer"

    def __init__(self, hidden_size: int = 20, n_layers: int = 2, preprocess_p: float = 10.0,
                 output_scale: float = 0.1, init: str = "official_rnnprop"):
        super().__init__(2, hidden_size, n_layers)
        if preprocess_p <= 0 or output_scale <= 0:
            raise ValueError(f"dmoptimizer.preprocess_p and output_scale must be positive, "
                             f"got {preprocess_p!r}, {output_scale!r}")
        if init not in INIT_SCHEMES:
            raise ValueError(f"unknown init {init!r}; valid: {sorted(INIT_SCHEMES)}")
        self.preprocess_p, self.output_scale, self.init = preprocess_p, output_scale, init
        INIT_SCHEMES[init](self)

    @classmethod
    def paper(cls, **kw):
        return cls(**{"preprocess_p": 10.0, "output_scale": 0.1, "init": "official_rnnprop", **kw})

    @classmethod
    def official(cls, **kw):
        return cls(**{"preprocess_p": 5.0, "output_scale": 0.01, "init": "sonnet", **kw})

    def hparams(self):
        return dict(hidden_size=self.hidden_size, n_layers=self.n_layers,
                    preprocess_p=self.preprocess_p, output_scale=self.output_scale,
                    init=self.init)

    def init_state(self, n, device="cpu", dtype=torch.float32):
        return self._zero_lstm_state(n, device, dtype)

    def inputs(self, grad):
        """(log|g|/p, sign g) if |g| ≥ e^−p, else (−1, e^p·g): paper 2, appendix A."""
        p = self.preprocess_p
        log_part = grad.abs().clamp_min(math.exp(-p)).log() / p
        sign_part = (grad * math.exp(p)).clamp(-1.0, 1.0)
        return torch.stack([log_part, sign_part], dim=-1)

    def step(self, grad, state):
        out, lstm_state = self._lstm(self.inputs(grad), state)
        return self.output_scale * out, lstm_state
