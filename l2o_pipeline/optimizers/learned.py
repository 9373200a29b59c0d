"""The learned optimizers: RNNprop (paper 1, spec §1) and DMoptimizer (paper 2, spec §2).

Both are coordinatewise: every optimizee coordinate is one row of a batch that runs through the
same small network, with its own recurrent state. All state tensors are ``(n, ...)``. The
network's layers run on the fused kernels of :mod:`l2o_pipeline.optimizers.kernels`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from l2o_pipeline.optimizers.base import LearnedOptimizer, State
from l2o_pipeline.optimizers.kernels import CoordinatewiseLSTM, linear_elu
from l2o_pipeline.registry import learned_optimizers
from l2o_pipeline.utils import check_fraction, check_one_of, check_positive


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


class LSTMOptimizer(LearnedOptimizer):
    """A learned optimizer whose core is a coordinatewise LSTM (``n_layers`` layers of
    ``hidden_size``) with a linear readout; subclasses define its inputs and the update."""

    def __init__(self, input_size: int, hidden_size: int, n_layers: int):
        super().__init__()
        check_positive("hidden_size", hidden_size, "a positive integer", self.name)
        check_positive("n_layers", n_layers, "a positive integer", self.name)
        self.hidden_size, self.n_layers = hidden_size, n_layers
        sizes = [input_size] + [hidden_size] * n_layers
        self.cells = nn.ModuleList(
            CoordinatewiseLSTM(a, hidden_size) for a in sizes[:-1]
        )
        self.output = nn.Linear(hidden_size, 1)

    def lstm_state_names(self) -> tuple[str, ...]:
        return tuple(f"{kind}{layer}" for layer in range(self.n_layers) for kind in ("h", "c"))

    def _zero_lstm_state(self, n, device, dtype) -> State:
        z = torch.zeros(n, self.hidden_size, device=device, dtype=dtype)
        return tuple(z.clone() for _ in range(2 * self.n_layers))

    def _lstm(self, x, lstm_state: State) -> tuple[torch.Tensor, State]:
        new_state = []
        for layer, cell in enumerate(self.cells):
            h, c = cell(x, lstm_state[2 * layer], lstm_state[2 * layer + 1])
            new_state += [h, c]
            x = h
        return torch.addmv(self.output.bias, x, self.output.weight[0]), tuple(new_state)


@learned_optimizers.register("rnnprop", label="RNNprop", color="C3")
class RNNprop(LSTMOptimizer):
    """Adam-like normalised inputs (g̃, m̃) → FC 2→20 + ELU → 2-layer LSTM(20) → α·tanh."""

    name = "rnnprop"

    def __init__(self, hidden_size: int = 20, n_layers: int = 2, beta1: float = 0.95,
                 beta2: float = 0.95, eps: float = 1e-8, alpha: float = 0.1,
                 init: str = "official_rnnprop"):
        super().__init__(hidden_size, hidden_size, n_layers)
        check_fraction("beta1", beta1, self.name)
        check_fraction("beta2", beta2, self.name)
        check_positive("eps", eps, owner=self.name)
        check_positive("alpha", alpha, owner=self.name)
        check_one_of("init", init, INIT_SCHEMES, self.name)
        self.beta1, self.beta2, self.eps, self.alpha, self.init = beta1, beta2, eps, alpha, init
        self.preprocess = nn.Linear(2, hidden_size)
        INIT_SCHEMES[init](self)

    def state_names(self):
        return ("exp_avg", "exp_avg_sq", "beta1_power", "beta2_power") + self.lstm_state_names()

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
        x = linear_elu(features, self.preprocess)  # F.elu(self.preprocess(features)), fused
        out, lstm_state = self._lstm(x, state[4:])
        return self.readout(out), moments + lstm_state

    def readout(self, out):
        """The update from the LSTM's linear output."""
        # The official code subtracts α·tanh(a); keep the sign so official weights load.
        return -self.alpha * torch.tanh(out)


# Input features per coordinate of each DMoptimizer preprocessing.
DM_PREPROCESSING = {"log_sign": 2, "identity": 1}


@learned_optimizers.register("dmoptimizer", label="DMoptimizer", color="C0")
class DMOptimizer(LSTMOptimizer):
    """Andrychowicz et al.: log/sign preprocessing with parameter p, linear output × scale.

    ``DMOptimizer.paper()`` is the variant paper 1 compared against (p = 10, × 0.1, RC init);
    ``DMOptimizer.official()`` is what DeepMind's code ships (k = 5, × 0.01, Sonnet init).
    """

    name = "dmoptimizer"

    def __init__(self, hidden_size: int = 20, n_layers: int = 2, preprocess_p: float = 10.0,
                 output_scale: float = 0.1, init: str = "official_rnnprop",
                 preprocess: str = "log_sign"):
        check_one_of("preprocess", preprocess, DM_PREPROCESSING, self.name)
        super().__init__(DM_PREPROCESSING[preprocess], hidden_size, n_layers)
        check_positive("preprocess_p", preprocess_p, owner=self.name)
        check_positive("output_scale", output_scale, owner=self.name)
        check_one_of("init", init, INIT_SCHEMES, self.name)
        self.preprocess_p, self.output_scale, self.init = preprocess_p, output_scale, init
        self.preprocess = preprocess
        INIT_SCHEMES[init](self)

    @classmethod
    def paper(cls, **kw):
        return cls(**{"preprocess_p": 10.0, "output_scale": 0.1, "init": "official_rnnprop", **kw})

    @classmethod
    def official(cls, **kw):
        return cls(**{"preprocess_p": 5.0, "output_scale": 0.01, "init": "sonnet", **kw})

    def state_names(self):
        return self.lstm_state_names()

    def init_state(self, n, device="cpu", dtype=torch.float32):
        return self._zero_lstm_state(n, device, dtype)

    def inputs(self, grad):
        """(log|g|/p, sign g) if |g| ≥ e^−p, else (−1, e^p·g): paper 2, appendix A; or the raw
        gradient (``preprocess="identity"``: DeepMind's quadratic config has no preprocessing)."""
        if self.preprocess == "identity":
            return grad.unsqueeze(-1)
        p = self.preprocess_p
        log_part = grad.abs().clamp_min(math.exp(-p)).log() / p
        sign_part = (grad * math.exp(p)).clamp(-1.0, 1.0)
        return torch.stack([log_part, sign_part], dim=-1)

    def step(self, grad, state):
        out, lstm_state = self._lstm(self.inputs(grad), state)
        return self.readout(out), lstm_state

    def readout(self, out):
        """The update from the LSTM's linear output."""
        return self.output_scale * out


# DeepMind's own settings of the same model (its conf/optimizer file gives them).
learned_optimizers.register("dmoptimizer_official", DMOptimizer, label="DMoptimizer (official)",
                            color="navy")
