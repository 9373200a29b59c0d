"""The stages of a run: meta-train, tune, evaluate, each a plain function of the config.

:mod:`l2o_pipeline.pipeline` decides which stages run (skip, resume); these do the work and
write its records under the run folder. What is built (optimizer, task, tricks) comes from
the registries (:mod:`l2o_pipeline.registry`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from l2o_pipeline import registry
from l2o_pipeline.baselines import resolve_lr, scan_tuning, task_key
from l2o_pipeline.batched import evaluate_batched
from l2o_pipeline.checkpoint import CheckpointError, load_optimizer, resolve_checkpoint
from l2o_pipeline.config import ConfigError, meta_train_settings, option_keys
from l2o_pipeline.eval_metrics import log_evaluation
from l2o_pipeline.evaluate import DIVERGED_RULE, evaluate
from l2o_pipeline.meta import meta_train
from l2o_pipeline.optimizees import build_task
from l2o_pipeline.optimizers import build_optimizer
from l2o_pipeline.records import save_torch, write_json
from l2o_pipeline.tricks import apply_tricks
from l2o_pipeline.wandb_names import model_artifact_name

log = logging.getLogger(__name__)


def config_dict(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node (saved in checkpoints and W&B)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # composed with return_hydra_config (tests): not ours to save
    return OmegaConf.to_container(cfg, resolve=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=cpu")
    return torch.device(name)


def build_model(cfg: DictConfig):
    """The optimizer chosen by ``cfg.optimizer``, built from its keys."""
    return build_optimizer(cfg.optimizer.name, **option_keys(cfg.optimizer))


def build_plain_task(cfg: DictConfig, device):
    """The optimizee chosen by ``cfg.optimizee``, its dataset read as ``cfg.data`` says."""
    return build_task(OmegaConf.to_container(cfg.optimizee, resolve=True), cfg.data.dir,
                      cfg.data.download, cfg.data.mnist_fallback, device)


def build_training_task(cfg: DictConfig, device) -> tuple:
    """(task with the enabled tricks applied, the plain task) for meta-training."""
    plain = build_plain_task(cfg, device)
    return apply_tricks(plain, cfg.tricks, device), plain


def tune_stage(cfg, device, out, writer, folder_sha: str) -> float:
    """stage=tune: the whole rate grid of one hand-designed optimizer on the task per horizon,
    batched; the record in tune/summary.json. Returns the tuned loss at the first horizon.
    ``folder_sha``: the folder's fingerprint, the key its saved passes are kept under."""
    from l2o_pipeline.baselines import LR_GRID
    from l2o_pipeline.tuning import SavedPasses, tune_learning_rate, write_record

    ev, tu = cfg.evaluation, cfg.tuning
    optimizer = build_model(cfg)
    task = build_plain_task(cfg, device)
    lrs = [float(lr) for lr in tu.lrs] if tu.lrs is not None else list(LR_GRID)
    record = {"kind": "tuning", "optimizer": optimizer.name, "task": task_key(cfg.optimizee),
              "task_name": task.name, "protocol": tu.protocol,
              "protocol_settings": ({"coarse_runs": tu.coarse_runs, "top_k": tu.top_k}
                                    if tu.protocol == "coarse_to_fine" else {}),
              "lrs": lrs, "n_runs": ev.n_runs, "final_loss": ev.final_loss, "seed": cfg.seed,
              "evaluation_seed": ev.seed, "engine": ev.engine, "horizons": {}}
    saved = SavedPasses(out, folder_sha)
    for horizon in cfg.horizon.eval_steps:
        log.info("tuning %s on %s at %d steps: %d rates x %d runs (%s protocol)",
                 optimizer.name, task.name, horizon, len(lrs), ev.n_runs, tu.protocol)
        block = tune_learning_rate(task, optimizer, lrs, horizon, ev.n_runs, seed=ev.seed,
                                   final_loss=ev.final_loss, protocol=tu.protocol,
                                   coarse_runs=tu.coarse_runs, top_k=tu.top_k,
                                   engine=ev.engine, memory_budget_gb=ev.memory_budget_gb,
                                   saved=saved)
        record["horizons"][str(horizon)] = block
        log.info("tuned %s at %d steps: lr %.6g, final loss %.5g", optimizer.name, horizon,
                 block["tuned_lr"], block["tuned_loss"])
        writer.log_table(f"tune/final_loss_{horizon}", ["lr", "final_loss_mean",
                                                         "final_loss_std", "n_diverged"],
                         [[r["lr"], r["final_loss_mean"], r["final_loss_std"], r["n_diverged"]]
                          for r in block["table"]])
        writer.summary({f"tune/{horizon}/lr": block["tuned_lr"],
                        f"tune/{horizon}/final_loss": block["tuned_loss"]})
    write_record(out, record)
    saved.remove()  # the record holds every pass now
    return record["horizons"][str(cfg.horizon.eval_steps[0])]["tuned_loss"]


def resolve_baselines(cfg) -> dict[int, dict[str, tuple[float, str]]]:
    if cfg.stage in ("meta_train", "tune"):
        return {}
    key = task_key(cfg.optimizee)
    # Only "tuned" rates need the tuning sweep (a damaged cell of it is refused, by name).
    tuned = "tuned" in cfg.evaluation.baselines.values()
    tuning = scan_tuning(cfg.evaluation.tuning_dir) if tuned else {}
    table = {}
    for horizon in cfg.horizon.eval_steps:
        table[horizon] = {}
        for base, lr in cfg.evaluation.baselines.items():
            if lr is not None and base != cfg.optimizer.name:
                try:
                    table[horizon][base] = resolve_lr(base, lr, key, horizon,
                                                      tuning=tuning)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
    return table


def meta_train_stage(cfg, device, out, config, writer, resumed, should_stop):
    torch.manual_seed(cfg.seed)  # meta-parameter init; task sampling has its own generator
    model = build_model(cfg).to(device)
    task, plain = build_training_task(cfg, device)
    opt = cfg.optimizer
    settings = meta_train_settings(cfg)
    log.info("meta-training %s on %s (%d coordinates) for %d iterations -> %s",
             opt.name, task.name, task.n_params, settings.n_iterations, out)
    result = meta_train(model, task, settings, out, seed=cfg.seed, variant=opt.name,
                        config=config, writer=writer, validation_task=plain,
                        should_stop=should_stop, resume_from=resumed)
    if not result.interrupted:
        log.info("meta-training done: %d iterations in %.1f s, %d non-finite skips; selected "
                 "iteration %s (%s = %.5g)", result.iterations, result.seconds,
                 result.nonfinite_skips, result.selection["best_iteration"],
                 result.selection["rule"], result.selection["best_score"])
        writer.summary({"meta/iterations": result.iterations,
                        "meta/seconds": result.seconds,
                        "meta/nonfinite_skips": result.nonfinite_skips,
                        "meta/best_iteration": result.selection["best_iteration"],
                        "meta/best_score": result.selection["best_score"]})
        if result.best_checkpoint is not None:
            writer.log_artifact(result.best_checkpoint, model_artifact_name(
                opt.name, config["logger"]["wandb"].get("group"), cfg.seed), "model",
                metadata=result.selection)
    return result


def resolve_eval_checkpoint(cfg) -> tuple | None:
    """(model, payload) of the checkpoint a stage=evaluate run of a learned optimizer needs."""
    if cfg.stage != "evaluate" or cfg.optimizer.name not in registry.learned_optimizers:
        return None
    ev = cfg.evaluation
    if ev.checkpoint is None:
        raise ConfigError(
            f"evaluation.checkpoint is not set: evaluating {cfg.optimizer.name} needs a "
            "meta-trained optimizer (a .pt file, a run folder or a packaged name). Produce "
            f"one with: l2o stage=meta_train optimizer={cfg.optimizer.name} ..., or use "
            "stage=both")
    try:
        path = resolve_checkpoint(ev.checkpoint, ev.checkpoint_iteration)
    except CheckpointError as exc:
        hint = f" Produce it with: {ev.produced_by}" if ev.produced_by else ""
        raise CheckpointError(f"{exc}.{hint}") from None
    # loaded once, here: the right model and a readable file, before any work
    model, payload = load_optimizer(path, expected_class=_family(cfg.optimizer.name))
    _adopt_checkpoint_hparams(cfg, payload)
    return model, payload


def _adopt_checkpoint_hparams(cfg, payload) -> None:
    """A checkpoint is evaluated as it was trained: its own variant and hyper-parameters win
    over config keys, and the config takes them, so that what is recorded is what runs. A key
    that said otherwise gets one warning."""
    opt = cfg.optimizer
    values = dict(payload["hparams"])
    if payload.get("variant") in registry.learned_optimizers:
        values["name"] = payload["variant"]
    contradicted = [f"optimizer.{key}: {opt[key]} -> {value}" for key, value in values.items()
                    if key in opt and opt[key] is not None and opt[key] != value]
    if contradicted:
        log.warning("evaluating %s with its own hyper-parameters, not the config's (recorded "
                    "as such): %s", payload["path"], "; ".join(contradicted))
    with read_write(opt):
        for key, value in values.items():
            if key in opt:
                opt[key] = value


def _choice(group: str) -> str | None:
    """The option chosen for a config group (e.g. the experiment), when run through Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def _family(name: str) -> str:
    """The model class a learned optimizer's option builds (what its checkpoints hold):
    ``dmoptimizer_official`` is a ``dmoptimizer``."""
    return registry.learned_optimizers[name].cls.name


def _run_evaluation(cfg, task, optimizers, horizon):
    """The configured engine's paired evaluation (``evaluation.engine``)."""
    ev = cfg.evaluation
    if ev.engine == "sequential":
        return evaluate(task, optimizers, horizon, ev.n_runs, seed=ev.seed,
                        final_loss=ev.final_loss)
    return evaluate_batched(task, optimizers, horizon, ev.n_runs, seed=ev.seed,
                            final_loss=ev.final_loss, memory_budget_gb=ev.memory_budget_gb)


def evaluate_stage(cfg, device, out, writer, checkpoint, baseline_lrs) -> float:
    from l2o_pipeline.plots import plot_loss_curves

    name = cfg.optimizer.name
    learned = name in registry.learned_optimizers
    if learned:
        # stage=both: this run's own checkpoint; stage=evaluate: the one loaded up front
        main, payload = (load_optimizer(checkpoint, expected_class=_family(name))
                         if isinstance(checkpoint, Path) else checkpoint)
        main = main.to(device)
        checkpoint = payload["path"]
        log.info("evaluating %s from %s (iteration %s)", name, checkpoint,
                 payload.get("iteration"))
    else:
        main = build_model(cfg)
    task = build_plain_task(cfg, device)
    key = task_key(cfg.optimizee)
    eval_dir = out / "eval"
    eval_dir.mkdir(exist_ok=True)
    dataset = getattr(task, "dataset", None)
    summary = {"task": key, "task_name": task.name, "n_runs": cfg.evaluation.n_runs,
               "final_loss": cfg.evaluation.final_loss, "optimizer": name,
               "experiment": _choice("experiment"), "seed": cfg.seed,
               "evaluation_seed": cfg.evaluation.seed, "diverged_rule": DIVERGED_RULE,
               "engine": cfg.evaluation.engine,
               "checkpoint": str(checkpoint) if checkpoint else None,
               "checkpoint_iteration": payload.get("iteration") if learned else None,
               "optimizer_hparams": payload["hparams"] if learned else None,
               "data_source": dataset.source if dataset is not None else None,
               "horizons": {}}
    headline, finished = math.nan, []
    for horizon in cfg.horizon.eval_steps:
        optimizers = {name: main}
        lrs = {name: getattr(main, "lr", None)}
        for base, (value, source) in baseline_lrs[horizon].items():
            optimizers[base] = registry.hand_designed.build(base, lr=value)
            lrs[base] = value
            log.info("baseline %s lr=%.6g (%s) at %d steps", base, value, source, horizon)
        start = time.perf_counter()
        results = _run_evaluation(cfg, task, optimizers, horizon)
        seconds = time.perf_counter() - start
        block = {}
        for opt_name, res in results.items():
            s = res.summary() | {"lr": lrs[opt_name],
                                 "final_losses": res.final_losses.tolist()}
            block[opt_name] = s
            log.info("%-10s %5d steps: final loss %.5g ± %.3g (%d of %d runs diverged)",
                     opt_name, horizon, s["final_loss_mean"], s["final_loss_std"],
                     s["n_diverged"], s["n_runs"])
        summary["horizons"][str(horizon)] = block | {"_seconds": seconds}
        curves = {k: r.curves for k, r in results.items()}
        save_torch(eval_dir / f"curves_{horizon}.pt", curves)
        finished.append((horizon, block, curves))
        if math.isnan(headline):
            headline = block[name]["final_loss_mean"]
    # The results first: nothing optional below (plots, W&B) can lose them.
    write_json(eval_dir / "summary.json", summary, indent=1)
    for horizon, block, curves in finished:
        title = f"{task.name}, {horizon} steps, {cfg.evaluation.n_runs} runs"
        try:
            png = plot_loss_curves(curves, eval_dir / f"loss_curves_{horizon}.png", title)
        except Exception as exc:  # a figure is optional; the summary is already written
            log.warning("could not plot the loss curves at %d steps (%s: %s); the results "
                        "are in %s", horizon, type(exc).__name__, exc, eval_dir)
            log.debug("plotting failed", exc_info=True)
        else:
            writer.log_image(f"eval/loss_curves_{horizon}", png)
        log_evaluation(writer, horizon, name, block, curves)
    return headline
