"""The private SLURM cluster works end to end: sbatch, sacct, submitit, real preemption.

Needs the Debian packages (``scripts/slurm_local.sh install``) and root; skipped otherwise.
Run: ``python -m pytest tests/slurm -m slurm``.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

pytestmark = pytest.mark.slurm

# The jobs unpickle the callables below in a fresh interpreter where this test module is not
# importable (pytest put its directory on sys.path only here), so ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _mul(a: int, b: int) -> dict:
    return {"product": a * b, "job_id": os.environ.get("SLURM_JOB_ID")}


class _Counter(submitit.helpers.Checkpointable):
    """Counts to n; the default checkpoint() requeues it with its current state."""

    def __init__(self) -> None:
        self.i = 0
        self.starts: list[tuple[str, int]] = []

    def __call__(self, n: int, dt: float) -> dict:
        self.starts.append((os.environ.get("SLURM_RESTART_COUNT", "0"), self.i))
        while self.i < n:
            self.i += 1
            time.sleep(dt)
        return {"i": self.i, "starts": self.starts}


def test_partitions(slurm_cluster):
    out = slurm_cluster.run("sinfo", "-h", "-o", "%P %a %T")
    parts = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert set(parts) == {"debug*", "low", "high"}
    assert all(v[0] == "up" and v[1] == "idle" for v in parts.values()), out
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)


def test_sbatch_and_sacct(slurm_cluster, tmp_path):
    out = tmp_path / "job.out"
    t0 = time.monotonic()
    job_id = slurm_cluster.sbatch("-o", str(out), "--wrap", "echo hello from $SLURM_JOB_ID")
    slurm_cluster.wait_done(job_id, timeout=30)
    elapsed = time.monotonic() - t0
    assert out.read_text().strip() == f"hello from {job_id}"
    assert slurm_cluster.wait_sacct_final(job_id) == ["COMPLETED"]
    assert elapsed < 15, f"submit -> finished took {elapsed:.1f} s"


def test_submitit_result(slurm_cluster, tmp_path):
    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    ex.update_parameters(slurm_partition="debug", timeout_min=5, cpus_per_task=1, mem_gb=1)
    job = ex.submit(_mul, 6, 7)
    assert job.result() == {"product": 42, "job_id": job.job_id}
    assert slurm_cluster.wait_sacct_final(job.job_id) == ["COMPLETED"]


def test_partition_preemption_requeues(slurm_cluster, tmp_path):
    """A `high` job preempts a running `debug` job, which checkpoints, requeues and resumes."""
    cpus = int(slurm_cluster.run("sinfo", "-h", "-N", "-o", "%c").split()[0])
    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    # timeout_min=60: USR2 a few s into the run counts as preemption, not as a timeout
    ex.update_parameters(slurm_partition="debug", timeout_min=60, cpus_per_task=cpus, mem_gb=1)
    low = ex.submit(_Counter(), 24, 0.25)  # ~6 s of work on all the node's CPUs
    slurm_cluster.wait_state(low.job_id, {"RUNNING"}, timeout=30)
    time.sleep(2)
    high = slurm_cluster.sbatch("-p", "high", "-c", "1", "-o", "/dev/null", "--wrap", "sleep 1")

    res = low.result()  # requeue -> restart takes ~6 s (cred_expire=5)
    assert res["i"] == 24
    assert len(res["starts"]) == 2, res
    (r0, i0), (r1, i1) = res["starts"]
    assert (r0, i0, r1) == ("0", 0, "1"), res
    assert 0 < i1 < 24, f"second start did not resume from the checkpoint: {res}"

    assert slurm_cluster.wait_sacct_final(high) == ["COMPLETED"]
    assert slurm_cluster.wait_sacct_final(low.job_id) == ["REQUEUED", "COMPLETED"]
    err = "".join(p.read_text() for p in (tmp_path / low.job_id).glob("*_log.err"))
    assert "this job is preempted" in err, err[-2000:]
