"""A new learned optimizer, a new optimizee and a new trick, declared in this module alone
(one class or function and one config entry each), meta-trained and evaluated through the
normal entrypoint.

The learned optimizer is a per-coordinate MLP with no recurrent state, the optimizee a noisy
bowl, the trick a fixed rescaling of the coordinates: none needs a line in the package.
"""

from __future__ import annotations

import json

import pytest
import torch
from hydra.core.config_store import ConfigStore
from torch import nn

from l2o_pipeline import LearnedOptimizer as TorchLearnedOptimizer
from l2o_pipeline import registry
from l2o_pipeline.checkpoint import load_optimizer
from l2o_pipeline.config import ConfigError
from l2o_pipeline.optimizees.base import Task
from l2o_pipeline.optimizers.base import LearnedOptimizer
from l2o_pipeline.pipeline import run
from l2o_pipeline.utils import check_positive


@registry.learned_optimizers.register("toy_mlp", label="toy MLP", color="C5")
class CoordinateMLP(LearnedOptimizer):
    """Δθ = −scale·(g + MLP(g, sign g)) per coordinate: no state at all."""

    def __init__(self, hidden: int = 8, scale: float = 0.05):
        super().__init__()
        check_positive("hidden", hidden, "a positive integer", self.name)
        check_positive("scale", scale, owner=self.name)
        self.hidden, self.scale = hidden, scale
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def init_state(self, n, device="cpu", dtype=torch.float32):
        return ()

    def step(self, grad, state):
        features = torch.stack([grad, grad.sign()], dim=-1)
        return -self.scale * (grad + self.net(features).squeeze(-1)), state


@registry.optimizees.register("toy_bowl", label="toy bowl")
class NoisyBowl(Task):
    """mean(w · (θ − ξ)²) with ξ ~ N(0, 0.1²) per minibatch."""

    def __init__(self, dim: int = 6, weight: float = 1.0, *, device="cpu"):
        check_positive("dim", dim, "a positive integer")
        check_positive("weight", weight)
        self.dim, self.weight, self.n_params = dim, weight, dim
        self.name = f"toy_bowl{dim}"

    def init_params(self, generator):
        return torch.randn(self.dim, generator=generator)

    def sample_batch(self, generator):
        return 0.1 * torch.randn(self.dim, generator=generator)

    def loss(self, params, batch):
        return (self.weight * (params - batch.to(params.dtype)) ** 2).mean()


class Rescaled(Task):
    """f(c·θ) from θ0 / c, one fixed c for every coordinate (a task with no per-run draws:
    the batched evaluation vmaps it as it is)."""

    def __init__(self, task: Task, c: float):
        self.task, self.c, self.n_params, self.name = task, c, task.n_params, f"{task.name}*{c:g}"

    def init_params(self, generator):
        return self.task.init_params(generator) / self.c

    def sample_batch(self, generator):
        return self.task.sample_batch(generator)

    def loss(self, params, batch):
        return self.task.loss(params * self.c, batch)


@registry.tricks.register("toy_rescale", label="toy rescaling")
def toy_rescale(task: Task, c: float = 2.0) -> Task:
    check_positive("c", c)
    return Rescaled(task, c)


# The config entries: each option with its schema's defaults (a YAML file in conf/ would do).
ConfigStore.instance().store(group="optimizer", name="toy_mlp",
                             node=registry.learned_optimizers["toy_mlp"].schema)
ConfigStore.instance().store(group="optimizee", name="toy_bowl",
                             node=registry.optimizees["toy_bowl"].schema)
ConfigStore.instance().store(group="tricks", name="toy_rescale",
                             node={"toy_rescale": {"enabled": True}})

TINY = ["optimizer=toy_mlp", "optimizee=toy_bowl", "tricks=[toy_rescale]",
        "logger=none",
        "meta_train.n_iterations=4", "meta_train.checkpoint_every=2", "meta_train.log_every=1",
        "horizon.steps_per_run=10", "horizon.unroll=5", "horizon.eval_steps=[10]",
        "evaluation.n_runs=3", "evaluation.baselines.adam=0.05"]


def test_a_new_optimizer_and_task_meta_train_and_evaluate_through_the_entrypoint(
        make_cfg, tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "run"
    metric = run(make_cfg(*TINY, "optimizer.hidden=4"))
    summary = json.loads((out / "eval" / "summary.json").read_text())
    block = summary["horizons"]["10"]
    assert set(block) == {"toy_mlp", "adam", "_seconds"}
    assert metric == block["toy_mlp"]["final_loss_mean"] and metric < 10
    assert summary["task"] == "toy_bowl" and summary["optimizer_hparams"] == {
        "hidden": 4, "scale": 0.05}
    model, payload = load_optimizer(out / "best.pt")  # its checkpoint class, from the registry
    assert isinstance(model, CoordinateMLP) and payload["class"] == "toy_mlp"
    # ... and it drops into torch.optim like the packaged ones
    weight = nn.Parameter(torch.ones(3))
    opt = TorchLearnedOptimizer([weight], checkpoint=out)
    (weight ** 2).sum().backward()
    opt.step()
    assert torch.equal(weight.detach(), 1 + model.step(torch.full((3,), 2.0), ())[0].detach())
    meta = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([m for m in meta if "meta/loss" in m]) == 4  # one line per meta-iteration
    assert json.loads((out / "DONE").read_text())["iterations"] == 4
    assert "meta-training toy_mlp on toy_bowl6*2 " in caplog.text  # the trick was applied
    assert (registry.label("toy_mlp"), registry.color("toy_mlp")) == ("toy MLP", "C5")
    assert registry.label("toy_bowl") == "toy bowl"


@pytest.mark.parametrize("override, key", [
    ("optimizer.scale=0", "optimizer.scale"),  # the constructor's own check, under its key
    ("optimizee.dim=0", "optimizee.dim"),
    ("tricks.toy_rescale.c=-1", "tricks.toy_rescale.c"),
])
def test_a_new_options_values_are_checked_before_any_work(make_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(make_cfg(*TINY, override))
    assert not (tmp_path / "run").exists()


def test_a_new_options_keys_and_types_are_typed_at_compose_time(make_cfg):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="optimizer.alpha"):
        make_cfg(*TINY, "optimizer.alpha=0.1")  # RNNprop's key, not the toy's
    with pytest.raises(ConfigCompositionException, match="optimizee.dim"):
        make_cfg(*TINY, "optimizee.dim=many")
