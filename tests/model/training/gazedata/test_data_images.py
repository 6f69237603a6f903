"""DICOM (CR/DX, MONOCHROME1/2, VOI window) and PNG writing and reading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model.train.gazedata.images import (
    ImageFormatError,
    read_image,
    voi_linear,
    write_dicom,
    write_png,
)
from model.train.gazedata.synth import generate_sample


@pytest.mark.parametrize("modality", ["CR", "DX"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_dicom_round_trip(tmp_path: Path, modality: str, photometric: str) -> None:
    """CR and DX files in both photometric senses read back as the display image."""
    s = generate_sample(2, height=150, width=120)
    path = tmp_path / "x.dcm"
    write_dicom(
        path,
        s.image,
        sample_id=s.sample_id,
        modality=modality,
        photometric=photometric,
        view=s.view,
    )
    ds = pydicom.dcmread(path)
    assert ds.Modality == modality
    assert ds.PhotometricInterpretation == photometric
    assert ds.SOPClassUID == (
        "1.2.840.10008.5.1.4.1.1.1" if modality == "CR" else "1.2.840.10008.5.1.4.1.1.1.1"
    )
    assert len(ds.ImagerPixelSpacing) == 2 and float(ds.ImagerPixelSpacing[0]) > 0
    assert float(ds.WindowWidth) > 1 and ds.BitsStored == 12
    assert (ds.Rows, ds.Columns) == (150, 120)
    back = read_image(path)
    assert float(np.abs(back - s.image).max()) < 1.5 / float(ds.WindowWidth)


def test_films_state_no_voi_lut_function(tmp_path: Path) -> None:
    """The films carry no VOILUTFunction (LINEAR is the default): OHIF 3.13.2 stops with
    "Invalid VOI LUT function" on a film that states LINEAR."""
    s = generate_sample(3, height=64, width=64)
    write_dicom(tmp_path / "x.dcm", s.image, sample_id=s.sample_id)
    assert "VOILUTFunction" not in pydicom.dcmread(tmp_path / "x.dcm")


def test_monochrome1_stores_inverted_values(tmp_path: Path) -> None:
    """MONOCHROME1 stores dense (white) anatomy as low values, MONOCHROME2 as high values."""
    s = generate_sample(2, size=96)
    write_dicom(tmp_path / "m1.dcm", s.image, sample_id="a", photometric="MONOCHROME1")
    write_dicom(tmp_path / "m2.dcm", s.image, sample_id="a", photometric="MONOCHROME2")
    m1 = pydicom.dcmread(tmp_path / "m1.dcm").pixel_array.astype(float)
    m2 = pydicom.dcmread(tmp_path / "m2.dcm").pixel_array.astype(float)
    assert np.corrcoef(m1.ravel(), m2.ravel())[0, 1] < -0.99


@pytest.mark.slow
def test_large_16_bit_dicom(tmp_path: Path) -> None:
    """A 2500 x 2048, 16-bit stored DX image (pipeline-test size) writes and reads back."""
    s = generate_sample(9, height=2500, width=2048)
    write_dicom(tmp_path / "big.dcm", s.image, sample_id=s.sample_id, bits_stored=16)
    ds = pydicom.dcmread(tmp_path / "big.dcm")
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (2500, 2048, 16)
    assert float(np.abs(read_image(tmp_path / "big.dcm") - s.image).max()) < 1e-4


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    """The same seed writes byte-identical DICOM and PNG files."""
    digests = []
    for run in ("a", "b"):
        s = generate_sample(4, size=96)
        write_dicom(tmp_path / f"{run}.dcm", s.image, sample_id=s.sample_id)
        write_png(tmp_path / f"{run}.png", s.image)
        digests.append(
            (
                hashlib.sha256((tmp_path / f"{run}.dcm").read_bytes()).hexdigest(),
                hashlib.sha256((tmp_path / f"{run}.png").read_bytes()).hexdigest(),
            )
        )
    assert digests[0] == digests[1]


def test_png_8_and_16_bit(tmp_path: Path) -> None:
    """8- and 16-bit PNGs read back within their quantisation step."""
    s = generate_sample(4, size=96)
    write_png(tmp_path / "a.png", s.image, bits=8)
    write_png(tmp_path / "b.png", s.image, bits=16)
    assert float(np.abs(read_image(tmp_path / "a.png") - s.image).max()) <= 0.5 / 255 + 1e-6
    assert float(np.abs(read_image(tmp_path / "b.png") - s.image).max()) <= 0.5 / 65535 + 1e-6


def test_voi_linear_matches_standard() -> None:
    """The linear VOI function follows PS3.3 C.11.2.1.2.1 at the window edges."""
    y = voi_linear(np.array([99.5, 100.0, 150.0, 200.0]), center=150.0, width=101.0)
    assert y[0] == 0.0 and y[-1] == 1.0 and abs(float(y[2]) - 0.505) < 1e-3


def test_unreadable_image_refused(tmp_path: Path) -> None:
    """A file that is no image is refused with ImageFormatError naming it."""
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(ImageFormatError, match=r"bad\.dcm"):
        read_image(bad)
    with pytest.raises(ImageFormatError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_jpeg_round_trip(tmp_path: Path) -> None:
    """A JPEG (MIMIC-CXR-JPG style) reads back close to the display image."""
    from model.train.gazedata.images import write_jpeg

    s = generate_sample(4, size=96)
    write_jpeg(tmp_path / "a.jpg", s.image)
    back = read_image(tmp_path / "a.jpg")
    assert back.shape == s.image.shape
    assert float(np.abs(back - s.image).mean()) < 0.02
