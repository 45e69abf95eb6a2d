"""Run ids, the store keys of a run, and its stored configuration (no torch here, so the
command line can check a run before anything heavy loads; pneumo_core.train re-exports them).

A run id names `runs/<id>/` in the store, the fold flow runs (`<id>-fold-<k>`) and Prefect
artifact keys, which allow only lowercase letters, digits and dashes. It is checked before
any work so that a bad one fails in one line instead of halfway through a run.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

from pneumo_core.config.run import RunConfig
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.storage.base import ObjectStore

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


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def run_key(run_id: str, name: str) -> str:
    return f"runs/{check_run_id(run_id)}/{name}"


def fold_key(run_id: str, fold: int, name: str) -> str:
    return f"runs/{check_run_id(run_id)}/fold-{fold}/{name}"


def create_run(store: ObjectStore, config: RunConfig, run_id: str | None = None) -> str:
    """Store the run's configuration; re-creating an existing run with the same one is a no-op."""
    run_id = run_id or new_run_id()
    key = run_key(run_id, "config.json")
    if store.exists(key):
        if load_run_config(store, run_id) != config:
            raise InputError(f"run {run_id} already exists with a different configuration")
        return run_id
    store.put_json(key, config.to_dict())
    return run_id


def load_run_config(store: ObjectStore, run_id: str) -> RunConfig:
    try:
        data = store.get_json(run_key(run_id, "config.json"))
    except ObjectNotFound:
        raise InputError(
            f"run {run_id}: no {run_key(run_id, 'config.json')} in {store.uri}"
        ) from None
    return RunConfig.from_dict(data)
