"""One registry per kind of thing a run is made of, and everything derived from it.

A kind's module declares each of its options once, with the class (or factory) and its
display label and colour::

    @learned_optimizers.register("rnnprop", label="RNNprop", color="C3")
    class RNNprop(LSTMOptimizer): ...

From that entry follow: building it from its config keys (:meth:`Registry.build`), the typed
config schema of its option (a dataclass derived from the constructor's signature, stored in
Hydra's ConfigStore as ``schema/<group>/<name>`` and pulled in by the option's YAML file or
ConfigStore node), loading its checkpoints (learned optimizers, by class name), the
``torch.optim`` wrapper's slot names, the tuning keys of an optimizee, and the report's label
and colour (:func:`label`, :func:`color`).

Why a schema per option derived from the signature (and not ``_target_`` + instantiate): the
config keeps its keys and values (the fingerprints of existing run folders stay valid, no
``_target_`` key in every recorded config), a key that does not belong to the chosen option
and a value of the wrong type still fail while Hydra composes, and the constructor stays the
one place that states an argument's default and checks its value (the config layer builds
each object once before any work and reports a refusal under its config key).

Parameters after ``*`` in a signature are the run's context (the device, the data), not config
keys. The built-in options register when :func:`load_builtins` imports their modules.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from l2o_pipeline.utils import ArgumentError

_SCALARS = (bool, int, float, str)


class UnknownOption(ValueError, LookupError):
    """A name no registry holds; the message lists the valid ones."""


@dataclass(frozen=True)
class Entry:
    """One registered option: how to build it, its config schema, how to show it."""

    name: str
    kind: str
    build: Callable[..., Any]
    schema: type
    label: str
    color: str | None = None
    cls: type | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        """The option's config keys (its schema's fields but ``name``)."""
        return tuple(f.name for f in dataclasses.fields(self.schema) if f.name != "name")

    def defaults(self) -> dict:
        """Each key's default (``MISSING`` where the option's config must give it)."""
        return {f.name: f.default if f.default_factory is dataclasses.MISSING
                else f.default_factory() for f in dataclasses.fields(self.schema)
                if f.name != "name"}


class Registry:
    """The options of one kind (``group``: the config group that chooses among them)."""

    def __init__(self, kind: str, group: str, context: tuple[str, ...] = ()):
        self.kind, self.group, self.context = kind, group, context
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Callable | None = None, *, label: str,
                 color: str | None = None, cls: type | None = None, **extra):
        """Register ``obj`` (a class or factory; usable as a decorator) under ``name``.
        ``cls``: the class a factory builds (default: ``obj`` when it is a class)."""

        def add(target: Callable):
            built = cls if cls is not None else (target if isinstance(target, type) else None)
            if built is not None and isinstance(target, type) and "name" not in vars(built):
                built.name = name  # what its checkpoints and logs call it
            schema = schema_from_signature(target, name, self.context)
            self._entries[name] = Entry(name, self.kind, target, schema, label, color, built,
                                        dict(extra))
            return target

        return add if obj is None else add(obj)

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownOption(f"unknown {self.kind} {name!r}; valid: {self.names()}") from None

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def build(self, name: str, keys: Mapping | None = None, context: Mapping | None = None,
              **kwargs):
        """Build option ``name`` from its keys (``keys`` and ``kwargs``), passing the context
        values its signature takes; a refused argument is named ``<name>.<key>``."""
        try:
            return self.build_unnamed(name, {**(keys or {}), **kwargs}, context)
        except ArgumentError as exc:
            raise ArgumentError(exc.key, exc.value, exc.must, exc.owner or name) from None

    def build_unnamed(self, name: str, keys: Mapping, context: Mapping | None = None):
        """:meth:`build` with refusals left as the constructor raised them (the config layer
        names them by their config key)."""
        entry = self[name]
        fn = entry.build.__init__ if isinstance(entry.build, type) else entry.build
        takes = inspect.signature(fn).parameters
        given = {k: v for k, v in (context or {}).items() if k in takes}
        return entry.build(**keys, **given)


def schema_from_signature(target: Callable, name: str, context: tuple[str, ...] = ()) -> type:
    """A dataclass of ``target``'s config keys: ``name`` (fixed to the option's name) and
    every positional-or-keyword parameter but the ``context`` ones, typed from its annotation
    (a scalar, optionally None; untyped when not annotated), with its default (none: the
    config must give it). Parameters of other types (tensors, datasets) are not config keys:
    what a config cannot hold is passed by the code that builds it."""
    fn = target.__init__ if isinstance(target, type) else target
    hints = typing.get_type_hints(fn)
    fields = [("name", str, field(default=name))]
    for param in list(inspect.signature(fn).parameters.values()):
        if (param.name == "self" or param.name in context
                or param.kind is not param.POSITIONAL_OR_KEYWORD):
            continue
        kind = _config_type(hints.get(param.name, Any))
        if kind is None:
            continue
        default = MISSING if param.default is param.empty else param.default
        spec = (field(default_factory=lambda d=default: type(d)(d))
                if isinstance(default, list | dict) else field(default=default))
        fields.append((param.name, kind, spec))
    title = "".join(part.title() for part in name.split("_"))
    schema = dataclasses.make_dataclass(f"{title}Config", fields)
    schema.__module__ = target.__module__
    return schema


def _config_type(hint):
    """The OmegaConf type of an annotation: scalars as they are, ``X | None`` optional,
    ``float | Tensor`` (a rate per row) as float, ``Any`` untyped; None for a type no config
    holds (a tensor, a dataset)."""
    if hint in _SCALARS or hint is Any:
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        scalars = [a for a in args if a in _SCALARS]
        if not scalars:
            return None
        base = float if float in scalars else (scalars[0] if len(scalars) == 1 else Any)
        return typing.Optional[base] if type(None) in args else base  # noqa: UP045
    return None


learned_optimizers = Registry("learned optimizer", "optimizer")
hand_designed = Registry("hand-designed optimizer", "optimizer")
# An optimizee is built on a device, and a dataset-backed one reads its data through
# ``load_dataset(name)``; a trick wraps ``task`` and sees which tricks are ``active``.
optimizees = Registry("optimizee", "optimizee", context=("device", "load_dataset"))
tricks = Registry("trick", "tricks", context=("task", "active", "device"))
REGISTRIES = (learned_optimizers, hand_designed, optimizees, tricks)


def load_builtins() -> None:
    """Import the modules that register the built-in options."""
    import l2o_pipeline.optimizees  # noqa: F401
    import l2o_pipeline.optimizers  # noqa: F401
    import l2o_pipeline.tricks  # noqa: F401


def optimizer(name: str) -> Entry:
    """The learned or hand-designed optimizer registered as ``name``."""
    load_builtins()
    if name in learned_optimizers:
        return learned_optimizers[name]
    if name in hand_designed:
        return hand_designed[name]
    raise UnknownOption(f"unknown optimizer {name!r}; valid: {optimizer_names()}")


def optimizer_names() -> list[str]:
    load_builtins()
    return learned_optimizers.names() + hand_designed.names()


def find(name: str) -> Entry | None:
    """The entry of any kind registered as ``name``, or None."""
    load_builtins()
    return next((r[name] for r in REGISTRIES if name in r), None)


def label(name: str) -> str:
    """The display label of a registered option (``label("rnnprop") == "RNNprop"``); an
    unregistered name is its own label."""
    entry = find(name)
    return entry.label if entry is not None else name


def color(name: str) -> str | None:
    """The plot colour of a registered option (a matplotlib colour), or None."""
    entry = find(name)
    return entry.color if entry is not None else None


def store_schemas() -> None:
    """Every option's schema into Hydra's ConfigStore as ``schema/<group>/<name>`` (what an
    option's YAML file names first in its defaults list)."""
    from hydra.core.config_store import ConfigStore

    load_builtins()
    store = ConfigStore.instance()
    for registry in (learned_optimizers, hand_designed, optimizees):
        for entry in registry.entries():
            store.store(group=f"schema/{registry.group}", name=entry.name, node=entry.schema)
