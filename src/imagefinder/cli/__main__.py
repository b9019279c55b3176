"""`python -m imagefinder.cli ...`: the same as the `imagefinder` console script."""

import sys

from .main import main

sys.exit(main())
