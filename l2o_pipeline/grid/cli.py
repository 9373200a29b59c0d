"""``l2o-grid``'s command line."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from l2o_pipeline.grid.cells import GridError, collect, load_protocol, status_lines
from l2o_pipeline.grid.run import launch, run_grid

_DESCRIPTION = ("l2o-grid: run the paper grid into a results archive, resumably, within a time "
                "budget (run), or sweep by sweep through any launcher (launch).")

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="l2o-grid", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("status", "run", "launch"):
        p = sub.add_parser(command)
        if command == "launch":
            p.add_argument("--runs", default=os.environ.get("L2O_RUNS", "runs"),
                           help="the runs folder (default: $L2O_RUNS or runs/)")
            p.add_argument("--report", default=None,
                           help="write the report here when every sweep has run")
            p.add_argument("overrides", nargs="*",
                           help="Hydra overrides for every sweep, e.g. "
                                "hydra/launcher=slurm_gpu device=cuda")
        else:
            p.add_argument("--archive", default="archive",
                           help="the results archive (a runs folder); default: archive/ in "
                                "the current folder (the repository's, run from its root)")
        p.add_argument("--protocol", default="paper",
                       help="sweeps/protocol/<name>.yaml or a file (default: paper)")
        p.add_argument("--only", default=None,
                       help="comma-separated sweeps (what they need is assessed too)")
    run_p = sub.choices["run"]
    run_p.add_argument("--hours", type=float, required=True, help="time budget")
    run_p.add_argument("--jobs", type=int, default=1, help="cells at a time (threads split)")
    run_p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                       help="start only the cells whose overrides do not contradict it, e.g. "
                            "--where optimizee=mnist_cnn (repeatable; all cells are still "
                            "assessed)")
    args = parser.parse_args(argv)
    archive = Path(args.runs if args.command == "launch" else args.archive).resolve()
    if archive.exists() and not archive.is_dir():
        parser.error(f"--{'runs' if args.command == 'launch' else 'archive'} {archive} is a "
                     "file; give a folder")
    only = [s for s in args.only.split(",") if s] if args.only else None
    try:
        protocol = load_protocol(args.protocol)
        if args.command == "launch":
            return launch(archive, protocol, only, args.overrides,
                          Path(args.report).resolve() if args.report else None)
        if args.command == "status":
            print("\n".join(status_lines(collect(archive, protocol, only), protocol)))
            return 0
        if not (args.hours > 0 and math.isfinite(args.hours)) or args.jobs < 1:
            parser.error("--hours must be a positive number and --jobs a positive integer")
        bad = [w for w in args.where if "=" not in w.strip("=")]
        if bad:
            parser.error(f"--where takes KEY=VALUE (a cell override), got {bad[0]!r}")
        where = dict(w.split("=", 1) for w in args.where)
        counts = run_grid(archive, protocol, args.hours, only, args.jobs, where=where)
    except GridError as exc:
        print(f"l2o-grid: {exc}", file=sys.stderr)
        return 2
    print(f"{counts['finished']} cell(s) finished, {counts['stopped']} stopped (a meta-training "
          f"continues where it stopped, a tuning from its last finished pass, an evaluation "
          f"starts over), "
          f"{counts['failed']} failed; `l2o-grid status` for the rest")
    print("\n".join(status_lines(collect(archive, protocol, only), protocol)))
    return 1 if counts["failed"] else 0

