"""Session-scoped pytest fixture: a private single-node SLURM cluster (scripts/slurm_local.sh).

Use it from a conftest.py::

    from slurm_cluster import slurm_cluster  # noqa: F401

and request ``slurm_cluster`` in a test (mark those tests ``@pytest.mark.slurm``). The fixture
skips when the Debian packages are missing (``scripts/slurm_local.sh install``) or when not
running as root; otherwise it starts munged, MariaDB, slurmdbd, slurmctld and slurmd in a fresh
directory under ``$SLURM_TEST_BASE`` (default ``/tmp``), sets ``SLURM_CONF`` in ``os.environ``
for the session (sbatch/squeue/sacct, submitit and the Hydra submitit launcher all read it) and
stops exactly those daemons at the end. ``L2O_SLURM_KEEP=1`` keeps the directory (logs in
``<dir>/log``) after the session.

Partitions: ``debug`` (default, preemptible), ``low`` (the same) and ``high`` (preempts them).
Job ids restart at 1 in every fresh cluster: give submitit a fresh folder per test
(``tmp_path / "%j"``) so results of an earlier cluster's job 1 are never picked up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
REQUIRED = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct")
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED",
}  # fmt: skip


@dataclass
class SlurmCluster:
    """A running private cluster: its directory, slurm.conf and an environment for subprocesses."""

    dir: Path
    conf: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; return its stdout."""
        res = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} -> rc={res.returncode}: {res.stderr.strip()}")
        return res.stdout

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable ARGS``; return the job id."""
        return self.run("sbatch", "--parsable", *args).strip().split(";")[0]

    def squeue_state(self, job_id: str) -> str:
        """The job's squeue state (PENDING, RUNNING, ...) or "" once it left the queue."""
        out = self.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False)
        return out.strip().splitlines()[0] if out.strip() else ""

    def wait_state(self, job_id: str, states: set[str], timeout: float = 30) -> str:
        """Poll squeue (every 0.1 s) until the job is in one of ``states`` ("" = finished)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.squeue_state(job_id)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state or 'gone'!r} after {timeout} s")
            time.sleep(0.1)

    def wait_done(self, job_id: str, timeout: float = 30) -> None:
        """Wait until the job left the queue (``sbatch --wait`` backs off and adds seconds)."""
        self.wait_state(job_id, {""}, timeout)

    def sacct_states(self, job_id: str) -> list[str]:
        """All accounting records of the allocation, oldest first (``-D``: requeues too)."""
        out = self.run("sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State")
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def wait_sacct_final(self, job_id: str, timeout: float = 15) -> list[str]:
        """Poll sacct until the last record is final; slurmdbd lags ~1 s behind slurmctld."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.sacct_states(job_id)
            if states and states[-1] in FINAL_STATES:
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"sacct for job {job_id}: {states} after {timeout} s")
            time.sleep(0.2)

    def array_states(self, array_id: str) -> dict[str, list[str]]:
        """{"<array_id>_<task>": [state, ...]} of a job array, oldest record first."""
        out = self.run("sacct", "-n", "-X", "-D", "-P", "-j", array_id, "-o", "JobID,State")
        states: dict[str, list[str]] = {}
        for line in out.splitlines():
            if "|" in line:
                job, state = line.split("|", 1)
                states.setdefault(job.strip(), []).append(state.split()[0])
        return states

    def wait_array_final(self, array_id: str, n_tasks: int, timeout: float = 15):
        """Poll sacct until the array's ``n_tasks`` tasks all have a final last record."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.array_states(array_id)
            if len(states) >= n_tasks and all(s[-1] in FINAL_STATES for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"sacct for array {array_id}: {states} after {timeout} s")
            time.sleep(0.2)


def missing_requirements() -> str | None:
    """Why the cluster cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [b for b in REQUIRED if shutil.which(b, path=path) is None]
    if missing:
        return (
            f"SLURM packages missing ({', '.join(missing)}): run `scripts/slurm_local.sh install`"
            " (apt: slurm-wlm munge slurmdbd mariadb-server)"
        )
    if os.geteuid() != 0:
        return "the private SLURM cluster needs root (SlurmUser=root)"
    return None


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start a private SLURM cluster (with accounting) for the session; stop it afterwards."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    # Not tmp_path_factory: /tmp/pytest-of-root is 0700 and munged refuses sockets below it.
    base = os.environ.get("SLURM_TEST_BASE", "/tmp")
    d = Path(tempfile.mkdtemp(prefix="l2o-slurm-", dir=base))
    d.chmod(0o755)
    out = d / "slurm_local.out"
    # Output to a file, never a pipe: the daemons could inherit it and block the read.
    with out.open("w") as fh:
        res = subprocess.run(
            ["bash", str(SCRIPT), "start", str(d), "--accounting"],
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, timeout=180,
        )  # fmt: skip
    if res.returncode != 0:  # the script already stopped whatever it had started
        log = _tail(out)
        shutil.rmtree(d, ignore_errors=True)
        pytest.fail(f"slurm_local.sh start failed (rc={res.returncode}):\n{log}", pytrace=False)

    conf = d / "etc" / "slurm.conf"
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(dir=d, conf=conf, env={**os.environ, "SLURM_CONF": str(conf)})
    try:
        yield cluster
    finally:
        with out.open("a") as fh:
            subprocess.run(
                ["bash", str(SCRIPT), "stop", str(d)],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, timeout=120,
                check=False,
            )  # fmt: skip
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if os.environ.get("L2O_SLURM_KEEP") != "1":
            shutil.rmtree(d, ignore_errors=True)
