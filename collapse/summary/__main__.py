"""python -m collapse.summary SWEEP_DIR (see collapse.summary.cli)."""
import sys

from collapse.summary.cli import main

sys.exit(main())
