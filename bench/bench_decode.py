"""DICOM decode speed on the real competition files: read_dicom against the other paths.

Each decoder starts from the file's bytes in memory and ends with a uint8 array, one thread,
best of several passes over the 16 real DICOMs in ../shared/rsna-sample (skips cleanly when
they are absent). Prints ms per image side by side:

    .venv/bin/python bench/bench_decode.py [--images DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames

from pneumo_core.dicom import read_dicom

DEFAULT_IMAGES = (
    Path(__file__).resolve().parents[2] / "shared" / "rsna-sample" / "stage_2_train_images"
)


def jpeg_frame(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def pixel_array(plugin: str | None) -> Callable[[bytes], np.ndarray]:
    def decode(data: bytes) -> np.ndarray:
        ds = pydicom.dcmread(io.BytesIO(data))
        if plugin is None:
            return ds.pixel_array  # what pydicom picks by itself
        return pydicom.pixels.pixel_array(ds, decoding_plugin=plugin)

    return decode


DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    "read_dicom (pneumo: encaps frame + cv2.imdecode, validated)": lambda d: read_dicom(d).pixels,
    "pydicom ds.pixel_array (its own pick)": pixel_array(None),
    "pydicom pixel_array, Pillow plugin": pixel_array("pillow"),
    "pydicom pixel_array, pylibjpeg plugin": pixel_array("pylibjpeg"),
    "bare JPEG: encaps frame + cv2.imdecode": lambda d: cv2.imdecode(
        np.frombuffer(jpeg_frame(d), np.uint8), cv2.IMREAD_UNCHANGED
    ),
    "bare JPEG: encaps frame + PIL.Image.open": lambda d: np.asarray(
        Image.open(io.BytesIO(jpeg_frame(d)))
    ),
    "header only: dcmread + frame extraction": jpeg_frame,
}


def ms_per_image(files: list[bytes], repeat: int) -> dict[str, float]:
    """Best pass per decoder; the decoders take turns in each round so that load from other
    processes on a shared machine hits them alike."""
    best = dict.fromkeys(DECODERS, float("inf"))
    for decode in DECODERS.values():
        decode(files[0])  # warm up imports and plugin discovery
    for _ in range(repeat):
        for name, decode in DECODERS.items():
            start = time.perf_counter()
            for data in files:
                decode(data)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1000 * seconds / len(files) for name, seconds in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    paths = sorted(args.images.glob("*.dcm"))
    if not paths:
        print(f"skipped: no .dcm files in {args.images}")
        return 0
    cv2.setNumThreads(1)
    files = [p.read_bytes() for p in paths]
    print(f"{len(files)} DICOMs from {args.images}, best of {args.repeat} passes, 1 thread")
    timings = ms_per_image(files, args.repeat)
    baseline = next(iter(timings.values()))
    for name, ms in timings.items():
        print(f"{ms:7.2f} ms/image  {ms / baseline:5.2f}x read_dicom  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
