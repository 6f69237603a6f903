"""DICOM pixel handling: modality LUT, VOI window, MONOCHROME1, BitsStored, JPEG 2000."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pydicom.dataset import Dataset

from model.pixels import _display_values, display_image, stored_values


def test_monochrome1_is_inverted_to_the_monochrome2_picture(
    dicom_factory: Callable[..., Dataset],
) -> None:
    """A MONOCHROME1 file shows the same picture (1.0 white) as its MONOCHROME2 twin."""
    mono2 = display_image(dicom_factory(photometric="MONOCHROME2"))
    mono1 = display_image(dicom_factory(photometric="MONOCHROME1"))
    assert np.allclose(mono1, mono2, atol=1e-6)
    assert mono2.dtype == np.float32 and mono2.min() >= 0.0 and mono2.max() <= 1.0


def test_jpeg2000_decodes_like_the_uncompressed_file(dicom_factory: Callable[..., Dataset]) -> None:
    """A JPEG 2000 lossless file decodes to the same display image as the uncompressed one."""
    plain = display_image(dicom_factory(201, 157, jpeg2000=False))
    j2k_ds = dicom_factory(201, 157, jpeg2000=True)
    assert j2k_ds.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(display_image(j2k_ds), plain)


def test_window_and_rescale_follow_the_dicom_formula(dicom_factory: Callable[..., Dataset]) -> None:
    """Rescale then LINEAR window: below the window is black, above is white, centre mid-grey."""
    ds = dicom_factory(64, 48, bits_stored=12, rescale=(2.0, -1000.0), window=(3095.0, 2001.0))
    stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(64, 48).astype(float)
    value = stored * 2.0 - 1000.0
    expected = np.clip((value - (3095.0 - 0.5 - 1000.0)) / 2000.0, 0, 1)
    assert np.allclose(display_image(ds), expected, atol=1e-6)


def test_bits_stored_masks_unused_high_bits(dicom_factory: Callable[..., Dataset]) -> None:
    """Garbage above BitsStored (here bit 15) does not change the displayed image."""
    clean = dicom_factory(32, 40, bits_stored=12, window=(2048.0, 4096.0))
    dirty = dicom_factory(32, 40, bits_stored=12, window=(2048.0, 4096.0))
    stored = np.frombuffer(dirty.PixelData, dtype=np.uint16) | np.uint16(0x8000)
    dirty.PixelData = stored.tobytes()
    assert np.allclose(display_image(dirty), display_image(clean))


def test_without_voi_the_full_range_is_used(
    dicom_factory: Callable[..., Dataset], phantom_image: Callable[..., np.ndarray]
) -> None:
    """Without a window or VOI LUT the image is stretched over a robust percentile range."""
    image = display_image(dicom_factory(80, 60))
    assert image.min() == 0.0 and image.max() == 1.0
    assert np.corrcoef(image.ravel(), phantom_image(80, 60).ravel())[0, 1] > 0.99


@pytest.mark.parametrize(
    ("photometric", "bits_stored", "window", "rescale", "signed", "function"),
    [
        ("MONOCHROME2", 12, (2048.0, 4096.0), None, False, "LINEAR"),
        ("MONOCHROME1", 12, (3095.0, 2001.0), (2.0, -1000.0), False, "LINEAR_EXACT"),
        ("MONOCHROME2", 12, (100.0, 1500.0), None, True, "SIGMOID"),
        ("MONOCHROME2", 16, (30000.0, 20000.0), (1.0, -1024.0), False, "LINEAR"),
    ],
)
def test_lookup_table_path_matches_the_per_pixel_pipeline(
    dicom_factory: Callable[..., Dataset],
    photometric: str,
    bits_stored: int,
    window: tuple[float, float],
    rescale: tuple[float, float] | None,
    signed: bool,
    function: str,
) -> None:
    """A film large enough for the lookup table displays bit for bit as the per-pixel path."""
    ds = dicom_factory(
        640, 512, bits_stored=bits_stored, photometric=photometric, window=window, rescale=rescale
    )
    ds.VOILUTFunction = function
    if signed:
        ds.PixelRepresentation = 1
        stored = np.frombuffer(ds.PixelData, dtype=np.uint16) | np.uint16(0x8000)
        ds.PixelData = stored.tobytes()  # garbage above BitsStored; bit 11 is the sign
    per_pixel = _display_values(stored_values(ds), ds)
    image = display_image(ds)
    assert image.dtype == np.float32 and image.shape == (640, 512)
    assert np.array_equal(image, per_pixel)
