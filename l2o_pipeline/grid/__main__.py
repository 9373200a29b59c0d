import sys

from l2o_pipeline.grid.cli import main

sys.exit(main())
