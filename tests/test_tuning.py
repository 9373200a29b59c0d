"""stage=tune: the whole rate grid per cell, its record, the protocols, and who reads it."""

import json
import math

import pytest
import torch

from l2o_pipeline import report
from l2o_pipeline.baselines import resolve_lr, scan_tuning
from l2o_pipeline.config import ConfigError, validate_config
from l2o_pipeline.data import synthetic_dataset
from l2o_pipeline.evaluate import evaluate
from l2o_pipeline.optimizees import MLPTask, QuadraticTask
from l2o_pipeline.optimizers import HAND_DESIGNED
from l2o_pipeline.pipeline import run
from l2o_pipeline.tuning import best_rate, tune_learning_rate

LRS = [0.5, 0.1, 0.03, 0.01, 0.001]


@pytest.fixture(scope="module")
def task():
    return MLPTask(synthetic_dataset("synthetic_mnist", n=200, seed=0), hidden=4, batch_size=8)


def test_full_protocol_table_equals_separate_evaluations(task):
    adam = HAND_DESIGNED["adam"](lr=0.01)
    block = tune_learning_rate(task, adam, LRS, 5, 3, seed=2)
    assert [r["lr"] for r in block["table"]] == LRS and "coarse_table" not in block
    assert block["tuned_lr"] == best_rate(block["table"])["lr"]
    assert block["tuned_loss"] == min(r["final_loss_mean"] for r in block["table"])
    for row in block["table"]:
        ref = evaluate(task, {"a": adam.with_lr(row["lr"])}, 5, 3, seed=2)["a"]
        assert row["final_losses"] == pytest.approx(ref.final_losses.tolist(), rel=1e-5)
        assert row["n_runs"] == 3 and row["final_loss_mean"] == pytest.approx(
            ref.summary()["final_loss_mean"], rel=1e-5)


def test_coarse_to_fine_runs_every_rate_on_few_runs_then_the_best_on_all(task):
    sgd = HAND_DESIGNED["sgd"](lr=0.1)
    block = tune_learning_rate(task, sgd, LRS, 5, 4, seed=3, protocol="coarse_to_fine",
                               coarse_runs=2, top_k=2)
    coarse, table = block["coarse_table"], block["table"]
    assert [r["lr"] for r in coarse] == LRS and all(r["n_runs"] == 2 for r in coarse)
    kept = sorted(coarse, key=lambda r: r["final_loss_mean"])[:2]
    assert sorted(r["lr"] for r in table) == sorted(r["lr"] for r in kept)
    assert all(r["n_runs"] == 4 for r in table)
    assert block["tuned_lr"] in [r["lr"] for r in table]
    for row in table:  # the coarse runs are the first runs of the full pass
        prefix = next(r for r in coarse if r["lr"] == row["lr"])["final_losses"]
        assert row["final_losses"][:2] == pytest.approx(prefix, rel=1e-6)


def test_a_diverged_rate_is_never_tuned():
    quadratic = QuadraticTask(dim=3, n_problems=4)
    block = tune_learning_rate(quadratic, HAND_DESIGNED["sgd"](lr=1.0), [1e30, 0.1], 8, 2)
    assert block["table"][0]["n_diverged"] == 2 and block["tuned_lr"] == 0.1
    assert best_rate([{"final_loss_mean": math.nan}, {"final_loss_mean": 5.0}])[
        "final_loss_mean"] == 5.0


def test_bad_protocol_settings_fail_clearly(task):
    sgd = HAND_DESIGNED["sgd"](lr=0.1)
    with pytest.raises(ValueError, match="protocol"):
        tune_learning_rate(task, sgd, LRS, 2, 2, protocol="bayes")
    with pytest.raises(ValueError, match="coarse_runs"):
        tune_learning_rate(task, sgd, LRS, 2, 2, protocol="coarse_to_fine", coarse_runs=2)


TUNE = ["debug=default", "stage=tune", "optimizer=adam", "tuning.lrs=[0.3,0.03,0.003]",
        "evaluation.n_runs=3"]


def test_tune_stage_writes_one_record_that_tuned_baselines_read(make_cfg, tmp_path):
    cell = tmp_path / "runs" / "paper" / "tune" / "x" / "optimizer=adam" / "seed_0"
    metric = run(make_cfg(*TUNE, output_dir=cell))
    record = json.loads((cell / "tune" / "summary.json").read_text())
    assert record["kind"] == "tuning" and record["protocol"] == "full"
    assert record["optimizer"] == "adam" and record["task"] == "synthetic-mnist-mlp-sigmoid-l1"
    block = record["horizons"]["10"]
    assert [r["lr"] for r in block["table"]] == [0.3, 0.03, 0.003]
    assert all(len(r["final_losses"]) == 3 for r in block["table"])
    assert metric == pytest.approx(block["tuned_loss"])
    assert not (cell / "eval").exists()
    # "tuned" reads the record: the same rate, and says where it came from and how
    tuning = scan_tuning(tmp_path / "runs" / "paper" / "tune")
    lr, source = resolve_lr("adam", "tuned", record["task"], 10, tuning=tuning)
    assert lr == block["tuned_lr"] and str(cell) in source and "(full)" in source
    # relaunching skips the finished cell; changing what it depends on reruns it
    stamp = (cell / "tune" / "summary.json").stat().st_mtime_ns
    assert run(make_cfg(*TUNE, output_dir=cell)) == pytest.approx(metric)
    assert (cell / "tune" / "summary.json").stat().st_mtime_ns == stamp
    run(make_cfg(*TUNE[:-1], "evaluation.n_runs=2", output_dir=cell))
    again = json.loads((cell / "tune" / "summary.json").read_text())
    assert again["n_runs"] == 2 and len(again["horizons"]["10"]["table"][0]["final_losses"]) == 2


def test_an_evaluation_uses_the_tuned_rate_of_the_record(make_cfg, tmp_path):
    tune_dir = tmp_path / "runs" / "paper" / "tune"
    run(make_cfg(*TUNE, "tuning.protocol=coarse_to_fine", "tuning.coarse_runs=1",
                 "tuning.top_k=1", output_dir=tune_dir / "x" / "seed_0"))
    record = json.loads((tune_dir / "x" / "seed_0" / "tune" / "summary.json").read_text())
    assert record["protocol"] == "coarse_to_fine"
    assert record["protocol_settings"] == {"coarse_runs": 1, "top_k": 1}
    assert len(record["horizons"]["10"]["table"]) == 1
    out = tmp_path / "eval"
    run(make_cfg("debug=default", "stage=evaluate", "optimizer=sgd", "optimizer.lr=0.1",
                 "evaluation.baselines.adam=tuned", output_dir=out))
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["horizons"]["10"]["adam"]["lr"] == record["horizons"]["10"]["tuned_lr"]


@pytest.mark.parametrize("overrides, key", [
    (["optimizer=rnnprop"], "stage=tune"),
    (["tuning.protocol=bayes"], "tuning.protocol"),
    (["tuning.lrs=[0.1,0]"], "tuning.lrs"),
    (["tuning.lrs=[]"], "tuning.lrs"),
    (["tuning.protocol=coarse_to_fine", "tuning.coarse_runs=3"], "tuning.coarse_runs"),
    (["tuning.protocol=coarse_to_fine", "tuning.coarse_runs=1", "tuning.top_k=3"],
     "tuning.top_k"),
])
def test_bad_tuning_settings_name_the_key(make_cfg, overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate_config(make_cfg(*TUNE, *overrides))


def tuning_record(root, name, task, protocol, table, coarse=()):
    cell = root / "tune" / "activations" / f"optimizer={name}" / "seed_0"
    (cell / "tune").mkdir(parents=True)
    rows = [{"lr": lr, "final_loss_mean": m, "final_loss_std": 0.01, "final_loss_median": m,
             "n_runs": n, "n_diverged": 0, "final_losses": [m] * n} for lr, m, n in table]
    coarse_rows = [{"lr": lr, "final_loss_mean": m, "final_loss_std": 0.01, "n_runs": n,
                    "n_diverged": 0, "final_losses": [m] * n} for lr, m, n in coarse]
    best = min(rows, key=lambda r: r["final_loss_mean"])
    block = {"tuned_lr": best["lr"], "tuned_loss": best["final_loss_mean"], "table": rows,
             "_seconds": 5.0} | ({"coarse_table": coarse_rows} if coarse_rows else {})
    record = {"kind": "tuning", "optimizer": name, "task": task, "protocol": protocol,
              "n_runs": 4, "final_loss": "average_over_seen", "evaluation_seed": 1000,
              "horizons": {"100": block}}
    (cell / "tune" / "summary.json").write_text(json.dumps(record))
    (cell / "DONE").write_text("{}")
    return cell


def test_report_reads_tuning_records_and_names_the_protocol(tmp_path):
    root = tmp_path / "paper"
    task = "mnist-mlp-elu-l1"
    # coarse pass: 0.1 looked best on 2 runs but is not among the rates run in full
    tuning_record(root, "adam", task, "coarse_to_fine",
                  table=[(0.01, 0.30, 4), (0.03, 0.35, 4)],
                  coarse=[(0.1, 0.2, 2), (0.01, 0.31, 2), (0.03, 0.36, 2), (1.0, 9.0, 2)])
    tuning_record(root, "sgd", task, "full", table=[(0.5, 0.4, 4), (0.1, 0.6, 4)])
    idx = report.RunIndex(root).scan()
    adam = idx.tuned("adam", task, 100)
    assert (adam.lr, adam.n_runs, adam.mean) == (0.01, 4, 0.30)  # the record's, not 0.1
    assert set(idx.hand_by_lr("adam", task, 100)) == {0.1, 0.01, 0.03, 1.0}
    assert idx.hand_by_lr("adam", task, 100)[0.01].n_runs == 4  # full pass supersedes coarse
    assert idx.tuned("sgd", task, 100).lr == 0.5
    res = report.build_report(root, tmp_path / "docs", figures=False)
    md = (tmp_path / "docs" / "report.md").read_text()
    assert "| coarse_to_fine |" in md and "| full |" in md
    assert res["settings"]["wall_time_s"]["tuning"] == pytest.approx(10.0)
    assert {r["protocol"] for r in res["settings"]["tuned_rates"]} == {"coarse_to_fine", "full"}
    assert res["settings"]["sweeps"]["tune/activations"]["seeds"] == [0]  # its folder's


def test_scan_tuning_reads_records_and_old_per_rate_cells(tmp_path):
    root = tmp_path / "tune"
    tuning_record(tmp_path, "adam", "mnist-mlp-tanh-l1", "full", table=[(0.01, 0.3, 4)])
    old = root / "old" / "optimizer=adam,optimizer.lr=0.02" / "seed_0" / "eval"
    old.mkdir(parents=True)
    old.joinpath("summary.json").write_text(json.dumps(
        {"task": "mnist-mlp-tanh-l1", "optimizer": "adam",
         "horizons": {"100": {"adam": {"lr": 0.02, "final_loss_mean": 0.25}}}}))
    best = scan_tuning(root)["mnist-mlp-tanh-l1@100"]["adam"]
    assert (best["lr"], best["protocol"]) == (0.02, "one cell per rate")  # the lower loss
    torch.testing.assert_close(torch.tensor(best["loss"]), torch.tensor(0.25))


def test_a_stopped_tuning_resumes_from_its_last_finished_pass(make_cfg, tmp_path, monkeypatch):
    import l2o_pipeline.tuning as tuning
    from l2o_pipeline.records import TUNING_PASSES

    coarse = [*TUNE, "tuning.protocol=coarse_to_fine", "tuning.coarse_runs=1", "tuning.top_k=2"]
    reference = tmp_path / "reference"
    run(make_cfg(*coarse, output_dir=reference))
    assert not (reference / TUNING_PASSES).exists()  # the record holds every pass
    passes = []  # (rates, runs) of each pass evaluated
    real = tuning.evaluate_batched

    def evaluate_then_stop(task, grid, n_steps, n_runs, **kw):
        passes.append((len(grid), n_runs))
        if len(passes) == 2:
            raise KeyboardInterrupt  # as a SIGTERM in the second pass
        return real(task, grid, n_steps, n_runs, **kw)

    cell = tmp_path / "cell"
    monkeypatch.setattr(tuning, "evaluate_batched", evaluate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*coarse, output_dir=cell))
    assert not (cell / "DONE").exists()
    assert len(json.loads((cell / TUNING_PASSES).read_text())) == 1  # the coarse pass
    passes.clear()
    monkeypatch.setattr(tuning, "evaluate_batched",
                        lambda task, grid, n_steps, n_runs, **kw: passes.append(
                            (len(grid), n_runs)) or real(task, grid, n_steps, n_runs, **kw))
    run(make_cfg(*coarse, output_dir=cell))
    assert passes == [(2, 3)]  # only the fine pass ran again
    assert (cell / "DONE").exists() and not (cell / TUNING_PASSES).exists()
    record, expected = (json.loads((c / "tune" / "summary.json").read_text())["horizons"]["10"]
                        for c in (cell, reference))
    for key in ("tuned_lr", "tuned_loss", "table", "coarse_table"):
        assert record[key] == expected[key]
    # a pass saved under another fingerprint (another computation) is not taken
    saved = tuning.SavedPasses(tmp_path / "other", "fingerprint-a")
    saved.put(saved.key(horizon=10, lrs=[1.0]), [{"lr": 1.0}], 1.0)
    for fingerprint, found in (("fingerprint-a", [{"lr": 1.0}]), ("fingerprint-b", None)):
        again = tuning.SavedPasses(tmp_path / "other", fingerprint)
        assert (again.get(again.key(horizon=10, lrs=[1.0])) or {}).get("rows") == found
