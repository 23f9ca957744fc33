"""``python -m cxrexplain_lab.evaluation``: the same as ``cxrexplain-eval``."""

import sys

from .cli import main

sys.exit(main())
