"""DICOM pixel data to a display-ready float image, the way a viewer would show it.

Order of operations (PS3.4 N.2 grayscale pipeline): stored values (BitsStored honoured, sign
extended when PixelRepresentation is 1) -> Modality LUT or Rescale Slope/Intercept -> VOI LUT
or window (first of several; VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID) -> Presentation:
MONOCHROME1 (or Presentation LUT Shape INVERSE) inverted so that 1.0 is always white. Without
any VOI, the 0.5th..99.5th percentile range is used. Compressed transfer syntaxes are decoded
by pydicom's pixel plug-ins (pylibjpeg, openjpeg, libjpeg, jpeg-ls).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)


class PixelDataError(ValueError):
    """The dataset has no usable grayscale image."""


#: The modalities of the films the model reads.
RADIOGRAPHS = frozenset({"CR", "DX"})


def check_radiograph(ds: Dataset) -> None:
    """Raise ValueError, saying what the object is, unless it is a CR or DX image."""
    modality = str(ds.get("Modality", "") or "none")
    if modality not in RADIOGRAPHS:
        raise ValueError(
            f"not a radiograph (Modality {modality}): the model reads CR and DX images"
        )
    if "PixelData" not in ds:
        raise ValueError("the data set has no pixel data")


def stored_values(ds: Dataset) -> npt.NDArray[np.float64]:
    """The first frame's stored values, BitsStored honoured, as float64."""
    return _stored_from_frame(_first_frame(ds), ds)


def _first_frame(ds: Dataset) -> npt.NDArray[np.generic]:
    """The first frame as pydicom decodes it (grayscale 2-D or colour 3-D)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise PixelDataError("dataset has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable data
        raise PixelDataError(
            f"cannot decode pixel data ({ds.file_meta.get('TransferSyntaxUID', 'unknown syntax')}"
            f"): {exc}"
        ) from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    if frames > 1:
        arr = arr[0]
    if samples == 1 and arr.ndim != 2:
        raise PixelDataError(f"expected a 2-D grayscale frame, got shape {arr.shape}")
    result: npt.NDArray[np.generic] = arr
    return result


def _stored_from_frame(arr: npt.NDArray[np.generic], ds: Dataset) -> npt.NDArray[np.float64]:
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples > 1:
        # Colour (e.g. secondary capture): ITU-R BT.601 luma; pydicom returns RGB by default.
        rgb = arr.astype(np.float64)
        return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    bits_stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
    if arr.dtype.kind in "iu" and bits_stored < arr.dtype.itemsize * 8:
        raw = arr.astype(np.int64) & ((1 << bits_stored) - 1)
        if int(ds.get("PixelRepresentation", 0)) == 1:
            sign_bit = 1 << (bits_stored - 1)
            raw = np.where(raw >= sign_bit, raw - (1 << bits_stored), raw)
        return raw.astype(np.float64)
    return arr.astype(np.float64)


def apply_modality(arr: npt.NDArray[np.float64], ds: Dataset) -> npt.NDArray[np.float64]:
    """Modality LUT Sequence if present, else Rescale Slope/Intercept."""
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        item = ds.ModalityLUTSequence[0]
        descriptor = [int(v) for v in item.LUTDescriptor]
        lut = _lut_data(item)
        first = descriptor[1]
        index = np.clip(np.round(arr).astype(np.int64) - first, 0, len(lut) - 1)
        return lut[index]
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return arr * slope + intercept


def _lut_data(item: Dataset) -> npt.NDArray[np.float64]:
    data = item.LUTData
    if isinstance(data, bytes):
        bits = int(item.LUTDescriptor[2])
        dtype = (
            np.uint8 if bits <= 8 and len(data) == int(item.LUTDescriptor[0] or 65536) else "<u2"
        )
        return np.frombuffer(data, dtype=dtype).astype(np.float64)
    values = [data] if isinstance(data, int | float) else list(data)
    return np.asarray(values, dtype=np.float64)


def _first(value: object) -> float:
    if isinstance(value, str | bytes | int | float):
        return float(value)
    return float(next(iter(value)))  # type: ignore[call-overload]


def apply_voi(arr: npt.NDArray[np.float64], ds: Dataset) -> npt.NDArray[np.float64]:
    """VOI LUT or window, scaled to [0, 1]; a robust percentile window when neither exists."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        lut = _lut_data(item)
        first = int(item.LUTDescriptor[1])
        index = np.clip(np.round(arr).astype(np.int64) - first, 0, len(lut) - 1)
        out = lut[index]
        lo, hi = float(lut.min()), float(lut.max())
        return np.zeros_like(out) if hi <= lo else (out - lo) / (hi - lo)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        centre = _first(ds.WindowCenter)
        width = _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (arr - centre) / max(width, 1e-6)))
        if function == "LINEAR_EXACT":
            width = max(width, 1e-6)
            return np.clip((arr - (centre - width / 2.0)) / width, 0.0, 1.0)
        # LINEAR (PS3.3 C.11.2.1.2.1): centre - 0.5, width - 1.
        width = max(width, 1.0)
        lower = centre - 0.5 - (width - 1.0) / 2.0
        return np.clip((arr - lower) / max(width - 1.0, 1e-6), 0.0, 1.0)
    lo, hi = np.percentile(arr, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def inverted(ds: Dataset) -> bool:
    """True when low output values are to be shown white."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    return photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")


def display_image(ds: Dataset) -> npt.NDArray[np.float32]:
    """The first frame of ``ds`` as float32 (Rows, Columns) in [0, 1], 1.0 white.

    Grayscale integer frames of up to 16 bits with a VOI LUT or window go through a lookup
    table: the pipeline below is run once on every possible stored value (at most 65,536)
    instead of on every pixel, and the frame is mapped through the table in one pass. Every
    step is per pixel, so the result is bit for bit the same (a 2500 x 2048 film: about
    15 ms instead of about 60 ms).
    """
    frame = _first_frame(ds)
    samples = int(ds.get("SamplesPerPixel", 1))
    if (
        samples == 1
        and frame.dtype.kind in "iu"
        and frame.dtype.itemsize <= 2
        and _has_voi(ds)
        and frame.size > 4 * (1 << (8 * frame.dtype.itemsize))
    ):
        unsigned = np.dtype(f"u{frame.dtype.itemsize}")
        codes = np.arange(1 << (8 * frame.dtype.itemsize), dtype=unsigned)
        domain = codes.view(frame.dtype)  # every value a pixel of this dtype can hold
        lut = _display_values(_stored_from_frame(domain, ds), ds)
        result: npt.NDArray[np.float32] = lut[frame.view(unsigned)]
        return result
    return _display_values(_stored_from_frame(frame, ds), ds)


def _has_voi(ds: Dataset) -> bool:
    """A VOI LUT or window: the VOI step is then a fixed per-value function (no percentiles)."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return True
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _display_values(arr: npt.NDArray[np.float64], ds: Dataset) -> npt.NDArray[np.float32]:
    """Stored values (float64) through modality, VOI and presentation to float32 [0, 1]."""
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples > 1:
        image = arr / max(float(2 ** int(ds.get("BitsStored", 8)) - 1), 1.0)
    else:
        image = apply_voi(apply_modality(arr, ds), ds)
        if inverted(ds):
            image = 1.0 - image
    return np.clip(image, 0.0, 1.0).astype(np.float32)
