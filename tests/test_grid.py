"""``l2o-grid``: cells expanded as the sweeps' multiruns place them, status, a budgeted run that
skips what is finished and continues what is not."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from l2o_pipeline import grid
from l2o_pipeline.catalog import PAPER_GRID, SWEEPS

ROOT = Path(__file__).resolve().parents[1]


def write_protocol(tmp_path, iterations=2, **sweeps) -> Path:
    """A miniature protocol: synthetic data, one seed, two tuning rates of Adam, one cell of
    RNNprop's meta-training and one of Table 2."""
    spec = {"name": "mini", "description": "test miniature",
            "overrides": ["debug=default", "seed=0"],
            "meta_train_iterations": {"default": iterations},
            "sweeps": {"tune_activations": ["optimizer=adam", "optimizer.lr=0.03125,0.0625",
                                            "optimizee.activation=sigmoid"],
                       "paper_meta_train": ["experiment=rnnprop"],
                       "table2": ["experiment=rnnprop", "optimizee.activation=sigmoid"],
                       **sweeps}}
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_every_catalog_sweep_exists_and_needs_only_earlier_sweeps():
    seen = set()
    for s in PAPER_GRID:
        assert (ROOT / "sweeps" / f"{s.name}.yaml").is_file(), s.name
        assert set(s.needs) <= seen, f"{s.name} needs a later sweep"
        seen.add(s.name)


def test_protocols_load_and_the_cpu_one_states_its_reductions():
    paper, cpu = grid.load_protocol("paper"), grid.load_protocol("cpu")
    assert paper.overrides == [] and paper.iterations("rnnprop") == 10000
    assert "seed=0" in cpu.overrides and cpu.iterations("rnnprop") == 5000
    assert cpu.iterations("dmoptimizer") == 2000
    assert set(cpu.sweeps) <= set(SWEEPS)


def test_a_bad_protocol_is_named(tmp_path):
    with pytest.raises(grid.GridError, match="not found"):
        grid.load_protocol("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(grid.GridError, match="bad.yaml"):
        grid.load_protocol(bad)


def test_expanded_cells_follow_the_protocol(tmp_path):
    archive = tmp_path / "archive"
    cells = grid.expand("table4", archive, grid.load_protocol("cpu"))
    # 2 experiments x 2 activations x 5 checkpoints, one seed, less the checkpoint the
    # protocol never meta-trains rnnprop_no_cc to (2,000 iterations: no 5,000)
    assert len(cells) == 18 and {c.seed for c in cells} == {0}
    checkpoints = {e: {c.extra["checkpoint_iteration"] for c in cells if c.experiment == e}
                   for e in ("rnnprop", "rnnprop_no_cc")}
    assert checkpoints == {"rnnprop": {100, 300, 1000, 2000, 5000},
                           "rnnprop_no_cc": {100, 300, 1000, 2000}}
    folder = cells[0].folder.relative_to(archive)
    assert folder.parts[:2] == ("paper", "table4") and folder.name == "seed_0"
    meta = grid.expand("paper_meta_train", archive, grid.load_protocol("cpu"))
    targets = {c.experiment: c.target for c in meta}
    assert targets["rnnprop"] == 5000 and targets["dmoptimizer"] == 2000
    assert meta[0].folder == archive / "paper" / "meta_train" / "experiment=rnnprop" / "seed_0"


def test_a_coarse_to_fine_tuning_cell_is_costed_by_what_it_evaluates(tmp_path):
    archive, mini = tmp_path / "archive", write_protocol(tmp_path)
    full = grid.collect(archive, grid.load_protocol(mini), ["tune_activations"])
    tune = grid.load_protocol(mini).sweeps["tune_activations"]
    coarse = grid.collect(archive, grid.load_protocol(write_protocol(tmp_path, tune_activations=[
        *tune, "tuning.protocol=coarse_to_fine", "tuning.coarse_runs=1", "tuning.top_k=1"])),
        ["tune_activations"])
    full, coarse = full["tune_activations"], coarse["tune_activations"]
    # the protocol's tuning settings do not name a cell: either protocol tunes the same cells
    assert [c.folder for c in coarse] == [c.folder for c in full] and len(full) == 2
    for cell, fuller in zip(coarse, full):
        rates, runs = cell.extra["n_optimizers"], cell.n_runs
        assert rates > 1 and runs > 1 and cell.extra["evaluations"] == rates + runs
        assert fuller.extra["evaluations"] == rates * runs
        # what a stop can lose: the larger of its two saved passes; the full grid's one pass
        assert cell.extra["unsaved_share"] == max(rates, runs) / (rates + runs)
        assert fuller.extra["unsaved_share"] == 1.0
        assert cell.estimate_s == pytest.approx(
            fuller.estimate_s * (rates + runs) / (rates * runs))


def test_a_tuning_starts_when_its_largest_pass_fits_the_budget(tmp_path, monkeypatch):
    from l2o_pipeline.grid import run as grid_run

    mini = write_protocol(tmp_path)
    tune = grid.load_protocol(mini).sweeps["tune_activations"]
    protocol = grid.load_protocol(write_protocol(tmp_path, tune_activations=[
        *tune, "tuning.protocol=coarse_to_fine", "tuning.coarse_runs=1", "tuning.top_k=1"]))
    archive = tmp_path / "archive"
    cell = grid.collect(archive, protocol, ["tune_activations"])["tune_activations"][0]
    share = cell.extra["unsaved_share"]
    assert 0.5 < share < 1

    real_assess = grid_run.assess

    def assess_an_hour_each(cells):  # as if each tuning cell cost an hour here
        real_assess(cells)
        for c in cells["tune_activations"]:
            c.estimate_s = 3600.0

    monkeypatch.setattr(grid_run, "assess", assess_an_hour_each)
    monkeypatch.setattr(grid_run, "_command", lambda *a: [sys.executable, "-c", "pass"])
    for hours, started in (((1 + share) / 2, True),  # not the whole, but its larger pass
                           (share / 2, False)):  # not even that
        echoed = []
        grid.run_grid(archive, protocol, hours, only=["tune_activations"], poll_s=0.01,
                      echo=echoed.append)
        assert any(e.startswith(f"start: {cell.name}") for e in echoed) is started


def test_status_counts_finished_cells_and_waits(tmp_path):
    archive, protocol = tmp_path / "archive", grid.load_protocol(write_protocol(tmp_path))
    cells = grid.collect(archive, protocol, ["table2"])
    assert [c.state for c in cells["table2"]] == ["blocked"]
    assert "tune_activations (0/2 cells)" in cells["table2"][0].detail
    for c in cells["tune_activations"]:  # finish the tuning by hand
        c.folder.mkdir(parents=True)
        (c.folder / "DONE").write_text(json.dumps({"inputs": {"n_runs": c.n_runs}}))
    cells = grid.collect(archive, protocol, ["table2"])
    assert [c.state for c in cells["tune_activations"]] == ["done", "done"]
    assert "experiment=rnnprop/seed_0 (0/2 iterations)" in cells["table2"][0].detail
    text = "\n".join(grid.status_lines(cells, protocol))
    assert "tune_activations" in text and "2/2" in text and "0/2 iterations" in text


def test_cli_refuses_bad_arguments(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    for args in (["status", "--archive", str(afile)], ["status", "--only", "tabel2"],
                 ["run", "--hours", "0"], ["status", "--protocol", "nope"]):
        job = subprocess.run([sys.executable, "-m", "l2o_pipeline.grid", *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert job.returncode == 2, args
        assert "Traceback" not in job.stderr and job.stderr.strip(), args


@pytest.mark.slow
def test_a_budgeted_run_fills_the_archive_then_skips_and_continues(tmp_path):
    archive = tmp_path / "archive"
    protocol = grid.load_protocol(write_protocol(tmp_path))
    counts = grid.run_grid(archive, protocol, hours=0.25, only=["table2"], jobs=2, poll_s=0.5)
    assert counts == {"finished": 4, "stopped": 0, "failed": 0}, counts
    cells = grid.collect(archive, protocol, ["table2"])
    assert all(c.state == "done" for cs in cells.values() for c in cs)
    summary = json.loads(next((archive / "paper" / "table2").glob("*/seed_0/eval/summary.json"))
                         .read_text())
    assert summary["experiment"] == "rnnprop"
    # A relaunch starts nothing: every cell is finished.
    assert grid.run_grid(archive, protocol, 0.25, ["table2"], poll_s=0.5)["finished"] == 0
    # More iterations: the meta-training cell continues, and Table 2 evaluates again exactly
    # when the continued training selected another checkpoint.
    meta = archive / "paper/meta_train/debug=default,experiment=rnnprop/seed_0"  # debug cells
    best_before = json.loads((meta / "summary.json").read_text())["meta/best_iteration"]
    longer = grid.load_protocol(write_protocol(tmp_path, iterations=4))
    finished = grid.run_grid(archive, longer, 0.25, ["table2"], poll_s=0.5)["finished"]
    assert json.loads((meta / "DONE").read_text())["iterations"] == 4
    best_after = json.loads((meta / "summary.json").read_text())["meta/best_iteration"]
    assert finished == 1 + (best_after != best_before)
    evaluated = json.loads(next((archive / "paper" / "table2").glob("*/seed_0/DONE"))
                           .read_text())["inputs"]["checkpoint_iteration"]
    assert evaluated == best_after
    log = [json.loads(x) for x in (archive / "paper" / grid.GRID_LOG).read_text().splitlines()]
    assert len(log) == 4 + finished and {r["outcome"] for r in log} == {"finished"}


def test_launch_runs_each_sweep_as_one_multirun_in_dependency_order(tmp_path):
    two = ["experiment=rnnprop,dm_quadratic"]
    protocol = grid.load_protocol(write_protocol(tmp_path, iterations=3, paper_meta_train=two))
    protocol.meta_train_iterations["dm_quadratic"] = 5
    commands = grid.launch_commands(tmp_path, protocol, ["table2"], ["hydra/launcher=slurm_cpu"])
    sweeps = [c[c.index("--config-name") + 1] for c in commands]
    assert sweeps == ["tune_activations", "paper_meta_train", "paper_meta_train", "table2"]
    meta = {c[-3]: c[-2] for c in commands[1:3]}  # one multirun per iteration target
    assert meta == {"experiment=rnnprop": "meta_train.n_iterations=3",
                    "experiment=dm_quadratic": "meta_train.n_iterations=5"}
    assert all(c[-1] == "hydra/launcher=slurm_cpu" for c in commands)  # the user's win


@pytest.mark.slow
def test_launch_fills_the_cells_that_run_would_and_writes_the_report(tmp_path):
    runs = tmp_path / "runs"
    protocol = grid.load_protocol(write_protocol(tmp_path))
    assert grid.launch(runs, protocol, ["table2"], [], report=tmp_path / "report") == 0
    cells = grid.collect(runs, protocol, ["table2"])
    assert all(c.state == "done" for cs in cells.values() for c in cs)
    assert (tmp_path / "report" / "report.md").is_file()
    # A broken sweep stops the launch with its exit status.
    assert grid.launch(runs, protocol, ["table2"], ["+no_such_key=1"], report=None) != 0


@pytest.mark.slow
def test_the_deadline_stops_a_meta_training_that_the_next_run_continues(tmp_path):
    archive = tmp_path / "archive"
    protocol = grid.load_protocol(write_protocol(tmp_path, iterations=100000))
    counts = grid.run_grid(archive, protocol, hours=25 / 3600, only=["paper_meta_train"],
                           poll_s=0.5)
    assert counts == {"finished": 0, "stopped": 1, "failed": 0}, counts
    folder = archive / "paper/meta_train/debug=default,experiment=rnnprop/seed_0"
    assert (folder / "state.pt").is_file() and not (folder / "DONE").exists()
    first, _ = grid.meta_progress(folder)
    grid.run_grid(archive, protocol, hours=25 / 3600, only=["paper_meta_train"], poll_s=0.5)
    assert grid.meta_progress(folder)[0] > first


def test_an_evaluation_in_only_brings_in_just_the_meta_trainings_it_evaluates(tmp_path):
    two = ["experiment=rnnprop,dm_quadratic"]
    protocol = grid.load_protocol(write_protocol(tmp_path, paper_meta_train=two))
    archive = tmp_path / "archive"
    evaluated = grid.collect(archive, protocol, ["table2"])["paper_meta_train"]
    assert [c.experiment for c in evaluated] == ["rnnprop"]
    named = grid.collect(archive, protocol, ["paper_meta_train"])["paper_meta_train"]
    assert sorted(c.experiment for c in named) == ["dm_quadratic", "rnnprop"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_runner_stops_its_cells_with_their_state_saved(tmp_path, signum):
    archive = tmp_path / "archive"
    protocol = write_protocol(tmp_path, iterations=100000)
    folder = archive / "paper/meta_train/debug=default,experiment=rnnprop/seed_0"
    runner = subprocess.Popen(
        [sys.executable, "-m", "l2o_pipeline.grid", "run", "--archive", str(archive),
         "--protocol", str(protocol), "--only", "paper_meta_train", "--hours", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (folder / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)  # the cell is meta-training
    runner.send_signal(signum)  # as `kill` or SLURM would (Ctrl-C reaches the runner alone)
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 0 and "Traceback" not in err, err
    assert signal.Signals(signum).name in out and "0 failed" in out, out
    log = [json.loads(x) for x in (archive / "paper" / grid.GRID_LOG).read_text().splitlines()]
    assert [r["outcome"] for r in log] == ["stopped"]  # logged once the cell had exited
    assert (folder / "state.pt").is_file() and not (folder / "DONE").exists()


@pytest.mark.slow
def test_sigusr1_lets_the_running_cells_finish_and_starts_no_more(tmp_path):
    archive = tmp_path / "archive"
    runner = subprocess.Popen(
        [sys.executable, "-m", "l2o_pipeline.grid", "run", "--archive", str(archive),
         "--protocol", str(write_protocol(tmp_path)), "--only", "tune_activations",
         "--hours", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    first = runner.stdout.readline()  # the first cell has just been started
    assert first.startswith("start: tune_activations/"), first
    runner.send_signal(signal.SIGUSR1)
    out, err = runner.communicate(timeout=300)
    assert runner.returncode == 0 and "Traceback" not in err, err
    assert "SIGUSR1: starting no more cells; the 1 running will finish" in out, out
    log = [json.loads(x) for x in (archive / "paper" / grid.GRID_LOG).read_text().splitlines()]
    assert [r["outcome"] for r in log] == ["finished"]  # of 2 ready cells, only the one begun
    assert log[0]["cell"] == first.split()[1]


def _cnn_protocol(tmp_path, data_dir, **sweeps):
    """Adam at one rate on the CNNs, the real datasets read from ``data_dir``."""
    spec = {"name": "cnn", "description": "test", "meta_train_iterations": {"default": 2},
            "overrides": ["seed=0", f"data.dir={data_dir}"],
            "sweeps": {"tune_cnn": ["optimizer=adam", "tuning.lrs=[0.01]"],
                       "fig7": ["experiment=rnnprop"], **sweeps}}
    path = tmp_path / "cnn.yaml"
    path.write_text(yaml.safe_dump(spec))
    return grid.load_protocol(path)


def test_cells_without_their_data_are_marked_not_costed_and_block_only_their_own(tmp_path):
    from l2o_pipeline.data import write_fake_cifar10

    archive, data_dir = tmp_path / "archive", tmp_path / "data"
    protocol = _cnn_protocol(tmp_path, data_dir)
    cells = grid.collect(archive, protocol, ["fig7"])
    tune = {c.extra["optimizee"]: c for c in cells["tune_cnn"]}
    fig7 = {c.extra["optimizee"]: c for c in cells["fig7"]}
    assert set(tune) == set(fig7) == {"mnist_cnn", "mnist_cnn_deep", "cifar_cnn"}
    for c in (tune["cifar_cnn"], fig7["cifar_cnn"]):
        assert c.state == "no data" and c.estimate_s == 0 and c.extra["dataset"] == "cifar10"
        assert "CIFAR-10" in c.detail and str(data_dir) in c.extra["no_data"]
    assert tune["mnist_cnn"].state == "pending" and tune["mnist_cnn"].estimate_s > 0
    # Fig. 7 on an MNIST CNN waits for that CNN's tuning only, not for CIFAR-10's.
    assert fig7["mnist_cnn"].state == "blocked"
    assert "tune_cnn (0/1 cells)" in fig7["mnist_cnn"].detail
    text = "\n".join(grid.status_lines(cells, protocol))
    assert "2 cell(s) not run here for want of their data" in text and "data_batch_1" in text
    # With the files in place the same cells are ordinary work.
    write_fake_cifar10(data_dir, n=10)
    cells = grid.collect(archive, _cnn_protocol(tmp_path, data_dir), ["tune_cnn"])
    assert {c.state for c in cells["tune_cnn"]} == {"pending"}


def test_a_run_logs_cells_without_data_once_and_starts_none(tmp_path):
    archive = tmp_path / "archive"
    protocol = _cnn_protocol(tmp_path, tmp_path / "empty",
                             tune_cnn=["optimizer=adam", "optimizee=cifar_cnn"])
    echoed = []
    for _ in range(2):
        counts = grid.run_grid(archive, protocol, hours=0.1, only=["tune_cnn"],
                               poll_s=0.1, echo=echoed.append)
        assert counts == {"finished": 0, "stopped": 0, "failed": 0}
    log = [json.loads(x) for x in (archive / "paper" / grid.GRID_LOG).read_text().splitlines()]
    assert [(r["outcome"], r["dataset"]) for r in log] == [("no data", "cifar10")]
    [cell] = grid.collect(archive, protocol, ["tune_cnn"])["tune_cnn"]
    assert log[0]["cell"] == cell.name and "optimizee=cifar_cnn" in cell.name
    assert echoed == [f"no data: {log[0]['cell']}"]
    assert grid.last_outcomes(archive / "paper")[log[0]["cell"]]["outcome"] == "no data"


def test_a_cell_another_process_works_in_is_running_and_not_started_again(tmp_path):
    from l2o_pipeline.records import lock_run_folder

    archive, protocol = tmp_path / "archive", grid.load_protocol(write_protocol(tmp_path))
    busy, free = grid.collect(archive, protocol, ["tune_activations"])["tune_activations"]
    free.folder.mkdir(parents=True)
    (free.folder / "DONE").write_text(json.dumps({"inputs": {"n_runs": free.n_runs}}))
    with lock_run_folder(busy.folder):  # as a cell started by another runner holds it
        cells = grid.collect(archive, protocol, ["tune_activations"])
        assert [c.state for c in cells["tune_activations"]] == ["running", "done"]
        assert f"running: pid {os.getpid()}" in cells["tune_activations"][0].detail
        text = "\n".join(grid.status_lines(cells, protocol))
        assert f"{busy.name}: running: pid {os.getpid()}" in text
        echoed = []
        counts = grid.run_grid(archive, protocol, hours=0.05, only=["tune_activations"],
                               poll_s=0.1, echo=echoed.append)
        assert counts == {"finished": 0, "stopped": 0, "failed": 0} and echoed == []
    # released (that process ended without finishing): an ordinary pending cell again
    assert [c.state for c in grid.collect(archive, protocol, ["tune_activations"])[
        "tune_activations"]] == ["pending", "done"]


def test_a_stopped_tuning_with_saved_passes_is_partial_and_costs_the_rest(tmp_path):
    from l2o_pipeline.records import TUNING_PASSES

    archive, protocol = tmp_path / "archive", grid.load_protocol(write_protocol(tmp_path))
    stopped, fresh = grid.collect(archive, protocol, ["tune_activations"])["tune_activations"]
    (stopped.folder / TUNING_PASSES).parent.mkdir(parents=True)
    saved_s = 0.25 * fresh.estimate_s
    (stopped.folder / TUNING_PASSES).write_text(json.dumps({"pass": {"rows": [],
                                                                      "seconds": saved_s}}))
    cells = grid.collect(archive, protocol, ["tune_activations"])
    stopped, fresh = cells["tune_activations"]
    assert (stopped.state, fresh.state) == ("partial", "pending")
    assert stopped.detail == "1 tuning pass(es) saved"
    assert stopped.estimate_s == pytest.approx(fresh.estimate_s - saved_s)
    assert f"{stopped.name}: 1 tuning pass(es) saved" in "\n".join(
        grid.status_lines(cells, protocol))


def test_a_cell_is_costed_from_finished_cells_of_its_own_optimizee_first(tmp_path):
    from l2o_pipeline.data import write_fake_cifar10

    archive, data_dir = tmp_path / "archive", tmp_path / "data"
    write_fake_cifar10(data_dir, n=10)
    protocol = _cnn_protocol(tmp_path, data_dir, tune_cnn=["optimizer=adam,sgd",
                                                           "tuning.lrs=[0.01]"])
    cells = {(c.extra["optimizee"], "sgd" if "optimizer=sgd" in c.name else "adam"): c
             for c in grid.collect(archive, protocol, ["tune_cnn"])["tune_cnn"]}
    seconds = {"mnist_cnn": 100.0, "mnist_cnn_deep": 300.0}  # the deeper CNN: 3x per step
    for optimizee, s in seconds.items():
        c = cells[optimizee, "adam"]
        (c.folder / "tune").mkdir(parents=True)
        block = {"_seconds": s, "table": [{"final_losses": [0.1] * c.n_runs}]}
        (c.folder / "tune" / "summary.json").write_text(json.dumps({"horizons": {"100": block}}))
        (c.folder / "DONE").write_text(json.dumps({"inputs": {"n_runs": c.n_runs}}))
    cells = {(c.extra["optimizee"], "sgd" if "optimizer=sgd" in c.name else "adam"): c
             for c in grid.collect(archive, protocol, ["tune_cnn"])["tune_cnn"]}
    assert cells["mnist_cnn", "sgd"].estimate_s == pytest.approx(100.0)
    assert cells["mnist_cnn_deep", "sgd"].estimate_s == pytest.approx(300.0)
    # CIFAR-10's CNN has no finished cell of its own: the sweep's median rate
    assert cells["cifar_cnn", "sgd"].estimate_s in (pytest.approx(100.0), pytest.approx(300.0))


def test_ready_cells_start_with_meta_training_then_what_completes_a_result_soonest(tmp_path):
    from l2o_pipeline.data import write_fake_cifar10

    data_dir = tmp_path / "data"
    write_fake_cifar10(data_dir, n=10)
    protocol = _cnn_protocol(tmp_path, data_dir, tune_cnn=["optimizer=adam,sgd,rmsprop",
                                                           "tuning.lrs=[0.01]"])
    cells = grid.collect(tmp_path / "archive", protocol, ["fig7"])
    tune = {(c.extra["optimizee"], c.overrides[0].split("=")[1]): c for c in cells["tune_cnn"]}
    fig7 = {c.extra["optimizee"]: c for c in cells["fig7"]}
    # As assessed mid-grid: the MNIST CNN tuned, CIFAR-10's one tuning short, the deep CNN's
    # three to go (each cheaper than CIFAR-10's last), and RNNprop still meta-training.
    for c in cells["tune_cnn"]:
        c.state, c.estimate_s = "pending", 60.0
    for key in [("mnist_cnn", o) for o in ("adam", "sgd", "rmsprop")] + [
            ("cifar_cnn", "sgd"), ("cifar_cnn", "rmsprop")]:
        tune[key].state, tune[key].estimate_s = "done", 0.0
    tune["cifar_cnn", "adam"].estimate_s = 100.0
    fig7["mnist_cnn"].state, fig7["mnist_cnn"].estimate_s = "pending", 200.0
    [meta] = cells["paper_meta_train"]
    meta.state = "partial"
    ready = [c for cs in cells.values() for c in cs if c.state in ("pending", "partial")]
    assert len(ready) == 6
    assert [c.name for c in grid.start_order(ready, cells)] == [c.name for c in [
        meta, tune["cifar_cnn", "adam"], *(tune["mnist_cnn_deep", o] for o in ("adam", "sgd",
                                                                                 "rmsprop")),
        fig7["mnist_cnn"]]]
    # Alone in a run (no dependant waits for it) a tuning goes by its own cost.
    only_tune = {"tune_cnn": cells["tune_cnn"]}
    assert grid.start_order([tune["cifar_cnn", "adam"], tune["mnist_cnn_deep", "sgd"]],
                            only_tune)[0] is tune["mnist_cnn_deep", "sgd"]


@pytest.mark.slow
def test_where_starts_only_the_matching_cells(tmp_path):
    archive, protocol = tmp_path / "archive", grid.load_protocol(write_protocol(tmp_path))
    started = []
    grid.run_grid(archive, protocol, hours=0.05, only=["tune_activations"], poll_s=0.1,
                  echo=started.append, where={"optimizer.lr": "0.0625"})
    assert [s.split()[1] for s in started if s.startswith("start:")] == [
        c.name for c in grid.collect(archive, protocol, ["tune_activations"])[
            "tune_activations"] if "optimizer.lr=0.0625" in c.name]


def test_where_matches_what_a_cell_does_not_contradict_and_refuses_matching_none(tmp_path):
    from l2o_pipeline.grid.run import matches

    cell = grid.Cell("fig7", ["experiment=rnnprop", "optimizee=mnist_cnn", "seed=0"],
                     tmp_path, "rnnprop", 0)
    assert matches(cell, {"optimizee": "mnist_cnn"}) and matches(cell, {"optimizer": "sgd"})
    assert not matches(cell, {"optimizee": "mnist_cnn_deep"})
    assert not matches(cell, {"optimizee": "mnist_cnn", "seed": "1"})
    job = subprocess.run([sys.executable, "-m", "l2o_pipeline.grid", "run", "--archive",
                          str(tmp_path / "new"), "--protocol", str(write_protocol(tmp_path)),
                          "--only", "tune_activations", "--hours", "1", "--where",
                          "optimizer=sgd"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert job.returncode == 2 and "Traceback" not in job.stderr
    assert "no cell of tune_activations matches --where optimizer=sgd" in job.stderr
    assert not (tmp_path / "new").exists()
