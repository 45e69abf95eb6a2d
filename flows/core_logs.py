"""pneumo_core's INFO lines in the flow run's logs.

The core reports through `logging` (a fold resuming after epoch N, each epoch, ingest and
prepare progress). `PREFECT_LOGGING_EXTRA_LOGGERS=pneumo_core` (the deployments' env) gives
the `pneumo_core` logger Prefect's API handler, but leaves it at the root logger's WARNING
level, so without this its INFO lines never reach the Prefect UI.
"""

from __future__ import annotations

import logging

CORE_LOGGER = "pneumo_core"


def core_info_to_run_logs() -> None:
    """Let pneumo_core's INFO lines through (to the console, and to the API where Prefect
    attached its handler); a level the user set lower (DEBUG) is kept."""
    logger = logging.getLogger(CORE_LOGGER)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
