"""Preparation throughput per core: decode + resize to the cache size, against a seed-style
pipeline and the bare JPEG decode, then the whole `prepare_dataset` image loop.

Per image, one thread, this process's CPU time, best of --repeat turns:

- ours: `decode.decode_resized` from the file (validated decode, area resize to 512 px);
- baseline: `pydicom.dcmread(...)` + `pixel_array` (the Pillow plugin, pinned as in
  `bench.bench_decode`) + `skimage.transform.resize` (anti-aliased) to 512 px, as uint8;
- limit: the JPEG frame (taken out of the DICOM beforehand) decoded by OpenCV, no resize.

Then the whole `prepare_dataset` call on a file:// store with one worker at 512 px (read
from the store, decode, resize, write the .npy, labels, folds, tables), in images per
CPU-second of this process and its children, so a busy machine does not hide it.

    .venv/bin/python -m bench.bench_prepare [--n-images N] [--repeat R] [--images DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
from skimage.transform import resize

from bench.bench_decode import BASELINE_PLUGIN, bare_jpeg, jpeg_frame, pydicom_default
from bench.record import emit
from bench.timing import best_of_turns, synthetic_dicoms
from pneumo_core.data.decode import decode_resized
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.storage.local import LocalStore

SIZE = 512


def seed_style(data: bytes) -> np.ndarray:
    pixels = pydicom_default(data)
    return (resize(pixels, (SIZE, SIZE), preserve_range=True) + 0.5).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=24, help="synthetic 1024 px images")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=Path, help="folder of .dcm files (default: synthetic)")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # per core: OpenCV would otherwise spread a resize over all cores
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp_name:
        tmp = Path(tmp_name)
        folder = args.images or synthetic_dicoms(tmp, args.n_images, 1024)
        paths = sorted(folder.glob("*.dcm"))
        files = [p.read_bytes() for p in paths]
        frames = [jpeg_frame(d) for d in files]
        seconds = best_of_turns(
            {
                "ours": lambda: [decode_resized(p, SIZE) for p in paths],
                "baseline": lambda: [seed_style(d) for d in files],
                "limit": lambda: [bare_jpeg(f) for f in frames],
            },
            args.repeat,
        )
        rate = {k: len(files) / s for k, s in seconds.items()}
        images = "real" if args.images else "synthetic 1024 px"
        emit(
            f"prepare: decode + resize to {SIZE} px, per core",
            rate["ours"],
            "images/s",
            baseline=rate["baseline"],
            limit=rate["limit"],
            note=f"{len(files)} {images} DICOMs; baseline pydicom ({BASELINE_PLUGIN} plugin) + "
            "skimage resize; limit: bare JPEG decode",
        )
        loop = 0.0
        for i in range(args.repeat):
            store = LocalStore(tmp / f"store-{i}")
            ingest(str(folder.parent), store, progress=False)
            started = cpu_seconds()
            prepare_dataset(store, image_size=SIZE, n_folds=2, workers=1, progress=False)
            loop = max(loop, len(files) / (cpu_seconds() - started))
        emit(
            f"prepare_dataset at {SIZE} px, 1 worker, per core",
            loop,
            "images/s",
            baseline=rate["baseline"],
            limit=rate["limit"],
            note="the whole call (store read, decode, resize, .npy write, labels, folds), "
            "images per CPU-second; baseline and limit: the per-image rates above",
        )


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (a worker pool's processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


if __name__ == "__main__":
    main()
