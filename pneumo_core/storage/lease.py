"""A lease on one key of the store, so that only one writer changes a group of objects at a time.

Built on the store's conditional write (`ObjectStore.put_bytes_if`), the same primitive the
champion uses: taking the lock is a create-if-absent, renewing and taking over an expired one
are replace-if-unchanged. The lease is renewed in the background while its holder lives; a
holder killed without cleaning up blocks others only until its lease runs out.
Env: PNEUMO_LOCK_TTL_S (lease length, default 120 s), PNEUMO_LOCK_WAIT_S (how long to wait
for a busy lock before failing, default 900 s).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from pneumo_core.errors import StorageError
from pneumo_core.settings import settings
from pneumo_core.storage.base import ObjectStore

log = logging.getLogger(__name__)

POLL_S = 0.5


class Lease:
    """A held lock; `check()` before a write that must only happen under it."""

    def __init__(self, store: ObjectStore, key: str, what: str, ttl_s: float) -> None:
        self.store, self.key, self.what, self.ttl_s = store, key, what, ttl_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.version: str | None = None
        self.lost = False

    def record(self) -> bytes:
        expires = time.time() + self.ttl_s
        stamp = datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")
        body = {"owner": self.owner, "what": self.what, "expires": expires, "until": stamp}
        return json.dumps(body, sort_keys=True).encode()

    def write(self, version: str | None) -> bool:
        """One conditional write of a fresh record; remembers the new version when it won."""
        record = self.record()
        if not self.store.put_bytes_if(self.key, record, version):
            return False
        stored = self.store.read_versioned(self.key)
        if stored is None or json.loads(stored[0]).get("owner") != self.owner:
            return False
        self.version = stored[1]
        return True

    def check(self) -> None:
        if self.lost:
            raise StorageError(
                f"{self.store.url(self.key)}: the lock for {self.what} was lost (its lease ran "
                "out and another writer took it); nothing more is written"
            )


@contextlib.contextmanager
def lease(store: ObjectStore, key: str, what: str) -> Iterator[Lease]:
    """Hold the lock `key` for the block (waiting while another writer holds it)."""
    knobs = settings()
    held = Lease(store, key, what, max(knobs.lock_ttl_s, 1.0))
    _acquire(held, knobs.lock_wait_s)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(held, stop), daemon=True)
    renewer.start()
    try:
        yield held
        held.check()
    finally:
        stop.set()
        renewer.join()
        _release(held)


def _acquire(held: Lease, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        stored = held.store.read_versioned(held.key)
        holder = _holder(stored[0]) if stored else None
        if stored is None or holder is None or holder["expires"] < time.time():
            if stored is not None:
                log.warning(
                    "%s: taking over an expired lock (%s)", held.store.url(held.key), holder
                )
            if held.write(stored[1] if stored else None):
                return
            continue  # another writer won that race; look again
        if time.monotonic() >= deadline:
            raise StorageError(
                f"{held.store.url(held.key)}: {holder.get('what')} by {holder.get('owner')} holds "
                f"the lock (lease until {holder.get('until')}); waited {wait_s:.0f} s "
                "(PNEUMO_LOCK_WAIT_S) for it"
            )
        if not announced:
            log.warning(
                "waiting for %s: %s by %s holds it", held.key, holder.get("what"), holder["owner"]
            )
            announced = True
        time.sleep(POLL_S)


def _holder(data: bytes) -> dict | None:
    """The lock record, or None when it is unreadable (treated as expired)."""
    try:
        holder = json.loads(data)
        float(holder["expires"])
    except (ValueError, KeyError, TypeError):
        return None
    return holder


def _renew(held: Lease, stop: threading.Event) -> None:
    while not stop.wait(held.ttl_s / 3):
        try:
            if not held.write(held.version):
                held.lost = True
                return
        except Exception as exc:  # a failed renewal is retried; the lease has time left
            log.warning("renewing %s failed (%s); retrying", held.key, exc)


def _release(held: Lease) -> None:
    """Delete the lock if it is still ours (a taken-over lock belongs to its new holder)."""
    stored = held.store.read_versioned(held.key)
    if stored is not None and stored[1] == held.version:
        held.store.delete(held.key)
