"""Read, validate and normalise one chest-radiograph DICOM into an 8-bit MONOCHROME2 image.

The competition files are JPEG Baseline (1.2.840.10008.1.2.4.50), 8-bit MONOCHROME2. For
those we take the encapsulated JPEG frame out with `pydicom.encaps` and decode it with
OpenCV. Measured on this machine (bench/bench_decode.py, 16 real 1024² files, one thread):
read_dicom 1.95 ms per image (the bare cv2 decode alone 1.9 ms, header parsing 0.2 ms),
pydicom's Pillow plugin 3.1 ms, and `ds.pixel_array` 11.5 ms because pydicom picks pylibjpeg
when it is installed (as it is here). Every other transfer syntax (uncompressed, lossless
JPEG, JPEG 2000, RLE) goes through `ds.pixel_array`."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.uid import JPEGBaseline8Bit

from pneumo_core.errors import InputError
from pneumo_core.settings import settings

# Where a window is not in the file, stretch this percentile range to 0..255: robust against
# burned-in labels and dead pixels that a plain min/max would let set the scale.
FALLBACK_WINDOW_PERCENTILES = (0.5, 99.5)
JPEG_END_OF_IMAGE = b"\xff\xd9"
_AGE = re.compile(r"^\s*(\d+)\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25, "": 365.25}


class DicomError(InputError):
    """A DICOM that cannot be used; `reason` alone is what a quarantine table records."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class DicomImage:
    pixels: np.ndarray  # uint8 [rows, cols], MONOCHROME2 sense (bright = dense)
    meta: dict[str, Any]


def read_dicom(source: str | Path | bytes) -> DicomImage:
    """Decode one single-frame grayscale DICOM; any defect raises DicomError with the reason."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    ds = _parse(source, name)
    rows, cols = _check_geometry(ds, name)
    pixels = _decode(ds, name)
    if pixels.shape != (rows, cols):
        raise DicomError(
            name, f"decoded shape {pixels.shape} differs from Rows×Columns {rows}×{cols}"
        )
    pixels = _to_uint8(pixels, ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = 255 - pixels
    return DicomImage(pixels=np.ascontiguousarray(pixels), meta=_meta(ds, rows, cols))


def max_dicom_bytes() -> int:
    """The largest DICOM read (env PNEUMO_MAX_DICOM_BYTES, default 64 MiB): real radiographs
    are a few MB, and a hostile file must not fill memory."""
    return settings().max_dicom_bytes


def too_large(size: int) -> str:
    return (
        f"file of {size:,} bytes is over the {max_dicom_bytes():,}-byte cap for one DICOM "
        "(PNEUMO_MAX_DICOM_BYTES); not read"
    )


def _parse(source: str | Path | bytes, name: str) -> pydicom.Dataset:
    try:
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        if size > max_dicom_bytes():
            raise DicomError(name, too_large(size))
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise DicomError(name, f"cannot read file ({exc.strerror or exc})") from exc
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise DicomError(name, "not a DICOM file (no DICM preamble)") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DicomError(name, f"truncated or corrupt DICOM ({exc})") from exc
    # pydicom only warns when the data ends inside an element, and returns what it has read.
    if any("End of file reached" in str(w.message) for w in caught):
        raise DicomError(name, "truncated file (data ends inside an element)")
    return ds


def _check_geometry(ds: pydicom.Dataset, name: str) -> tuple[int, int]:
    if "PixelData" not in ds:
        raise DicomError(name, "no pixel data")
    missing = [k for k in ("Rows", "Columns", "PhotometricInterpretation") if ds.get(k) is None]
    if missing:
        raise DicomError(name, f"missing {', '.join(missing)}")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1:
        raise DicomError(name, f"empty image dimensions {rows}×{cols}")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or ds.PhotometricInterpretation not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        raise DicomError(
            name,
            f"not a grayscale image (PhotometricInterpretation {ds.PhotometricInterpretation}, "
            f"SamplesPerPixel {ds.get('SamplesPerPixel', 1)})",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomError(name, f"{frames} frames, expected a single frame")
    return rows, cols


def _decode(ds: pydicom.Dataset, name: str) -> np.ndarray:
    if ds.file_meta.get("TransferSyntaxUID") == JPEGBaseline8Bit:
        return _decode_jpeg_baseline(ds, name)
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom's handlers raise many types for bad or short data
        raise DicomError(name, f"cannot decode pixel data ({exc})") from exc


def _decode_jpeg_baseline(ds: pydicom.Dataset, name: str) -> np.ndarray:
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (StopIteration, ValueError, EOFError) as exc:
        raise DicomError(name, f"truncated or corrupt encapsulated pixel data ({exc})") from exc
    # libjpeg fills a cut-off stream with gray and only warns: insist on the end marker.
    if not frame.rstrip(b"\x00").endswith(JPEG_END_OF_IMAGE):
        raise DicomError(name, "truncated JPEG frame (no end-of-image marker)")
    pixels = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 2:
        raise DicomError(name, "JPEG frame cannot be decoded as one grayscale image")
    return pixels


def _to_uint8(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """8-bit data passes through; deeper data is windowed with the file's first
    WindowCenter/WindowWidth (DICOM's linear VOI function, after the modality rescale), or,
    without one, with the FALLBACK_WINDOW_PERCENTILES of the image."""
    if pixels.dtype == np.uint8:
        return pixels
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    else:
        low, high = np.percentile(values, FALLBACK_WINDOW_PERCENTILES)
    scale = 255.0 / max(float(high - low), 1e-6)
    return np.clip((values - low) * scale + 0.5, 0, 255).astype(np.uint8)


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def _meta(ds: pydicom.Dataset, rows: int, cols: int) -> dict[str, Any]:
    spacing = ds.get("PixelSpacing")
    has_spacing = spacing is not None and len(spacing) == 2
    return {
        "patientId": str(ds.get("PatientID", "")) or None,
        "sex": str(ds.get("PatientSex", "")).strip() or None,
        "age": _age_years(str(ds.get("PatientAge", ""))),
        "view_position": str(ds.get("ViewPosition", "")).strip() or None,
        "rows": rows,
        "cols": cols,
        "pixel_spacing_row": float(spacing[0]) if has_spacing else None,
        "pixel_spacing_col": float(spacing[1]) if has_spacing else None,
    }


def _age_years(text: str) -> int | None:
    """DICOM ages are "032Y"/"006M"; the competition files write bare years ("32")."""
    match = _AGE.match(text)
    if not match:
        return None
    return int(int(match.group(1)) * _DAYS_PER_UNIT[match.group(2).upper()] // 365.25)
