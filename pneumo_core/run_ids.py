"""What a run id may be, and the names derived from it.

A run id names `runs/<id>/` in the store, the fold flow runs (`<id>-fold-<k>`) and Prefect
artifact keys, which allow only lowercase letters, digits and dashes. It is checked before
any work so that a bad one fails in one line instead of halfway through a run.
"""

from __future__ import annotations

import hashlib
import re

from pneumo_core.errors import InputError

RUN_ID_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NOT_IN_KEYS = re.compile(r"[^a-z0-9-]+")


def check_run_id(run_id: object) -> str:
    """The run id unchanged, or InputError saying what a run id may be."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise InputError(f"run id {run_id!r}: use {RUN_ID_RULE} (no '..')")
    return run_id


def key_slug(run_id: str) -> str:
    """The run id as lowercase letters, digits and dashes (Prefect artifact keys), distinct
    for distinct run ids: `Exp_1` -> `exp-1-<6 hex of the exact id>`, `exp-1` stays `exp-1`."""
    check_run_id(run_id)
    slug = _NOT_IN_KEYS.sub("-", run_id.lower()).strip("-")
    if slug == run_id:
        return slug
    return f"{slug}-{hashlib.sha256(run_id.encode()).hexdigest()[:6]}"
