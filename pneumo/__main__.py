"""`python -m pneumo`: the command line of pneumo.cli."""

import sys

from pneumo.cli import main

sys.exit(main())
