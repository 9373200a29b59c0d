"""The results archive in the repository: the committed report is the one it generates."""

import json
import subprocess
from pathlib import Path

import pytest

from l2o_pipeline.report import build_report

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE, RESULTS = ROOT / "archive" / "paper", ROOT / "docs" / "results"
TITLE = "RNNprop and DMoptimizer: reproduction report"  # l2o-report's default


def _uncommitted() -> str:
    """What differs from the last commit in the archive or the report ('' in a clean clone,
    as in CI; a developer's running grid changes the archive as it goes)."""
    try:
        return subprocess.run(["git", "status", "--porcelain", "archive", "docs/results"],
                              cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def test_the_committed_report_is_regenerated_from_the_committed_archive(tmp_path, monkeypatch):
    if not (RESULTS / "report.md").is_file():
        pytest.fail("docs/results/report.md is missing: l2o-report --runs archive/paper")
    changed = _uncommitted()
    if changed:
        pytest.skip(f"the archive or the report has uncommitted changes: {changed[:200]}")
    monkeypatch.chdir(ROOT)  # the report names its runs root relative to the current folder
    results = build_report(ARCHIVE.relative_to(ROOT), tmp_path, TITLE)
    assert (tmp_path / "report.md").read_text() == (RESULTS / "report.md").read_text(), (
        "docs/results is stale: l2o-report --runs archive/paper --out docs/results")
    committed = json.loads((RESULTS / "results.json").read_text())
    assert json.loads(json.dumps(results)) == committed


def test_the_archive_stays_small():
    files = [p for p in ARCHIVE.rglob("*") if p.is_file() and "wandb" not in p.parts
             and ".grid_logs" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 100 * 2**20
