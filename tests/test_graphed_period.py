"""The graphed meta-training period (l2o_pipeline.meta.graphed_period), through its CPU stand-in:
the recorded function run on the static buffers must give the eager loop's numbers, bit for bit,
across periods and task instances; an instance it cannot stand for falls back, still exactly.
(The real CUDA graph is checked against the CPU by bench/gpu_check.py on a GPU.)"""

import logging
import math

import pytest
import torch

from l2o_pipeline.data import synthetic_dataset
from l2o_pipeline.meta import MetaTrainSettings, graphed_period, meta_train
from l2o_pipeline.meta.graphed_period import GraphUnavailable, private_copy, static_pairs
from l2o_pipeline.optimizees import MLPTask, SquareTask
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers import DMOptimizer, RNNprop
from l2o_pipeline.tricks import Combined, RandomScaling


class ShiftedQuadratic(Task):
    """½‖θ − s − ε‖² with a shift s drawn per run and noise ε per minibatch. Variants a graph
    cannot capture: the shift as a Python float (``as_tensor=False``), a minibatch carrying a
    Python int (``int_in_batch``). ``explode_above``: the loss is infinite on the instances
    whose s_0 exceeds it (in tensor arithmetic, as a graph can replay)."""

    def __init__(self, n=6, as_tensor=True, int_in_batch=False, explode_above=None, shift=None):
        self.n_params, self.as_tensor, self.int_in_batch = n, as_tensor, int_in_batch
        self.explode_above, self.shift = explode_above, shift

    def sample_instance(self, generator):
        s = torch.randn(self.n_params, generator=generator)
        return ShiftedQuadratic(self.n_params, self.as_tensor, self.int_in_batch,
                                self.explode_above, s if self.as_tensor else float(s[0]))

    def init_params(self, generator):
        return torch.randn(self.n_params, generator=generator)

    def sample_batch(self, generator):
        noise = 0.1 * torch.randn(self.n_params, generator=generator)
        if self.int_in_batch:
            return noise, int(torch.randint(3, (), generator=generator))
        return noise

    def loss(self, params, batch):
        noise, k = batch if self.int_in_batch else (batch, 0)
        value = 0.5 * ((params - self.shift - (1 + k) * noise) ** 2).sum()
        if self.explode_above is not None:
            value = value * torch.where(self.shift[0] > self.explode_above, math.inf, 1.0)
        return value


def paper_like_task():
    data = synthetic_dataset("synthetic_mnist", n=256, seed=0)
    return Combined([RandomScaling(MLPTask(data, hidden=3), 3.0),
                     RandomScaling(SquareTask(4), 1.0)])


def train(tmp_path, monkeypatch, task, model_cls=RNNprop, meta_loss="last", graphed=False):
    """(per-iteration meta-losses, final meta-parameters) of a short meta-training; on CPU,
    ``graphed`` makes it take the CUDA path's periods (their CPU stand-in)."""
    torch.manual_seed(0)
    model = model_cls()
    settings = MetaTrainSettings(n_iterations=3, steps_per_run=10, unroll=5, meta_lr=1e-2,
                                 meta_loss=meta_loss, checkpoint_every=10**6, state_every=10**6,
                                 selection="last")
    with monkeypatch.context() as patch:
        patch.setattr(graphed_period.cuda_graphs, "enabled", lambda device: graphed)
        result = meta_train(model, task, settings, tmp_path / ("graphed" if graphed else "eager"),
                            seed=4, progress=False)
    return (result.losses, result.nonfinite_skips,
            torch.cat([p.detach().flatten() for p in model.parameters()]))


def count_calls(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, name, counted)
    return calls


@pytest.mark.parametrize("model_cls, meta_loss", [(RNNprop, "last"), (RNNprop, "sum_all"),
                                                  (DMOptimizer, "mean")])
def test_replayed_periods_give_the_eager_meta_training(tmp_path, monkeypatch, model_cls,
                                                       meta_loss):
    eager = train(tmp_path, monkeypatch, paper_like_task(), model_cls, meta_loss)
    replays = count_calls(monkeypatch, graphed_period.GraphedPeriods, "_recorded")
    monkeypatch.setattr(graphed_period, "meta_gradient_of_period",
                        lambda *a, **k: pytest.fail("the eager period ran"))
    graphed = train(tmp_path, monkeypatch, paper_like_task(), model_cls, meta_loss, graphed=True)
    assert graphed[:2] == eager[:2]  # every iteration's meta-loss, exactly
    assert torch.equal(graphed[2], eager[2])
    assert len(replays) == 3 * 2  # every period of the 3 iterations replayed


@pytest.mark.parametrize("explode_above", [None, 0.0])
def test_per_run_tensors_are_copied_into_the_captured_instance(tmp_path, monkeypatch,
                                                               explode_above):
    task = ShiftedQuadratic(explode_above=explode_above)
    eager = train(tmp_path, monkeypatch, task)
    graphed = train(tmp_path, monkeypatch, task, graphed=True)
    assert graphed[:2] == eager[:2] and torch.equal(graphed[2], eager[2])
    if explode_above is not None:  # the non-finite periods were skipped as the eager loop does
        assert graphed[1] > 0 and torch.isfinite(graphed[2]).all()


@pytest.mark.parametrize("task, place", [
    (ShiftedQuadratic(as_tensor=False), "shift"),  # a graph would bake the first run's shift
    (ShiftedQuadratic(int_in_batch=True), "[1]"),  # found after the period's draws: rewound
])
def test_what_the_graph_cannot_stand_for_falls_back_exactly(tmp_path, monkeypatch, caplog,
                                                            task, place):
    eager = train(tmp_path, monkeypatch, task)
    with caplog.at_level(logging.WARNING, logger=graphed_period.__name__):
        graphed = train(tmp_path, monkeypatch, task, graphed=True)
    assert graphed[:2] == eager[:2] and torch.equal(graphed[2], eager[2])
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "without a CUDA graph" in warning and place in warning


def test_the_private_copy_shares_the_family_and_owns_the_draws():
    family = paper_like_task()
    instance = family.sample_instance(torch.Generator().manual_seed(0))
    copied = private_copy(instance, shared=family)
    mlp = copied.tasks[0].task
    assert mlp is family.tasks[0].task  # the dataset and layers: shared, never copied into
    assert copied.tasks[0].scale is not instance.tasks[0].scale
    assert torch.equal(copied.tasks[0].scale, instance.tasks[0].scale)
    pairs = static_pairs(copied, instance, "the instance")
    assert {id(static) for static, _ in pairs} >= {id(copied.tasks[0].scale),
                                                   id(copied.tasks[1].scale)}
    assert all(id(static) not in {id(t) for t in vars(mlp.dataset).values()}
               for static, _ in pairs)
    for static, value in pairs:  # copying into the private copy leaves the instance alone
        static.add_(1.0)
        assert not torch.equal(static, value)


def test_static_pairs_name_the_place_that_differs():
    a = {"x": torch.zeros(3), "k": 2}
    with pytest.raises(GraphUnavailable, match=r"\.x .*tensor \(3,\).*tensor \(4,\)"):
        static_pairs(a, {"x": torch.zeros(4), "k": 2}, "the state")
    with pytest.raises(GraphUnavailable, match=r"\.k \(2 vs 3\)"):
        static_pairs(a, {"x": torch.zeros(3), "k": 3}, "the state")
    shared = torch.ones(2)
    assert static_pairs((shared, a["x"]), (shared, torch.ones(3)), "t")[0][0] is a["x"]
