"""Every option of every config group composes; bad overrides fail naming the key."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from l2o_pipeline.config import ConfigError, validate_config
from l2o_pipeline.main import CONFIG_DIR
from l2o_pipeline.pipeline import build_model, run

GROUPS = ["optimizer", "optimizee", "horizon", "data", "logger", "paths", "experiment", "debug"]


def options(group):
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_defaults_are_the_papers_main_setup(make_cfg):
    cfg = make_cfg()
    assert cfg.optimizer.name == "rnnprop" and cfg.optimizer.alpha == 0.1
    assert cfg.optimizee.name == "mlp" and cfg.optimizee.activation == "sigmoid"
    assert cfg.optimizee.hidden == 20 and cfg.optimizee.batch_size == 128
    assert cfg.tricks.random_scaling.enabled and cfg.tricks.random_scaling.k == 3.0
    assert cfg.tricks.convex_combination.enabled and cfg.tricks.convex_combination.dim == 20
    assert (cfg.horizon.steps_per_run, cfg.horizon.unroll) == (100, 20)
    assert cfg.meta_train.meta_lr == 1e-4 and cfg.optimizer.selection == "ema_train_loss"
    assert cfg.stage == "both" and cfg.evaluation.baselines.adam == "tuned"
    assert cfg.evaluation.baselines.sgd is None
    assert cfg.evaluation.n_runs == 100
    validate_config(cfg)


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(make_cfg, group, option):
    overrides = [f"{group}={option}"]
    cfg = make_cfg(*overrides)
    if cfg.optimizer.name not in ("rnnprop", "dmoptimizer", "dmoptimizer_official"):
        cfg.stage = "evaluate"
    validate_config(cfg)
    build_model(cfg)


@pytest.mark.parametrize("tricks, rs, cc", [
    ("[]", False, False), ("[random_scaling]", True, False),
    ("[convex_combination]", False, True), ("[random_scaling,convex_combination]", True, True),
])
def test_tricks_are_a_multi_select_group(make_cfg, tricks, rs, cc):
    cfg = make_cfg(f"tricks={tricks}")
    assert cfg.tricks.random_scaling.enabled is rs
    assert cfg.tricks.convex_combination.enabled is cc


@pytest.mark.parametrize("override, key", [
    ("horizon.unroll=0", "horizon.unroll"),
    ("horizon.unroll=200", "horizon.unroll"),
    ("horizon.steps_per_run=30", "horizon.steps_per_run"),
    ("horizon.eval_steps=[0]", "horizon.eval_steps"),
    ("optimizee.activation=swish", "optimizee.activation"),
    ("optimizee.hidden=0", "optimizee.hidden"),
    ("optimizee.n_layers=-2", "optimizee.n_layers"),
    ("optimizee.batch_size=0", "optimizee.batch_size"),
    ("optimizee.dataset=imagenet", "optimizee.dataset"),
    ("stage=train", "stage"),
    ("device=tpu", "device"),
    ("compile=yes", "compile"),
    ("meta_train.meta_lr=0", "meta_train.meta_lr"),
    ("meta_train.meta_lr=-1e-3", "meta_train.meta_lr"),
    ("meta_train.n_iterations=0", "meta_train.n_iterations"),
    ("meta_train.selection=best", "meta_train.selection"),
    ("meta_train.ema_decay=1.5", "meta_train.ema_decay"),
    ("evaluation.n_runs=0", "evaluation.n_runs"),
    ("evaluation.final_loss=min", "evaluation.final_loss"),
    ("evaluation.baselines.adam=0", "evaluation.baselines.adam"),
    ("evaluation.baselines.sgd=fast", "evaluation.baselines.sgd"),
    ("optimizer.alpha=0", "optimizer.alpha"),
    ("optimizer.beta1=1.0", "optimizer.beta1"),
    ("tricks.random_scaling.k=0", "tricks.random_scaling.k"),
    ("tricks.convex_combination.x0=gauss", "tricks.convex_combination.x0"),
    ("logger.wandb.mode=cloud", "logger.wandb.mode"),
    ("data.mnist_fallback=kaggle", "data.mnist_fallback"),
])
def test_impossible_values_fail_naming_the_key(make_cfg, tmp_path, override, key):
    cfg = make_cfg(override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg)
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.parametrize("override, key", [
    ("optimizer=adam optimizer.lr=0", "optimizer.lr"),
    ("optimizer=sgd optimizer.lr=-0.1", "optimizer.lr"),
    ("optimizer=adam stage=meta_train", "stage"),
])
def test_hand_designed_optimizer_values(make_cfg, override, key):
    cfg = make_cfg(*override.split())
    with pytest.raises(ConfigError, match=key):
        validate_config(cfg)


@pytest.mark.parametrize("override, key", [
    ("optimizer.learning_rate=0.1", "learning_rate"),
    ("horizon.unroll=twenty", "horizon.unroll"),
    ("meta_train.n_iterations=1.5", "meta_train.n_iterations"),
    ("tricks.random_scaling.enabled=maybe", "tricks.random_scaling.enabled"),
    ("seed=abc", "seed"),
    ("evaluation.baselines.lbfgs=0.1", "lbfgs"),
])
def test_wrong_keys_and_types_fail_at_compose_time(make_cfg, override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as info:
        make_cfg(override)
    assert key in str(info.value) or key in str(info.value.__cause__)


def test_unknown_group_option_lists_the_valid_ones(make_cfg):
    with pytest.raises(ConfigCompositionException) as info:
        make_cfg("optimizer=lbfgs")
    assert "rnnprop" in str(info.value)


def test_dm_presets_follow_their_sources(make_cfg):
    """dm_quadratic: DeepMind's quadratic config (raw gradient in, output scale 1);
    dmoptimizer_tricks: selected like RNNprop (moving average of the training loss)."""
    from l2o_pipeline.config import meta_train_settings
    from l2o_pipeline.pipeline import build_model

    quad = make_cfg("experiment=dm_quadratic", "stage=meta_train")
    model = build_model(quad)
    assert model.preprocess == "identity" and model.output_scale == 1.0
    assert model.cells[0].input_size == 1
    tricks = make_cfg("experiment=dmoptimizer_tricks", "stage=meta_train")
    assert meta_train_settings(tricks).selection == "ema_train_loss"
    plain = make_cfg("experiment=dmoptimizer", "stage=meta_train")
    assert meta_train_settings(plain).selection == "validation"
