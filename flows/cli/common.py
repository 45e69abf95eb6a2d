"""What every `pneumo` command shares: the handler type and the `--storage` argument."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]
STORAGE_HELP = "object store: file://DIR, DIR or s3://bucket/prefix"
