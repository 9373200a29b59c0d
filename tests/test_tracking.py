"""Tracking: JSONL always on, W&B offline runs read back with ``wandb leet inspect --json``.

No autouse fixtures: tests that touch W&B request ``wandb_env`` (or call ``_wandb_env``) so
that the mode is set per test and nothing is written to $HOME.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from l2o_pipeline.tracking import (
    JsonlWriter,
    MultiWriter,
    WandbWriter,
    Writer,
    make_writer,
    read_jsonl,
    resolve_wandb_mode,
)

try:  # tests/ is on sys.path under pytest's default (prepend) import mode
    import wandb_offline_reader as reader
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests import wandb_offline_reader as reader

REPO = Path(__file__).resolve().parents[1]


def _wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str | None) -> None:
    if mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    home = tmp_path / "wandb_home"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # no stdout hooks fighting pytest's capture
    monkeypatch.setenv("NETRC", str(home / "netrc"))  # never read a real key from ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    _wandb_env(monkeypatch, tmp_path, "offline")


def _offline_run(out: Path) -> dict:
    dirs = reader.run_dirs(out)
    assert len(dirs) == 1, dirs
    return reader.load_run(dirs[0])


def _steps(run: dict, key: str = "loss") -> list[tuple[int, float]]:
    return [(h["_step"], h[key]) for h in run["history"] if key in h]


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_values_and_summary(tmp_path):
    np = pytest.importorskip("numpy")
    w = JsonlWriter(tmp_path / "metrics.jsonl")
    w.log({"loss": np.float32(0.5), "nan": float("nan"), "inf": -math.inf, "i": np.int64(3)}, 0)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        w.log({"loss": torch.tensor(0.25, requires_grad=True) * 1}, step=torch.tensor(1))
    w.log({"vec": [1, 2], "obj": object(), "ok": 1.0}, 2)  # unconvertible keys are skipped
    w.summary({"a": 1, "b": float("nan")})
    w.summary({"a": 2, "c": {"d": np.float64(1.5)}})
    w.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    recs = read_jsonl(tmp_path)
    assert recs[0] == {"step": 0, "loss": 0.5, "nan": None, "inf": None, "i": 3}
    if torch is not None:
        assert recs[1] == {"step": 1, "loss": 0.25}
    assert recs[-1] == {"step": 2, "vec": [1, 2], "ok": 1.0}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"a": 2, "b": None, "c": {"d": 1.5}}
    assert not list(tmp_path.glob("*.tmp"))


def test_jsonl_resume_truncates_after_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with JsonlWriter(path) as w:
        for s in range(10):
            w.log({"loss": float(s)}, s)
    with open(path, "a") as f:
        f.write('{"step": 10, "lo')  # killed mid-write
    with JsonlWriter(path, resume_step=4) as w:  # checkpoint was at step 4
        for s in range(5, 8):
            w.log({"loss": 100.0 + s}, s)
    recs = read_jsonl(path)
    assert [r["step"] for r in recs] == list(range(8))
    assert [r["loss"] for r in recs[4:6]] == [4.0, 105.0]
    # resume_step=None keeps everything (e.g. an eval job appending to the same dir)
    with JsonlWriter(path) as w:
        w.log({"loss": 0.0}, 8)
    assert [r["step"] for r in read_jsonl(path)] == list(range(9))


def test_read_jsonl_tolerates_only_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 0}\n{"step": 1, "x"')
    assert read_jsonl(p) == [{"step": 0}]
    p.write_text('{"step": 0}\n{"broken\n{"step": 2}\n')
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(p)


# ----------------------------------------------------------------------------- MultiWriter


class _Boom(Writer):
    def __init__(self):
        self.calls = 0

    def log(self, metrics, step):
        self.calls += 1
        raise RuntimeError("W&B went away")

    def close(self):
        raise RuntimeError("finish failed")


def test_multiwriter_isolates_a_failing_writer(tmp_path, caplog):
    boom = _Boom()
    multi = MultiWriter([boom, JsonlWriter(tmp_path / "metrics.jsonl")])
    with caplog.at_level(logging.DEBUG, logger="l2o_pipeline.tracking"):
        for s in range(5):
            multi.log({"loss": 1.0}, s)
        multi.summary({"final": 1.0})
        multi.close()  # the failing close must not keep the JSONL writer from closing
    assert boom.calls == 5
    assert [r["step"] for r in read_jsonl(tmp_path)] == list(range(5))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "W&B went away" in warnings[0].getMessage()
    assert multi.get(JsonlWriter) is multi.writers[1] and multi.get(WandbWriter) is None


# ----------------------------------------------------------------------------- mode


def test_resolve_wandb_mode_precedence(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    assert resolve_wandb_mode(None) == "offline"  # nothing set: never try the network
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert resolve_wandb_mode(None) == "disabled"
    assert resolve_wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(None) == "disabled"
    assert resolve_wandb_mode("") == "disabled"  # empty config value counts as unset
    assert resolve_wandb_mode("offline") == "offline"  # explicit config beats env
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_wandb_mode(None) == "online"
    assert resolve_wandb_mode(" Disabled ") == "disabled"
    with pytest.raises(ValueError, match=r"logger\.wandb\.mode"):
        resolve_wandb_mode("offlne")
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        resolve_wandb_mode(None)


def test_make_writer_without_wandb(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert len(make_writer(tmp_path / "a", None, {"x": 1}).writers) == 1
    off = make_writer(tmp_path / "b", {"enabled": False, "project": "p"}, None)
    dis = make_writer(tmp_path / "c", {"project": "p", "mode": "disabled"}, None)
    assert len(off.writers) == len(dis.writers) == 1
    with pytest.raises(ValueError, match=r"logger\.wandb\.mode"):
        make_writer(tmp_path / "d", {"project": "p", "mode": "ofline"}, None)
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with caplog.at_level(logging.WARNING, logger="l2o_pipeline.tracking"):
        w = make_writer(tmp_path / "e", {"project": "p"}, None)
    assert len(w.writers) == 1 and "not installed" in caplog.text
    w.log({"loss": 1.0}, 0)
    w.close()
    assert read_jsonl(tmp_path / "e") == [{"step": 0, "loss": 1.0}]
    assert not (tmp_path / "e" / "wandb").exists()


def test_make_writer_survives_wandb_init_failure(tmp_path, monkeypatch, wandb_env, caplog):
    import wandb

    def broken_init(**kwargs):
        raise RuntimeError("wandb-core did not start")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.WARNING, logger="l2o_pipeline.tracking"):
        w = make_writer(tmp_path, {"project": "p"}, None)
    assert len(w.writers) == 1 and "wandb-core did not start" in caplog.text
    w.log({"loss": 1.0}, 0)
    w.close()
    assert read_jsonl(tmp_path) == [{"step": 0, "loss": 1.0}]


# ----------------------------------------------------------------------------- W&B offline


def test_offline_run_roundtrip(tmp_path, wandb_env, caplog):
    out = tmp_path / "job"
    cfg = {
        "wandb": {
            "project": "l2o-test",
            "group": "optimizer=rnnprop",
            "job_type": "meta_train",
            "name": "optimizer=rnnprop/seed=0",
            "tags": ["unit"],
            "mode": None,
        }
    }
    config = {"seed": 0, "optimizer": {"name": "rnnprop", "lr": 1e-3}}
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="l2o_pipeline.tracking"):
        writer = make_writer(out, cfg["wandb"], config)
    init_s = time.perf_counter() - t0
    wb = writer.get(WandbWriter)
    assert wb is not None and wb.mode == "offline", caplog.text
    assert "wandb sync" in caplog.text and str(out / "wandb") in caplog.text
    for s in range(3):
        writer.log({"meta/loss": 1.0 / (s + 1), "meta/grad_norm": float("nan")}, s)
    writer.summary({"final_loss": 0.25})
    writer.log_table("eval/curves", ["step", "loss"], [[0, 1.0], [1, 0.5]])
    ckpt = out / "ckpt.pt"
    ckpt.write_bytes(b"weights")
    writer.log_artifact(ckpt, "ckpt:rnnprop/seed=0", "model", {"step": 2})
    writer.close()

    run = _offline_run(out)
    print(f"offline init {init_s:.2f}s")  # shown with -s; reported in the PR
    assert (out / "wandb_run_id").read_text().strip() == run["id"] == wb.run_id
    assert run["config"] == config
    assert (run["project"], run["group"], run["job_type"], run["name"], run["tags"]) == (
        "l2o-test",
        "optimizer=rnnprop",
        "meta_train",
        "optimizer=rnnprop/seed=0",
        ["unit"],
    )
    assert _steps(run, "meta/loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert math.isnan(run["history"][0]["meta/grad_norm"])  # W&B keeps NaN, JSONL writes null
    assert run["summary"]["final_loss"] == 0.25 and run["exit_code"] == 0
    assert {
        "name": "ckpt-rnnprop-seed-0",
        "type": "model",
        "metadata": {"step": 2},
        "aliases": ["latest"],
        "files": ["ckpt.pt"],
    } in run["artifacts"]
    # The reader merges leet's records itself: cross-check it with leet's own summary.
    leet = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--summary", "--json",
         str(reader.run_dirs(out)[0])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if leet.returncode == 0:
        ref = json.loads(leet.stdout)
        assert (ref["run_id"], ref["name"], ref["tags"]) == (run["id"], run["name"], run["tags"])
        assert ref["config"] == run["config"] and ref["summary"]["final_loss"] == 0.25
    recs = read_jsonl(out)
    assert [r["step"] for r in recs] == [0, 1, 2] and recs[0]["meta/grad_norm"] is None
    assert json.loads((out / "tables" / "eval-curves.json").read_text())["rows"][1] == [1, 0.5]


def test_two_runs_in_one_process_do_not_merge(tmp_path, wandb_env):
    # The basic Hydra launcher runs a multirun's jobs sequentially in one process.
    runs = []
    for i, opt in enumerate(["rnnprop", "dmoptimizer"]):
        out = tmp_path / str(i)
        w = WandbWriter(out, "l2o-test", group=opt, name=f"{opt}/seed=0", config={"opt": opt})
        for s in range(2):
            w.log({"loss": 10.0 * i + s}, s)
        w.close()
        runs.append(_offline_run(out))
    assert runs[0]["id"] != runs[1]["id"]
    assert [r["config"]["opt"] for r in runs] == ["rnnprop", "dmoptimizer"]
    assert _steps(runs[0]) == [(0, 0.0), (1, 1.0)]
    assert _steps(runs[1]) == [(0, 10.0), (1, 11.0)]


def test_resumed_writer_reuses_run_id(tmp_path, wandb_env):
    cfg = {"project": "l2o-test", "group": "g", "name": "n"}
    w1 = make_writer(tmp_path, cfg, {"seed": 1})
    for s in range(3):
        w1.log({"loss": float(s)}, s)
    w1.close()  # the job is requeued; the checkpoint holds step 1
    w2 = make_writer(tmp_path, cfg, {"seed": 1}, resume_step=1)
    for s in range(2, 4):
        w2.log({"loss": 10.0 + s}, s)
    w2.close()

    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert w1.get(WandbWriter).run_id == w2.get(WandbWriter).run_id == run_id
    dirs = reader.run_dirs(tmp_path)
    assert len(dirs) == 2 and all(run_id in d.name for d in dirs)
    merged = reader.load_resumed_run(tmp_path, run_id)
    assert merged["segments"] == 2 and merged["name"] == "n"
    # The offline segments both hold step 2; the server keeps one on sync. JSONL has no dupes.
    assert _steps(merged) == [(0, 0.0), (1, 1.0), (2, 2.0), (2, 12.0), (3, 13.0)]
    assert [(r["step"], r["loss"]) for r in read_jsonl(tmp_path)] == [
        (0, 0.0),
        (1, 1.0),
        (2, 12.0),
        (3, 13.0),
    ]


def test_online_without_key_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    pytest.importorskip("wandb")
    _wandb_env(monkeypatch, tmp_path, "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # closed port, never the internet
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="l2o_pipeline.tracking"):
        w = make_writer(tmp_path, {"project": "l2o-test", "init_timeout": 3}, {"a": 1})
    elapsed = time.perf_counter() - t0
    wb = w.get(WandbWriter)
    assert wb is not None and wb.mode == "offline" and "falling back to offline" in caplog.text
    assert elapsed < 10, elapsed  # no key: wandb raises at once, no network wait
    w.log({"loss": 1.0}, 0)
    w.close()
    assert _steps(_offline_run(tmp_path)) == [(0, 1.0)]


def test_online_fallback_when_service_keeps_the_id(tmp_path, monkeypatch, wandb_env, caplog):
    """Online fails, the same-id offline init fails too: log offline under a fresh id."""
    import wandb

    real_init, calls = wandb.init, []

    def flaky_init(**kwargs):
        calls.append((kwargs["mode"], kwargs["id"]))
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("context deadline exceeded")
        if len(calls) == 2:
            raise RuntimeError(f"run ID {kwargs['id']} is in use")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", flaky_init)
    monkeypatch.setattr(wandb, "teardown", lambda: None)  # keep this process's service
    with caplog.at_level(logging.WARNING, logger="l2o_pipeline.tracking"):
        w = WandbWriter(tmp_path, "l2o-test", mode="online")
    first_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert [m for m, _ in calls] == ["online", "offline", "offline"]
    assert calls[0][1] == calls[1][1] == first_id != calls[2][1] == w.run_id
    assert w.mode == "offline" and "falling back to offline" in caplog.text
    w.log({"loss": 1.0}, 0)
    w.close()
    run = _offline_run(tmp_path)
    assert run["id"] == w.run_id and _steps(run) == [(0, 1.0)]


_ONLINE_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    sys.path.insert(0, {repo!r})
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    from l2o_pipeline.tracking import WandbWriter, make_writer
    t0 = time.perf_counter()
    w = make_writer({out!r}, {{"project": "l2o-test", "mode": "online", "init_timeout": 3}}, {{}})
    wb = w.get(WandbWriter)
    print("MODE", wb.mode if wb else None, "ELAPSED", round(time.perf_counter() - t0, 1))
    w.log({{"loss": 1.0}}, 0)
    w.close()
    """
)


@pytest.mark.slow
def test_online_with_key_but_no_network_falls_back(tmp_path, monkeypatch):
    """A key but no route to the server: wandb waits init_timeout, then we go offline."""
    pytest.importorskip("wandb")
    _wandb_env(monkeypatch, tmp_path, None)
    env = dict(os.environ, WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    # Earlier tests started a wandb-core service in this process and exported its address;
    # the child would share it (and its reserved run ids) instead of owning its own.
    env.pop("WANDB_SERVICE", None)
    script = _ONLINE_SCRIPT.format(repo=str(REPO), out=str(tmp_path / "job"))
    # A subprocess with a hard timeout: a regression to wandb's 90 s default cannot hang CI.
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "falling back to offline" in proc.stdout and "MODE offline" in proc.stdout
    elapsed = float(proc.stdout.split("ELAPSED")[1].split()[0])
    assert elapsed < 20, proc.stdout
    assert _steps(_offline_run(tmp_path / "job")) == [(0, 1.0)]
