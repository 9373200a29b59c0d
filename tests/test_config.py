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
    assert cfg.meta_train.meta_lr == 1e-4 and cfg.meta_train.selection == "ema_train_loss"
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
    # non-finite or absurd numbers where a finite positive one is meant
    ("meta_train.meta_lr=1e38", "meta_train.meta_lr"),
    ("meta_train.meta_lr=inf", "meta_train.meta_lr"),
    ("meta_train.meta_lr=nan", "meta_train.meta_lr"),
    ("meta_train.meta_lr=2", "meta_train.meta_lr"),
    ("meta_train.ema_decay=nan", "meta_train.ema_decay"),
    ("tricks.random_scaling.k=inf", "tricks.random_scaling.k"),
    ("tricks.random_scaling.k=nan", "tricks.random_scaling.k"),
    ("tricks.random_scaling.k=100", "tricks.random_scaling.k"),
    ("tricks.convex_combination.scale_k=inf", "tricks.convex_combination.scale_k"),
    ("tricks.convex_combination.clip=inf", "tricks.convex_combination.clip"),
    ("optimizer.alpha=inf", "optimizer.alpha"),
    ("optimizer.eps=0", "optimizer.eps"),
    ("optimizer.beta2=nan", "optimizer.beta2"),
    ("optimizee.init_std=nan", "optimizee.init_std"),
    ("optimizee.init_std=inf", "optimizee.init_std"),
    ("evaluation.baselines.adam=inf", "evaluation.baselines.adam"),
    ("evaluation.baselines.adam=nan", "evaluation.baselines.adam"),
    ("evaluation.baselines.sgd=1e4", "evaluation.baselines.sgd"),
    # keys added with '+' that the schema does not have (Hydra's own advice for a typo)
    ("+meta_train.n_iteration=3", "meta_train.n_iteration"),
    ("+optimizer.meta_lr=1e-3", "optimizer.meta_lr"),
    ("+tricks.random_scaling.kk=2", "tricks.random_scaling.kk"),
    ("+hidden=40", "hidden"),
    # a multi-select group with an option twice (Hydra merges it silently: another cell name)
    ("tricks=[random_scaling,random_scaling]", "tricks"),
    ("tricks=[convex_combination,random_scaling,convex_combination]", "tricks"),
    # set by the debug group only
    ("debug_preset=default", "debug_preset"),
])
def test_impossible_values_fail_naming_the_key(make_cfg, tmp_path, override, key):
    cfg = make_cfg(override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg)
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.parametrize("override, key", [
    ("optimizer=adam optimizer.lr=0", "optimizer.lr"),
    ("optimizer=sgd optimizer.lr=-0.1", "optimizer.lr"),
    ("optimizer=sgd optimizer.lr=inf", "optimizer.lr"),
    ("optimizer=sgd optimizer.lr=nan", "optimizer.lr"),
    ("optimizer=sgd optimizer.lr=1e38", "optimizer.lr"),
    ("optimizer=adam optimizer.beta1=nan", "optimizer.beta1"),
    ("optimizer=adam optimizer.eps=-1", "optimizer.eps"),
    ("optimizer=adagrad optimizer.initial_accumulator=inf", "optimizer.initial_accumulator"),
    ("optimizer=rmsprop optimizer.decay=1", "optimizer.decay"),
    ("optimizer=adadelta optimizer.rho=nan", "optimizer.rho"),
    ("optimizer=adam stage=meta_train", "stage"),
])
def test_hand_designed_optimizer_values(make_cfg, override, key):
    cfg = make_cfg(*override.split())
    with pytest.raises(ConfigError, match=key):
        validate_config(cfg)


@pytest.mark.parametrize("override, key", [
    ("optimizer.learning_rate=0.1", "learning_rate"),
    # keys the chosen option does not take: each option has its own schema
    ("optimizer.lr=0.1", "optimizer.lr"),  # a learned optimizer has no learning rate
    ("optimizer.lr=nan", "optimizer.lr"),
    ("optimizer=sgd optimizer.momentum=0.9", "optimizer.momentum"),  # SGD has none
    ("optimizer=sgd optimizer.hidden_size=20", "optimizer.hidden_size"),
    ("optimizer=dmoptimizer optimizer.alpha=0.1", "optimizer.alpha"),
    ("optimizee=quadratic optimizee.activation=relu", "optimizee.activation"),
    ("optimizee=mnist_mlp optimizee.noise=0.1", "optimizee.noise"),
    ("optimizer=adam optimizer.beta1=high", "optimizer.beta1"),
    ("optimizee=sine_lstm optimizee.hidden=1.5", "optimizee.hidden"),
    ("horizon.unroll=twenty", "horizon.unroll"),
    ("meta_train.n_iterations=1.5", "meta_train.n_iterations"),
    ("tricks.random_scaling.enabled=maybe", "tricks.random_scaling.enabled"),
    ("seed=abc", "seed"),
    ("evaluation.baselines.lbfgs=0.1", "lbfgs"),
])
def test_wrong_keys_and_types_fail_at_compose_time(make_cfg, override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as info:
        make_cfg(*override.split())
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


def test_an_unknown_key_names_the_nearest_valid_one(make_cfg):
    with pytest.raises(ConfigError, match=r"did you mean meta_train\.n_iterations\?"):
        validate_config(make_cfg("+meta_train.n_iteration=3"))


@pytest.mark.parametrize("override", [
    "logger.wandb.tags=[paper,r10]", "evaluation.baselines.sgd=0.1",
    "evaluation.baselines.rmsprop=tuned", "optimizer=sgd optimizer.lr=1e3",
    "tricks=[random_scaling]", "tricks=[]", "optimizee=sine_lstm optimizee.noise=0",
])
def test_free_form_and_edge_values_still_pass(make_cfg, override):
    cfg = make_cfg(*override.split())
    if cfg.optimizer.name not in ("rnnprop", "dmoptimizer", "dmoptimizer_official"):
        cfg.stage = "evaluate"
    validate_config(cfg)


def test_data_dir_pointing_at_a_file_is_refused(make_cfg, tmp_path):
    not_a_dir = tmp_path / "mnist.tar"
    not_a_dir.write_text("x")
    cfg = make_cfg(f"data.dir={not_a_dir}")
    with pytest.raises(ConfigError, match=r"data\.dir=.*is a file"):
        run(cfg)
    assert not (tmp_path / "run").exists()
    validate_config(make_cfg(f"data.dir={not_a_dir}", "optimizee.dataset=synthetic_mnist"))


def test_each_model_sets_its_own_meta_training_keys_and_the_command_line_wins(make_cfg):
    """One key per setting: the optimizer file writes meta_train.*, an override beats it."""
    official = make_cfg("optimizer=dmoptimizer_official")
    assert (official.meta_train.meta_lr, official.meta_train.meta_loss,
            official.meta_train.selection) == (1e-3, "sum_all", "validation")
    paper = make_cfg("experiment=dmoptimizer")
    assert (paper.meta_train.meta_lr, paper.meta_train.meta_loss,
            paper.meta_train.selection) == (1e-4, "mean", "validation")
    given = make_cfg("optimizer=dmoptimizer_official", "meta_train.meta_lr=3e-3",
                     "meta_train.selection=last", "meta_train.meta_loss=mean")
    assert (given.meta_train.meta_lr, given.meta_train.meta_loss,
            given.meta_train.selection) == (3e-3, "mean", "last")
    assert "meta_lr" not in official.optimizer and "selection" not in official.optimizer


@pytest.mark.parametrize("override, key", [
    ("+optimizer.hidden_size=20", "optimizer.hidden_size"),  # rnnprop's key, on sgd
    ("+optimizee.noise=0.1", "optimizee.noise"),  # the sine LSTM's key, on the MLP
])
def test_a_key_of_another_option_added_with_plus_is_refused(make_cfg, override, key):
    cfg = make_cfg("optimizer=sgd", "stage=evaluate", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_each_option_has_its_own_schema_with_its_constructors_defaults(make_cfg):
    adam = make_cfg("optimizer=adam").optimizer
    assert set(adam) == {"name", "lr", "beta1", "beta2", "eps"}
    assert (adam.beta1, adam.beta2, adam.eps) == (0.9, 0.999, 1e-8)  # TF's, from Adam()
    quadratic = make_cfg("optimizee=quadratic").optimizee
    assert set(quadratic) == {"name", "dim", "n_problems", "distribution", "init_std"}
