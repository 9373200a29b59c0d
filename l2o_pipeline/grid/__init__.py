"""``l2o-grid``: run the paper grid into a results archive, resumably, within a time budget.

    l2o-grid status [--archive archive] [--protocol cpu]
    l2o-grid run --hours 2 [--protocol cpu] [--only table2,fig9] [--jobs 2]
    l2o-grid launch [--runs runs] [--only table2] [--report docs/results] hydra/launcher=slurm_gpu

The archive is a runs folder kept in the repository (``archive/`` of the current folder by
default): every cell of every sweep of :data:`l2o_pipeline.catalog.PAPER_GRID` lands in the
folder its sweep gives it (``<archive>/paper/<sweep>/<overrides>/seed_<s>``), exactly as
``l2o --config-name <sweep>`` would put it, so a cell runs, skips and resumes the same way from
either command. ``run`` expands each sweep into cells under a *protocol*
(``sweeps/protocol/<name>.yaml``: the overrides that turn the papers' protocol into an
affordable one), then starts the cells whose inputs are ready until the budget is spent
(meta-trainings first, then whatever completes a result soonest: ``start_order``): a
meta-training cell still running at the deadline is stopped with SIGTERM and saves its state
(the next ``run`` continues it); an evaluation cell starts only when its estimated cost fits in
what is left, a tuning cell when its largest pass does (it resumes from its last finished
pass). ``status`` says per sweep what is done, what is running or resumable, what waits for
what, and what the rest would cost on this machine (from the archive's own timings where it has
them), and which cells this machine lacks the data for (``no data``: never started, not costed,
logged once). ``launch`` is for a cluster: each sweep as one Hydra multirun through the
launcher its overrides choose, in the catalog's (dependency) order.
"""

from l2o_pipeline.grid.cells import (
    GRID_LOG,
    PROTOCOL_DIR,
    SWEEPS_DIR,
    Cell,
    GridError,
    Protocol,
    collect,
    expand,
    last_outcomes,
    load_protocol,
    meta_progress,
    start_order,
    status_lines,
    wanted_sweeps,
)
from l2o_pipeline.grid.cli import main
from l2o_pipeline.grid.run import launch, launch_commands, run_grid

__all__ = ["GRID_LOG", "PROTOCOL_DIR", "SWEEPS_DIR", "Cell", "GridError", "Protocol", "collect",
           "expand", "last_outcomes", "launch", "launch_commands", "load_protocol", "main",
           "meta_progress", "run_grid", "start_order", "status_lines", "wanted_sweeps"]
