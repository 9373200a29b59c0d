"""The fast path (fused LSTM kernels, hand-written backwards) against the straightforward one.

``bench/reference.py`` is the yardstick: two ``nn.LSTMCell``s, ``autograd.grad`` per step and the
optimizee graph kept in the meta-graph. Every comparison runs 100 optimizee steps on a small
version of the paper's training task, in float64 (the maths must agree to rounding) and in
float32 (the production dtype, to float32 tolerance).
"""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

from l2o_pipeline.evaluate import run_optimizer
from l2o_pipeline.meta.period import meta_loss_weights, truncated_meta_loss
from l2o_pipeline.optimizees import MLPTask, SquareTask
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers import DMOptimizer, RNNprop, kernels, native
from l2o_pipeline.tricks import Combined, RandomScaling


def _load_reference():
    path = Path(__file__).resolve().parents[1] / "bench" / "reference.py"
    spec = importlib.util.spec_from_file_location("l2o_bench_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

FAMILIES = {"rnnprop": (RNNprop, "last"), "dmoptimizer": (DMOptimizer.paper, "mean")}
DTYPES = [torch.float64, torch.float32]
# relative error of a whole vector (norm-wise); float32 allows for 100 steps of rounding
REL = {torch.float64: 1e-9, torch.float32: 1e-4}
REL_GRAD = {torch.float64: 1e-9, torch.float32: 1e-3}


@pytest.fixture(autouse=True, params=["native", "eager"])
def backend_one_thread(request):
    """Every test twice: the C++ kernels (where they build) and the eager ones, whatever
    L2O_COMPILE says (compiling would make this slow); one thread (these tensors are small; on
    a loaded machine OpenMP's spinning threads cost up to 8×)."""
    mode, threads, native_mode = (kernels.get_compile(), torch.get_num_threads(),
                                  native.get_native())
    kernels.set_compile("false")
    native.set_native("auto" if request.param == "native" else "false")
    torch.set_num_threads(1)
    yield request.param
    kernels.set_compile(mode)
    native.set_native(native_mode)
    torch.set_num_threads(threads)


def training_task(mnist):
    """The paper's RNNprop training task (both tricks) on a 784-2-10 MLP: 1,620 coordinates."""
    task = Combined([RandomScaling(MLPTask(mnist, hidden=2, batch_size=32), 3.0),
                     RandomScaling(SquareTask(20), 1.0)])
    return task.sample_instance(torch.Generator().manual_seed(1))


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def build(family, dtype):
    torch.manual_seed(0)
    model = FAMILIES[family][0]().to(dtype)
    return model, ref.reference_from(model)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_update_trajectory_matches_reference(mnist, family, dtype):
    """Closed loop, no grad (as in evaluation): θ_t and every update over 100 steps."""
    model, reference = build(family, dtype)
    task = training_task(mnist)
    theta0 = task.init_params(torch.Generator().manual_seed(2)).to(dtype)
    ref_thetas, ref_curve = ref.run(task, reference, theta0, batch_seed=3, n_steps=100)
    gen = torch.Generator().manual_seed(3)
    theta, state = theta0.clone(), model.init_state(theta0.numel(), dtype=dtype)
    with torch.no_grad():
        for t in range(100):
            loss, grad = task.loss_and_grad(theta, task.sample_batch(gen))
            assert loss.item() == pytest.approx(ref_curve[t].item(), rel=REL[dtype])
            update, state = model.step(grad, state)
            prev = ref_thetas[t - 1] if t else theta0
            assert rel_err(update, ref_thetas[t] - prev) < 10 * REL[dtype]
            theta = theta + update
            assert rel_err(theta, ref_thetas[t]) < REL[dtype]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_run_optimizer_matches_reference(mnist, family):
    model, reference = build(family, torch.float32)
    task = MLPTask(mnist, hidden=2, batch_size=32)
    theta0 = task.init_params(torch.Generator().manual_seed(4))
    curve, final = run_optimizer(task, model, theta0, batch_seed=5, n_steps=100)
    ref_thetas, ref_curve = ref.run(task, reference, theta0, batch_seed=5, n_steps=100)
    assert rel_err(curve, ref_curve) < REL[torch.float32]
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        ref_final = sum(task.loss(ref_thetas[-1], task.sample_batch(gen)) for _ in range(100))
    assert final == pytest.approx(ref_final.item() / 100, rel=REL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_meta_gradient_matches_reference(mnist, family, dtype):
    """Five truncation periods of 20 steps (a 100-step run): meta-loss, θ and meta-gradient."""
    model, reference = build(family, dtype)
    task = training_task(mnist)
    weights = meta_loss_weights(FAMILIES[family][1], 20)
    theta0 = task.init_params(torch.Generator().manual_seed(2)).to(dtype)
    theta_a, state_a = theta0, model.init_state(theta0.numel(), dtype=dtype)
    theta_b, state_b = theta0, reference.init_state(theta0.numel(), dtype=dtype)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        model.zero_grad()
        reference.zero_grad()
        surrogate, value, theta_a, state_a = truncated_meta_loss(
            model, task, theta_a.detach(), tuple(s.detach() for s in state_a), gen_a, weights)
        surrogate.backward()
        loss, theta_b, state_b = ref.meta_loss(
            reference, task, theta_b.detach(), tuple(s.detach() for s in state_b), gen_b,
            weights)
        loss.backward()
        assert value.item() == pytest.approx(loss.item(), rel=REL[dtype])
        assert rel_err(theta_a.detach(), theta_b.detach()) < REL[dtype]
        expected = reference.tf_layout_grads()
        for name, p in model.named_parameters():
            assert rel_err(p.grad, expected[name]) < REL_GRAD[dtype], name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_memory_saving_mode_gives_the_same_meta_gradient(mnist, family):
    """set_memory_saving(True) recomputes the gates in the backward: same numbers."""
    model, _ = build(family, torch.float64)
    task = training_task(mnist)
    weights = meta_loss_weights(FAMILIES[family][1], 20)
    theta0 = task.init_params(torch.Generator().manual_seed(2)).double()
    results = []
    for on in (False, True):
        kernels.set_memory_saving(on)
        try:
            model.zero_grad()
            surrogate, value, theta, _ = truncated_meta_loss(
                model, task, theta0, model.init_state(theta0.numel(), dtype=torch.float64),
                torch.Generator().manual_seed(3), weights)
            surrogate.backward()
        finally:
            kernels.set_memory_saving(False)
        results.append([value, theta.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_graph_and_no_graph_paths_agree():
    """The autograd Functions' forward and the in-place inference kernels give the same step."""
    torch.manual_seed(0)
    for model in (RNNprop().double(), DMOptimizer.paper().double()):
        n = 50
        state = list(model.init_state(n, dtype=torch.float64))
        k = 2 * model.n_layers  # the LSTM slots come last: give them non-zero values
        state[-k:] = [0.5 * torch.randn_like(s) for s in state[-k:]]
        if model.name == "rnnprop":  # m, v, β1^t, β2^t after a few steps
            state[:4] = [torch.randn(n, dtype=torch.float64), torch.rand(n, dtype=torch.float64),
                         torch.tensor(0.95**3, dtype=torch.float64),
                         torch.tensor(0.95**3, dtype=torch.float64)]
        state = tuple(state)
        grad = torch.randn(n, dtype=torch.float64)
        with torch.no_grad():
            update, new_state = model.step(grad, state)
        update_g, new_state_g = model.step(grad, state)
        assert update_g.requires_grad
        torch.testing.assert_close(update_g.detach(), update, rtol=1e-12, atol=1e-14)
        for a, b in zip(new_state_g, new_state):
            torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-14)


def test_fused_functions_pass_gradcheck():
    """Every input's gradient of the two autograd Functions, against finite differences."""
    torch.manual_seed(0)
    n, n_in, H = 6, 3, 4
    cell = kernels.CoordinatewiseLSTM(n_in, H).double()
    torch.nn.init.uniform_(cell.weight, -0.5, 0.5)
    torch.nn.init.uniform_(cell.bias, -0.5, 0.5)
    inputs = [torch.randn(n, n_in, dtype=torch.float64, requires_grad=True),
              torch.randn(n, H, dtype=torch.float64, requires_grad=True),
              torch.randn(n, H, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda x, h, c: cell(x, h, c), inputs)
    params = [cell.weight, cell.bias]
    assert torch.autograd.gradcheck(lambda w, b: kernels._LSTMCellFunction.apply(
        *[t.detach() for t in inputs], w, b, cell._gate_scale, cell._forget_mask,
        cell._grad_factor, 1.0), params)
    linear = torch.nn.Linear(2, H).double()
    x = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels._LinearELUFunction.apply,
                                    [x, linear.weight, linear.bias])


def test_shared_moment_slots_may_be_per_coordinate():
    """torch_optim passes β^t as one row per coordinate; that must equal the scalar slots."""
    torch.manual_seed(0)
    model = RNNprop()
    grad = torch.randn(7)
    state = model.init_state(7)
    for _ in range(3):
        state = model.step(grad, state)[1]
    expanded = state[:2] + tuple(s.expand(7).clone() for s in state[2:4]) + state[4:]
    torch.testing.assert_close(model.step(grad, expanded)[0], model.step(grad, state)[0])


def test_checkpoint_keys_are_unchanged():
    """The helper buffers are not persistent: checkpoints keep their old layout."""
    keys = set(RNNprop().state_dict())
    assert keys == {f"cells.{i}.{k}" for i in range(2) for k in ("weight", "bias")} | {
        "preprocess.weight", "preprocess.bias", "output.weight", "output.bias"}
    assert RNNprop().cells[0].weight.shape == (40, 80)
    assert DMOptimizer.paper().cells[0].weight.shape == (22, 80)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "elu"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_mlp_hand_written_backward_matches_autograd(mnist, activation, n_layers):
    task = MLPTask(mnist, hidden=7, n_layers=n_layers, activation_name=activation,
                   batch_size=16)
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        theta = task.init_params(gen).to(dtype)
        batch = task.sample_batch(gen)
        loss, grad = task.loss_and_grad(theta, batch)
        expected_loss, expected_grad = Task.loss_and_grad(task, theta, batch)  # autograd
        torch.testing.assert_close(loss, expected_loss)
        torch.testing.assert_close(grad, expected_grad)
        assert not grad.requires_grad and grad.dtype == dtype


@pytest.mark.slow
def test_compiled_kernels_match_eager(mnist, backend_one_thread):
    """``L2O_COMPILE=true`` (torch.compile of the pointwise kernels) changes nothing but speed.

    Slow: the first compile takes tens of seconds on CPU.
    """
    if backend_one_thread == "native":
        pytest.skip("the C++ kernels take precedence over torch.compile on CPU")
    torch.manual_seed(0)
    model = RNNprop()
    task = training_task(mnist)
    weights = meta_loss_weights("last", 20)
    theta0 = task.init_params(torch.Generator().manual_seed(2))
    results = []
    for mode in ("false", "true"):
        kernels.set_compile(mode)
        model.zero_grad()
        surrogate, value, theta, _ = truncated_meta_loss(
            model, task, theta0, model.init_state(theta0.numel()),
            torch.Generator().manual_seed(3), weights)
        surrogate.backward()
        curve, _ = run_optimizer(task, model, theta0, batch_seed=4, n_steps=20)
        results.append((theta.detach(), [p.grad.clone() for p in model.parameters()], curve))
    assert not any(k.failed for k in kernels._compiled.values()), "torch.compile failed"
    (theta_e, grads_e, curve_e), (theta_c, grads_c, curve_c) = results
    assert rel_err(theta_c, theta_e) < 1e-5 and rel_err(curve_c, curve_e) < 1e-5
    for a, b in zip(grads_c, grads_e):
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [4, 10, 20])  # the register-blocked sizes and ATen's
def test_native_layers_equal_eager_ones_for_every_hidden_size(backend_one_thread, hidden,
                                                              dtype):
    """Each C++ forward (LSTM layer with its in-kernel gate GEMM, Linear+ELU) and the LSTM
    backward equal the eager kernels, on a row count that is no multiple of any block."""
    if backend_one_thread == "eager" or native.kernels_for(torch.zeros(1)) is None:
        pytest.skip("compares the C++ kernels with the eager ones")
    torch.manual_seed(0)
    n, n_in = 517, 7
    cell = kernels.CoordinatewiseLSTM(n_in, hidden).to(dtype)
    torch.nn.init.uniform_(cell.weight, -0.5, 0.5)
    torch.nn.init.uniform_(cell.bias, -0.5, 0.5)
    linear = torch.nn.Linear(3, hidden).to(dtype)
    x, h, c = (torch.randn(n, k, dtype=dtype, requires_grad=True)
               for k in (n_in, hidden, hidden))
    features = torch.randn(n, 3, dtype=dtype) * 3  # both branches of the ELU

    def outputs():
        with torch.no_grad():
            applied = (*cell(x, h, c), kernels.linear_elu(features, linear))
        h_new, c_new = cell(x, h, c)
        grads = torch.autograd.grad((h_new.sin().sum() + c_new.cos().sum()),
                                    (x, h, c, cell.weight, cell.bias))
        return applied + grads

    fast = outputs()
    native.set_native("false")
    eager = outputs()
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4,
                                                                         "atol": 1e-5}
    for a, b in zip(fast, eager, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_native_kernels_are_used_where_a_compiler_exists(backend_one_thread):
    """The "native" runs above test the C++ kernels, not a silent fallback (where g++ exists)."""
    if backend_one_thread == "eager":
        assert native.kernels_for(torch.zeros(1)) is None
    elif shutil.which(os.environ.get("CXX", "c++")) and shutil.which("ninja"):
        assert native.kernels_for(torch.zeros(1)) is not None
        assert native.kernels_for(torch.zeros(1, dtype=torch.float16)) is None


def test_failed_build_falls_back_to_eager(mnist, backend_one_thread, tmp_path, monkeypatch,
                                          caplog):
    """No usable compiler: one warning, then the eager kernels, with the reference's numbers."""
    if backend_one_thread == "eager":
        pytest.skip("one run is enough")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with caplog.at_level("WARNING", logger=native.__name__):
        assert native.build(str(tmp_path)) is None
    assert "could not be built" in caplog.text
    monkeypatch.setitem(native._native, "module", None)
    monkeypatch.setitem(native._native, "failed", False)
    monkeypatch.setattr(native, "build", lambda: None)
    model, reference = build("rnnprop", torch.float64)
    task = training_task(mnist)
    theta0 = task.init_params(torch.Generator().manual_seed(2)).to(torch.float64)
    weights = meta_loss_weights("last", 20)
    surrogate, value, *_ = truncated_meta_loss(
        model, task, theta0, model.init_state(theta0.numel(), dtype=torch.float64),
        torch.Generator().manual_seed(3), weights)
    assert native._native["failed"] and native.kernels_for(theta0) is None
    surrogate.backward()
    loss, *_ = ref.meta_loss(reference, task, theta0, reference.init_state(
        theta0.numel(), dtype=torch.float64), torch.Generator().manual_seed(3), weights)
    loss.backward()
    expected = reference.tf_layout_grads()
    for name, p in model.named_parameters():
        assert rel_err(p.grad, expected[name]) < REL_GRAD[torch.float64], name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_meta_gradient_is_the_same_on_two_threads(mnist, family, backend_one_thread):
    """The kernels' worker threads (grad mode is thread-local) compute the meta-gradient of
    one truncation as one thread does; the C++ one once refused to run there at all."""
    task = training_task(mnist)
    weights = meta_loss_weights(FAMILIES[family][1], 20)
    theta0 = task.init_params(torch.Generator().manual_seed(2)).to(torch.float64)
    grads = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model, _ = build(family, torch.float64)
        state = model.init_state(theta0.numel(), dtype=torch.float64)
        surrogate, _, _, _ = truncated_meta_loss(model, task, theta0, state,
                                                 torch.Generator().manual_seed(3), weights)
        surrogate.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert rel_err(grads[1][name], g) < 1e-12, name
