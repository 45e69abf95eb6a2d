"""The one wait between tries of a remote call: jittered exponential back-off.

S3 GETs whose body breaks off (s3.py) and Kaggle submissions (runs/kaggle_submit.py) are
tried again after it; the jitter keeps workers that failed together from retrying together.
"""

from __future__ import annotations

import math
import random
import time


def sleep_before_retry(attempt: int, first_s: float, max_s: float = math.inf) -> None:
    """Wait after failed try number `attempt` (1, 2, ...): `first_s` doubling with each try,
    at most `max_s`, then a random 50-100 % of that."""
    delay = min(max_s, first_s * 2 ** (attempt - 1))
    time.sleep(delay * random.uniform(0.5, 1.0))
