"""Ingest and prepare as Prefect tasks: retried on transient faults, cached on their inputs.

The cache keys come from what the data is, not what it is called: a local archive or folder
by a fingerprint of its files, the prepared cache by the manifest digest (the checksums of
every raw member), the image size and the folds.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from pneumo_core.data import prepare
from pneumo_core.data.ingest import ingest as ingest_source
from pneumo_core.storage.open import open_store
from tasks.policy import RETRY_OPTIONS

INGEST_TIMEOUT = timedelta(hours=6).total_seconds()  # the full archive is ~4 GB
PREPARE_TIMEOUT = timedelta(hours=6).total_seconds()


def source_fingerprint(source: str) -> str | None:
    """Cheap identity of a local archive or folder (paths, sizes, mtimes); None when remote.

    Remote sources (kaggle://, s3://) are keyed by name alone: the competition archive does
    not change, and ingest skips members already stored byte for byte anyway.
    """
    path = Path(source).expanduser()
    if "://" in source or not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(path.parent)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


@task(
    name="ingest",
    cache_policy=INPUTS + TASK_SOURCE,
    persist_result=True,
    timeout_seconds=INGEST_TIMEOUT,
    task_run_name="ingest-{dataset}",
    **RETRY_OPTIONS,
)
def ingest(source: str, storage: str, dataset: str, fingerprint: str | None) -> dict:
    """Raw archive into raw/<dataset>/ with its manifest; `fingerprint` is the cache key."""
    logger = get_run_logger()
    result = ingest_source(source, open_store(storage), dataset=dataset, progress=False)
    logger.info(
        "ingested %s: %d members, %d uploaded, %d already stored, %.1f MB, digest %s",
        dataset,
        result.members,
        result.uploaded,
        result.skipped,
        result.bytes / 1e6,
        result.digest[:12],
    )
    return result.to_dict()


@task(
    name="prepare",
    cache_policy=INPUTS + TASK_SOURCE,
    persist_result=True,
    timeout_seconds=PREPARE_TIMEOUT,
    task_run_name="prepare-{image_size}px-{n_folds}-folds",
    **RETRY_OPTIONS,
)
def prepare_dataset(
    storage: str, dataset: str, digest: str, image_size: int, n_folds: int, seed: int
) -> dict:
    """Decoded, resized images + labels + folds; cached on the manifest digest, not names."""
    logger = get_run_logger()
    result = prepare.prepare_dataset(
        open_store(storage),
        dataset=dataset,
        image_size=image_size,
        n_folds=n_folds,
        seed=seed,
        progress=False,
    )
    logger.info(
        "prepared %s (manifest %s): %d train, %d test, %d quarantined, %.1f images/s",
        result.prefix,
        digest[:12],
        result.n_train,
        result.n_test,
        result.n_quarantined,
        result.images_per_second,
    )
    return result.to_dict()
