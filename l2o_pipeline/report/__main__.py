import sys

from l2o_pipeline.report.cli import main

sys.exit(main())
