"""User errors on the console: one message naming the key or file, exit status 2, no traceback
(the traceback goes to the run's log file); bugs keep their traceback. Real subprocesses of
``python -m l2o_pipeline`` (about 3 s each): four cases run by default, the rest are slow."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2o_pipeline.checkpoint import CheckpointError
from l2o_pipeline.config import ConfigError
from l2o_pipeline.errors import USER_ERROR_EXIT, DatasetNotFoundError, user_error_message
from tests.conftest import mounted_tmpfs
from tests.test_checkpoint_safety import write_payload_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def l2o(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m l2o_pipeline debug=default ...`` as a user runs it (no HYDRA_FULL_ERROR);
    ``code`` runs instead of ``-m`` (to plant a bug)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    head = ["-c", code] if code else ["-m", "l2o_pipeline"]
    return subprocess.run([sys.executable, *head, *args, "debug=default"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, message: str, *also: str) -> str:
    """Exit status 2, no traceback, ``message`` exactly once, and each of ``also``."""
    console = proc.stdout + proc.stderr
    assert proc.returncode == USER_ERROR_EXIT, console[-3000:]
    assert "Traceback" not in console, console[-3000:]
    assert console.count(message) == 1, console[-3000:]
    for text in also:
        assert text in console, console[-3000:]
    return console


# (overrides, the message, other text the console must show); paths are under tmp_path
CASES = {
    "unknown_key": (["optimizer.foo=1"], "Could not override 'optimizer.foo'", "hidden_size"),
    "bad_value": (["stage=fly"], "stage='fly' is not valid", "meta_train"),
    "run_dir_is_a_file": (["hydra.run.dir={tmp}/a_file"], "{tmp}/a_file: File exists",
                          "hydra.run.dir"),
    "payload_checkpoint": (["stage=evaluate", "evaluation.checkpoint={tmp}/payload.pt"],
                           "{tmp}/payload.pt is not a checkpoint this project wrote",
                           "nothing in it ran"),
    "wrong_type": (["seed=abc"], "Error merging override seed=abc", "Integer"),
    "bad_grammar": (["optimizer.lr=[1"], "optimizer.lr=[1: ", "override_grammar"),
    "missing_group_option": (["optimizer=nope"], "Could not find 'optimizer/nope'",
                             "rnnprop"),
    "checkpoint_missing": (["stage=evaluate", "evaluation.checkpoint=/nonexistent.pt"],
                           "checkpoint '/nonexistent.pt' is neither a file", "rnnprop-mnist"),
    "checkpoint_corrupt": (["stage=evaluate", "evaluation.checkpoint={tmp}/corrupt.pt"],
                           "checkpoint {tmp}/corrupt.pt is truncated or corrupt"),
    "runs_dir_is_a_file": (["paths.runs_dir={tmp}/a_file"], "Not a directory",
                           "{tmp}/a_file/single"),
    "dataset_not_found": (["data.mnist_fallback=null", "optimizee.dataset=mnist",
                           "data.dir={tmp}/empty"], "MNIST train split not found",
                          "{tmp}/empty/MNIST/raw", "data.download=true"),
}
DEFAULT_CASES = ("unknown_key", "bad_value", "run_dir_is_a_file", "payload_checkpoint")
RAISED_IN_THE_RUN = ("bad_value", "payload_checkpoint", "checkpoint_missing", "checkpoint_corrupt",
                     "dataset_not_found")  # after Hydra made the run folder and its log


@pytest.mark.parametrize("case", [
    pytest.param(name, marks=() if name in DEFAULT_CASES else pytest.mark.slow)
    for name in CASES])
def test_user_error_is_one_message_without_traceback(tmp_path, case):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip file")
    marker = write_payload_checkpoint(tmp_path / "payload.pt", tmp_path)
    overrides, message, *also = CASES[case]

    def fill(text: str) -> str:
        return text.format(tmp=tmp_path)

    overrides = [fill(o) for o in overrides]
    if not any(o.startswith("paths.runs_dir=") for o in overrides):  # else its run folder
        overrides.insert(0, f"hydra.run.dir={tmp_path}/run")
    proc = l2o(*overrides)
    message = fill(message)
    assert_refused(proc, message, *map(fill, also))
    assert not marker.exists()
    if case in RAISED_IN_THE_RUN:  # the traceback is kept in the run's log
        log = (tmp_path / "run" / "l2o.log").read_text()
        assert "Traceback" in log and message in log


@pytest.mark.slow
def test_read_only_run_folder_is_one_message(tmp_path, read_only_dir):
    proc = l2o(f"hydra.run.dir={read_only_dir}/run")
    assert_refused(proc, f"{read_only_dir}/run: ", "hydra.run.dir")
    console = proc.stdout + proc.stderr
    assert "Read-only file system" in console or "Permission denied" in console


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write in: a read-only tmpfs as root (root ignores
    permissions), else a 0555 folder."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with mounted_tmpfs(folder, "ro,size=64k"):  # root ignores permissions, not a read-only fs
        yield folder


def test_multirun_reports_each_failed_job_runs_the_others_and_fails(tmp_path):
    sweep = tmp_path / "sweep"
    proc = l2o("-m", "optimizer=adam", "stage=fly,evaluate,fly2", f"hydra.sweep.dir={sweep}")
    console = proc.stdout + proc.stderr
    assert proc.returncode == USER_ERROR_EXIT, console[-3000:]
    assert "Traceback" not in console
    assert "stage='fly2' is not valid" in console  # the later job's error, as it happened
    # the first failure: as it happened, and once more at the end (Hydra re-raises it)
    assert console.count("stage='fly' is not valid") == 2
    assert len(list(sweep.glob("**/DONE"))) == 1  # the job between them ran to the end


def test_a_bug_keeps_its_traceback_on_the_console_once_and_in_the_log(tmp_path):
    code = ("import sys, l2o_pipeline.pipeline as p\n"
            "def run(cfg): raise RuntimeError('a planted bug')\n"
            "p.run = run\n"
            "from l2o_pipeline.main import main\n"
            "main()\n")
    proc = l2o(f"hydra.run.dir={tmp_path}/run", code=code)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console[-3000:]
    assert console.count("Traceback (most recent call last)") == 1, console[-3000:]
    assert "RuntimeError: a planted bug" in console
    log = (tmp_path / "run" / "l2o.log").read_text()
    assert "Traceback" in log and "a planted bug" in log


# ------------------------------------------------------- which errors are user errors


def _raised(exc: BaseException, cause: BaseException | None = None,
            context: BaseException | None = None) -> BaseException:
    """``exc`` as if raised ``from cause`` while handling ``context``."""
    exc.__cause__, exc.__context__ = cause, context or cause
    return exc


@pytest.mark.parametrize("exc, expected", [
    (ConfigError("stage='x' is not valid"), "stage='x' is not valid"),
    (CheckpointError("checkpoint a.pt does not exist"), "a.pt does not exist"),
    (DatasetNotFoundError("MNIST train split not found"), "MNIST train split not found"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/run"), "/ro/run: Read-only"),
    (OSError(errno.ENOSPC, "No space left on device"), "free some space"),
    (OSError(errno.EACCES, "Permission denied", "/x"), "/x: Permission denied"),
    (OSError(errno.ENOTDIR, "Not a directory", "/f/run"), "a part of the path is a file"),
    # torch.save on a full disk: a RuntimeError raised while handling the OSError
    (_raised(RuntimeError("unexpected pos 704 vs 598"),
             context=OSError(errno.ENOSPC, "No space left on device")), "No space left"),
    # Hydra's file log in a read-only folder: logging.config's ValueError from the OSError
    (_raised(ValueError("Unable to configure handler 'file'"),
             cause=PermissionError(errno.EACCES, "Permission denied", "/ro/l2o.log")),
     "/ro/l2o.log: Permission denied"),
])
def test_user_errors_are_recognised_and_worded(exc, expected):
    message = user_error_message(exc)
    assert message is not None and expected in message


@pytest.mark.parametrize("exc", [
    RuntimeError("a bug"),
    ValueError("a plain ValueError from our code"),
    KeyError("x"),
    FileNotFoundError(errno.ENOENT, "No such file or directory", "/a/missing/module/file"),
    OSError(errno.EEXIST, "File exists", "."),  # an existing folder: a race, not a user's file
    # a bug while handling a user error stays a bug
    _raised(TypeError("bug in a handler"), context=ConfigError("stage='x' is not valid")),
])
def test_bugs_are_not_user_errors(exc):
    assert user_error_message(exc) is None


@pytest.mark.parametrize("multirun", [False, True])
@pytest.mark.parametrize("exc, on_console", [
    (ConfigError("stage='x' is not valid"), "stage='x' is not valid"),
    (RuntimeError("a planted bug"), "Traceback"),
])
def test_a_failed_job_is_logged_to_the_file_and_on_the_console_only_in_a_multirun(
        tmp_path, capsys, multirun, exc, on_console):
    """A single run's console gets the error once, from main(); a multirun's as it happens."""
    from l2o_pipeline import main

    root = logging.getLogger()
    file_handler = logging.FileHandler(tmp_path / "job.log")
    console = logging.StreamHandler(sys.stderr)
    root.addHandler(file_handler)
    root.addHandler(console)
    try:
        try:
            raise exc
        except Exception as raised:
            main._report_job_failure(raised, multirun=multirun)
    finally:
        root.removeHandler(file_handler)
        root.removeHandler(console)
        file_handler.close()
    log = (tmp_path / "job.log").read_text()
    assert "the run failed" in log and "Traceback" in log and str(exc) in log
    err = capsys.readouterr().err
    assert (on_console in err) is multirun and (str(exc) in err) is multirun


def test_torch_full_disk_error_is_a_user_error(tmp_path):
    """The real thing behind the torch.save case above, where the test can mount a tiny disk."""
    with mounted_tmpfs(tmp_path / "disk", "size=16k") as disk:
        with pytest.raises(RuntimeError) as info, open(disk / "state.pt", "wb") as f:
            torch.save({"x": torch.zeros(100_000)}, f)  # as the checkpoint writer does
        assert "No space left on device" in user_error_message(info.value)
