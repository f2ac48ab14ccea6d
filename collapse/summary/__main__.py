"""python -m collapse.summary SWEEP_DIR (see collapse.summary.cli)."""
from collapse.summary.cli import cli

cli()
