"""DICOM decode speed: `read_dicom` against pydicom's default decode, and the bare JPEG limit.

Each decoder starts from the file's bytes in memory and ends with a uint8 array, one thread,
best of several passes in which the decoders take turns (a shared machine then disturbs them
alike). The baseline is what a seed-style notebook gets from `ds.pixel_array` on a fresh
install: pydicom's Pillow plugin, the only JPEG Baseline decoder pydicom finds without
pylibjpeg or GDCM; it is pinned (`decoding_plugin="pillow"`) so the figure does not change
with whatever else is installed. The limit is the JPEG frame decoded by OpenCV with no
checks (frames taken out beforehand). Images: 16 synthetic 1024 px JPEG-Baseline DICOMs,
or the .dcm files of --images (e.g. the competition's stage_2_train_images).

    .venv/bin/python -m bench.bench_decode [--images DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.encaps import generate_frames

from bench.record import emit
from bench.timing import best_of_turns, synthetic_dicoms
from pneumo_core.data.dicom import read_dicom

BASELINE_PLUGIN = "pillow"


def jpeg_frame(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def pydicom_default(data: bytes) -> np.ndarray:
    """The seed-style decode, with pydicom's fresh-install decoder pinned."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return pydicom.pixels.pixel_array(ds, decoding_plugin=BASELINE_PLUGIN)


def bare_jpeg(frame: bytes) -> np.ndarray:
    """The limit: a JPEG frame already taken out of its DICOM, decoded by OpenCV."""
    return cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_UNCHANGED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="folder of .dcm files (default: synthetic)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        folder = args.images or synthetic_dicoms(Path(tmp), 16, 1024)
        files = [p.read_bytes() for p in sorted(folder.glob("*.dcm"))]
    if not files:
        raise SystemExit(f"no .dcm files in {folder}")
    frames = [jpeg_frame(d) for d in files]
    seconds = best_of_turns(
        {
            "ours": lambda: [read_dicom(d).pixels for d in files],
            "baseline": lambda: [pydicom_default(d) for d in files],
            "limit": lambda: [bare_jpeg(f) for f in frames],
        },
        args.repeat,
    )
    ms = {k: 1000 * s / len(files) for k, s in seconds.items()}
    images = "real" if args.images else "synthetic 1024 px"
    emit(
        "DICOM decode, JPEG Baseline 1024 px",
        ms["ours"],
        "ms/image",
        baseline=ms["baseline"],
        limit=ms["limit"],
        higher_is_better=False,
        note=f"{len(files)} {images} DICOMs, 1 thread; baseline pydicom "
        f"{pydicom.__version__} pixel_array with the {BASELINE_PLUGIN} plugin",
    )


if __name__ == "__main__":
    main()
