"""Records that never tear, one writer per run folder, resumes without duplicated metrics,
results before plots, Ctrl-C, and a full disk."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from l2o_pipeline import records
from l2o_pipeline.meta import load_training_state
from l2o_pipeline.pipeline import run
from l2o_pipeline.records import (
    RecordError,
    RecordWriteError,
    RunLockedError,
    lock_run_folder,
    read_json_record,
    write_json,
)
from l2o_pipeline.tracking import read_jsonl
from tests.conftest import mounted_tmpfs
from tests.test_entrypoint import DEBUG, ROOT, cli, final_params

# The debug meta-training on the quadratic: a few iterations in a second or two.
META = [*DEBUG, "stage=meta_train", "optimizee=quadratic"]


def loss_steps(out: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "meta/loss" in r]


def snapshot(folder: Path, skip=(".hydra",)) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (Hydra's own files left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not set(p.relative_to(folder).parts) & set(skip)}


# ----------------------------------------------------------------------------- the writer


def test_json_records_are_strict_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "r.json"
    write_json(path, {"nan": math.nan, "inf": -math.inf, "t": torch.tensor(0.5),
                      "p": tmp_path, "ok": [1, 2]})
    assert json.loads(path.read_text()) == {"nan": None, "inf": None, "t": 0.5,
                                            "p": str(tmp_path), "ok": [1, 2]}

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(records.os, "fsync", full_disk)
    with pytest.raises(RecordWriteError) as err:
        write_json(path, {"new": 1})
    assert err.value.errno == errno.ENOSPC
    assert str(path) in str(err.value) and "disk is full" in str(err.value)
    assert json.loads(path.read_text())["ok"] == [1, 2]  # the old record, whole
    assert os.listdir(path.parent) == ["r.json"]  # and no temporary file left


@pytest.mark.parametrize("content, reason", [(b"", "empty or torn"),
                                             (b'{"metric": 0.', "torn or not JSON"),
                                             (b"[1, 2]", "not an object")])
def test_an_unreadable_record_is_named_with_what_to_do(tmp_path, content, reason):
    path = tmp_path / "DONE"
    path.write_bytes(content)
    with pytest.raises(RecordError, match=reason) as err:
        read_json_record(path, "the cell's DONE marker", "delete it to run the cell again")
    assert str(path) in str(err.value) and "delete it to run the cell again" in str(err.value)


def test_a_torn_done_refuses_with_its_name_and_changes_nothing(make_cfg, tmp_path):
    cfg = make_cfg(*META)
    run(cfg)
    out = tmp_path / "run"
    (out / "DONE").write_bytes(b"")  # what a full disk left before DONE was atomic
    before = snapshot(out, skip=(".hydra", ".lock"))
    with pytest.raises(RecordError, match=r"DONE is unreadable .*empty or torn.*delete it to "
                                          "run the cell again"):
        run(cfg)
    assert snapshot(out, skip=(".hydra", ".lock")) == before
    (out / "DONE").unlink()
    assert math.isfinite(run(cfg)) and read_json_record(out / "DONE", "", "")["iterations"] == 4


def test_a_torn_tuning_summary_is_named_not_skipped(make_cfg, tmp_path):
    tune = tmp_path / "tune"
    cell = tune / "optimizer=adam,optimizer.lr=0.01" / "seed_0" / "eval"
    cell.mkdir(parents=True)
    (cell / "summary.json").write_text('{"task": "synthetic-mnist-mlp-sigmoid-l1", "hori')
    cfg = make_cfg(*DEBUG, "stage=evaluate", "optimizer=sgd", "optimizer.lr=0.1",
                   "evaluation.baselines.adam=tuned", f"evaluation.tuning_dir={tune}")
    with pytest.raises(RecordError, match=r"summary\.json is unreadable \(a tuning cell's"):
        run(cfg)
    assert not (tmp_path / "run" / "eval").exists()
    # A numeric rate does not need the tuning sweep: its damage does not block the run.
    run(make_cfg(*DEBUG, "stage=evaluate", "optimizer=sgd", "optimizer.lr=0.1",
                 f"evaluation.tuning_dir={tune}"))


def test_leftover_temporary_files_are_removed_at_the_next_start(make_cfg, tmp_path):
    out = tmp_path / "run"
    leftovers = [out / ".state.pt.4242.tmp", out / "checkpoints" / ".iter_0000002.pt.17.tmp",
                 out / "eval" / ".summary.json.99.tmp"]
    mine = [out / "notes.tmp", out / "checkpoints" / "keep.pt.tmp"]  # not the helper's
    for path in leftovers + mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a write")
    run(make_cfg(*META))
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in mine)


# ----------------------------------------------------------------------------- one writer


HOLD_LOCK = """
import sys, time
from pathlib import Path
from l2o_pipeline.records import lock_run_folder
with lock_run_folder(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(folder: Path, seconds: float = 300) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock until it ends (or is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), str(seconds)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_a_run_folder_refuses_at_once_and_writes_nothing(make_cfg,
                                                                             tmp_path):
    out = tmp_path / "run"
    run(make_cfg(*META))
    holder = hold_lock(out)
    before = snapshot(out)
    try:
        start = time.monotonic()
        proc = cli(*META, "meta_train.n_iterations=8", f"hydra.run.dir={out}", timeout=300)
        elapsed = time.monotonic() - start
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert f"{out} is in use by another process (pid {holder.pid} on host " in output
        assert "lock_timeout_s" in output
        assert elapsed < 60  # the interpreter's start; no training (8 iterations) was done
        # Nothing of the refused process in the folder (Hydra's .hydra/ and log are Hydra's).
        assert snapshot(out, skip=(".hydra", "l2o.log")) == before
        # Waiting is asked for: it waits, then refuses with the same message.
        start = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid} .*after waiting 1 s"):
            run(make_cfg(*META, "meta_train.n_iterations=8", "lock_timeout_s=1"))
        assert time.monotonic() - start >= 1
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock
        holder.wait()
    run(make_cfg(*META, "meta_train.n_iterations=6"))
    assert loss_steps(out) == [1, 2, 3, 4, 5, 6]


def test_a_waiting_run_starts_when_the_holder_ends(make_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    holder = hold_lock(out, seconds=2)
    try:
        with caplog.at_level(logging.INFO, logger="l2o_pipeline.records"):
            run(make_cfg(*META, "lock_timeout_s=120"))
    finally:
        holder.kill()
        holder.wait()
    assert f"is in use by pid {holder.pid} on host" in caplog.text
    assert "waiting up to 120 s" in caplog.text
    assert loss_steps(out) == [1, 2, 3, 4]
    info = json.loads((out / ".lock").read_text())
    assert info["pid"] == os.getpid()  # the last holder, for the next refusal's message


def test_the_lock_is_released_when_its_block_ends(tmp_path):
    with lock_run_folder(tmp_path):
        with pytest.raises(RunLockedError):  # a second descriptor is a second holder
            with lock_run_folder(tmp_path):
                pass
    with lock_run_folder(tmp_path):
        pass


# ----------------------------------------------------------------------------- resume


def test_resuming_from_the_previous_state_leaves_no_duplicated_metrics(make_cfg, tmp_path):
    reference = tmp_path / "reference"
    run(make_cfg(*META, "meta_train.n_iterations=6", output_dir=reference))
    out = tmp_path / "run"
    run(make_cfg(*META, "meta_train.n_iterations=3"))  # states of iterations 3 and 2
    (out / "state.pt").write_bytes((out / "state.pt").read_bytes()[:200])  # torn
    assert load_training_state(out)["progress"]["iteration"] == 2  # the prev fallback
    run(make_cfg(*META, "meta_train.n_iterations=6"))
    assert loss_steps(out) == [1, 2, 3, 4, 5, 6]
    selections = [r["step"] for r in read_jsonl(out / "metrics.jsonl")
                  if "meta/selection_score" in r]
    assert selections == sorted(set(selections))
    a, b = final_params(reference), final_params(out)
    assert all(torch.equal(a[k], b[k]) for k in a)  # iteration 2 onwards, exactly again


def test_both_states_unusable_restarts_loudly_with_the_old_run_moved_aside(make_cfg, tmp_path,
                                                                          caplog):
    out = tmp_path / "run"
    run(make_cfg(*META, "meta_train.n_iterations=3"))
    old_metrics = (out / "metrics.jsonl").read_bytes()
    for name in ("state.pt", "state.prev.pt"):
        (out / name).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        run(make_cfg(*META))
    warning = [r for r in caplog.records if "both training states" in r.getMessage()]
    assert warning and warning[0].levelno == logging.WARNING
    assert "restarts from iteration 0" in warning[0].getMessage()
    (moved,) = (out / "discarded").iterdir()
    assert (moved / "state.pt").read_bytes() == b"garbage"
    assert (moved / "state.prev.pt").read_bytes() == b"garbage"
    assert (moved / "metrics.jsonl").read_bytes() == old_metrics
    assert (moved / "checkpoints").is_dir() and (moved / "best.pt").is_file()
    assert loss_steps(out) == [1, 2, 3, 4]  # the new run's lines only
    assert load_training_state(out)["progress"]["iteration"] == 4


def test_a_run_killed_before_its_first_state_logs_its_steps_once(make_cfg, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "meta/loss": 9.0}\n')  # then killed
    run(make_cfg(*META))
    assert loss_steps(out) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- results first


def test_an_all_nan_evaluation_keeps_its_summary_and_done(make_cfg, tmp_path, monkeypatch,
                                                          caplog):
    from l2o_pipeline import stages

    real = stages._run_evaluation  # the evaluation engine the stage uses

    def diverging(*args, **kwargs):
        results = real(*args, **kwargs)
        for r in results.values():
            r.curves.fill_(math.nan)
            r.final_losses.fill_(math.nan)
        return results

    monkeypatch.setattr(stages, "_run_evaluation", diverging)
    cfg = make_cfg(*DEBUG, "stage=evaluate", "optimizer=sgd", "optimizer.lr=0.5")
    with caplog.at_level(logging.WARNING):
        metric = run(cfg)
    out = tmp_path / "run"
    assert math.isnan(metric)
    block = read_json_record(out / "eval" / "summary.json", "", "")["horizons"]["10"]
    assert block["sgd"]["final_loss_mean"] is None and block["sgd"]["n_diverged"] == 2
    assert read_json_record(out / "DONE", "", "")["metric"] is None
    assert (out / "eval" / "loss_curves_10.png").stat().st_size > 1000
    assert "could not plot" not in caplog.text
    assert math.isnan(run(cfg))  # the finished cell is skipped, its NaN metric read back


def test_a_failing_plot_never_loses_the_results(make_cfg, tmp_path, monkeypatch, caplog):
    from l2o_pipeline import plots

    def broken(*args, **kwargs):
        raise ValueError("no display")

    monkeypatch.setattr(plots, "plot_loss_curves", broken)
    with caplog.at_level(logging.WARNING):
        metric = run(make_cfg(*DEBUG, "stage=evaluate", "optimizer=sgd", "optimizer.lr=0.5"))
    out = tmp_path / "run"
    summary = read_json_record(out / "eval" / "summary.json", "", "")
    assert summary["horizons"]["10"]["sgd"]["final_loss_mean"] == pytest.approx(metric)
    assert (out / "eval" / "curves_10.pt").is_file() and (out / "DONE").is_file()
    assert "could not plot the loss curves at 10 steps (ValueError: no display)" in caplog.text


def test_non_finite_curves_plot_as_diverged(tmp_path):
    import matplotlib.pyplot as plt

    from l2o_pipeline.plots import plot_loss_curves

    part = torch.rand(3, 10) + 0.1
    part[:, 6:] = math.inf
    shown = {}
    close = plt.close

    def keep_legend(fig):
        shown["labels"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        close(fig)

    plt.close = keep_legend
    try:
        plot_loss_curves({"nan": torch.full((2, 10), math.nan), "part": part,
                          "inf": torch.full((2, 10), math.inf)}, tmp_path / "a.png", "t")
        assert shown["labels"] == ["nan: diverged", "part", "inf: diverged"]
        plot_loss_curves({"nan": torch.full((2, 10), math.nan)}, tmp_path / "b.png", "t")
    finally:
        plt.close = close
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_saves_the_state_exits_130_and_says_how_to_resume(make_cfg, tmp_path):
    out = tmp_path / "run"
    args = [*META, "meta_train.checkpoint_every=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "l2o_pipeline", *args,
                             "meta_train.n_iterations=200", f"hydra.run.dir={out}"], cwd=ROOT,
                            env={**os.environ, "HYDRA_FULL_ERROR": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (out / "state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    hint = f"to resume, run the same command again with hydra.run.dir={out}"
    assert output.count(hint) == 1 and "stopped by SIGINT at iteration" in output
    state = load_training_state(out)
    stopped = state["progress"]["iteration"]
    assert 1 <= stopped < 200 and not (out / "final.pt").exists()
    # Resumed (here with a nearer target, to keep the test short): no step lost or repeated.
    run(make_cfg(*args, f"meta_train.n_iterations={stopped + 2}", output_dir=out))
    assert loss_steps(out) == list(range(1, stopped + 3))


# ----------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and the right to mount), unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "disk", "size=2m") as disk:
        yield disk


def test_a_full_disk_tears_no_record_and_a_rerun_after_freeing_space_works(make_cfg,
                                                                          small_disk):
    out = small_disk / "run"
    run(make_cfg(*META, "meta_train.n_iterations=2", output_dir=out))
    free = os.statvfs(small_disk)
    filler = small_disk / "filler"
    # What is left: the config and metrics fit, a checkpoint (~32 KB) does not.
    filler.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 16 * 1024))
    with pytest.raises(OSError) as err:
        run(make_cfg(*META, "meta_train.n_iterations=6", output_dir=out))
    assert err.value.errno == errno.ENOSPC
    message = str(err.value)
    assert "disk is full" in message and f"could not write {out}/" in message
    assert not (out / "DONE").exists() or read_json_record(out / "DONE", "", "")
    resumable = load_training_state(out)["progress"]["iteration"]
    assert resumable >= 2
    assert not [p for p in out.rglob("*.tmp")]
    filler.unlink()
    run(make_cfg(*META, "meta_train.n_iterations=6", output_dir=out))
    assert read_json_record(out / "DONE", "", "")["iterations"] == 6
    assert loss_steps(out) == [1, 2, 3, 4, 5, 6]
