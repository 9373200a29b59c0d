"""The batched evaluation engine against the sequential path, its reference (float64).

Every optimizee kind (with the tricks) and every optimizer kind; chunk and block boundaries;
R = 1; per-row learning rates against separate runs; pairing (θ0 and minibatches shared by
every setting of a run, drawn once); a rate grid with θ stored settings-minor; the optimizers'
in-place step against their functional one.
"""

import pytest
import torch

from l2o_pipeline import batched
from l2o_pipeline.batched import evaluate_batched, plan_chunks
from l2o_pipeline.data import synthetic_dataset
from l2o_pipeline.evaluate import evaluate
from l2o_pipeline.optimizees import CNNTask, MLPTask, QuadraticTask, SineLSTMTask, SquareTask
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizees.batched import BatchedTask, VmapBatched
from l2o_pipeline.optimizees.mlp import BatchedClassification, BatchedMLP, settings_minor
from l2o_pipeline.optimizers import HAND_DESIGNED, DMOptimizer, RNNprop, kernels
from l2o_pipeline.tricks import Combined, RandomScaling, batch_instances

TOL = 1e-12  # relative, float64


@pytest.fixture(scope="module")
def mnist():
    return synthetic_dataset("synthetic_mnist", n=200, seed=0)


@pytest.fixture(autouse=True)
def float64_one_thread():
    """float64 (the sequential path follows the default dtype), eager kernels, one thread."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    mode = kernels.get_compile()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    kernels.set_compile("false")
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    kernels.set_compile(mode)


def all_optimizers():
    """The six hand-designed (Adam at two rates: one group of rows), RNNprop, DMoptimizer."""
    torch.manual_seed(0)
    opts = {name: cls(lr=0.05) for name, cls in HAND_DESIGNED.items()}
    opts["adam_slow"] = HAND_DESIGNED["adam"](lr=0.01)
    opts["rnnprop"] = RNNprop().double()
    opts["dmoptimizer"] = DMOptimizer.paper().double()
    return opts


def tasks(mnist):
    small_mlp = MLPTask(mnist, hidden=3, n_layers=2, batch_size=8)
    return {
        "mlp": small_mlp,
        "mlp_relu": MLPTask(mnist, hidden=4, activation_name="relu", batch_size=8),
        "sine_lstm": SineLSTMTask(n_layers=2, hidden=3, seq_len=4, batch_size=8),
        "quadratic": QuadraticTask(dim=3, n_problems=4),
        "square": SquareTask(dim=5),
        "random_scaling": RandomScaling(MLPTask(mnist, hidden=3, batch_size=8), 3.0),
        "convex_combination": Combined([RandomScaling(small_mlp, 3.0),
                                        RandomScaling(SquareTask(5), 1.0)]),
    }


def assert_same(sequential, batched_results):
    assert list(batched_results) == list(sequential)
    for name, ref in sequential.items():
        got = batched_results[name]
        assert got.curves.dtype == ref.curves.dtype and got.curves.shape == ref.curves.shape
        for a, b in ((got.curves, ref.curves), (got.final_losses, ref.final_losses)):
            assert torch.isfinite(b).all(), name
            err = ((a - b).abs().max() / b.abs().max()).item()
            assert err <= TOL, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("kind", ["mlp", "mlp_relu", "sine_lstm", "quadratic", "square",
                                  "random_scaling", "convex_combination"])
def test_batched_equals_sequential_for_every_optimizer(mnist, kind):
    task, opts = tasks(mnist)[kind], all_optimizers()
    ref = evaluate(task, opts, 4, 3, seed=5)
    assert_same(ref, evaluate_batched(task, opts, 4, 3, seed=5))


def test_batched_cnn_equals_sequential(mnist):
    task = CNNTask(mnist, batch_size=2)
    opts = {k: v for k, v in all_optimizers().items()
            if k in ("adam", "adam_slow", "momentum", "rnnprop")}
    assert_same(evaluate(task, opts, 2, 2, seed=1), evaluate_batched(task, opts, 2, 2, seed=1))


def test_vmapped_cnn_loss_and_gradient_equal_the_row_loop(mnist):
    """On CUDA the CNN runs vmapped (grouped convolutions); on CPU row by row. Both agree."""
    task = CNNTask(mnist, batch_size=2)
    rows = batch_instances([task, task])
    vmapped = BatchedClassification([task, task])
    batch = rows.sample_batch([torch.Generator().manual_seed(i) for i in range(2)])
    theta = torch.stack([task.init_params(torch.Generator().manual_seed(i))
                         for i in range(6)]).view(3, 2, -1)
    for (a_loss, a_grad), (b_loss, b_grad) in [(vmapped.loss_and_grad(theta, batch),
                                                rows.loss_and_grad(theta, batch))]:
        torch.testing.assert_close(a_loss, b_loss, rtol=TOL, atol=0)
        torch.testing.assert_close(a_grad, b_grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(vmapped.loss(theta, batch), rows.loss(theta, batch),
                               rtol=TOL, atol=0)


def test_last_batch_rule_and_a_single_run(mnist):
    task, opts = tasks(mnist)["convex_combination"], all_optimizers()
    ref = evaluate(task, opts, 3, 1, seed=2, final_loss="last_batch")
    assert_same(ref, evaluate_batched(task, opts, 3, 1, seed=2, final_loss="last_batch"))


def budget_for(task, opts, runs_per_chunk, settings=None, n_steps=3):
    """A budget (GB) just above ``runs_per_chunk`` runs of ``settings`` (default: all) settings."""
    plan = plan_chunks(task, opts, n_steps, 10)
    settings = plan.n_settings if settings is None else settings
    return runs_per_chunk * (settings * plan.row_bytes + plan.run_bytes) * 1.001 / 1e9


def test_chunks_of_runs_with_a_ragged_last_chunk(mnist):
    task, opts = tasks(mnist)["random_scaling"], all_optimizers()
    budget = budget_for(task, opts, 2)
    plan = plan_chunks(task, opts, 3, 5, memory_budget_gb=budget)
    assert (plan.runs_per_chunk, plan.settings_per_chunk, plan.n_chunks) == (2, len(opts), 3)
    assert plan.bytes_per_chunk <= budget * 1e9
    ref = evaluate(task, opts, 3, 5, seed=3)
    assert_same(ref, evaluate_batched(task, opts, 3, 5, seed=3, memory_budget_gb=budget))


def test_chunks_of_settings_when_one_run_of_all_does_not_fit(mnist):
    """Three settings per chunk out of nine: the Adam group is split across chunks."""
    task, opts = tasks(mnist)["mlp"], all_optimizers()
    budget = budget_for(task, opts, 1, settings=3)
    plan = plan_chunks(task, opts, 3, 2, memory_budget_gb=budget)
    assert (plan.runs_per_chunk, plan.settings_per_chunk) == (1, 3)
    assert plan.n_chunks == 3 * 2
    assert_same(evaluate(task, opts, 3, 2, seed=4),
                evaluate_batched(task, opts, 3, 2, seed=4, memory_budget_gb=budget))


def test_optimizer_blocks_with_a_ragged_last_block(mnist, monkeypatch):
    """Optimizer steps in blocks of whole rows: 2 rows per hand-designed block over 3 rates ×
    3 runs (9 rows: 5 blocks), 2 rows per learned block over 3 runs."""
    task = tasks(mnist)["mlp"]
    monkeypatch.setattr(batched, "HAND_BLOCK_COORDS", 2 * task.n_params + 1)
    monkeypatch.setattr(batched, "LEARNED_BLOCK_COORDS", 2 * task.n_params + 1)
    opts = all_optimizers()
    opts = {"adam": opts["adam"], "adam_slow": opts["adam_slow"],
            "adam_3": HAND_DESIGNED["adam"](lr=0.002), "rnnprop": opts["rnnprop"]}
    assert_same(evaluate(task, opts, 3, 3, seed=6), evaluate_batched(task, opts, 3, 3, seed=6))


@pytest.mark.parametrize("name", sorted(HAND_DESIGNED))
def test_per_row_learning_rates_equal_separate_runs(mnist, name):
    task = tasks(mnist)["mlp"]
    rates = [0.3, 0.05, 0.002]
    grid = {f"{name}@{lr}": HAND_DESIGNED[name](lr=lr) for lr in rates}
    together = evaluate_batched(task, grid, 4, 2, seed=7)
    for key, opt in grid.items():
        alone = evaluate_batched(task, {key: opt}, 4, 2, seed=7)
        assert_same(alone, {key: together[key]})


class CountingTask(Task):
    """A plain task (no per-run draws: the generic vmapped form) that counts its minibatches:
    the loss is the distance to a random point drawn per batch."""

    draws = 0
    n_params = 4

    def init_params(self, generator):
        return torch.rand(self.n_params, generator=generator)

    def sample_batch(self, generator):
        CountingTask.draws += 1
        return torch.rand(self.n_params, generator=generator)

    def loss(self, params, batch):
        return ((params - batch) ** 2).mean()


def test_pairing_one_draw_per_run_and_step_shared_by_every_setting():
    task = CountingTask()
    opts = {f"sgd@{lr}": HAND_DESIGNED["sgd"](lr=lr) for lr in (0.1, 0.2, 0.4)}
    opts["adam"] = HAND_DESIGNED["adam"](lr=0.1)
    CountingTask.draws = 0
    results = evaluate_batched(task, opts, 5, 3, seed=8)
    # runs × steps × (training, final-loss pass), and one for the memory estimate's probe
    assert CountingTask.draws == 3 * 5 * 2 + 1
    first = [r.curves[:, 0] for r in results.values()]  # loss at θ0 on B_0, per run
    assert all(torch.equal(first[0], f) for f in first)
    assert len(set(first[0].tolist())) == 3  # runs differ
    CountingTask.draws = 0
    assert_same(evaluate(task, opts, 5, 3, seed=8), results)


def test_divergent_rows_stay_in_their_row(mnist):
    """A rate that diverges gives non-finite losses in its own rows only, as sequentially."""
    task = tasks(mnist)["quadratic"]
    opts = {"sgd_huge": HAND_DESIGNED["sgd"](lr=1e30), "sgd": HAND_DESIGNED["sgd"](lr=0.01)}
    results = evaluate_batched(task, opts, 6, 2, seed=0)
    assert results["sgd_huge"].summary()["n_diverged"] == 2
    assert torch.isfinite(results["sgd"].final_losses).all()
    ref = evaluate(task, {"sgd": opts["sgd"]}, 6, 2, seed=0)
    assert_same(ref, {"sgd": results["sgd"]})


def test_bad_arguments_fail_clearly(mnist):
    task = tasks(mnist)["square"]
    opts = {"sgd": HAND_DESIGNED["sgd"](lr=0.1)}
    with pytest.raises(ValueError, match="memory_budget_gb"):
        evaluate_batched(task, opts, 3, 2, memory_budget_gb=0)
    with pytest.raises(ValueError, match="final_loss"):
        evaluate_batched(task, opts, 3, 2, final_loss="best")
    with pytest.raises(ValueError, match="positive steps"):
        evaluate_batched(task, opts, 0, 2)
    with pytest.raises(ValueError, match="adam.lr"):
        HAND_DESIGNED["adam"](lr=torch.tensor([[0.1], [0.0]]))


def test_hand_designed_hparams_and_with_lr():
    opt = HAND_DESIGNED["momentum"](lr=0.1, momentum=0.5)
    assert opt.hparams() == {"lr": 0.1, "momentum": 0.5}
    rows = opt.with_lr(torch.tensor([[0.1], [0.2]]))
    assert rows.momentum == 0.5 and rows.lr.shape == (2, 1)
    update, _ = rows.step(torch.ones(2, 3), (torch.zeros(2, 3),))
    assert torch.equal(update, torch.tensor([[-0.1] * 3, [-0.2] * 3]))


def rate_grid_tasks(mnist):
    return {"mlp1": MLPTask(mnist, hidden=3, batch_size=8),
            "mlp2": tasks(mnist)["mlp"]}


@pytest.mark.parametrize("name", sorted(HAND_DESIGNED))
@pytest.mark.parametrize("kind", ["mlp1", "mlp2"])
def test_rate_grid_stored_settings_minor_equals_sequential(mnist, monkeypatch, kind, name):
    """A learning-rate grid on the MLP runs with θ stored [R, n, S] (checked), in optimizer
    blocks that end mid-run (7 coordinates of 3 rates each), and equals the sequential path."""
    task = rate_grid_tasks(mnist)[kind]
    layouts = []
    loss_and_grad = BatchedMLP.loss_and_grad

    def spy(self, theta, batch):
        layouts.append(settings_minor(theta))
        loss, grad = loss_and_grad(self, theta, batch)
        assert grad.stride() == theta.stride()  # the optimizer steps it as a view
        return loss, grad

    monkeypatch.setattr(BatchedMLP, "loss_and_grad", spy)
    monkeypatch.setattr(batched, "HAND_BLOCK_COORDS", 3 * 7)
    grid = {f"{name}@{lr}": HAND_DESIGNED[name](lr=lr) for lr in (0.3, 0.05, 0.002)}
    assert_same(evaluate(task, grid, 4, 3, seed=9), evaluate_batched(task, grid, 4, 3, seed=9))
    assert layouts and all(layouts)


def test_rate_grid_settings_minor_single_run_and_chunks_of_settings(mnist):
    """R = 1, and a grid split into chunks of 2 rates and 1 (the last in the row layout)."""
    task = rate_grid_tasks(mnist)["mlp1"]
    grid = {f"adam@{lr}": HAND_DESIGNED["adam"](lr=lr) for lr in (0.3, 0.05, 0.002)}
    assert_same(evaluate(task, grid, 3, 1, seed=10), evaluate_batched(task, grid, 3, 1, seed=10))
    budget = budget_for(task, grid, 1, settings=2)
    assert plan_chunks(task, grid, 3, 2, memory_budget_gb=budget).settings_per_chunk == 2
    assert_same(evaluate(task, grid, 3, 2, seed=10),
                evaluate_batched(task, grid, 3, 2, seed=10, memory_budget_gb=budget))


@pytest.mark.parametrize("kind", ["mlp1", "mlp2"])
def test_mlp_loss_and_gradient_in_either_layout_equal_autograd(mnist, kind):
    """BatchedMLP on θ [S, R, n] stored settings-minor or not: its losses, and its
    hand-written gradient against autograd through its loss (vmap of the task's own)."""
    task = rate_grid_tasks(mnist)[kind]
    bt = batch_instances([task, task])
    batch = bt.sample_batch([torch.Generator().manual_seed(i) for i in range(2)])
    rows = torch.stack([task.init_params(torch.Generator().manual_seed(i)) for i in range(6)])
    plain = rows.view(3, 2, -1)
    minor = plain.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert settings_minor(minor) and not settings_minor(plain)
    reference = VmapBatched([task, task])
    ref_loss, ref_grad = reference.loss_and_grad(plain, batch)
    for theta in (plain, minor):
        torch.testing.assert_close(bt.loss(theta, batch), ref_loss, rtol=TOL, atol=0)
        loss, grad = bt.loss_and_grad(theta, batch)
        torch.testing.assert_close(loss, ref_loss, rtol=TOL, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)
        assert grad.stride() == theta.stride()
        autograd_loss, autograd_grad = BatchedTask.loss_and_grad(bt, theta, batch)
        torch.testing.assert_close(autograd_grad, ref_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", sorted(HAND_DESIGNED))
@pytest.mark.parametrize("lr", [0.01, torch.tensor([[0.1], [0.01]]), torch.tensor([0.1, 0.01,
                                                                                   0.3])])
def test_in_place_step_equals_the_functional_step(name, lr):
    """step_ (the engine's) against step (the reference) over three steps: a rate, one per
    row, one per column."""
    opt = HAND_DESIGNED[name](lr=lr.double() if isinstance(lr, torch.Tensor) else lr)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 3, generator=gen)
    state = tuple(s.view(2, 3) if s.dim() == 1 else s
                  for s in opt.init_state(6, "cpu", torch.float64))
    in_place, ref_state = theta.clone(), tuple(s.clone() for s in state)
    for _ in range(3):
        grad = torch.randn(2, 3, generator=gen)
        update, ref_state = opt.step(grad, ref_state)
        theta = theta + update
        state = opt.step_(grad, state, in_place)
    torch.testing.assert_close(in_place, theta, rtol=TOL, atol=1e-15)
    for a, b in zip(state, ref_state):
        torch.testing.assert_close(a, b, rtol=TOL, atol=1e-15)
