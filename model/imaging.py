"""A film to the model's vision input: resize to the pixel budget, cut Qwen2.5-VL patches.

Numpy and Pillow only (the torchvision-free image processor), so that it runs in data
workers as well as at inference and can be tested on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.geometry import PatchGrid, smart_size

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _processor() -> Any:
    # The torchvision-free (PIL/numpy) Qwen2-VL image processor.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return Qwen2VLImageProcessorPil()


@dataclass(frozen=True)
class ImageInput:
    """One image resized to the model's pixel budget (patches are cut per batch)."""

    resized: npt.NDArray[np.float32]  # (height, width) in [0, 1]
    grid_thw: tuple[int, int, int]  # in vision patches (before merging)
    grid: PatchGrid  # LM token grid and source size


@dataclass(frozen=True)
class PatchSpec:
    """How images are cut into patches (copied from the checkpoint settings)."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    #: Fine detail (film minus its blur) in the second channel instead of the film.
    detail_channel: bool = False


def prepare_image(image: npt.NDArray[np.float32], spec: PatchSpec) -> ImageInput:
    """Resize a (Rows, Columns) [0, 1] image, whole, to the pixel budget (aspect kept)."""
    rows, columns = int(image.shape[0]), int(image.shape[1])
    factor = spec.patch_size * spec.merge_size
    height, width = smart_size(rows, columns, factor, spec.min_pixels, spec.max_pixels)
    source = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    if height < rows // 2 and width < columns // 2:
        # Box-filter down to about twice the target first: fast and alias-free.
        source = source.reduce(max(1, min(rows // height, columns // width) // 2))
    resized = np.asarray(
        source.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32
    )
    gh, gw = height // spec.patch_size, width // spec.patch_size
    grid = PatchGrid(
        Rows=rows, Columns=columns, grid_h=gh // spec.merge_size, grid_w=gw // spec.merge_size
    )
    return ImageInput(np.clip(resized, 0.0, 1.0), (1, gh, gw), grid)


#: Blur (model-input pixels) whose residual is the detail channel, and its gain.
DETAIL_SIGMA = 2.0
DETAIL_GAIN = 4.0


def _channels(resized: npt.NDArray[np.float32], detail: bool) -> npt.NDArray[np.float32]:
    """(H, W, 3): the film three times, or film, 0.5 + gain x (film - blur), film."""
    if not detail:
        return np.repeat(resized[..., None], 3, axis=-1)
    from scipy.ndimage import gaussian_filter

    fine = resized - gaussian_filter(resized, DETAIL_SIGMA, mode="nearest")
    second = np.clip(0.5 + DETAIL_GAIN * fine, 0.0, 1.0).astype(np.float32)
    return np.stack([resized, second, resized], axis=-1)


def patchify(images: Sequence[ImageInput], spec: PatchSpec) -> npt.NDArray[np.float32]:
    """Packed vision patches for a batch, in the layout Qwen2.5-VL's encoder expects."""
    out = _processor().preprocess(
        images=[_channels(im.resized, spec.detail_channel) for im in images],
        do_resize=False,
        do_rescale=False,
        do_normalize=True,
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
        patch_size=spec.patch_size,
        merge_size=spec.merge_size,
        temporal_patch_size=spec.temporal_patch_size,
        return_tensors="np",
    )
    grids = [tuple(int(v) for v in row) for row in out["image_grid_thw"]]
    if grids != [im.grid_thw for im in images]:
        raise ValueError(f"image processor grids {grids} differ from the planned ones")
    return np.asarray(out["pixel_values"], dtype=np.float32)
