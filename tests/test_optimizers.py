"""The optimizers' maths pinned against hand computations."""

import math

import pytest
import torch

from l2o_pipeline.optimizers import HAND_DESIGNED, DMOptimizer, RNNprop, build_optimizer


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_tf_models():
    assert n_params(RNNprop()) == 6641  # spec §1
    assert n_params(DMOptimizer.paper()) == 5141  # spec §2a


def test_rnnprop_inputs_on_a_known_gradient_sequence():
    opt = RNNprop()
    grads = [torch.tensor([0.5, -2.0]), torch.tensor([1.5, 1.0]), torch.tensor([-0.25, 0.0])]
    state = opt.init_state(2)
    m = [0.0, 0.0]
    v = [0.0, 0.0]
    for t, g in enumerate(grads, start=1):
        features, moments = opt.inputs(g, state)
        state = moments + state[4:]
        for i in range(2):
            gi = g[i].item()
            m[i] = 0.95 * m[i] + 0.05 * gi
            v[i] = 0.95 * v[i] + 0.05 * gi * gi
            s = math.sqrt(v[i] / (1 - 0.95**t)) + 1e-8  # ε outside the sqrt
            assert features[i, 0].item() == pytest.approx(gi / s, rel=1e-5, abs=1e-6)
            assert features[i, 1].item() == pytest.approx(m[i] / (1 - 0.95**t) / s, rel=1e-5)
    # first step: both inputs ≈ sign(g)
    f1, _ = opt.inputs(grads[0], opt.init_state(2))
    assert torch.allclose(f1, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), atol=1e-6)


def test_rnnprop_update_is_minus_alpha_tanh_of_the_output():
    opt = RNNprop(alpha=0.1)
    with torch.no_grad():
        for p in opt.parameters():
            p.zero_()
        opt.output.bias.fill_(0.7)  # zero LSTM ⇒ h = 0 ⇒ output = bias
    update, state = opt.step(torch.tensor([0.3, -0.1, 2.0]), opt.init_state(3))
    assert torch.allclose(update, torch.full((3,), -0.1 * math.tanh(0.7)))
    # c = σ(f + forget_bias)·0 + σ(i)·tanh(0) = 0, to float32 rounding: the kernels' tanh is
    # 2σ(2x) − 1, exact at 0 only where exp(0) is (glibc's AVX2 vector expf gives 1 + 2⁻²³)
    assert state[-1].abs().max() <= 2 * torch.finfo(torch.float32).eps


def test_rnnprop_step_matches_a_per_coordinate_reference():
    torch.manual_seed(0)
    opt = RNNprop()
    g = torch.randn(4)
    update, _ = opt.step(g, opt.init_state(4))
    sd = {k: v.double() for k, v in opt.state_dict().items()}
    for i in range(4):
        x = torch.tensor([1.0, 1.0], dtype=torch.float64) * torch.sign(g[i]).double()
        x = torch.nn.functional.elu(x @ sd["preprocess.weight"].T + sd["preprocess.bias"])
        for layer in range(2):
            w, b = sd[f"cells.{layer}.weight"], sd[f"cells.{layer}.bias"]
            gates = torch.cat([x, torch.zeros(20, dtype=torch.float64)]) @ w + b
            gi, gj, gf, go = gates.split(20)  # TF order (i, j, f, o)
            c = torch.sigmoid(gi) * torch.tanh(gj)  # previous c is 0
            x = torch.sigmoid(go) * torch.tanh(c)
            assert gf.shape == (20,)
        a = x @ sd["output.weight"][0] + sd["output.bias"][0]
        assert update[i].item() == pytest.approx(-0.1 * math.tanh(a.item()), abs=1e-6)


def test_rnnprop_official_initialisation_ranges():
    opt = RNNprop()
    bound = math.sqrt(3 / 40)
    for cell in opt.cells:
        assert cell.weight.abs().max() <= bound and cell.weight.abs().max() > 0.9 * bound
        assert torch.all(cell.bias == 0) and cell.forget_bias == 1.0
    assert opt.preprocess.weight.abs().max() <= 0.2 and torch.all(opt.preprocess.bias == 0)
    assert opt.output.weight.abs().max() <= 0.2


def test_dmoptimizer_preprocessing_by_hand():
    opt = DMOptimizer.paper()
    g = torch.tensor([1e-6, 0.5, -2.0, 0.0])
    x = opt.inputs(g)
    expected = torch.tensor([
        [-1.0, math.exp(10) * 1e-6],
        [math.log(0.5) / 10, 1.0],
        [math.log(2.0) / 10, -1.0],
        [-1.0, 0.0],
    ])
    assert torch.allclose(x, expected, atol=1e-6)
    official = DMOptimizer.official()
    assert official.preprocess_p == 5.0 and official.output_scale == 0.01
    assert official.inputs(torch.tensor([1e-3]))[0, 1].item() == pytest.approx(
        min(1.0, math.exp(5) * 1e-3))


def test_dmoptimizer_output_is_scaled_linear_output():
    opt = DMOptimizer.paper()
    with torch.no_grad():
        for p in opt.parameters():
            p.zero_()
        opt.output.bias.fill_(2.0)
    update, _ = opt.step(torch.tensor([0.1, -0.3]), opt.init_state(2))
    assert torch.allclose(update, torch.full((2,), 0.2))


def test_dmoptimizer_identity_input_reads_the_raw_gradient():
    """DeepMind's quadratic config: one input feature, the gradient itself, output × 1."""
    opt = DMOptimizer.official(preprocess="identity", output_scale=1.0)
    assert opt.cells[0].input_size == 1
    g = torch.tensor([1e-6, 0.5, -2.0])
    assert torch.equal(opt.inputs(g), g.unsqueeze(-1))
    with torch.no_grad():
        for p in opt.parameters():
            p.zero_()
        opt.output.bias.fill_(2.0)
    update, _ = opt.step(g, opt.init_state(3))
    assert torch.allclose(update, torch.full((3,), 2.0))
    rebuilt = DMOptimizer(**opt.hparams())
    assert rebuilt.preprocess == "identity" and rebuilt.cells[0].input_size == 1
    with pytest.raises(ValueError, match="preprocess"):
        DMOptimizer(preprocess="log")


def tf_reference_steps(name, lr, grads):
    """TensorFlow's update rules written out in plain Python floats."""
    out, theta = [], 0.0
    acc, acc2, m, v = 0.0, 0.0, 0.0, 0.0
    if name == "adagrad":
        acc = 0.1
    if name == "rmsprop":
        acc = 1.0
    for t, g in enumerate(grads, start=1):
        if name == "sgd":
            theta -= lr * g
        elif name == "momentum":
            acc = 0.9 * acc + g
            theta -= lr * acc
        elif name == "adagrad":
            acc += g * g
            theta -= lr * g / math.sqrt(acc)
        elif name == "adadelta":
            acc = 0.95 * acc + 0.05 * g * g
            d = math.sqrt(acc2 + 1e-8) / math.sqrt(acc + 1e-8) * g
            acc2 = 0.95 * acc2 + 0.05 * d * d
            theta -= lr * d
        elif name == "rmsprop":
            acc = 0.9 * acc + 0.1 * g * g
            theta -= lr * g / math.sqrt(acc + 1e-10)
        elif name == "adam":
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            lr_t = lr * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            theta -= lr_t * m / (math.sqrt(v) + 1e-8)
        out.append(theta)
    return out


@pytest.mark.parametrize("name", sorted(HAND_DESIGNED))
def test_first_three_steps_match_tensorflow_semantics(name):
    grads = [0.3, -1.2, 0.05]
    opt = build_optimizer(name, lr=0.1)
    theta = torch.zeros(1, dtype=torch.float64)
    state = opt.init_state(1, dtype=torch.float64)
    for g, expected in zip(grads, tf_reference_steps(name, 0.1, grads)):
        update, state = opt.step(torch.tensor([g], dtype=torch.float64), state)
        theta = theta + update
        assert theta.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", sorted(HAND_DESIGNED))
@pytest.mark.parametrize("lr", [0.0, -0.01])
def test_non_positive_learning_rate_is_refused(name, lr):
    with pytest.raises(ValueError, match=f"{name}.lr"):
        build_optimizer(name, lr=lr)


def test_unknown_optimizer_names_the_valid_ones():
    with pytest.raises(ValueError, match="rnnprop"):
        build_optimizer("lbfgs")
