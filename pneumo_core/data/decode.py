"""Decoding DICOMs into resized uint8 arrays, one image or a whole list in parallel.

prepare.py decodes every image of the data set once through `decoded`: threads fetch the
bytes a bounded window ahead (I/O) and a process pool decodes them (CPU), in order. predict.py
decodes new images with `decode_resized`, exactly as the cache was built.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pneumo_core.data.dicom import DicomError, read_dicom
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.local import LocalStore

_IO_THREADS = 8

Outcome = tuple[np.ndarray, dict] | str


def decode_resized(source: str | Path | bytes, image_size: int) -> tuple[np.ndarray, dict]:
    """One DICOM as uint8 [S, S] (area interpolation) and its metadata; DicomError if unusable."""
    image = read_dicom(source)
    pixels = image.pixels
    if pixels.shape != (image_size, image_size):
        pixels = cv2.resize(pixels, (image_size, image_size), interpolation=cv2.INTER_AREA)
    return pixels, image.meta


def available_cores() -> int:
    """The cores this process may use (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def decoded(
    keys: list[str], store: ObjectStore, image_size: int, workers: int
) -> Iterator[Outcome]:
    """(pixels, meta) or the quarantine reason of each stored DICOM, in key order.

    Threads fetch the bytes (I/O) a bounded window ahead; a process pool decodes (CPU). On a
    local store the workers read the files themselves, on S3 they get the downloaded bytes.
    """
    read = _reader(store)
    with ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="pneumo-read") as io_pool:
        if workers == 1:
            fetched = _window(keys, lambda key: io_pool.submit(read, key), 2 * _IO_THREADS)
            for _, source in fetched:
                yield _decode_job(source.result(), image_size)
            return
        context = multiprocessing.get_context("spawn")  # threads + fork can deadlock
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            window = 4 * workers
            fetched = _window(keys, lambda key: io_pool.submit(read, key), window)
            outcomes = _window(
                fetched,
                lambda pair: pool.submit(_decode_job, pair[1].result(), image_size),
                window,
            )
            for _, outcome in outcomes:
                yield outcome.result()


def _window(
    items: Iterable[Any], start: Callable[[Any], Future], size: int
) -> Iterator[tuple[Any, Future]]:
    """Start work for items at most `size` ahead of the consumer, yielding in order."""
    pending: deque[tuple[Any, Future]] = deque()
    for item in items:
        pending.append((item, start(item)))
        if len(pending) >= size:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def _reader(store: ObjectStore) -> Callable[[str], str | bytes]:
    if isinstance(store, LocalStore):
        return lambda key: str(store.local_path(key))
    return store.get_bytes


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _decode_job(source: str | bytes, image_size: int) -> Outcome:
    """Runs in a worker: the reason string crosses the process boundary, not the exception."""
    try:
        return decode_resized(source, image_size)
    except DicomError as exc:
        return exc.reason
