"""Rendered images and thumbnails (PS3.18 8.3.5 / 9.5): a frame as JPEG or PNG.

Pure functions over a header and its decoded frame (no I/O): the modality LUT (rescale),
then the VOI transform (the ``window`` asked for; else the header's Window Center/Width or
VOI LUT; else the frame's min/max), MONOCHROME1 inverted so that it displays as it should,
colour scaled to 8 bits, then scaled to the ``viewport`` / ``rows`` / ``columns`` asked for.

Objects with no image to draw (SR, SEG, presentation states, key objects) raise
``NotRenderable``.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut

logger = logging.getLogger(__name__)

JPEG, PNG = "image/jpeg", "image/png"
MEDIA_TYPES = (JPEG, PNG)
#: The longest side of a thumbnail when the request gives no size.
THUMBNAIL_SIZE = 128
#: The largest image the node renders on request (each side).
MAX_SIDE = 8192

#: SOP Classes with no image to draw, by what they are.
NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a Segmentation",
    "1.2.840.10008.5.1.4.1.1.11.1": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.88.59": "a key object selection",
}
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


class NotRenderable(ValueError):
    """The object has no image that can be rendered."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = JPEG
    window: Window | None = None
    #: Fit into (columns, rows) keeping the aspect ratio.
    viewport: tuple[int, int] | None = None
    rows: int | None = None
    columns: int | None = None
    quality: int = 90
    #: A thumbnail: never larger than the image, THUMBNAIL_SIZE when no size is given.
    thumbnail: bool = False


def check_renderable(header: Dataset) -> None:
    """Raise NotRenderable (saying what the object is) when it has no image."""
    sop_class = str(header.get("SOPClassUID", ""))
    if sop_class.startswith(_SR_PREFIX) or sop_class in NOT_IMAGES:
        what = NOT_IMAGES.get(sop_class, "a structured report")
        raise NotRenderable(f"the instance is {what}: it has no rendered image")
    if "Rows" not in header or "Columns" not in header:
        raise NotRenderable("the instance has no pixel data to render")


def parse_window(value: str) -> Window:
    """``center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError("window is center,width[,function]")
    center, width = float(parts[0]), float(parts[1])
    function = parts[2].upper() if len(parts) == 3 else "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0:
        raise ValueError("window: width > 0 and function LINEAR, LINEAR_EXACT or SIGMOID")
    if not (math.isfinite(center) and math.isfinite(width)):
        raise ValueError("window values must be finite")
    return Window(center, width, function)


def parse_size(value: str, name: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= MAX_SIDE:
        raise ValueError(f"{name} is a whole number from 1 to {MAX_SIDE}")
    return int(value)


def parse_viewport(value: str) -> tuple[int, int]:
    """``vw,vh[,sx,sy,sw,sh]``: the source region is not supported (whole image)."""
    parts = value.split(",")
    if len(parts) not in (2, 6):
        raise ValueError("viewport is vw,vh[,sx,sy,sw,sh]")
    return parse_size(parts[0].strip(), "viewport width"), parse_size(
        parts[1].strip(), "viewport height"
    )


def render(header: Dataset, pixels: npt.NDArray[np.generic], options: RenderOptions) -> bytes:
    """``pixels`` (one frame as pydicom decodes it, RGB for colour) encoded as asked."""
    check_renderable(header)
    image = Image.fromarray(to_display(header, pixels, options.window))
    image = _scaled(image, options)
    out = io.BytesIO()
    if options.media_type == PNG:
        image.save(out, format="PNG", optimize=False)
    elif options.media_type == JPEG:
        image.save(out, format="JPEG", quality=options.quality)
    else:
        raise NotRenderable(f"{options.media_type} is not a rendered media type here")
    return out.getvalue()


def to_display(
    header: Dataset, pixels: npt.NDArray[np.generic], window: Window | None = None
) -> npt.NDArray[np.uint8]:
    """8-bit values as they should be displayed: (rows, columns) grey or (rows, columns, 3)."""
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, header)
        return _to_uint8(rgb, 16 if rgb.dtype.itemsize > 1 else 8)
    if pixels.ndim == 3:  # RGB (pydicom converts YBR to RGB)
        bits = int(header.get("BitsStored", 8) or 8)
        return _to_uint8(pixels, bits)
    values: npt.NDArray[np.float64] = np.asarray(
        apply_modality_lut(pixels, header), dtype=np.float64
    )
    if window is not None:
        grey = _window(values, window)
    elif "VOILUTSequence" in header and "WindowCenter" not in header:
        lut = apply_voi_lut(apply_modality_lut(pixels, header), header, index=0)
        grey = _min_max(np.asarray(lut, dtype=np.float64))
    elif "WindowCenter" in header and "WindowWidth" in header:
        grey = _window(values, _header_window(header))
    else:
        grey = _min_max(values)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _header_window(header: Dataset) -> Window:
    center, width = header.WindowCenter, header.WindowWidth
    center = float(center[0] if _multi(center) else center)
    width = float(width[0] if _multi(width) else width)
    function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    return Window(center, max(width, 1.0) if function == "LINEAR" else max(width, 1e-6), function)


def _multi(value: object) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _window(values: npt.NDArray[np.float64], window: Window) -> npt.NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), to 0..255."""
    c, w = window.center, window.width
    out: npt.NDArray[np.floating[Any]]
    if window.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "LINEAR_EXACT":
        out = ((values - c) / w + 0.5) * 255.0
    else:
        w = max(w, 1.0)
        out = ((values - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0 if w > 1 else (values > c) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _min_max(values: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _to_uint8(values: npt.NDArray[np.generic], bits: int) -> npt.NDArray[np.uint8]:
    if bits <= 8:
        return np.asarray(values).astype(np.uint8)
    return (np.asarray(values).astype(np.uint32) >> (bits - 8)).clip(0, 255).astype(np.uint8)


def _scaled(image: Image.Image, options: RenderOptions) -> Image.Image:
    width, height = image.size
    box: tuple[int, int] | None = None
    if options.viewport is not None:
        box = options.viewport
    elif options.rows is not None and options.columns is not None:
        box = (options.columns, options.rows)
    elif options.rows is not None:
        box = (max(1, round(width * options.rows / height)), options.rows)
    elif options.columns is not None:
        box = (options.columns, max(1, round(height * options.columns / width)))
    elif options.thumbnail:
        box = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    if box is None:
        return image
    scale = min(box[0] / width, box[1] / height)
    if options.thumbnail:
        scale = min(scale, 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    return image.resize(size, Image.Resampling.BILINEAR)
