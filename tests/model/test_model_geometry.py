"""Patch-grid geometry: source pixels <-> model tokens, exact on any aspect."""

from __future__ import annotations

import numpy as np
import pytest

from model.architecture import GazeXSettings
from model.geometry import PatchGrid, smart_size
from model.imaging import patchify, prepare_image


@pytest.mark.parametrize(("rows", "columns"), [(517, 333), (333, 517), (2500, 2048), (97, 301)])
def test_smart_size_respects_factor_and_budget(rows: int, columns: int) -> None:
    """Resized sides are multiples of the merge factor and the area stays within budget."""
    height, width = smart_size(rows, columns, 28, 56 * 56, 224 * 224)
    assert height % 28 == 0 and width % 28 == 0
    assert height * width <= 224 * 224
    assert (height > width) == (rows > columns)


def test_patch_index_exact_on_non_square_image() -> None:
    """Every source pixel centre maps to the token whose source rectangle contains it."""
    grid = PatchGrid(Rows=517, Columns=333, grid_h=9, grid_w=6)
    ys, xs = np.mgrid[0:517, 0:333]
    indices = grid.patch_indices(xs.ravel() + 0.5, ys.ravel() + 0.5)
    for index in np.unique(indices):
        x0, y0, x1, y1 = grid.patch_box(int(index))
        members = indices == index
        assert np.all((xs.ravel()[members] + 0.5 >= x0) & (xs.ravel()[members] + 0.5 < x1))
        assert np.all((ys.ravel()[members] + 0.5 >= y0) & (ys.ravel()[members] + 0.5 < y1))
    assert set(np.unique(indices)) == set(range(grid.num_patches))
    # Round trip: a token's centre maps back to the same token; corners stay inside the image.
    for index in range(grid.num_patches):
        x, y = grid.patch_centre(index)
        assert grid.patch_index(x, y) == index
        assert 0 < x < 333 and 0 < y < 517
    assert grid.patch_index(333.0, 517.0) == grid.num_patches - 1


def test_prepared_grid_matches_image_processor() -> None:
    """The planned token grid equals what the Qwen2-VL image processor produces."""
    settings = GazeXSettings()
    image = np.random.default_rng(0).random((517, 333)).astype(np.float32)
    prepared = prepare_image(image, settings.patch_spec)
    assert (prepared.grid.Rows, prepared.grid.Columns) == (517, 333)
    t, gh, gw = prepared.grid_thw
    assert (gh // 2, gw // 2) == (prepared.grid.grid_h, prepared.grid.grid_w)
    assert prepared.grid.grid_h > prepared.grid.grid_w
    patches = patchify([prepared], settings.patch_spec)
    assert patches.shape == (t * gh * gw, 3 * 2 * 14 * 14)


def test_box_normalisation_round_trip_and_clipping() -> None:
    """Boxes survive normalise/denormalise exactly and are clipped into the image."""
    grid = PatchGrid(Rows=300, Columns=200, grid_h=10, grid_w=7)
    box = (12.5, 40.0, 150.0, 299.0)
    assert np.allclose(grid.denormalise_box(*grid.normalise_box(*box)), box)
    x0, y0, x1, y1 = grid.denormalise_box(0.99, 0.99, 0.5, 0.5)
    assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 300


def test_coverage_map_counts_mask_fraction_per_token() -> None:
    """A mask covering exactly one token's rectangle gives coverage 1 there and 0 elsewhere."""
    grid = PatchGrid(Rows=100, Columns=60, grid_h=5, grid_w=3)
    mask = np.zeros((100, 60), dtype=bool)
    mask[20:40, 20:40] = True
    cover = grid.coverage_map(mask)
    expected = np.zeros((5, 3), dtype=np.float32)
    expected[1, 1] = 1.0
    assert np.allclose(cover, expected)
