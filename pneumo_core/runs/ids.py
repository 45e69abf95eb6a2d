"""Run ids: new ones from the time, and their form in Prefect artifact keys.

A run id names `runs/<id>/` in the store, the fold flow runs (`<id>-fold-<k>`) and Prefect
artifact keys, which allow only lowercase letters, digits and dashes. It is checked before
any work so that a bad one fails in one line instead of halfway through a run.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

from pneumo_core.layout import check_run_id

_NOT_IN_KEYS = re.compile(r"[^a-z0-9-]+")


def key_slug(run_id: str) -> str:
    """The run id as lowercase letters, digits and dashes (Prefect artifact keys), distinct
    for distinct run ids: `Exp_1` -> `exp-1-<6 hex of the exact id>`, `exp-1` stays `exp-1`."""
    check_run_id(run_id)
    slug = _NOT_IN_KEYS.sub("-", run_id.lower()).strip("-")
    if slug == run_id:
        return slug
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:6]}"


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
