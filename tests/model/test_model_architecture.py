"""The vision encoder's convolutional branch and the command-line copies of the options."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.architecture import (
    FINDING_POOLS,
    GAZE_MODES,
    TINY,
    ConvBranch,
    GazeXModel,
    GazeXSettings,
)
from model.imaging import _channels, patchify, prepare_image
from model.tokenizer import TextCodec, train_tokenizer

SETTINGS = GazeXSettings(max_pixels=112 * 112, detail_channel=True, conv_branch=(4, 8, 8))


def _model(settings: GazeXSettings) -> GazeXModel:
    codec = TextCodec(train_tokenizer(["no effusion", "a line in the svc"] * 10, vocab_size=300))
    return GazeXModel.from_scratch(codec, settings, TINY, seed=0)


def _batch(settings: GazeXSettings) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    spec = settings.patch_spec
    images = [
        prepare_image(rng.random(shape, dtype=np.float32), spec)
        for shape in ((300, 250), (200, 400))
    ]
    pixel_values = torch.from_numpy(patchify(images, spec))
    grid_thw = torch.tensor([im.grid_thw for im in images])
    films = [
        (_channels(im.resized, spec.detail_channel) - np.array(spec.image_mean))
        / np.array(spec.image_std)
        for im in images
    ]
    return films, pixel_values, grid_thw


def test_conv_branch_sees_each_film_as_the_model_input() -> None:
    """The branch unpacks Qwen2.5-VL's packed patches back into each (non-square) film of a
    batch of two sizes, pixel for pixel, and gives one feature per visual token."""
    model = _model(SETTINGS)
    films, pixel_values, grid_thw = _batch(SETTINGS)
    branch = model.conv_branch
    assert isinstance(branch, ConvBranch)
    unpacked = branch.films(pixel_values, grid_thw)
    for film, got in zip(films, unpacked, strict=True):
        np.testing.assert_allclose(got.numpy().transpose(1, 2, 0), film, atol=1e-5)
    tokens = model.image_features(pixel_values, grid_thw)
    extra, maps = branch(pixel_values, grid_thw)
    assert [e.shape for e in extra] == [t.shape for t in tokens]
    cells = branch.cells
    assert cells == SETTINGS.patch_size * SETTINGS.merge_size // 4  # two 2x2 pools
    for (_, gh, gw), feature_map in zip(grid_thw.tolist(), maps, strict=True):
        m = SETTINGS.merge_size
        assert feature_map.shape == (8, gh // m * cells, gw // m * cells)


def test_mask_decoder_gives_each_film_its_cell_grid() -> None:
    """Two films of different shapes in one batch: each gets one mask logit per cell of its
    own subdivided token grid, row-major, and the padding beyond is marked invalid; at the
    first step the query term is small, so a cell's logit is near its token's."""
    settings = dataclasses.replace(SETTINGS, mask_decoder=8)
    assert settings.mask_cells == 7
    model = _model(settings)
    _, pixel_values, grid_thw = _batch(settings)
    feats, maps = model.encode_images(pixel_values, grid_thw)
    n = [int(f.shape[0]) for f in feats]
    h_img = torch.zeros(2, max(n), model.hidden_size)
    for i, f in enumerate(feats):
        h_img[i, : n[i]] = f
    grid_hw = torch.tensor([[gh // 2, gw // 2] for _, gh, gw in grid_thw.tolist()])
    token_logits = torch.randn(2, len(settings.finding_keys), max(n))
    cells = model.cell_masks(maps, torch.zeros(2, model.hidden_size), h_img, token_logits, grid_hw)
    assert cells is not None
    logits, valid = cells
    sizes = [int(gh * gw) * 49 for gh, gw in grid_hw.tolist()]
    assert logits.shape == (2, len(settings.finding_keys), max(sizes))
    assert valid.sum(-1).tolist() == sizes
    # The cell at the centre of token (r, c) carries that token's logit plus the query term.
    gw = int(grid_hw[0, 1])
    r, c = 1, 2
    centre = (r * 7 + 3) * gw * 7 + c * 7 + 3
    residual = logits[0, :, centre] - token_logits[0, :, r * gw + c]
    assert residual.abs().max() < 1.0
    with pytest.raises(ValueError, match="convolutional branch"):
        GazeXSettings(mask_decoder=8)


def test_conv_branch_starts_as_a_no_op_so_a_backbone_keeps_its_tokens() -> None:
    """At initialisation the branch adds exactly zero: a pretrained ViT's visual tokens are
    what they were without it."""
    plain = _model(dataclasses.replace(SETTINGS, conv_branch=()))
    hybrid = _model(SETTINGS)
    hybrid.vlm.load_state_dict(plain.vlm.state_dict())
    _, pixel_values, grid_thw = _batch(SETTINGS)
    for a, b in zip(
        plain.image_features(pixel_values, grid_thw),
        hybrid.image_features(pixel_values, grid_thw),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_conv_branch_widths_must_divide_the_token_window() -> None:
    """Five halvings do not fit a 28 px token window: a clear error, not a shape mismatch."""
    with pytest.raises(ValueError, match="halvings"):
        _model(dataclasses.replace(SETTINGS, conv_branch=(2, 2, 2, 2, 2, 2)))


def test_command_line_choices_are_the_models_own() -> None:
    """`gazex train` spells out the gaze modes and finding pools without importing torch;
    they are the ones the model accepts."""
    from model.train.cli import FINDING_POOL_CHOICES, GAZE_MODE_CHOICES

    assert GAZE_MODE_CHOICES == GAZE_MODES
    assert FINDING_POOL_CHOICES == FINDING_POOLS
