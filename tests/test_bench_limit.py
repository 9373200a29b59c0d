"""The bench's limit rows count the GEMM work that an RNNprop step really does."""

import importlib.util
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from l2o_pipeline.optimizers import RNNprop, kernels, native

aten = torch.ops.aten


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_speed.py"
    spec = importlib.util.spec_from_file_location("l2o_bench_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _MatmulFlops(TorchDispatchMode):
    """FLOPs of the matrix products run (2·m·k·n each), matrix-vector products aside."""

    flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in (aten.mm, aten.addmm, aten.addmm_):
            a, b = args[-2:]
            self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        return func(*args, **(kwargs or {}))


def _gemm_flops(work):
    return sum(2 * r * k * c for r, k, c in work["gemms"])


def test_step_work_counts_the_steps_matmuls():
    """The forward GEMMs of a real step (eager kernels, whatever hidden size and depth); the
    meta-training count adds two backward GEMMs per gate GEMM and the preprocessing's weight
    gradient (the fast path's recomputed gates are beyond the minimum, so not counted)."""
    bench, mode = _bench(), native.get_native()
    native.set_native("false")
    try:
        for hidden, n_layers in ((20, 2), (8, 3)):
            model, n = RNNprop(hidden_size=hidden, n_layers=n_layers), 300
            grad, state = torch.randn(n), model.init_state(n)
            with torch.no_grad(), _MatmulFlops() as counter:
                model.step(grad, state)
            forward = bench.step_work(n, hidden, n_layers, train=False)
            assert _gemm_flops(forward) == counter.flops
            kernels.set_memory_saving(False)
            # a step inside a truncation: the LSTM state carries the meta-gradient
            state = state[:4] + tuple(s.requires_grad_() for s in state[4:])
            update, _ = model.step(grad, state)
            with _MatmulFlops() as counter:
                update.sum().backward()
            train = bench.step_work(n, hidden, n_layers, train=True)
            assert _gemm_flops(train) - _gemm_flops(forward) == counter.flops
    finally:
        native.set_native(mode)


def test_real_rows_get_their_phases_fraction_of_limit():
    bench = _bench()
    results = {"limit/rnnprop/apply": {"ms_per_step": 2.0},
               "apply/rnnprop/reference": {"ms_per_step": 10.0},
               "apply/rnnprop": {"ms_per_step": 4.0}}
    bench._annotate(results, "apply/rnnprop")
    assert results["apply/rnnprop"]["fraction_of_limit"] == 0.5
    assert results["apply/rnnprop"]["speedup_vs_reference"] == 2.5
