"""Progress of the long loops: a bar on a terminal, periodic INFO lines off it."""

from __future__ import annotations

import io
import logging
import re

import pytest

from l2o_pipeline import progress
from l2o_pipeline.pipeline import run
from l2o_pipeline.progress import Progress

# "<desc> <n>/<total> (<pct>%) [metrics] | <rate> <unit>/s, elapsed H:MM:SS, ETA H:MM:SS"
LINE = re.compile(r"(?P<desc>.+) (?P<n>\d+)/(?P<total>\d+) \(\d+%\)(?P<metrics>.*) \| "
                  r"\S+ (?P<unit>\w+)/s, elapsed \d+:\d\d:\d\d, ETA (\d+:\d\d:\d\d|\?)$")


def progress_lines(caplog, desc_prefix: str) -> list[re.Match]:
    matches = [LINE.match(r.getMessage()) for r in caplog.records
               if r.name == "l2o_pipeline.progress"]
    return [m for m in matches if m and m["desc"].startswith(desc_prefix)]


def test_off_a_terminal_lines_come_every_every_s_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="l2o_pipeline.progress")
    with Progress(5, "job", every_s=0) as bar:
        for i in range(5):
            bar.update(1, loss=float(i))
    lines = progress_lines(caplog, "job")
    assert [int(m["n"]) for m in lines] == [1, 2, 3, 4, 5]
    assert "loss=4" in lines[-1]["metrics"] and lines[-1]["unit"] == "it"
    caplog.clear()
    with Progress(5, "slow", every_s=3600) as bar:
        for _ in range(5):
            bar.update(1)
    assert [int(m["n"]) for m in progress_lines(caplog, "slow")] == [5]  # only the last one


def test_disabled_progress_says_nothing(caplog, capsys):
    caplog.set_level(logging.INFO, logger="l2o_pipeline.progress")
    with Progress(3, "quiet", enabled=False, every_s=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert not caplog.records and capsys.readouterr().err == ""


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_a_bar_and_log_lines_go_around_it(monkeypatch, caplog):
    term = FakeTerminal()
    monkeypatch.setattr("sys.stderr", term)
    handler = logging.StreamHandler(term)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with Progress(3, "bar-test", every_s=0) as bar:
            for _ in range(3):
                bar.update(1, loss=0.5)
            logging.getLogger("l2o_pipeline.x").warning("a message during the bar")
    finally:
        root.removeHandler(handler)
    text = term.getvalue()
    assert "bar-test" in text and "3/3" in text and "loss=0.5" in text
    assert "a message during the bar" in text
    assert not progress_lines(caplog, "bar-test")  # no log lines besides the bar


@pytest.fixture
def every_update():
    yield
    progress.configure(progress.DEFAULT_EVERY_S)


def test_meta_training_and_evaluation_log_progress_off_a_terminal(make_cfg, caplog,
                                                                   every_update):
    caplog.set_level(logging.INFO, logger="l2o_pipeline.progress")
    run(make_cfg("debug=default", "stage=both", "progress_every_s=0"))
    meta = progress_lines(caplog, "meta-train")
    assert [int(m["n"]) for m in meta] == [1, 2, 3, 4] and int(meta[-1]["total"]) == 4
    assert "loss=" in meta[-1]["metrics"] and "ema=" in meta[-1]["metrics"]
    evaluation = progress_lines(caplog, "evaluate 10 steps")
    assert evaluation and evaluation[-1]["n"] == evaluation[-1]["total"]
    assert evaluation[-1]["unit"] == "step"


def test_sequential_evaluation_and_tuning_log_progress(make_cfg, caplog, every_update,
                                                       tmp_path):
    caplog.set_level(logging.INFO, logger="l2o_pipeline.progress")
    run(make_cfg("debug=default", "stage=tune", "optimizer=adam", "tuning.lrs=[0.1,0.01]",
                 "evaluation.engine=sequential", "progress_every_s=0"))
    lines = progress_lines(caplog, "tune adam (2 rates x 2 runs) 10 steps")
    # sequential: one unit per step of one rate in one run
    assert int(lines[-1]["total"]) == 2 * 2 * 10 == int(lines[-1]["n"])


def test_a_negative_progress_every_s_names_the_key(make_cfg):
    from l2o_pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="progress_every_s"):
        run(make_cfg("debug=default", "progress_every_s=-1"))
