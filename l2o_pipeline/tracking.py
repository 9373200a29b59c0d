"""Experiment tracking: JSONL always on, Weights & Biases optional (offline by default).

``make_writer(output_dir, wandb_cfg, config, resume_step)`` returns a :class:`MultiWriter`
that fans every call out to

* :class:`JsonlWriter`: ``<output_dir>/metrics.jsonl`` (one object per ``log`` call) and
  ``<output_dir>/summary.json``; this is the source of truth for tests and plots;
* :class:`WandbWriter`: a W&B run under ``<output_dir>/wandb/`` whose id is kept in
  ``<output_dir>/wandb_run_id`` so that a requeued job resumes the same run.

A failing W&B never stops training: init errors degrade to JSONL-only, and errors while
logging are reported once and swallowed by :class:`MultiWriter`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from l2o_pipeline.records import json_safe, read_json_record, to_scalar, write_json, write_text
from l2o_pipeline.wandb_names import artifact_name, new_run_id

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")
RUN_ID_FILE = "wandb_run_id"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


# ----------------------------------------------------------------------------- helpers


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (W&B cannot serialise DictConfig)."""
    if obj is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # omegaconf is a dependency, but keep tracking importable alone
        return obj
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def resolve_wandb_mode(mode: str | None) -> str:
    """Mode to run W&B in: explicit config > ``WANDB_MODE`` env > ``"offline"``.

    ``mode: null`` in the config lets the environment decide (an explicit ``mode=`` given to
    ``wandb.init`` would otherwise override ``WANDB_MODE``, see the notes).
    """
    source = "logger.wandb.mode"
    if mode is None or str(mode).strip() == "":
        mode, source = os.environ.get("WANDB_MODE") or None, "the WANDB_MODE environment variable"
    if mode is None:
        # wandb's older switch; without this the explicit "offline" below would override it.
        disabled = os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes")
        return "disabled" if disabled else "offline"
    value = str(mode).strip().lower()
    if value not in WANDB_MODES:
        raise ValueError(
            f"invalid W&B mode {mode!r} from {source}; set `logger.wandb.mode` "
            f"(or WANDB_MODE) to one of {', '.join(WANDB_MODES)}, or null to use WANDB_MODE"
        )
    return value


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a metrics file (or of ``<dir>/metrics.jsonl``).

    A torn last line (the writer was killed mid-write) is ignored; corruption elsewhere raises.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return out


# ----------------------------------------------------------------------------- writers


class Writer:
    """Interface; every method is a no-op so writers implement only what they support."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        pass

    def log_curves(self, step_key: str, steps: list[int], series: dict[str, list]) -> None:
        """Curves over their own x axis ``step_key`` (not the run's step): ``series[k][i]``
        is curve ``k`` at ``steps[i]``."""

    def log_artifact(
        self, path: str | Path, name: str, type: str, metadata: dict | None = None
    ) -> None:
        pass

    def log_image(self, name: str, path: str | Path) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JsonlWriter(Writer):
    """``metrics.jsonl`` + ``summary.json`` (+ ``tables/<name>.json``) next to each other.

    ``resume_step``: the step the run restarts after. Lines with ``step > resume_step`` were
    logged after the last checkpoint and will be logged again, so they are dropped (atomic
    rewrite). ``None`` keeps all existing lines and appends; pass ``-1`` to start over.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        path = Path(path)
        if path.is_dir():
            path = path / METRICS_FILE
        self.path = path
        self.dir = path.parent
        self.dir.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._truncate(resume_step)
        self._fh = open(path, "a", encoding="utf-8")
        self._bad_keys: set[str] = set()

    def _truncate(self, resume_step: int | None) -> None:
        text = self.path.read_text(encoding="utf-8")
        kept, dropped, torn = [], 0, 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                torn += 1  # killed mid-write; appending after it would corrupt the next line
                continue
            step = rec.get("step") if isinstance(rec, dict) else None
            if resume_step is not None and isinstance(step, (int, float)) and step > resume_step:
                dropped += 1
                continue
            kept.append(line)
        if dropped or torn or (text and not text.endswith("\n")):
            write_text(self.path, "".join(ln + "\n" for ln in kept))
            log.info(
                "Resuming %s after step %s: dropped %d later line(s), %d unreadable",
                self.path,
                resume_step,
                dropped,
                torn,
            )

    def _clean(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            try:
                out[str(key)] = json_safe(value)
            except TypeError as err:
                if key not in self._bad_keys:  # warn once per key, not once per step
                    self._bad_keys.add(key)
                    log.warning("metrics.jsonl: skipping %r (%s)", key, err)
        return out

    def log(self, metrics: dict[str, float], step: int) -> None:
        record = {"step": int(to_scalar(step))}
        record.update((k, v) for k, v in self._clean(metrics).items() if k != "step")
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()

    def summary(self, values: dict) -> None:
        path = self.dir / SUMMARY_FILE
        current = read_json_record(path, "the run's summary", "delete it; the run writes it "
                                   "again") if path.exists() else {}
        current.update(self._clean(values))
        write_json(path, current, indent=2)

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        # Kept as JSON too so that nothing logged to W&B exists only there.
        out = self.dir / "tables" / f"{artifact_name(name)}.json"
        out.parent.mkdir(exist_ok=True)
        write_json(out, {"columns": list(columns), "rows": [list(r) for r in rows]})

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class WandbWriter(Writer):
    """One W&B run under ``<output_dir>/wandb/``; resumes the id in ``<output_dir>/wandb_run_id``.

    Raises ``ImportError`` when wandb is missing and the init error when even the offline
    fallback fails; :func:`make_writer` turns both into a warning and JSONL-only logging.
    """

    def __init__(
        self,
        output_dir: str | Path,
        project: str,
        group: str | None = None,
        job_type: str | None = None,
        name: str | None = None,
        tags: Iterable[str] | None = None,
        config: dict | None = None,
        mode: str | None = None,
        entity: str | None = None,
        init_timeout: float = 15.0,
    ):
        import wandb  # optional dependency: import here so JSONL works without it

        self._wandb = wandb
        self.output_dir = Path(output_dir)
        self.mode = resolve_wandb_mode(mode)
        self.run = None
        self.run_id: str | None = None
        self.init_seconds = 0.0
        if self.mode == "disabled":
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.output_dir / RUN_ID_FILE
        if id_file.exists() and id_file.read_text().strip():
            self.run_id = id_file.read_text().strip()
        else:
            self.run_id = new_run_id()
            # Written before init, so a job killed during init still resumes this id.
            write_text(id_file, self.run_id + "\n")

        kwargs: dict[str, Any] = dict(
            project=project,
            entity=entity,
            group=group or None,
            job_type=job_type or None,
            name=name or None,
            tags=[tags] if isinstance(tags, str) else [str(t) for t in _plain(tags) or []],
            config=_plain(config),
            dir=str(self.output_dir),
            id=self.run_id,
            resume="allow",
            # The basic Hydra launcher runs jobs in one process; without this a second init
            # returns the unfinished previous run and the jobs' metrics merge (wandb#1314).
            reinit="finish_previous",
        )
        t0 = time.monotonic()
        try:
            self.run = wandb.init(
                mode=self.mode, settings=wandb.Settings(init_timeout=init_timeout, silent=True),
                **kwargs,
            )
        except Exception as err:
            if self.mode != "online":
                raise
            # No network (compute nodes) or no API key: keep the run, upload it later.
            log.warning(
                "W&B online init failed after %.1f s (%s: %s); falling back to offline mode",
                time.monotonic() - t0,
                type(err).__name__,
                str(err).splitlines()[0][:200],
            )
            self.mode = "offline"
            self.run = self._offline_fallback(kwargs)
        self.init_seconds = time.monotonic() - t0
        run_dir = Path(self.run.dir).parent  # run.dir is <run_dir>/files
        if self.mode == "offline":
            # Trailing '*': a segment resumed within the same second is named '<id>-1'.
            log.info(
                "W&B run %s logged offline in %s; upload with: wandb sync %s",
                self.run_id,
                run_dir.resolve(),
                self.output_dir.resolve() / "wandb" / f"offline-run-*-{self.run_id}*",
            )
        else:
            log.info("W&B run %s: %s (local files in %s)", self.run_id, self.run.url, run_dir)

    def _offline_fallback(self, kwargs: dict[str, Any]):
        wandb = self._wandb
        # wandb-core keeps the failed run's id reserved, so a same-id offline init fails
        # with "run ID ... is in use" (and leaves a stub dir); a fresh service releases it.
        try:
            wandb.teardown()
        except Exception:  # best effort; the init below reports the real problem
            log.debug("wandb.teardown() failed", exc_info=True)
        try:
            return wandb.init(mode="offline", settings=wandb.Settings(silent=True), **kwargs)
        except Exception as err:
            # A service we do not own (WANDB_SERVICE inherited from a parent process) survives
            # teardown and still holds the id. An offline run under a new id beats none; the
            # id file is left alone so a requeued job resumes the original run.
            new_id = new_run_id()
            log.warning(
                "W&B offline init with run id %s failed (%s); logging this segment as run %s",
                self.run_id, str(err).splitlines()[0][:200], new_id,
            )  # fmt: skip
            self.run_id = new_id
            return wandb.init(mode="offline", settings=wandb.Settings(silent=True),
                              **dict(kwargs, id=new_id))

    @property
    def run_dir(self) -> Path | None:
        return Path(self.run.dir).parent if self.run is not None else None

    def _values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            try:
                out[key] = to_scalar(value)  # W&B keeps NaN/inf as floats, unlike strict JSON
            except TypeError:
                out[key] = value  # wandb media / histograms / nested dicts: let wandb decide
        return out

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(self._values(metrics), step=int(to_scalar(step)))

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(self._values(values))

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            table = self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])
            # commit=False: attach to the current step instead of advancing W&B's step
            # counter, which would make later log(step=s) calls be dropped as out of order.
            self.run.log({name: table}, commit=False)

    def log_image(self, name: str, path: str | Path) -> None:
        if self.run is not None:
            self.run.log({name: self._wandb.Image(str(path))}, commit=False)

    def log_curves(self, step_key: str, steps: list[int], series: dict[str, list]) -> None:
        if self.run is None:
            return
        # Their own x axis, so a dashboard plots loss against the optimizee's step; rows are
        # logged without step=, each one a new W&B step after the run's last one.
        self.run.define_metric(step_key)
        for key in series:
            self.run.define_metric(key, step_metric=step_key)
        for i, step in enumerate(steps):
            self.run.log({step_key: step, **{k: v[i] for k, v in series.items()}})

    def log_artifact(
        self, path: str | Path, name: str, type: str, metadata: dict | None = None
    ) -> None:
        if self.run is None:
            return
        path = Path(path)
        art = self._wandb.Artifact(artifact_name(name), type=type, metadata=_plain(metadata))
        if path.is_dir():
            art.add_dir(str(path))
        else:
            art.add_file(str(path))
        self.run.log_artifact(art)

    def close(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            run.finish()


class MultiWriter(Writer):
    """Fans out to several writers; one failing writer never affects the others."""

    def __init__(self, writers: Iterable[Writer]):
        self.writers = list(writers)
        self._failed: set[int] = set()

    def _each(self, method: str, *args, **kwargs) -> None:
        for w in self.writers:
            try:
                getattr(w, method)(*args, **kwargs)
            except Exception as err:  # logging must never stop training
                if id(w) not in self._failed:
                    self._failed.add(id(w))
                    log.warning(
                        "%s.%s failed (%s: %s); further errors from it are logged at DEBUG",
                        type(w).__name__,
                        method,
                        type(err).__name__,
                        err,
                        exc_info=True,
                    )
                else:
                    log.debug("%s.%s failed again: %r", type(w).__name__, method, err)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._each("log", metrics, step)

    def summary(self, values: dict) -> None:
        self._each("summary", values)

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        self._each("log_table", name, columns, rows)

    def log_artifact(
        self, path: str | Path, name: str, type: str, metadata: dict | None = None
    ) -> None:
        self._each("log_artifact", path, name, type, metadata)

    def log_image(self, name: str, path: str | Path) -> None:
        self._each("log_image", name, path)

    def log_curves(self, step_key: str, steps: list[int], series: dict[str, list]) -> None:
        self._each("log_curves", step_key, steps, series)

    def close(self) -> None:
        self._each("close")

    def get(self, cls: type[Writer]) -> Writer | None:
        """The first writer of type ``cls`` (e.g. to read ``WandbWriter.run_id``)."""
        return next((w for w in self.writers if isinstance(w, cls)), None)


def make_writer(
    output_dir: str | Path,
    wandb_cfg: Mapping | None,
    config: Mapping | None,
    resume_step: int | None = None,
) -> MultiWriter:
    """JSONL writer plus, when ``wandb_cfg.enabled`` (default true), a W&B writer.

    An invalid ``mode`` raises (a config error); a missing wandb or a failed init only warns.
    """
    output_dir = Path(output_dir)
    jsonl = JsonlWriter(output_dir / METRICS_FILE, resume_step=resume_step)
    writers: list[Writer] = [jsonl]
    cfg = dict(_plain(wandb_cfg) or {})
    if wandb_cfg is not None and cfg.get("enabled", True):
        mode = resolve_wandb_mode(cfg.get("mode"))
        if mode != "disabled":
            try:
                writers.append(
                    WandbWriter(
                        output_dir,
                        project=cfg.get("project") or "l2o_pipeline",
                        group=cfg.get("group"),
                        job_type=cfg.get("job_type"),
                        name=cfg.get("name"),
                        tags=cfg.get("tags"),
                        config=_plain(config),
                        mode=mode,
                        entity=cfg.get("entity"),
                        init_timeout=float(cfg.get("init_timeout") or 15.0),
                    )
                )
            except ImportError:
                log.warning("wandb is not installed; logging to %s only", jsonl.path)
            except Exception as err:  # W&B is optional: training goes on without it
                log.warning(
                    "W&B init failed (%s: %s); logging to %s only",
                    type(err).__name__,
                    err,
                    jsonl.path,
                    exc_info=True,
                )
    return MultiWriter(writers)
