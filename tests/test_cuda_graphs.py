"""The graphed (static-buffer) paths of applying an optimizer, checked on a CPU.

``L2O_CUDA_GRAPHS=static`` runs the steps a CUDA graph would replay (θ and the optimizer state
advanced in place, each minibatch copied into one static input) without capturing them; a
stand-in ``capture`` replays a step the way a graph does (static outputs overwritten, its
buffers not advanced while recorded, the warm-up undone). Both must give the eager loops'
numbers exactly, for the sequential and the batched evaluation and for meta-training; a graph
that cannot be had falls back to them. (The real graphs: ``bench/gpu_check.py`` on a GPU.)
"""

import logging
import types

import pytest
import torch

from l2o_pipeline import cuda_graphs
from l2o_pipeline.batched import evaluate_batched
from l2o_pipeline.evaluate import evaluate
from l2o_pipeline.meta import MetaTrainSettings, meta_train
from l2o_pipeline.optimizees import CNNTask, MLPTask, SquareTask
from l2o_pipeline.optimizers import DMOptimizer, RNNprop
from l2o_pipeline.optimizers.hand_designed import Adam, Momentum, RMSprop
from l2o_pipeline.tricks import Combined, RandomScaling

pytestmark = pytest.mark.usefixtures("eager_kernels_one_thread")


def paper_task(mnist):
    return Combined([RandomScaling(MLPTask(mnist, hidden=3, batch_size=32), 3.0),
                     RandomScaling(SquareTask(5, device=mnist.x.device), 1.0)])


def optimizers(device="cpu"):
    torch.manual_seed(0)
    return {"rnnprop": RNNprop().to(device), "dm": DMOptimizer().to(device),
            "momentum": Momentum(0.05), **{f"adam@{lr}": Adam(lr) for lr in (1e-3, 1e-2)},
            "rmsprop": RMSprop(1e-3)}


def fake_capture(step, warmup=3, restore=()):
    """A CUDA graph's semantics on a CPU: the warm-up runs and is undone, recording does not
    advance the buffers, each replay overwrites the outputs recorded."""
    start = [b.clone() for b in restore]
    for _ in range(warmup):
        step()
    outputs = cuda_graphs.clone_tree(step())
    for buf, value in zip(restore, start):
        buf.copy_(value)
    replays = []

    def replay():
        replays.append(1)
        cuda_graphs.copy_into(outputs, step())
    return types.SimpleNamespace(replay=replay, replays=replays), outputs


@pytest.fixture
def fake_graphs(monkeypatch):
    """Every graphed path on, with ``fake_capture``; yields the graphs made."""
    made = []

    def capture(step, warmup=3, restore=()):
        graph, outputs = fake_capture(step, warmup, restore)
        made.append(graph)
        return graph, outputs
    monkeypatch.setenv("L2O_CUDA_GRAPHS", "static")
    monkeypatch.setattr(cuda_graphs, "captures", cuda_graphs.enabled)  # as on CUDA
    monkeypatch.setattr(cuda_graphs, "capture", capture)
    return made


def results(mnist, engine, task=None, steps=12, device="cpu"):
    task = task or paper_task(mnist.to(device))
    run = evaluate if engine == "sequential" else evaluate_batched
    out = run(task, optimizers(device), steps, 3, seed=4, progress=False)
    return {k: (r.curves, r.final_losses) for k, r in out.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name][0], b[name][0]), name
        assert torch.equal(a[name][1], b[name][1]), name


@pytest.mark.parametrize("engine", ["sequential", "batched"])
def test_static_buffer_steps_give_the_eager_numbers(mnist, monkeypatch, engine):
    eager = results(mnist, engine)
    monkeypatch.setenv("L2O_CUDA_GRAPHS", "static")
    assert cuda_graphs.enabled("cpu") and not cuda_graphs.captures("cpu")
    assert_same(results(mnist, engine), eager)


@pytest.mark.parametrize("engine", ["sequential", "batched"])
def test_replayed_steps_give_the_eager_numbers(mnist, fake_graphs, engine):
    with pytest.MonkeyPatch.context() as off:
        off.setenv("L2O_CUDA_GRAPHS", "false")
        eager = results(mnist, engine)
    assert_same(results(mnist, engine), eager)
    # sequential: one graph per optimizer and run; batched: one per chunk
    assert len(fake_graphs) == (6 * 3 if engine == "sequential" else 1)
    assert all(len(g.replays) == 12 for g in fake_graphs)


def test_replayed_cnn_steps_give_the_eager_numbers(mnist, fake_graphs):
    cnn = CNNTask(mnist, "c-c-p-f", batch_size=16)
    with pytest.MonkeyPatch.context() as off:
        off.setenv("L2O_CUDA_GRAPHS", "false")
        eager = results(mnist, "batched", cnn, steps=4)
    assert_same(results(mnist, "batched", cnn, steps=4), eager)
    assert fake_graphs


def test_a_graph_that_cannot_be_had_leaves_the_eager_numbers(mnist, monkeypatch, caplog):
    eager = results(mnist, "batched")

    def fail(step, warmup=3, restore=()):
        for _ in range(warmup):  # a capture that fails after its warm-up advanced the buffers
            step()
        raise cuda_graphs.GraphUnavailable("capture failed (no device)")
    monkeypatch.setenv("L2O_CUDA_GRAPHS", "static")
    monkeypatch.setattr(cuda_graphs, "captures", cuda_graphs.enabled)
    monkeypatch.setattr(cuda_graphs, "capture", lambda step, warmup=3, restore=():
                        _undoing(fail, step, warmup, restore))
    with caplog.at_level(logging.WARNING, logger=cuda_graphs.__name__):
        assert_same(results(mnist, "batched"), eager)
    assert "stepping eagerly" in caplog.text


def _undoing(fail, step, warmup, restore):
    """``cuda_graphs.capture``'s promise: the buffers are restored when a capture fails."""
    start = [b.clone() for b in restore]
    try:
        return fail(step, warmup, restore)
    finally:
        for buf, value in zip(restore, start):
            buf.copy_(value)


def test_a_minibatch_with_python_numbers_is_not_captured(caplog):
    calls = []

    def step(batch):
        calls.append(batch)
        return torch.tensor(float(batch[1]))
    record = []
    with caplog.at_level(logging.WARNING, logger=cuda_graphs.__name__):
        used = cuda_graphs.replay_steps(step, [(torch.zeros(2), k) for k in range(3)],
                                        lambda t, loss: record.append(loss.item()))
    assert not used and record == [0.0, 1.0, 2.0] and "more than tensors" in caplog.text
    with pytest.raises(TypeError, match="static buffer"):
        cuda_graphs.copy_into((torch.zeros(2), 1), (torch.ones(2), 2))


def test_meta_training_with_replayed_periods_gives_the_eager_numbers(mnist, tmp_path,
                                                                     fake_graphs, monkeypatch):
    settings = MetaTrainSettings(n_iterations=3, steps_per_run=10, unroll=5, meta_lr=1e-3,
                                 checkpoint_every=10**6, state_every=10**6)

    def trained(folder):
        torch.manual_seed(0)
        model = RNNprop()
        losses = meta_train(model, paper_task(mnist), settings, tmp_path / folder,
                            progress=False).losses
        return losses, torch.cat([p.detach().flatten() for p in model.parameters()])
    replayed = trained("replayed")
    monkeypatch.setenv("L2O_CUDA_GRAPHS", "false")
    eager = trained("eager")
    assert fake_graphs and sum(len(g.replays) for g in fake_graphs) >= 3
    assert replayed[0] == eager[0] and torch.equal(replayed[1], eager[1])


def test_nothing_is_captured_on_a_cpu_by_default(mnist, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("captured on a CPU")
    monkeypatch.delenv("L2O_CUDA_GRAPHS", raising=False)
    monkeypatch.setattr(cuda_graphs, "capture", refuse)
    assert not cuda_graphs.enabled("cpu") and cuda_graphs.enabled("cuda")
    for engine in ("sequential", "batched"):
        results(mnist, engine, steps=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("engine", ["sequential", "batched"])
def test_cuda_graph_evaluation_equals_the_cpu(mnist, monkeypatch, engine):
    made = []
    capture = cuda_graphs.capture
    monkeypatch.setattr(cuda_graphs, "capture", lambda *a, **k: made.append(1) or capture(*a, **k))
    cpu = results(mnist, engine)
    cuda = results(mnist, engine, device="cuda")
    assert made
    for name in cpu:
        for a, b in zip(cuda[name], cpu[name]):
            assert ((a - b).norm() / b.norm()).item() < 1e-4, name


def test_the_switch_names_its_values(monkeypatch):
    monkeypatch.setenv("L2O_CUDA_GRAPHS", "yes")
    with pytest.raises(ValueError, match=r"L2O_CUDA_GRAPHS must be one of .*'static'"):
        cuda_graphs.enabled("cpu")
