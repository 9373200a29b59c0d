"""Makes the session fixture ``slurm_cluster`` (tests/slurm_cluster.py) available here."""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from slurm_cluster import slurm_cluster  # noqa: E402,F401
