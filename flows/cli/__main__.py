"""`python -m flows.cli`: the `pneumo` command."""

import sys

from flows.cli.main import main

sys.exit(main())
