"""Optimizees and tricks: shapes, parameter counts, invariances, and malformed input."""

import math

import pytest
import torch

from l2o_pipeline.data import synthetic_dataset
from l2o_pipeline.optimizees import (
    CNNTask,
    MLPTask,
    QuadraticTask,
    SineLSTMTask,
    SquareTask,
    build_task,
)
from l2o_pipeline.tricks import Combined, RandomScaling


@pytest.fixture(scope="module")
def mnist():
    return synthetic_dataset("synthetic_mnist", n=256, seed=0)


@pytest.fixture(scope="module")
def cifar():
    return synthetic_dataset("synthetic_cifar10", n=64, seed=0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n_layers, expected", [(1, 15910), (2, 16330), (10, 19690)])
def test_mlp_parameter_counts(mnist, n_layers, expected):
    assert MLPTask(mnist, n_layers=n_layers).n_params == expected  # spec §3A, §5


def test_cnn_parameter_counts(mnist, cifar):
    assert CNNTask(mnist, "c-c-p-f").n_params == 33850
    assert CNNTask(mnist, "c-c-p-c-c-p-f-f").n_params == 117434
    assert CNNTask(cifar, "c-c-p-f").n_params == 43738


def test_sine_lstm_parameter_counts():
    assert SineLSTMTask(n_layers=1).n_params == 1781
    assert SineLSTMTask(n_layers=2).n_params == 5061


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "elu", "tanh"])
def test_mlp_loss_is_finite_and_differentiable(mnist, activation):
    task = MLPTask(mnist, activation_name=activation, batch_size=16)
    theta = task.init_params(gen())
    assert theta.std().item() == pytest.approx(0.1, rel=0.05)  # N(0, 0.1²)
    loss, grad = task.loss_and_grad(theta, task.sample_batch(gen()))
    assert math.isfinite(loss.item()) and grad.shape == theta.shape and grad.abs().sum() > 0


def test_mlp_loss_matches_torch_nn(mnist):
    task = MLPTask(mnist, batch_size=8)
    theta = task.init_params(gen(1))
    x, y = task.sample_batch(gen(2))
    w0 = theta[: 784 * 20].view(784, 20)
    b0 = theta[784 * 20: 784 * 20 + 20]
    w1 = theta[784 * 20 + 20: 784 * 20 + 20 + 200].view(20, 10)
    b1 = theta[-10:]
    logits = torch.sigmoid(x.flatten(1) @ w0 + b0) @ w1 + b1
    assert task.loss(theta, (x, y)).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)


def test_cnn_and_lstm_losses_run(mnist, cifar):
    for task in (CNNTask(mnist, "c-c-p-c-c-p-f-f", batch_size=4),
                 CNNTask(cifar, batch_size=4), SineLSTMTask(n_layers=2, batch_size=4)):
        loss, grad = task.loss_and_grad(task.init_params(gen()), task.sample_batch(gen()))
        assert math.isfinite(loss.item()) and torch.isfinite(grad).all()


def test_sine_lstm_targets_are_noise_free():
    task = SineLSTMTask(noise=0.0, batch_size=4)
    x, target = task.sample_batch(gen(3))
    # with no noise the 10 inputs and the target lie on one sinusoid: check via recurrence
    # s_{k+1} = 2cos(ω)s_k − s_{k−1} is not needed; the amplitude bound suffices.
    assert x.abs().max() <= 10 and target.abs().max() <= 10
    noisy = SineLSTMTask(noise=0.1, batch_size=4).sample_batch(gen(3))
    assert torch.allclose(noisy[1], target)  # same draws, target identical
    assert not torch.allclose(noisy[0], x)


def test_random_scaling_invariance(mnist):
    base = MLPTask(mnist, batch_size=16)
    task = RandomScaling(base, k=3.0)
    instance = task.sample_instance(gen(5))
    c = instance.scale
    assert c.min() >= math.exp(-3) and c.max() <= math.exp(3) and c.std() > 1
    theta0_scaled = instance.init_params(gen(6))
    theta0 = base.init_params(gen(6))
    assert torch.allclose(theta0_scaled, theta0 / c)
    batch = base.sample_batch(gen(7))
    # f_c(θ0 / c) = f(θ0)
    assert instance.loss(theta0_scaled, batch).item() == pytest.approx(
        base.loss(theta0, batch).item(), rel=1e-5)
    # and its gradient is c ⊙ ∇f
    _, g_scaled = instance.loss_and_grad(theta0_scaled, batch)
    _, g = base.loss_and_grad(theta0, batch)
    assert torch.allclose(g_scaled, c * g, rtol=1e-4, atol=1e-7)
    # a new draw per instance
    assert not torch.equal(task.sample_instance(gen(8)).scale, c)


def test_square_function_value_clip_and_x0_rules():
    task = SquareTask(dim=4).sample_instance(gen(0))
    v = task.target
    assert v.min() >= -1 and v.max() <= 1
    assert torch.equal(task.init_params(gen()), torch.zeros(4))
    x = torch.tensor([0.0, 1.0, 10.0, -0.5])
    expected = sum(min((xi - vi) ** 2, 10.0) for xi, vi in zip(x.tolist(), v.tolist())) / 4
    assert task.loss(x, None).item() == pytest.approx(expected, rel=1e-6)
    _, grad = task.loss_and_grad(x, None)
    assert grad[2].item() == 0.0  # clipped term carries no gradient
    uniform = SquareTask(dim=4, x0="uniform").sample_instance(gen(0))
    x0 = uniform.init_params(gen(1))
    assert x0.abs().max() <= 1 and x0.abs().sum() > 0
    assert SquareTask(dim=4, clip=None).sample_instance(gen(0)).loss(x, None) > task.loss(x, None)


def test_convex_combination_sums_losses_over_concatenated_coordinates(mnist):
    base = MLPTask(mnist, batch_size=8)
    task = Combined([base, SquareTask(20)]).sample_instance(gen(0))
    assert task.n_params == 15910 + 20
    theta = task.init_params(gen(1))
    batch = task.sample_batch(gen(2))
    main, square = theta[:15910], theta[15910:]
    expected = task.tasks[0].loss(main, batch[0]) + task.tasks[1].loss(square, None)
    assert task.loss(theta, batch).item() == pytest.approx(expected.item(), rel=1e-6)
    _, grad = task.loss_and_grad(theta, batch)
    _, g_square = task.tasks[1].loss_and_grad(square, None)
    assert torch.allclose(grad[15910:], g_square)


def test_quadratic_task_matches_formula():
    task = QuadraticTask(dim=3, n_problems=2).sample_instance(gen(0))
    x = task.init_params(gen(1))
    assert x.abs().max() < 0.1  # N(0, 0.01²)
    expected = sum(((task.W[i] @ x.view(2, 3)[i] - task.y[i]) ** 2).sum() for i in range(2)) / 2
    assert task.loss(x, None).item() == pytest.approx(expected.item(), rel=1e-6)
    assert task.W.min() >= 0  # U[0, 1) as DeepMind's code
    gauss = QuadraticTask(dim=3, n_problems=2, distribution="gaussian").sample_instance(gen(0))
    assert gauss.W.min() < 0


@pytest.mark.parametrize("spec, match", [
    ({"name": "mlp", "activation": "swish", "dataset": "synthetic_mnist"}, "activation"),
    ({"name": "mlp", "hidden": 0, "dataset": "synthetic_mnist"}, "hidden"),
    ({"name": "mlp", "n_layers": -1, "dataset": "synthetic_mnist"}, "n_layers"),
    ({"name": "mlp", "batch_size": 0, "dataset": "synthetic_mnist"}, "batch_size"),
    ({"name": "cnn", "architecture": "c-f", "dataset": "synthetic_mnist"}, "architecture"),
    ({"name": "sine_lstm", "hidden": 0}, "hidden"),
    ({"name": "quadratic", "dim": 0}, "dim"),
    ({"name": "square", "x0": "random"}, "x0"),
    ({"name": "resnet"}, "optimizee.name"),
])
def test_malformed_task_specs_fail_clearly(spec, match):
    with pytest.raises(ValueError, match=match):
        build_task(spec)


def test_random_scaling_rejects_non_positive_k(mnist):
    with pytest.raises(ValueError, match="random_scaling.k"):
        RandomScaling(MLPTask(mnist), k=0)
