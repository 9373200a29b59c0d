"""``l2o-report``: the papers' tables, figures and claims, and every cell's comparison, from
finished runs, as Markdown + PNG.

    l2o-report --runs runs/paper --out docs/results [--title ...] [--note "text at the top"]
    python -m l2o_pipeline.report --runs runs/paper --out docs/results
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from l2o_pipeline.report.document import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="l2o-report", description="The papers' tables, figures and claims, and a paired "
        "comparison of every evaluated cell per task, from finished runs (the paper grid or "
        "any multirun): report.md, PNG figures and results.json.")
    parser.add_argument("--runs", default="runs/paper", help="runs root (default: runs/paper)")
    parser.add_argument("--out", default="docs/results", help="output folder "
                        "(default: docs/results)")
    parser.add_argument("--title", default="RNNprop and DMoptimizer: reproduction report")
    parser.add_argument("--note", action="append", default=[], help="text put at the top, e.g. "
                        "where MNIST came from (repeatable)")
    parser.add_argument("--fig5-depth", type=int, default=None, choices=range(1, 11),
                        metavar="N", help="hidden layers of Fig. 5 (default: the depth where "
                        "RNNprop's lead over Adam is largest)")
    parser.add_argument("--no-figures", action="store_true", help="tables and claims only")
    args = parser.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    if not runs.is_dir():
        found = "is a file" if runs.exists() else "does not exist"
        parser.error(f"--runs {runs} {found}; give the folder that holds the runs (the sweeps' "
                     "hydra.sweep.dir or paths.runs_dir, e.g. runs/paper)")
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; give a folder for report.md, the figures and "
                     "results.json (created if missing)")
    from l2o_pipeline.errors import USER_ERROR_EXIT, user_error_message

    try:
        res = build_report(runs, out, args.title, args.note, args.fig5_depth,
                           figures=not args.no_figures)
    except Exception as exc:  # a read-only or full disk under --out: one message, no traceback
        message = user_error_message(exc, "check --out")
        if message is None:
            raise
        parser.exit(USER_ERROR_EXIT, f"{parser.prog}: error: {message}\n")
    counts = defaultdict(int)
    for c in res["claims"]:
        counts[c["verdict"]] += 1
    print(f"wrote {Path(args.out) / 'report.md'} and results.json: claims "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if res["in_use"]:
        print(f"{parser.prog}: warning: left out {len(res['in_use'])} folder(s) a process is "
              "working in now (e.g. " + res["in_use"][0] + "): regenerate when they end",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
