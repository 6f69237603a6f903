"""Exact mapping between source pixels and the model's patch grid.

The image processor resizes the *whole* source image (``Rows`` x ``Columns``) to a grid of
``grid_h`` x ``grid_w`` language-model image tokens (merged vision patches), so token
``(r, c)`` covers exactly the source rectangle
``[c * Columns / grid_w, (c + 1) * Columns / grid_w)`` by
``[r * Rows / grid_h, (r + 1) * Rows / grid_h)`` in SCOORD (column, row; 0.0 is the
top-left corner of the top-left pixel). No padding, no cropping: the two axes scale
independently, which keeps the mapping exact on any aspect.

Pure numpy, no torch: the result builders and tests use it directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PatchGrid", "smart_size"]


def smart_size(
    rows: int, columns: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Resized (height, width), both multiples of ``factor``, area within the pixel budget.

    The same rule as Qwen2-VL's ``smart_resize`` (aspect kept as closely as the factor allows),
    restated here so that the geometry does not import ``transformers``.
    """
    if rows <= 0 or columns <= 0:
        raise ValueError(f"image size must be positive, got {rows}x{columns}")
    if max(rows, columns) / min(rows, columns) > 200:
        raise ValueError(f"aspect ratio of a {rows}x{columns} image exceeds 200")
    h_bar = max(factor, round(rows / factor) * factor)
    w_bar = max(factor, round(columns / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((rows * columns) / max_pixels)
        h_bar = max(factor, math.floor(rows / beta / factor) * factor)
        w_bar = max(factor, math.floor(columns / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (rows * columns))
        h_bar = math.ceil(rows * beta / factor) * factor
        w_bar = math.ceil(columns * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class PatchGrid:
    """The token grid of one image and its source size."""

    Rows: int
    Columns: int
    grid_h: int
    grid_w: int

    def __post_init__(self) -> None:
        if min(self.Rows, self.Columns, self.grid_h, self.grid_w) <= 0:
            raise ValueError(f"invalid patch grid {self}")

    @property
    def num_patches(self) -> int:
        return self.grid_h * self.grid_w

    def patch_index(self, x: float, y: float) -> int:
        """Index (row-major) of the token containing SCOORD point ``(x, y)``; clamped."""
        c = min(max(math.floor(x * self.grid_w / self.Columns), 0), self.grid_w - 1)
        r = min(max(math.floor(y * self.grid_h / self.Rows), 0), self.grid_h - 1)
        return r * self.grid_w + c

    def patch_indices(
        self, xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.int64]:
        """Vectorised :meth:`patch_index`."""
        c = np.clip(np.floor(xs * self.grid_w / self.Columns), 0, self.grid_w - 1).astype(np.int64)
        r = np.clip(np.floor(ys * self.grid_h / self.Rows), 0, self.grid_h - 1).astype(np.int64)
        return r * self.grid_w + c

    def patch_centre(self, index: int) -> tuple[float, float]:
        """SCOORD centre (x, y) of token ``index`` in source pixels."""
        if not 0 <= index < self.num_patches:
            raise ValueError(f"patch index {index} outside a {self.grid_h}x{self.grid_w} grid")
        r, c = divmod(index, self.grid_w)
        return ((c + 0.5) * self.Columns / self.grid_w, (r + 0.5) * self.Rows / self.grid_h)

    def patch_box(self, index: int) -> tuple[float, float, float, float]:
        """SCOORD (x0, y0, x1, y1) covered by token ``index``."""
        r, c = divmod(index, self.grid_w)
        return (
            c * self.Columns / self.grid_w,
            r * self.Rows / self.grid_h,
            (c + 1) * self.Columns / self.grid_w,
            (r + 1) * self.Rows / self.grid_h,
        )

    def normalise_box(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[float, float, float, float]:
        """Box as (cx, cy, w, h) fractions of the image, each in [0, 1]."""
        x0, x1 = np.clip([x0, x1], 0.0, self.Columns)
        y0, y1 = np.clip([y0, y1], 0.0, self.Rows)
        return (
            float((x0 + x1) / 2.0 / self.Columns),
            float((y0 + y1) / 2.0 / self.Rows),
            float((x1 - x0) / self.Columns),
            float((y1 - y0) / self.Rows),
        )

    def denormalise_box(
        self, cx: float, cy: float, w: float, h: float
    ) -> tuple[float, float, float, float]:
        """Inverse of :meth:`normalise_box`, clipped to the image, never degenerate."""
        min_w = min(1.0, float(self.Columns))
        min_h = min(1.0, float(self.Rows))
        w_px = max(w * self.Columns, min_w)
        h_px = max(h * self.Rows, min_h)
        x0 = min(max(cx * self.Columns - w_px / 2.0, 0.0), self.Columns - min_w)
        y0 = min(max(cy * self.Rows - h_px / 2.0, 0.0), self.Rows - min_h)
        x1 = min(max(cx * self.Columns + w_px / 2.0, x0 + min_w), float(self.Columns))
        y1 = min(max(cy * self.Rows + h_px / 2.0, y0 + min_h), float(self.Rows))
        return (float(x0), float(y0), float(x1), float(y1))

    def subdivided(self, cells: int) -> PatchGrid:
        """The same image with each token split into ``cells`` x ``cells`` cells (the mask
        decoder's grid)."""
        return PatchGrid(self.Rows, self.Columns, self.grid_h * cells, self.grid_w * cells)

    def coverage_map(self, mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        """Fraction of each token's source pixels that are set in a source-size ``mask``."""
        if mask.shape != (self.Rows, self.Columns):
            raise ValueError(f"mask shape {mask.shape} is not {self.Rows}x{self.Columns}")
        row_edges = np.floor(np.arange(self.grid_h + 1) * self.Rows / self.grid_h).astype(int)
        col_edges = np.floor(np.arange(self.grid_w + 1) * self.Columns / self.grid_w).astype(int)
        m = mask.astype(np.float32)
        # Sum over blocks with cumulative sums (exact for any block size).
        cs = np.zeros((self.Rows + 1, self.Columns + 1), dtype=np.float64)
        cs[1:, 1:] = m.cumsum(0).cumsum(1)
        r0, r1 = row_edges[:-1], row_edges[1:]
        c0, c1 = col_edges[:-1], col_edges[1:]
        total = cs[np.ix_(r1, c1)] - cs[np.ix_(r0, c1)] - cs[np.ix_(r1, c0)] + cs[np.ix_(r0, c0)]
        area = np.outer(np.maximum(r1 - r0, 1), np.maximum(c1 - c0, 1))
        cover: npt.NDArray[np.float32] = (total / area).astype(np.float32)
        return cover

    def upsample(self, values: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Nearest-token upsampling of a (grid_h, grid_w) map to source size (Rows, Columns)."""
        grid = np.asarray(values, dtype=np.float32).reshape(self.grid_h, self.grid_w)
        rows = np.minimum(
            ((np.arange(self.Rows) + 0.5) * self.grid_h / self.Rows).astype(int), self.grid_h - 1
        )
        cols = np.minimum(
            ((np.arange(self.Columns) + 0.5) * self.grid_w / self.Columns).astype(int),
            self.grid_w - 1,
        )
        return grid[np.ix_(rows, cols)]
