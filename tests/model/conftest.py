"""Fixtures for the model tests: a few synthetic samples and a tiny trained checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from model.train.gazedata.sample import GazeSample


def phantom(rows: int, columns: int, seed: int = 0) -> npt.NDArray[np.float64]:
    """A smooth [0, 1] chest-like pattern: dark lungs, bright mediastinum and border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    u, v = xx / max(columns - 1, 1), yy / max(rows - 1, 1)
    lungs = np.exp(-(((u - 0.3) / 0.15) ** 2 + ((v - 0.5) / 0.3) ** 2)) + np.exp(
        -(((u - 0.7) / 0.15) ** 2 + ((v - 0.5) / 0.3) ** 2)
    )
    image = 0.8 - 0.6 * np.clip(lungs, 0, 1) + 0.02 * rng.standard_normal((rows, columns))
    return np.clip(image, 0.0, 1.0)


def make_dataset(
    rows: int = 200,
    columns: int = 160,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    jpeg2000: bool = False,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    seed: int = 0,
) -> Dataset:
    """A DX dataset with a phantom image; MONOCHROME1 stores the inverted values."""
    values = phantom(rows, columns, seed)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    stored = np.round(values * (2**bits_stored - 1)).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if photometric == "MONOCHROME1":
        ds.PresentationLUTShape = "INVERSE"
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.tobytes()
    if jpeg2000:
        ds.compress(JPEG2000Lossless, stored, encoding_plugin="pylibjpeg")
    return ds


@pytest.fixture(scope="session")
def tiny_samples() -> list[GazeSample]:
    """Sixteen small synthetic studies (non-square, so the grid is not square either)."""
    from model.train.gazedata.synth import generate_sample

    return [generate_sample(seed, height=112, width=96) for seed in range(16)]


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_samples: list[GazeSample]
) -> Path:
    """A tiny-config model trained for two short epochs by the real training loop."""
    from model.architecture import TINY, GazeXSettings
    from model.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-ckpt")
    settings = GazeXSettings(num_gaze_tokens=6, max_pixels=112 * 112, max_report_tokens=24)
    config = TrainConfig(
        gaze_epochs=1, multitask_epochs=1, batch_size=8, size=TINY, vocab_size=400, progress=False
    )
    train(tiny_samples[:12], out, settings, config, val_samples=tiny_samples[12:], device="cpu")
    return out


@pytest.fixture
def dicom_factory() -> Callable[..., Dataset]:
    """The :func:`make_dataset` factory (DX image, any size, MONOCHROME1/2, JPEG 2000)."""
    return make_dataset


@pytest.fixture
def phantom_image() -> Callable[..., npt.NDArray[np.float64]]:
    """The :func:`phantom` image factory."""
    return phantom
