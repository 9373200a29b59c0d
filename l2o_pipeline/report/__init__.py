"""``l2o-report``: the papers' tables, figures and claims, and every cell's comparison, from
the run folders below ``--runs`` (no W&B), as ``report.md``, PNG figures and ``results.json``.

One concept per module:

- :mod:`~l2o_pipeline.catalog` (the package's): the paper grid's sweeps, tasks, experiments.
- :mod:`.style`: display labels and colours.
- :mod:`.readers`, :mod:`.index`: the run folders and their records, as pooled measurements.
- :mod:`.stats`: pooling and paired comparisons; :mod:`.rules`: what "beats" etc. mean.
- :mod:`.checks`, :mod:`.claims`: the papers' claims; :mod:`.tables`, :mod:`.figures`,
  :mod:`.compare`: what the report shows; :mod:`.document`: the report; :mod:`.cli`.

Missing cells show as "—" or "not run", never as zero; a half-written or unreadable file is
skipped with a note.
"""

from l2o_pipeline.report.cli import main
from l2o_pipeline.report.document import build_report
from l2o_pipeline.report.index import RunIndex
from l2o_pipeline.report.stats import Measurement, Paired, Stat, paired, pool

__all__ = ["main", "build_report", "RunIndex", "Measurement", "Paired", "Stat", "paired",
           "pool"]
