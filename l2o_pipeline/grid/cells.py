"""The grid's cells: the protocol, every sweep expanded into the cells its multirun would run,
each assessed against the archive (done, resumable, ready, waiting), and the status view."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from l2o_pipeline.catalog import META_TRAIN_SWEEP, PAPER_GRID, SWEEPS
from l2o_pipeline.config import cell_name
from l2o_pipeline.errors import UserError
from l2o_pipeline.records import TUNING_PASSES, TUNING_RECORD, folder_holder

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = PACKAGE_DIR / "conf"
SWEEPS_DIR = PACKAGE_DIR / "sweeps"
PROTOCOL_DIR = SWEEPS_DIR / "protocol"
GRID_LOG = "grid.jsonl"  # one line per cell attempt, in <archive>/paper/
# Each cell's console output, in <archive>/paper/: not archived (.gitignore), so nothing the
# report says may come from it.
CONSOLE_LOGS = ".grid_logs"

# Seconds per optimizee step of one run before the archive has timings of its own, measured on
# this project's 2-core CPU (bench/grid_cost.py, bench/bench_speed.py, batched engine):
# (a hand-designed optimizer, a learned one) in an evaluation cell, and one rate of a tuning
# cell's batched grid. CNN steps are convolution-bound: batching saves little there.
STEP_SECONDS = {"mlp": (0.0007, 0.008), "cnn": (0.045, 0.05), "sine_lstm": (0.0015, 0.006),
                "quadratic": (0.00006, 0.0003), "square": (0.00006, 0.0003)}
TUNE_STEP_SECONDS = {"mlp": 0.00035, "cnn": 0.047, "sine_lstm": 0.001, "quadratic": 0.00006,
                     "square": 0.00006}
META_ITERATION_SECONDS = {"mlp": 2.3, "quadratic": 0.15}  # one 100-step meta-iteration


@dataclass
class Protocol:
    name: str
    description: str
    overrides: list[str]
    meta_train_iterations: dict[str, int]
    sweeps: dict[str, list[str]]
    path: Path

    def iterations(self, experiment: str) -> int:
        table = self.meta_train_iterations
        return int(table.get(experiment, table["default"]))


def load_protocol(spec: str | Path) -> Protocol:
    """A protocol by name (``sweeps/protocol/<name>.yaml``) or by path."""
    path = Path(spec)
    if not path.suffix:
        path = PROTOCOL_DIR / f"{spec}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))
        raise GridError(f"protocol {spec!r} not found: give a file or one of {known}")
    data = yaml.safe_load(path.read_text()) or {}
    try:
        iterations = {str(k): int(v) for k, v in data["meta_train_iterations"].items()}
        if "default" not in iterations:
            raise KeyError("meta_train_iterations.default")
        return Protocol(str(data["name"]), str(data.get("description", "")),
                        [str(o) for o in data.get("overrides") or []], iterations,
                        {str(k): [str(o) for o in v] for k, v in
                         (data.get("sweeps") or {}).items()}, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise GridError(f"{path}: not a valid protocol ({exc}); see "
                        f"{PROTOCOL_DIR / 'paper.yaml'} for the format") from None


class GridError(UserError):
    """A bad protocol, archive or sweep name; the message says what would be valid."""


# ----------------------------------------------------------------------------- cells


@dataclass
class Cell:
    sweep: str
    overrides: list[str]  # the job's overrides, as the sweep's multirun would give them
    folder: Path
    experiment: str | None
    seed: int
    target: int | None = None  # meta-training iterations (meta-training cells)
    n_runs: int | None = None
    state: str = "pending"  # done | running | partial | pending | blocked | no data
    detail: str = ""
    estimate_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.sweep}/{self.folder.parent.name}/{self.folder.name}"


def _compose_sweep(name: str, archive: Path, overrides: list[str] = ()):
    """The sweep's config with Hydra's node (no job overrides unless given)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from l2o_pipeline.config import register_configs
    from l2o_pipeline.main import CONFIG_DIR

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(SWEEPS_DIR)):
        cfg = compose(name, overrides=[f"paths.runs_dir={archive}",
                                       f"hydra.searchpath=[file://{CONFIG_DIR}]",
                                       *overrides],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def expand(name: str, archive: Path, protocol: Protocol) -> list[Cell]:
    """Every cell of sweep ``name`` under ``protocol``, in the order the sweep would run them."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from l2o_pipeline.baselines import LR_GRID

    cfg = _compose_sweep(name, archive)
    stage = SWEEPS[name].stage
    hydra_cfg = cfg.hydra
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.params or {}).items()]
    extra = protocol.overrides + protocol.sweeps.get(name, [])
    parser = OverridesParser.create()
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(params + extra), None)[0]
    dirname_cfg = hydra_cfg.job.config.override_dirname
    exclude = list(dirname_cfg.exclude_keys)
    sweep_dir = Path(hydra_cfg.sweep.dir)
    cells, data_cache = [], {}
    for job in jobs:
        parsed = parser.parse_overrides(job)
        values = {o.key_or_group: o.value() for o in parsed}
        dirname = get_overrides_dirname(parsed, exclude, dirname_cfg.item_sep,
                                        dirname_cfg.kv_sep)
        seed = int(values.get("seed", cfg.seed))
        experiment = values.get("experiment")
        cell = Cell(name, list(job), sweep_dir / cell_name(dirname) / f"seed_{seed}",
                    None if experiment is None else str(experiment), seed,
                    n_runs=int(values.get("evaluation.n_runs", cfg.evaluation.n_runs)))
        if name == META_TRAIN_SWEEP:
            cell.target = protocol.iterations(cell.experiment or "default")
            cell.overrides.append(f"meta_train.n_iterations={cell.target}")
        cell.extra["optimizee"] = str(values.get("optimizee")
                                      or _experiment_optimizee(cell.experiment)
                                      or cfg.hydra.runtime.choices.optimizee)
        cell.extra["eval_steps"] = _eval_steps(values, cfg)
        cell.extra["dataset"], cell.extra["no_data"] = _data_here(name, archive, job,
                                                                 data_cache)
        # what one cell evaluates side by side: the rate grid of a tuning cell, else the
        # optimizer and its baselines
        lrs = values.get("tuning.lrs", cfg.tuning.lrs)  # the protocol's, else the sweep's
        cell.extra["n_optimizers"] = len(lrs or LR_GRID) if stage == "tune" else (
            1 + sum(v is not None for k, v in cfg.evaluation.baselines.items()
                    if k != values.get("optimizer", cfg.optimizer.name)))
        passes = _passes(cell, values, cfg.tuning, stage)
        cell.extra["evaluations"] = sum(passes)
        # the largest share of its work that stopping the cell can lose: a tuning saves each
        # pass of each horizon as it ends (tuning.SavedPasses), an evaluation only its result
        steps = cell.extra["eval_steps"]
        cell.extra["unsaved_share"] = (max(passes) * max(steps) / (sum(passes) * sum(steps))
                                       if stage == "tune" else 1.0)
        wanted = values.get("evaluation.checkpoint_iteration")
        if (wanted is not None and cell.experiment is not None
                and int(wanted) > protocol.iterations(cell.experiment)):
            continue  # a checkpoint the protocol never meta-trains to: not one of its cells
        cell.extra["checkpoint_iteration"] = wanted
        cells.append(cell)
    return cells


def _passes(cell: Cell, values: dict, tuning, stage: str) -> list[int]:
    """(run, optimizer) pairs of each pass a cell steps through per horizon: every optimizer
    (or rate) over every run, but for coarse-to-fine tuning every rate over the coarse runs,
    then the top_k rates over all (tuning.tune_learning_rate)."""
    def setting(key):
        return values.get(f"tuning.{key}", tuning[key])
    n = cell.extra["n_optimizers"]
    if stage == "tune" and str(setting("protocol")) == "coarse_to_fine":
        return [int(setting("coarse_runs")) * n, int(setting("top_k")) * cell.n_runs]
    return [cell.n_runs * n]


def _experiment_optimizee(experiment: str | None) -> str | None:
    """The optimizee an experiment preset selects (``override /optimizee: <name>``)."""
    path = CONF_DIR / "experiment" / f"{experiment}.yaml"
    if experiment is None or not path.is_file():
        return None
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if isinstance(entry, dict) and "override /optimizee" in entry:
            return str(entry["override /optimizee"])
    return None


# The overrides that can change which data a cell reads (the rest only change what it does).
_DATA_KEYS = ("optimizee", "optimizee.dataset", "experiment", "debug")  # and data.*


def _data_here(sweep: str, archive: Path, job: list[str], cache: dict
               ) -> tuple[str | None, str | None]:
    """(the dataset a cell's optimizee reads, or None; why this machine cannot read it, or
    None): the sweep composed with those of the cell's overrides, once per distinct set."""
    from l2o_pipeline.data import missing_data

    key = tuple(sorted(o for o in job if o.split("=", 1)[0] in _DATA_KEYS
                       or o.startswith("data.")))
    if key not in cache:
        cfg = _compose_sweep(sweep, archive, list(key))
        dataset = cfg.optimizee.get("dataset")  # None: a synthetic task, nothing to read
        cache[key] = (None, None) if dataset is None else (str(dataset), missing_data(
            str(dataset), cfg.data.dir, bool(cfg.data.download), cfg.data.mnist_fallback))
    return cache[key]


def _eval_steps(values: dict, cfg) -> list[int]:
    horizon = values.get("horizon")
    if horizon is None:
        return list(cfg.horizon.eval_steps)
    data = yaml.safe_load((CONF_DIR / "horizon" / f"{horizon}.yaml").read_text())
    return list(data["eval_steps"])


# ----------------------------------------------------------------------------- state


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def last_outcomes(runs: Path) -> dict[str, dict]:
    """Each cell's latest record in ``runs``/grid.jsonl (``runs``: the archive's paper/)."""
    latest = {}
    try:
        lines = (runs / GRID_LOG).read_text().splitlines()
    except OSError:
        return latest
    for line in lines:
        try:
            record = json.loads(line)
            latest[record["cell"]] = record
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash: the others still count
    return latest


def meta_progress(folder: Path) -> tuple[int, float | None]:
    """(iterations done, seconds per iteration) of a meta-training cell, without torch: DONE
    when finished, else the last logged step of metrics.jsonl."""
    done = _read_json(folder / "DONE")
    summary = _read_json(folder / "summary.json") or {}
    if done is not None:
        iterations = int(done.get("iterations", 0))
    else:
        iterations = 0
        try:
            with open(folder / "metrics.jsonl", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                for line in f.read().decode(errors="replace").splitlines()[1:] or []:
                    try:
                        iterations = max(iterations, int(json.loads(line).get("step", 0)))
                    except (ValueError, AttributeError):
                        continue
        except OSError:
            pass
    seconds = summary.get("meta/seconds")
    per_iteration = None
    if isinstance(seconds, (int, float)) and summary.get("meta/iterations"):
        per_iteration = seconds / summary["meta/iterations"]
    return iterations, per_iteration


def _family(optimizee: str) -> str:
    for family in ("cnn", "sine_lstm", "quadratic", "square"):
        if family in optimizee:
            return family
    return "mlp"


def _seconds_per_evaluation_step(c: Cell) -> float | None:
    """What a finished evaluation or tuning cell took per (run, optimizer, step), from its own
    record: a tuning record's tables say which rates it ran over how many runs (the protocol
    may have changed since), an evaluation's work is the cell's."""
    evaluation = _read_json(c.folder / "eval" / "summary.json")
    summary = evaluation or _read_json(c.folder / TUNING_RECORD)
    if summary is None:
        return None
    seconds, work = 0.0, 0
    for horizon, block in (summary.get("horizons") or {}).items():
        if not isinstance(block.get("_seconds"), (int, float)):
            continue
        seconds += block["_seconds"]
        rows = [] if evaluation else block.get("table", []) + block.get("coarse_table", [])
        pairs = (sum(len(r.get("final_losses", ())) for r in rows) if rows
                 else c.extra["evaluations"])
        work += pairs * int(horizon)
    return seconds / work if seconds and work else None


def assess(cells_by_sweep: dict[str, list[Cell]]) -> None:
    """Fill each cell's state, detail and estimated remaining seconds, in catalog order, from
    the archive as it is now (again on each call: the runner re-assesses the same cells)."""
    meta = {(c.experiment, c.seed): c for c in cells_by_sweep.get(META_TRAIN_SWEEP, [])}
    # (sweep, optimizee) -> seconds per (run x step x optimizer) of its finished cells: a
    # deeper CNN costs more per step than the base one, so a sweep's optimizees apart
    observed: dict[tuple[str, str], list[float]] = {}
    for name, cells in cells_by_sweep.items():
        for c in cells:
            done = _read_json(c.folder / "DONE")
            if c.sweep == META_TRAIN_SWEEP:
                iterations, per_it = meta_progress(c.folder)
                c.extra["iterations"] = iterations
                family = _family(c.extra["optimizee"])
                per_it = per_it or META_ITERATION_SECONDS.get(family, 2.3)
                c.estimate_s = max(c.target - iterations, 0) * per_it
                if done is not None and iterations >= c.target:
                    c.state, c.detail = "done", f"{iterations} iterations"
                elif iterations:
                    c.state, c.detail = "partial", f"{iterations}/{c.target} iterations"
                else:
                    c.state, c.detail = "pending", f"0/{c.target} iterations"
                continue
            rate = _seconds_per_evaluation_step(c) if done is not None else None
            if rate:
                observed.setdefault((name, c.extra["optimizee"]), []).append(rate)
            c.state = "done" if done is not None and _inputs_current(c, done, meta) else (
                "pending")
            c.detail, c.estimate_s = "", 0.0
            passes = _read_json(c.folder / TUNING_PASSES) if c.state != "done" else None
            if passes:  # a stopped tuning: it resumes from these
                c.state, c.detail = "partial", f"{len(passes)} tuning pass(es) saved"
            c.extra["saved_s"] = sum(p.get("seconds", 0.0) for p in (passes or {}).values())
    for cells in cells_by_sweep.values():
        for c in cells:  # a cell another process works in now (this runner, another one)
            if c.state != "done" and (holder := folder_holder(c.folder)):
                c.state = "running"
                c.detail = ", ".join(filter(None, [c.detail, f"running: {holder}"]))
    for cells in cells_by_sweep.values():
        for c in cells:  # a cell this machine cannot read the data of: neither run nor costed
            if c.state != "done" and c.extra.get("no_data"):
                c.state, c.estimate_s = "no data", 0.0
                c.detail = f"no data: {c.extra['no_data'].split(';')[0]}"
    for name, cells in cells_by_sweep.items():
        in_sweep = sorted(r for (sweep, _), rs in observed.items() if sweep == name for r in rs)
        for c in cells:
            if c.sweep == META_TRAIN_SWEEP or c.state in ("done", "no data"):
                continue
            running = c.state == "running"
            rates = sorted(observed.get((name, c.extra["optimizee"]), [])) or in_sweep
            hand, learned = STEP_SECONDS[_family(c.extra["optimizee"])]
            work = c.extra["evaluations"] * sum(c.extra["eval_steps"])
            if rates:
                c.estimate_s = rates[len(rates) // 2] * work
            elif SWEEPS[name].stage == "tune":
                c.estimate_s = work * TUNE_STEP_SECONDS[_family(c.extra["optimizee"])]
            else:
                steps = c.n_runs * sum(c.extra["eval_steps"])
                c.estimate_s = steps * (learned + hand * (c.extra["n_optimizers"] - 1))
            # what a stopped tuning's saved passes took is not spent again (roughly: they may
            # have run at another speed)
            c.estimate_s = max(c.estimate_s - c.extra["saved_s"], 0.1 * c.estimate_s)
            waiting = None if running else _waiting_for(c, cells_by_sweep, meta)
            if waiting:
                c.state, c.detail = "blocked", waiting


def _inputs_current(c: Cell, done: dict, meta: dict) -> bool:
    """A finished evaluation is current while its run count and the checkpoint it evaluated
    still hold (a meta-training that continued since selects again)."""
    inputs = done.get("inputs") or {}
    if inputs.get("n_runs") not in (None, c.n_runs):
        return False
    source = meta.get((c.experiment, c.seed))
    if source is None or not inputs.get("checkpoint"):
        return True
    wanted = c.extra.get("checkpoint_iteration")
    if wanted is None:
        wanted = (_read_json(source.folder / "summary.json") or {}).get("meta/best_iteration")
    return wanted is None or inputs.get("checkpoint_iteration") == wanted


def start_order(ready: list[Cell], cells_by_sweep: dict[str, list[Cell]]) -> list[Cell]:
    """``ready`` (assessed cells, in catalog order) in the order a runner starts them:
    meta-trainings first (the longest work, resumable, and what every evaluation of a learned
    optimizer waits for), then whatever completes a result soonest: an evaluation by its own
    cost, a tuning by what is left of the tuning its dependants wait for (its sweep's cells of
    its optimizee not done, see :func:`_waiting_for`); catalog order between equals. So the
    last tuning of one CNN runs before the first of a CNN with five to go."""
    def rest_of_group(c: Cell) -> float:
        if not any(c.sweep in SWEEPS[d].needs for d in cells_by_sweep):
            return c.estimate_s  # nothing in this run waits for it
        return sum(x.estimate_s for x in cells_by_sweep[c.sweep]
                   if x.state != "done" and x.extra["optimizee"] == c.extra["optimizee"])

    def key(c: Cell) -> tuple[bool, float]:
        if c.sweep == META_TRAIN_SWEEP:
            return False, 0.0
        return True, rest_of_group(c) if SWEEPS[c.sweep].stage == "tune" else c.estimate_s

    return sorted(ready, key=key)  # stable: catalog order between equal keys


def _waiting_for(c: Cell, cells_by_sweep: dict, meta: dict) -> str:
    waits = []
    for need in SWEEPS[c.sweep].needs:
        cells = cells_by_sweep.get(need)
        if cells is None:
            waits.append(f"{need} (not in this run)")
            continue
        # The cells of its own optimizee where the sweep has them (Fig. 7 on MNIST waits for
        # the MNIST CNNs' tuning, not CIFAR-10's), else all of them.
        cells = [x for x in cells if x.extra["optimizee"] == c.extra["optimizee"]] or cells
        missing = sum(x.state != "done" for x in cells)
        if missing:
            waits.append(f"{need} ({len(cells) - missing}/{len(cells)} cells)")
    if SWEEPS[c.sweep].stage == "evaluate" and c.experiment is not None:
        source = meta.get((c.experiment, c.seed))
        if source is None:
            waits.append(f"{META_TRAIN_SWEEP} experiment={c.experiment} seed={c.seed}")
        elif source.state != "done":
            waits.append(f"{source.name} ({source.detail})")
    return "; ".join(waits)


def collect(archive: Path, protocol: Protocol, only: list[str] | None = None
            ) -> dict[str, list[Cell]]:
    """Cells of every sweep (or of ``only`` and what they need), assessed."""
    cells = expand_all(archive, protocol, only)
    assess(cells)
    return cells


def expand_all(archive: Path, protocol: Protocol, only: list[str] | None = None
               ) -> dict[str, list[Cell]]:
    """Cells of every sweep (or of ``only`` and what they need), not assessed: what the configs
    say, whatever the archive holds (composing them is most of what :func:`collect` costs).
    An evaluation named in ``only`` brings in just the meta-trainings it evaluates."""
    cells = {n: expand(n, archive, protocol) for n in wanted_sweeps(only)}
    if only and META_TRAIN_SWEEP not in only and META_TRAIN_SWEEP in cells:
        used = {(c.experiment, c.seed) for name, cs in cells.items() if name != META_TRAIN_SWEEP
                for c in cs if c.experiment is not None}
        cells[META_TRAIN_SWEEP] = [c for c in cells[META_TRAIN_SWEEP]
                                   if (c.experiment, c.seed) in used]
    return cells


def wanted_sweeps(only: list[str] | None = None) -> list[str]:
    """The catalog's sweeps in its (dependency and priority) order: all of them, or ``only``
    and what they need (their tuning sweeps; meta-training for an evaluation)."""
    names = [s.name for s in PAPER_GRID]
    if not only:
        return names
    unknown = [n for n in only if n not in SWEEPS]
    if unknown:
        raise GridError(f"unknown sweep(s) {unknown}; valid: {names}")
    wanted = set(only)
    for n in only:
        wanted.update(SWEEPS[n].needs)
        if SWEEPS[n].stage == "evaluate":
            wanted.add(META_TRAIN_SWEEP)
    return [n for n in names if n in wanted]


# ----------------------------------------------------------------------------- views


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.0f} min"


def status_lines(cells_by_sweep: dict[str, list[Cell]], protocol: Protocol) -> list[str]:
    lines = [f"protocol: {protocol.name} ({protocol.description})",
             f"{'sweep':<20} {'done':>9} {'running':>7} {'partial':>7} {'ready':>6} "
             f"{'blocked':>7} {'no data':>7}  {'rest costs':>10}  waiting for"]
    total = 0.0
    no_data: dict[str, list[Cell]] = {}
    for name, cells in cells_by_sweep.items():
        count = {s: sum(c.state == s for c in cells)
                 for s in ("done", "running", "partial", "pending", "blocked", "no data")}
        rest = sum(c.estimate_s for c in cells if c.state != "done")
        total += rest
        waits = sorted({c.detail for c in cells if c.state == "blocked"})
        lines.append(f"{name:<20} {count['done']:>4}/{len(cells):<4} {count['running']:>7} "
                     f"{count['partial']:>7} {count['pending']:>6} {count['blocked']:>7} "
                     f"{count['no data']:>7}  "
                     f"{_hours(rest):>10}  "
                     + (waits[0] + (f" (+{len(waits) - 1} more)" if len(waits) > 1 else "")
                        if waits else ""))
        for c in cells:
            if (c.sweep == META_TRAIN_SWEEP and c.state != "done") or c.state == "partial":
                lines.append(f"  {c.name}: {c.detail}, ~{_hours(c.estimate_s)} left")
            elif c.state == "running":
                lines.append(f"  {c.name}: {c.detail}")
            if c.state == "no data":
                no_data.setdefault(c.extra["no_data"], []).append(c)
    lines.append(f"the rest costs ~{_hours(total)} of one core on this machine "
                 "(estimated from the archive's own timings where it has them)")
    for message, cells in no_data.items():  # the fix is the data, not more time
        lines.append(f"{len(cells)} cell(s) not run here for want of their data "
                     f"(e.g. {cells[0].name}): {message}")
    return lines
