"""Which run is the best so far, and whether a new run takes its place.

Kept pure (a store and plain values in, a decision out) so that the promotion rule is tested
without any orchestration, and so that `predict` can find the champion from anywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pneumo_core.errors import InputError, ObjectNotFound, StorageError
from pneumo_core.layout import CHAMPION_KEY, TRAIN_LABELS
from pneumo_core.storage.base import ObjectStore

DEFAULT_MARGIN = 0.0
PROMOTE_TRIES = 20  # conditional-write attempts when other runs keep promoting meanwhile


@dataclass(frozen=True)
class Champion:
    run_id: str
    oof_map: float
    config_hash: str
    created: str  # ISO 8601, UTC
    # What the score was measured on and how; a record without them (written before they
    # existed) counts as trained on unknown data.
    manifest_digest: str | None = None
    labels_digest: str | None = None
    protocol: str | None = None

    @classmethod
    def from_dict(cls, data: dict, source: str = CHAMPION_KEY) -> Champion:
        try:
            champion = cls(
                run_id=str(data["run_id"]),
                oof_map=float(data["oof_map"]),
                config_hash=str(data["config_hash"]),
                created=str(data["created"]),
                **{k: _optional(data, k) for k in ("manifest_digest", "labels_digest", "protocol")},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: not a champion record ({exc!r})") from exc
        if not champion.run_id or not math.isfinite(champion.oof_map):
            raise InputError(f"{source}: run_id must be set and oof_map finite")
        return champion

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """The outcome of comparing a finished run with the champion, with the reason in words."""

    promoted: bool
    reason: str
    candidate: Champion
    previous: Champion | None

    @property
    def champion(self) -> Champion | None:
        return self.candidate if self.promoted else self.previous


def candidate(
    run_id: str,
    oof_map: float,
    config_hash: str,
    manifest_digest: str | None = None,
    labels_digest: str | None = None,
    protocol: str | None = None,
) -> Champion:
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return Champion(
        run_id, float(oof_map), config_hash, created, manifest_digest, labels_digest, protocol
    )


def data_digests(store: ObjectStore, manifest_key: str) -> tuple[str, str | None]:
    """(manifest digest, sha256 of the training labels file) of an ingested data set: two
    runs' scores are comparable only when both match."""
    try:
        manifest = store.get_json(manifest_key)
    except ObjectNotFound:
        raise InputError(
            f"{store.url(manifest_key)} is missing: ingest the data set first"
        ) from None
    labels = [m["sha256"] for m in manifest.get("members", []) if m["key"].endswith(TRAIN_LABELS)]
    return str(manifest["digest"]), (labels[0] if labels else None)


def comparability(new: Champion, current: Champion) -> str | None:
    """Why `new` cannot be compared with `current` (None: it can). A current record without
    digests or protocol is on unknown data: see `decide`."""
    for field, what in (
        ("manifest_digest", "data set (manifest digest)"),
        ("labels_digest", "labels"),
        ("protocol", "evaluation protocol"),
    ):
        mine, theirs = getattr(new, field), getattr(current, field)
        if mine != theirs:
            return f"different {what}: {_short(mine)} vs the champion's {_short(theirs)}"
    return None


def read_champion(store: ObjectStore) -> Champion | None:
    data = store.get_json_or_none(CHAMPION_KEY)
    if data is None:
        return None
    return Champion.from_dict(data, source=store.url(CHAMPION_KEY))


def decide(new: Champion, current: Champion | None, margin: float = DEFAULT_MARGIN) -> Decision:
    """Promote only a clear improvement: oof_map must beat the champion's by more than margin."""
    if margin < 0 or not math.isfinite(margin):
        raise InputError(f"promotion margin must be a finite number >= 0, got {margin}")
    if not math.isfinite(new.oof_map):
        return Decision(False, f"run {new.run_id} has no finite OOF mAP", new, current)
    if current is None:
        reason = f"no champion yet: run {new.run_id} (OOF mAP {new.oof_map:.4f}) becomes champion"
        return Decision(True, reason, new, None)
    if current.run_id == new.run_id:
        reason = f"run {new.run_id} is already the champion (OOF mAP {current.oof_map:.4f})"
        return Decision(False, reason, new, current)
    if None in (current.manifest_digest, current.labels_digest, current.protocol):
        reason = (
            f"champion {current.run_id} (OOF mAP {current.oof_map:.4f}) was recorded without "
            "its data digests or evaluation protocol, so it was trained on unknown data: "
            f"run {new.run_id} (OOF mAP {new.oof_map:.4f}), the first comparable run, replaces it"
        )
        return Decision(True, reason, new, current)
    different = comparability(new, current)
    if different:
        reason = f"not comparable with champion {current.run_id} ({different}): kept, not promoted"
        return Decision(False, reason, new, current)
    needed = current.oof_map + margin
    if new.oof_map > needed:
        reason = (
            f"OOF mAP {new.oof_map:.4f} beats champion {current.run_id} ({current.oof_map:.4f}) "
            f"by more than the margin {margin:.4f}: promoted"
        )
        return Decision(True, reason, new, current)
    reason = (
        f"OOF mAP {new.oof_map:.4f} does not beat champion {current.run_id} "
        f"({current.oof_map:.4f}) + margin {margin:.4f} = {needed:.4f}: kept, not promoted"
    )
    return Decision(False, reason, new, current)


def promote_if_better(
    store: ObjectStore, new: Champion, margin: float = DEFAULT_MARGIN
) -> Decision:
    """Decide against the stored champion and record the new one when promoted.

    The write is conditional on the version read (`put_bytes_if`): when two runs finish at
    once, the slower writer finds the champion changed and decides again against the new
    one, so the better run wins whatever the order and each decision stays true. A refused
    write whose record is stored all the same was ours: its answer was lost and botocore's
    retry refused, since the first attempt had changed the version."""
    tried: tuple[bytes, Decision] | None = None  # the last refused write and its decision
    for _ in range(PROMOTE_TRIES):
        stored = store.read_versioned(CHAMPION_KEY)
        if tried is not None and stored is not None and stored[0] == tried[0]:
            return tried[1]
        current = None
        if stored is not None:
            try:
                data = json.loads(stored[0])
            except ValueError as exc:
                raise InputError(f"{store.url(CHAMPION_KEY)} is not valid JSON: {exc}") from exc
            current = Champion.from_dict(data, source=store.url(CHAMPION_KEY))
        decision = decide(new, current, margin)
        if not decision.promoted:
            return decision
        # the reason is kept for `pneumo champion`; from_dict ignores it
        record = {**new.to_dict(), "reason": decision.reason}
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        if store.put_bytes_if(CHAMPION_KEY, text.encode(), stored[1] if stored else None):
            return decision
        tried = text.encode(), decision
    raise StorageError(
        f"{store.url(CHAMPION_KEY)} changed {PROMOTE_TRIES} times while run {new.run_id} "
        "was being promoted; promote it again"
    )


def _optional(data: dict, key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _short(value: str | None) -> str:
    return "unknown" if value is None else value[:16]


def champion_run_id(store: ObjectStore) -> str:
    """The run to predict with when none is named; a clear error when nothing was promoted."""
    current = read_champion(store)
    if current is None:
        raise InputError(f"no champion at {store.url(CHAMPION_KEY)}: train a run or pass a run id")
    return current.run_id
