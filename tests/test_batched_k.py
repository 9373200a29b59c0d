"""Batched-K meta-training (l2o_pipeline.meta.batched_k) against K separate meta_train runs.

The separate runs are the oracle: same seeds, same tasks and settings, so the meta-parameters,
losses, selection and the files written must agree to float32 rounding.
"""

import math

import pytest
import torch

from l2o_pipeline.checkpoint import STATE_FORMAT, load_file
from l2o_pipeline.meta import MetaTrainSettings, meta_train
from l2o_pipeline.meta.batched_k import MetaTrainJob, meta_train_batched
from l2o_pipeline.optimizees import MLPTask, QuadraticTask, SquareTask
from l2o_pipeline.optimizers import DMOptimizer, RNNprop, stacked
from l2o_pipeline.tricks import Combined, RandomScaling

LR = 1e-3  # large enough that 6 Adam steps move every weight far beyond the tolerance
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("eager_kernels_one_thread")


def small_mlp(mnist):
    return MLPTask(mnist, hidden=2, batch_size=32)


def rnnprop_task(mnist, tricks=("rs", "cc"), mlp=None):
    """The paper's task kinds on a 784-2-10 MLP: both tricks, or one of them."""
    mlp = mlp or small_mlp(mnist)
    base = RandomScaling(mlp, 3.0) if "rs" in tricks else mlp
    if "cc" not in tricks:
        return base
    square = SquareTask(20, device=mlp.device)
    return Combined([base, RandomScaling(square, 1.0) if "rs" in tricks else square])


def settings(**kw):
    return MetaTrainSettings(**{"n_iterations": 3, "steps_per_run": 10, "unroll": 5,
                                "meta_lr": LR, "checkpoint_every": 2, "state_every": 1,
                                "log_every": 1, **kw})


def build(factory, seed):
    torch.manual_seed(seed)  # as meta_train_stage seeds the meta-parameter init
    return factory()


def run_both(tmp_path, specs, **batched_kw):
    """specs: (model factory, task, settings, seed) per job. Returns the single runs' and the
    batched runs' (results, models, initial weights)."""
    singles, single_models = [], []
    for i, (factory, task, s, seed) in enumerate(specs):
        model = build(factory, seed)
        singles.append(meta_train(model, task, s, tmp_path / f"single{i}", seed=seed,
                                  progress=False))
        single_models.append(model)
    models = [build(factory, seed) for factory, _, _, seed in specs]
    init = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]
    jobs = [MetaTrainJob(m, task, s, tmp_path / f"batched{i}", seed=seed)
            for i, (m, (_, task, s, seed)) in enumerate(zip(models, specs))]
    batched = meta_train_batched(jobs, progress=False, **batched_kw)
    return singles, single_models, batched, models, init


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def assert_same_training(tmp_path, singles, single_models, batched, models, init):
    for i, (a, b) in enumerate(zip(singles, batched)):
        moved = (flat(single_models[i]) - init[i]).abs().max().item()
        assert moved > 10 * TOL  # the comparison below is not vacuous
        assert (flat(single_models[i]) - flat(models[i])).abs().max().item() < TOL
        assert b.iterations == a.iterations and b.nonfinite_skips == a.nonfinite_skips
        assert b.losses == pytest.approx(a.losses, rel=1e-5)
        assert b.selection["best_iteration"] == a.selection["best_iteration"]
        # the same files, in the same formats, as a single run's folder
        names = sorted(p.relative_to(tmp_path / f"single{i}").as_posix()
                       for p in (tmp_path / f"single{i}").rglob("*.pt"))
        assert names == sorted(p.relative_to(tmp_path / f"batched{i}").as_posix()
                               for p in (tmp_path / f"batched{i}").rglob("*.pt"))
        sa = load_file(tmp_path / f"single{i}" / "state.pt", STATE_FORMAT)
        sb = load_file(tmp_path / f"batched{i}" / "state.pt", STATE_FORMAT)
        assert sa.keys() == sb.keys() and sa["meta_opt"].keys() == sb["meta_opt"].keys()
        assert torch.equal(sa["generator"], sb["generator"])  # the same draws, in order
        fa = torch.load(a.final_checkpoint, weights_only=False)
        fb = torch.load(b.final_checkpoint, weights_only=False)
        assert fa.keys() == fb.keys() and fa["hparams"] == fb["hparams"]


@pytest.fixture(params=["one_by_one", "batched_layers"])
def layers(request, monkeypatch):
    """Both ways K runs go: one after another, each as its single run (a CPU's), and stacked
    through the batched layers, one call per layer (a GPU's, forced here on the CPU)."""
    if request.param == "batched_layers":
        monkeypatch.setattr(stacked, "runs_one_by_one", lambda device: False)
    return request.param


@pytest.mark.parametrize("batch_tasks", [True, False], ids=["batched_task", "run_by_run"])
def test_three_seeds_equal_three_separate_runs(tmp_path, mnist, batch_tasks, layers):
    task = rnnprop_task(mnist)  # one task object: its instances batch (BatchedMLP inside)
    specs = [(RNNprop, task, settings(), seed) for seed in (0, 1, 2)]
    assert_same_training(tmp_path, *run_both(tmp_path, specs, batch_tasks=batch_tasks))


def test_one_job_equals_the_single_run(tmp_path, mnist):
    specs = [(RNNprop, rnnprop_task(mnist), settings(), 5)]
    assert_same_training(tmp_path, *run_both(tmp_path, specs))


def test_mixed_experiments_of_one_architecture(tmp_path, mnist, layers):
    """rnnprop, rnnprop_no_cc (20 coordinates fewer: padded) and rnnprop_no_rs together, each
    with its own task, loss, selection and seed."""
    mlp = small_mlp(mnist)
    specs = [(RNNprop, rnnprop_task(mnist, ("rs", "cc"), mlp), settings(), 0),
             (RNNprop, rnnprop_task(mnist, ("rs",), mlp), settings(selection="last"), 1),
             (RNNprop, rnnprop_task(mnist, ("cc",), mlp), settings(meta_loss="mean"), 2)]
    assert_same_training(tmp_path, *run_both(tmp_path, specs))


def test_runs_that_weigh_the_last_state_differently(tmp_path, layers):
    """DMoptimizer with the mean loss beside one with sum_all (which draws a minibatch at the
    period's last state) and a longer run: every run keeps its own draws and length."""
    task = QuadraticTask(dim=4, n_problems=8)
    specs = [(DMOptimizer.paper, task, settings(meta_loss="mean"), 0),
             (DMOptimizer.paper, task, settings(meta_loss="sum_all", n_iterations=4), 1)]
    assert_same_training(tmp_path, *run_both(tmp_path, specs))


class ExplodingQuadratic(QuadraticTask):
    """A non-finite loss on some instances (the run by run path: its loss is overridden)."""

    def sample_instance(self, generator):
        inst = super().sample_instance(generator)
        inst.__class__ = ExplodingQuadratic
        return inst

    def loss(self, params, batch):
        value = super().loss(params, batch)
        return value * math.inf if self.W[0, 0, 0] > 0.7 else value


def test_a_non_finite_run_skips_alone(tmp_path, layers):
    exploding, plain = ExplodingQuadratic(dim=4, n_problems=4), QuadraticTask(dim=4, n_problems=4)
    specs = [(RNNprop, exploding, settings(n_iterations=6), 0),
             (RNNprop, plain, settings(n_iterations=6), 0)]
    singles, *rest = run_both(tmp_path, specs, batch_tasks=False)
    assert singles[0].nonfinite_skips > 0 and singles[1].nonfinite_skips == 0
    assert_same_training(tmp_path, singles, *rest)


def test_interrupted_batch_resumes_exactly(tmp_path, mnist, layers):
    task = rnnprop_task(mnist)
    straight = [build(RNNprop, s) for s in (0, 1)]
    meta_train_batched([MetaTrainJob(m, task, settings(), tmp_path / f"a{s}", seed=s)
                        for s, m in enumerate(straight)], progress=False)
    calls = {"n": 0}

    def stop_soon():
        calls["n"] += 1
        return calls["n"] == 3  # mid-iteration: the runs finish theirs first

    first = [build(RNNprop, s) for s in (0, 1)]
    partial = meta_train_batched([MetaTrainJob(m, task, settings(), tmp_path / f"b{s}", seed=s)
                                  for s, m in enumerate(first)], should_stop=stop_soon,
                                 progress=False)
    assert all(r.interrupted and 0 < r.iterations < 3 for r in partial)
    again = [build(RNNprop, 9) for _ in (0, 1)]  # a fresh process: other initial weights
    meta_train_batched([MetaTrainJob(m, task, settings(), tmp_path / f"b{s}", seed=s)
                        for s, m in enumerate(again)], progress=False)
    for a, b in zip(straight, again):
        assert (flat(a) - flat(b)).abs().max().item() < TOL


@pytest.mark.parametrize("change, match", [
    (lambda job: setattr(job, "model", build(DMOptimizer.paper, 0)), "differs from job 0"),
    (lambda job: setattr(job.settings, "unroll", 2), "share the truncation"),
    (lambda job: setattr(job.settings, "second_order", True), "second_order"),
    (lambda job: setattr(job, "output_dir", job.output_dir.parent / "job0"), "output folder"),
])
def test_jobs_that_cannot_batch_are_refused_before_any_work(tmp_path, change, match):
    task = QuadraticTask(dim=4, n_problems=4)
    jobs = [MetaTrainJob(build(RNNprop, s), task, settings(steps_per_run=10), tmp_path /
                         f"job{s}", seed=s) for s in (0, 1)]
    change(jobs[1])
    with pytest.raises(ValueError, match=match):
        meta_train_batched(jobs, progress=False)
    assert not any(tmp_path.iterdir())


def test_the_command_line_writes_one_folder_per_job(tmp_path, capsys):
    from l2o_pipeline.batched_meta_train import main

    out = tmp_path / "batched"
    assert main(["--experiments", "rnnprop,rnnprop_no_cc", "--seeds", "0,1", "--out", str(out),
                 "debug=default", "optimizee.hidden=2", "meta_train.n_iterations=1"]) == 0
    summary = (out / "batched_summary.json").read_text()
    for experiment in ("rnnprop", "rnnprop_no_cc"):
        for seed in (0, 1):
            folder = out / experiment / f"seed_{seed}"
            assert (folder / "best.pt").is_file() and (folder / "metrics.jsonl").is_file()
            assert f'"folder": "{folder}"' in summary
    assert '"batch_size_k": 4' in summary  # one architecture: one batch


def test_the_command_line_refuses_an_unknown_experiment(tmp_path, capsys):
    from l2o_pipeline.batched_meta_train import main

    assert main(["--experiments", "rnnprop,nonesuch", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nonesuch" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_gpu_check_rehearses_on_the_cpu(tmp_path):
    """bench/gpu_check.py --device cpu --dry-run: every step runs and writes its records."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "bench" / "gpu_check.py"), "--device",
                           "cpu", "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, cwd=repo)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["consistency", "bench", "meta_train"]
    checks = json.loads((tmp_path / "consistency.json").read_text())["checks"]
    assert checks["batched_k_meta_params"]["ok"] and checks["meta_gradient"]["ok"]
    assert json.loads((tmp_path / "bench.jsonl").read_text().splitlines()[-1])["steps_per_s"] > 0
    summary = json.loads((tmp_path / "paper_meta_train" / "batched_summary.json").read_text())
    assert {j["experiment"] for j in summary["jobs"]} == {"rnnprop", "dmoptimizer"}
    assert all(j["iterations"] >= 1 for j in summary["jobs"])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_batched_k_on_cuda_equals_the_cpu(tmp_path, mnist):
    params = {}
    for device in ("cpu", "cuda"):
        data = mnist.to(device)
        task = Combined([RandomScaling(MLPTask(data, hidden=2, batch_size=32), 3.0),
                         RandomScaling(SquareTask(20, device=device), 1.0)])
        models = [build(RNNprop, s).to(device) for s in range(3)]
        meta_train_batched([MetaTrainJob(m, task, settings(), tmp_path / device / str(s),
                                         seed=s) for s, m in enumerate(models)], progress=False)
        params[device] = torch.cat([flat(m).cpu() for m in models])
    assert (params["cuda"] - params["cpu"]).abs().max().item() < TOL
