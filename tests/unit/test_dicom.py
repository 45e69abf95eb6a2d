"""read_dicom on the real competition files, on files built with pydicom, and on broken ones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from pneumo_core.data.dicom import DicomError, read_dicom
from pneumo_core.errors import InputError

JPEG_TOLERANCE = 2  # OpenCV's and Pillow's libjpeg builds may round the IDCT differently


def build_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    syntax: str = ExplicitVRLittleEndian,
    **tags: object,
) -> bytes:
    """An uncompressed single-frame DICOM with the given pixels and extra tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.PatientID = "built-1"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in tags.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def reason_of(source: str | Path | bytes) -> str:
    with pytest.raises(DicomError) as caught:
        read_dicom(source)
    return caught.value.reason


def real_files(sample: Path) -> list[Path]:
    files = sorted((sample / "stage_2_train_images").glob("*.dcm"))
    assert len(files) == 16
    return files


# --- the real competition files ----------------------------------------------------------------


def test_real_files_decode_like_pydicom(rsna_sample: Path) -> None:
    for path in real_files(rsna_sample):
        image = read_dicom(path)
        reference = pydicom.dcmread(path).pixel_array
        assert image.pixels.shape == (1024, 1024)
        assert image.pixels.dtype == np.uint8
        diff = np.abs(image.pixels.astype(int) - reference.astype(int))
        assert diff.max() <= JPEG_TOLERANCE, path.name
        assert image.meta["patientId"] == path.stem
        assert image.meta["rows"] == image.meta["cols"] == 1024


def test_real_file_meta(rsna_sample: Path) -> None:
    path = rsna_sample / "stage_2_train_images" / "00436515-870c-4b36-a041-de91049b9ab4.dcm"
    assert read_dicom(path.read_bytes()).meta == {
        "patientId": "00436515-870c-4b36-a041-de91049b9ab4",
        "sex": "F",
        "age": 32,
        "view_position": "AP",
        "rows": 1024,
        "cols": 1024,
        "pixel_spacing_row": 0.139,
        "pixel_spacing_col": 0.139,
    }


# --- files built here -------------------------------------------------------------------------

GRADIENT8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 48 x 64


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_uncompressed_8bit_passes_through(syntax: str) -> None:
    image = read_dicom(build_dicom(GRADIENT8, syntax=syntax))
    np.testing.assert_array_equal(image.pixels, GRADIENT8)
    assert image.meta["rows"] == 48 and image.meta["cols"] == 64


def test_rle_compressed_goes_through_pydicom() -> None:
    ds = pydicom.dcmread(io.BytesIO(build_dicom(GRADIENT8)))
    ds.compress(RLELossless)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    np.testing.assert_array_equal(read_dicom(buffer.getvalue()).pixels, GRADIENT8)


def test_monochrome1_jpeg_is_inverted(rsna_sample: Path) -> None:
    path = real_files(rsna_sample)[0]
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    inverted = read_dicom(buffer.getvalue()).pixels
    np.testing.assert_array_equal(inverted, 255 - read_dicom(path).pixels)


def test_monochrome1_is_inverted() -> None:
    image = read_dicom(build_dicom(GRADIENT8, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(image.pixels, 255 - GRADIENT8)


def test_12bit_uses_the_files_window() -> None:
    values = np.array([[0, 1000, 1500, 2000, 2047, 3000, 4095]], dtype=np.uint16)
    data = build_dicom(values, bits_stored=12, WindowCenter=1500, WindowWidth=1001)
    pixels = read_dicom(data).pixels[0]
    assert pixels[0] == pixels[1] == 0  # at or below the window's floor
    assert abs(int(pixels[2]) - 128) <= 1  # the centre maps to mid-gray
    assert pixels[3] == pixels[4] == pixels[5] == pixels[6] == 255


def test_window_applies_after_the_modality_rescale() -> None:
    stored = np.array([[0, 500, 1000]], dtype=np.uint16)  # -1000, -500, 0 after the rescale
    data = build_dicom(
        stored,
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1000,
        WindowCenter=-500,
        WindowWidth=1001,
    )
    assert [int(v) for v in read_dicom(data).pixels[0]] == [0, 128, 255]


def test_16bit_without_window_stretches_the_percentile_range() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(20_000, 40_000, size=(64, 64), dtype=np.uint16)
    pixels = read_dicom(build_dicom(values, bits_stored=16)).pixels
    assert pixels.min() == 0 and pixels.max() == 255
    order = np.argsort(values.ravel(), kind="stable")
    assert np.all(np.diff(pixels.ravel()[order].astype(int)) >= 0)  # monotonic in the input


def test_16bit_monochrome1_is_inverted_after_windowing() -> None:
    values = np.array([[0, 2000, 4000]], dtype=np.uint16)
    data = build_dicom(
        values, photometric="MONOCHROME1", bits_stored=12, WindowCenter=2000, WindowWidth=4001
    )
    pixels = read_dicom(data).pixels[0]
    assert pixels[0] == 255 and pixels[2] == 0 and abs(int(pixels[1]) - 128) <= 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # Kaggle's bare "32" is one
@pytest.mark.parametrize(
    ("age", "years"), [("32", 32), ("032Y", 32), ("018M", 1), ("003W", 0), ("", None), ("x", None)]
)
def test_age_forms(age: str, years: int | None) -> None:
    assert read_dicom(build_dicom(GRADIENT8, PatientAge=age)).meta["age"] == years


# --- broken input -------------------------------------------------------------------------------


def test_errors_are_input_errors_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("not an image")
    with pytest.raises(InputError, match=r"notes\.dcm: not a DICOM file"):
        read_dicom(path)


def test_not_dicom_and_missing_file(tmp_path: Path) -> None:
    assert "not a DICOM" in reason_of(b"\x89PNG\r\n\x1a\n" + bytes(300))
    assert "not a DICOM" in reason_of(b"")
    assert "cannot read file" in reason_of(tmp_path / "absent.dcm")


def test_truncated_real_file(rsna_sample: Path) -> None:
    data = real_files(rsna_sample)[0].read_bytes()
    for cut in (2000, len(data) // 2, len(data) - 100):
        assert "truncated" in reason_of(data[:cut]), cut


def test_jpeg_frame_without_end_marker(rsna_sample: Path) -> None:
    ds = pydicom.dcmread(real_files(rsna_sample)[0])
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 2]])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert "no end-of-image marker" in reason_of(buffer.getvalue())


def test_truncated_uncompressed_pixels() -> None:
    data = build_dicom(GRADIENT8)
    assert "less than expected" in reason_of(data[:-500])


def test_no_pixel_data(rsna_sample: Path) -> None:
    ds = pydicom.dcmread(real_files(rsna_sample)[0])
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert reason_of(buffer.getvalue()) == "no pixel data"


def test_rows_columns_disagree_with_the_pixels(rsna_sample: Path) -> None:
    ds = pydicom.dcmread(real_files(rsna_sample)[0])
    ds.Rows = 512
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert "differs from Rows×Columns 512×1024" in reason_of(buffer.getvalue())


def test_colour_and_multiframe_are_refused() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    assert "not a grayscale image" in reason_of(build_dicom(rgb, photometric="RGB"))
    frames = np.zeros((2, 8, 8), np.uint8)
    assert "2 frames" in reason_of(build_dicom(frames))


def test_missing_dimensions() -> None:
    ds = pydicom.dcmread(io.BytesIO(build_dicom(GRADIENT8)))
    del ds.Rows
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert "missing Rows" in reason_of(buffer.getvalue())
