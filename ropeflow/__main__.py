"""``python -m ropeflow``: the command line (see :mod:`ropeflow.cli`)."""

import sys

from .cli import main

sys.exit(main())
