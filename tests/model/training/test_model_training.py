"""Training loop, checkpoints and the --backbone path, on tiny random configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.architecture import TINY, GazeXModel, GazeXSettings
from model.inference import InferenceEngine
from model.tokenizer import TextCodec, train_tokenizer
from model.train.batching import build_example, collate
from model.train.gazedata.sample import GazeSample
from model.train.loop import (
    TrainConfig,
    corpus,
    epoch_batches,
    prepare_samples,
    train,
)
from model.train.losses import compute_losses

SETTINGS = GazeXSettings(num_gaze_tokens=6, max_pixels=112 * 112, max_report_tokens=24)


def _tiny_model(samples: list[GazeSample]) -> GazeXModel:
    codec = TextCodec(train_tokenizer(corpus(samples), vocab_size=400))
    return GazeXModel.from_scratch(codec, SETTINGS, TINY, seed=0)


def test_tiny_model_losses_fall(tiny_samples: list[GazeSample]) -> None:
    """A few optimiser steps on one batch lower every multitask loss."""
    torch.manual_seed(0)
    model = _tiny_model(tiny_samples)
    import random

    prepared = prepare_samples(tiny_samples[:8], SETTINGS)
    batches = epoch_batches(prepared, model.codec, SETTINGS, 8, random.Random(0), 1, False)
    batch = collate(batches[0], model.codec, SETTINGS.num_gaze_tokens, SETTINGS.patch_spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = {k: v.item() for k, v in compute_losses(model, batch, "multitask").items()}
    for _ in range(12):
        losses = compute_losses(model, batch, "multitask")
        optimizer.zero_grad()
        sum(losses.values()).backward()  # type: ignore[union-attr]
        optimizer.step()
    last = {k: v.item() for k, v in compute_losses(model, batch, "multitask").items()}
    for key in ("gaze", "finding", "box", "lm"):
        assert last[key] < first[key], (key, first[key], last[key])


def test_gaze_targets_follow_the_reader_in_time(tiny_samples: list[GazeSample]) -> None:
    """Key fixations cover every visited step; ordered mode keeps them in time order,
    shuffled keeps the set, not the order, and no-gaze drops the gaze tokens."""
    import random

    from model.imaging import prepare_image
    from model.train.batching import key_fixations

    sample = tiny_samples[0]
    image = prepare_image(sample.image, SETTINGS.patch_spec)
    keys = key_fixations(sample.fixations, image.grid, 6, SETTINGS.regions)
    assert 0 < len(keys) <= 6
    # Every step the reader visited keeps a key fixation (up to K of them).
    from model.abcdef import STEPS

    for s in tiny_samples:
        grid = prepare_image(s.image, SETTINGS.patch_spec).grid
        visited = {f.step for f in s.on_image_fixations() if f.step is not None}
        chosen = {STEPS[k.step] for k in key_fixations(s.fixations, grid, 6, SETTINGS.regions)}
        if len(visited) <= 6:
            assert visited <= chosen, (s.sample_id, visited - chosen)
    codec = TextCodec(train_tokenizer(corpus(tiny_samples[:2]), vocab_size=300))
    ordered = build_example(
        sample,
        image,
        codec,
        num_gaze_tokens=6,
        gaze_mode="ordered",
        finding_keys=SETTINGS.finding_keys,
        regions=SETTINGS.regions,
        rng=random.Random(0),
    )
    assert [t.patch_index for t in ordered.gaze_targets] == [k.patch_index for k in keys]
    shuffled = build_example(
        sample,
        image,
        codec,
        num_gaze_tokens=6,
        gaze_mode="shuffled",
        finding_keys=SETTINGS.finding_keys,
        regions=SETTINGS.regions,
        rng=random.Random(3),
    )
    assert sorted(t.patch_index for t in shuffled.gaze_targets) == sorted(
        k.patch_index for k in keys
    )
    none = build_example(
        sample,
        image,
        codec,
        num_gaze_tokens=6,
        gaze_mode="none",
        finding_keys=SETTINGS.finding_keys,
        regions=SETTINGS.regions,
        rng=random.Random(0),
    )
    assert none.gaze_targets == [] and codec.id("<st>") not in none.input_ids


def test_own_gaze_feeds_back_the_patch_the_model_points_to(
    tiny_samples: list[GazeSample],
) -> None:
    """With own gaze, <st> number j+1 carries the patch the model's pointer chose at <st> j
    (never the patch just fixated), not the reader's fixation: the same forward as feeding
    those choices in as if the reader had made them."""
    import random

    from model.train.batching import IGNORE
    from model.train.losses import forward_batch

    torch.manual_seed(0)
    model = _tiny_model(tiny_samples).eval()
    prepared = prepare_samples(tiny_samples[:4], SETTINGS)
    batches = epoch_batches(prepared, model.codec, SETTINGS, 4, random.Random(0), 1, False)
    batch = collate(batches[0], model.codec, SETTINGS.num_gaze_tokens, SETTINGS.patch_spec)
    k = SETTINGS.num_gaze_tokens
    targets = batch["gaze_targets"][:, :k]
    with torch.no_grad():
        logits = forward_batch(model, batch).gaze_logits[:, : k - 1].clone()
        for j in range(1, k - 1):
            logits[torch.arange(len(logits)), j, targets[:, j - 1].clamp(min=0)] = float("-inf")
        chosen = logits.argmax(-1).masked_fill(targets[:, : k - 1] == IGNORE, IGNORE)
        assert not torch.equal(chosen, targets[:, : k - 1])
        fed = dict(batch, gaze_targets=torch.cat([chosen, targets[:, k - 1 :]], dim=1))
        own = forward_batch(model, batch, own_gaze=True)
        expected = forward_batch(model, fed)
    torch.testing.assert_close(own.finding_logits, expected.finding_logits)
    torch.testing.assert_close(own.gaze_logits, expected.gaze_logits)


def test_checkpoint_round_trip_gives_identical_outputs(
    tiny_checkpoint: Path, tiny_samples: list[GazeSample]
) -> None:
    """Saving and re-loading a trained checkpoint reproduces its outputs exactly."""
    model = GazeXModel.load(tiny_checkpoint)
    engine = InferenceEngine(model, torch.device("cpu"))
    images = [s.image for s in tiny_samples[:2]]
    before = engine.run(images, questions=["Is there a nodule?"])
    copy = tiny_checkpoint.parent / "copy"
    model.save(copy)
    again = InferenceEngine(GazeXModel.load(copy), torch.device("cpu")).run(
        images, questions=["Is there a nodule?"]
    )
    for a, b in zip(before, again, strict=True):
        assert a.patch_indices == b.patch_indices
        assert np.array_equal(a.probabilities, b.probabilities)
        assert np.array_equal(a.boxes, b.boxes)
        assert a.report == b.report and a.answers == b.answers
    settings = json.loads((tiny_checkpoint / "gazex.json").read_text())
    assert settings["trained_on_synthetic_data"] is True
    assert len(settings["thresholds"]) == len(settings["finding_keys"])


def test_training_resumes_from_its_checkpoint(
    tmp_path: Path, tiny_samples: list[GazeSample]
) -> None:
    """An interrupted run, started again with the same command, continues at the next epoch;
    more epochs extend a finished run."""

    class Interrupted(Exception):
        pass

    def interrupt(epoch: int, _: dict[str, float]) -> None:
        raise Interrupted

    config = TrainConfig(
        gaze_epochs=1, multitask_epochs=1, batch_size=8, size=TINY, vocab_size=300, progress=False
    )
    with pytest.raises(Interrupted):
        train(tiny_samples[:8], tmp_path, SETTINGS, config, device="cpu", on_epoch=interrupt)
    assert torch.load(tmp_path / "training_state.pt", weights_only=False)["epoch"] == 1
    epochs: list[int] = []
    train(
        tiny_samples[:8],
        tmp_path,
        SETTINGS,
        config,
        device="cpu",
        on_epoch=lambda epoch, _: epochs.append(epoch),
    )
    assert epochs == [1]
    assert torch.load(tmp_path / "training_state.pt", weights_only=False)["epoch"] == 2
    # Asking for more multitask epochs extends the finished run instead of restarting it.
    longer = TrainConfig(
        gaze_epochs=1, multitask_epochs=2, batch_size=8, size=TINY, vocab_size=300, progress=False
    )
    train(
        tiny_samples[:8],
        tmp_path,
        SETTINGS,
        longer,
        device="cpu",
        on_epoch=lambda epoch, _: epochs.append(epoch),
    )
    assert epochs == [1, 2]


def test_backbone_folder_loads_offline_and_trains(
    tmp_path: Path, tiny_samples: list[GazeSample]
) -> None:
    """A tiny random Qwen2.5-VL saved to a folder is loaded offline, gets the gaze tokens
    and heads, trains, and its checkpoint reloads."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from model.architecture import scratch_config
    from model.tokenizer import EOS, IMAGE_PAD, PAD, VIDEO_PAD, VISION_END, VISION_START

    # The backbone's own tokenizer knows the Qwen vision markers but none of our gaze tokens.
    qwen_only = (PAD, EOS, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
    foreign = TextCodec(train_tokenizer(corpus(tiny_samples[:4]), 300, special_tokens=qwen_only))
    assert foreign.tokenizer.token_to_id("<st>") is None
    backbone = tmp_path / "qwen-tiny"
    backbone.mkdir()
    config = scratch_config(TINY, foreign, SETTINGS)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(backbone)
    foreign.save(backbone)
    vocab_before = foreign.vocab_size
    model = GazeXModel.from_backbone(backbone, SETTINGS)
    assert model.settings.backbone == "qwen-tiny"
    assert model.codec.id("<st>") >= vocab_before  # added, not reused
    assert model.codec.id("<st>") < model.vlm.get_input_embeddings().weight.shape[0]
    out = tmp_path / "ckpt"
    cfg = TrainConfig(gaze_epochs=1, multitask_epochs=1, batch_size=8, size=TINY, progress=False)
    train(tiny_samples[:8], out, SETTINGS, cfg, backbone=backbone, device="cpu")
    reloaded = GazeXModel.load(out)
    result = InferenceEngine(reloaded, torch.device("cpu")).run([tiny_samples[0].image])
    assert len(result[0].patch_indices) == SETTINGS.num_gaze_tokens


def test_key_fixations_keep_the_device_check_of_a_normal_film() -> None:
    """On a film without devices, a glance at the carina (where an ET tube would end) is
    step F for coverage, so the key fixations keep it even though its own step is A."""
    from model.abcdef import REGIONS, STEPS, Step
    from model.geometry import PatchGrid
    from model.predictor import visited_steps
    from model.train.batching import key_fixations
    from model.train.gazedata.sample import GazeFixation

    grid = PatchGrid(Rows=256, Columns=256, grid_h=8, grid_w=8)
    a, b, c = Step.AIRWAYS, Step.BREATHING, Step.CIRCULATION
    reading = [  # one fixation per token, in time order: (x, y, dwell, region, step)
        (120, 40, 500, "trachea", a),
        (120, 80, 100, "carina", a),
        (60, 100, 500, "right upper lung zone", b),
        (60, 140, 500, "right mid lung zone", b),
        (140, 160, 500, "cardiac silhouette", c),
        (170, 160, 400, "cardiac silhouette", c),
    ]
    fixations, t = [], 0.0
    for x, y, dwell, region, step in reading:
        fixations.append(GazeFixation(float(x), float(y), t, float(dwell), region, step))
        t += dwell + 30.0
    keys = key_fixations(fixations, grid, 4, REGIONS)
    assert len(keys) == 4
    steps = [STEPS[k.step] for k in keys]
    regions = [REGIONS[k.region] for k in keys]
    reader = visited_steps([f.step for f in fixations if f.step], [r[3] for r in reading])
    assert Step.FOREIGN_MATERIAL in reader
    assert visited_steps(steps, regions) == reader, regions
    assert "carina" in regions


@pytest.mark.parametrize(
    ("finding_pool", "detail_channel", "conv_branch", "mask_decoder"),
    [("attention+global", False, (4, 8), 8), ("attention", True, (), 0)],
)
def test_finding_head_options_train_save_and_load(
    tiny_samples: list[GazeSample],
    tmp_path: Path,
    finding_pool: str,
    detail_channel: bool,
    conv_branch: tuple[int, ...],
    mask_decoder: int,
) -> None:
    """The global finding evidence, the convolutional branch (batch norm statistics
    included), the mask decoder and the detail input channel train, survive a save/load
    with the same outputs, and leave the default settings unchanged."""
    import dataclasses
    import random

    assert GazeXSettings().finding_pool == "attention"
    assert not GazeXSettings().detail_channel
    assert GazeXSettings().conv_branch == ()
    assert GazeXSettings().mask_decoder == 0
    settings = dataclasses.replace(
        SETTINGS,
        finding_pool=finding_pool,
        detail_channel=detail_channel,
        conv_branch=conv_branch,
        mask_decoder=mask_decoder,
    )
    codec = TextCodec(train_tokenizer(corpus(tiny_samples), vocab_size=400))
    torch.manual_seed(0)
    model = GazeXModel.from_scratch(codec, settings, TINY, seed=0)
    assert (model.finding_global is not None) == (finding_pool == "attention+global")
    assert (model.conv_branch is not None) == bool(conv_branch)
    prepared = prepare_samples(tiny_samples[:8], settings)
    batches = epoch_batches(prepared, model.codec, settings, 8, random.Random(0), 1, False)
    batch = collate(batches[0], model.codec, settings.num_gaze_tokens, settings.patch_spec)
    plain = collate(batches[0], model.codec, settings.num_gaze_tokens, SETTINGS.patch_spec)
    assert detail_channel == (not torch.equal(batch["pixel_values"], plain["pixel_values"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = compute_losses(model, batch, "multitask")
    assert ("cell_mask" in first) == bool(mask_decoder)
    for _ in range(10):
        losses = compute_losses(model, batch, "multitask")
        optimizer.zero_grad()
        sum(losses.values()).backward()  # type: ignore[union-attr]
        optimizer.step()
    last = compute_losses(model, batch, "multitask")
    assert last["finding"].item() < first["finding"].item()
    if mask_decoder:
        assert last["cell_mask"].item() < first["cell_mask"].item()
    model.save(tmp_path)
    again = GazeXModel.load(tmp_path)
    assert again.settings == model.settings
    model.eval()
    again.eval()
    images = [s.image for s in tiny_samples[:2]]
    a = InferenceEngine(model, torch.device("cpu")).run(images)
    b = InferenceEngine(again, torch.device("cpu")).run(images)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.probabilities, y.probabilities, rtol=1e-5, atol=1e-6)
        grid, masks = x.finest_masks()
        assert masks.shape == (len(settings.finding_keys), grid.num_patches)
        assert grid == x.grid.subdivided(settings.mask_cells)
        np.testing.assert_allclose(masks, y.finest_masks()[1], rtol=1e-5, atol=1e-6)


def test_gaze_label_weights_favour_rare_steps(tiny_samples: list[GazeSample]) -> None:
    """Balanced gaze labels weight a step by 1/sqrt(its key-fixation frequency): rarer
    steps weigh more, weights have mean 1 over the steps seen, and the loss accepts them."""
    import random
    from collections import Counter

    from model.abcdef import STEPS
    from model.train.batching import key_fixations
    from model.train.loop import gaze_label_weights

    prepared = prepare_samples(tiny_samples, SETTINGS)
    region_w, step_w = gaze_label_weights(prepared, SETTINGS)
    assert region_w.shape == (len(SETTINGS.regions),) and step_w.shape == (len(STEPS),)
    counts = Counter(
        k.step
        for p in prepared
        for k in key_fixations(p.sample.fixations, p.image.grid, 6, SETTINGS.regions)
        if k.step >= 0
    )
    seen = sorted(counts)
    assert float(step_w[seen].mean()) == pytest.approx(1.0)
    rare, common = min(seen, key=counts.__getitem__), max(seen, key=counts.__getitem__)
    if counts[rare] < counts[common]:
        assert step_w[rare] > step_w[common]
    model = _tiny_model(tiny_samples)
    batches = epoch_batches(prepared, model.codec, SETTINGS, 4, random.Random(0), 1, False)
    batch = collate(batches[0], model.codec, SETTINGS.num_gaze_tokens, SETTINGS.patch_spec)
    losses = compute_losses(model, batch, "gaze", (region_w, step_w))
    assert torch.isfinite(losses["step"]) and torch.isfinite(losses["region"])


def test_thresholds_maximise_f1_and_sit_mid_way_when_several_do() -> None:
    """The calibrated threshold has the best F1; of a run of equally good ones the middle
    is taken, not the lowest; with one class only it is 0.5."""
    from model.train.loop import f1_threshold

    labels = np.array([False] * 6 + [True] * 4)
    separated = np.array([0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.8, 0.9, 0.95, 0.97])
    assert f1_threshold(labels, separated) == pytest.approx(0.5)
    overlapping = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.62, 0.61, 0.7, 0.8, 0.9])
    assert f1_threshold(labels, overlapping) == pytest.approx(0.55)
    assert f1_threshold(np.zeros(4, dtype=bool), np.full(4, 0.3)) == 0.5


def test_mask_decoder_targets_are_the_pixel_masks_else_the_boxes(
    tiny_samples: list[GazeSample],
) -> None:
    """On the cell grid a synthetic film's targets are its lesions' pixel coverage (a
    round nodule leaves its box's corners empty); a film without pixel masks (the real
    datasets) falls back to its boxes, which cover their cells whole."""
    import dataclasses
    import random

    from model.imaging import prepare_image
    from model.train.loop import example_of

    settings = dataclasses.replace(SETTINGS, conv_branch=(4, 8), mask_decoder=8)
    codec = TextCodec(train_tokenizer(corpus(tiny_samples[:2]), vocab_size=300))
    sample = next(s for s in tiny_samples if s.masks and s.boxes)
    image = prepare_image(sample.image, settings.patch_spec)
    cells = image.grid.subdivided(settings.mask_cells)

    def example(s: GazeSample) -> tuple[np.ndarray, np.ndarray]:
        e = example_of(s, image, codec, settings, random.Random(0), max_vqa=1)
        assert e.cell_cover.shape == (len(settings.finding_keys), cells.num_patches)
        return e.cell_cover, e.mask_known

    box = sample.boxes[0]
    i = settings.finding_keys.index(box.key)
    assert sample.masks is not None
    cover, known = example(sample)
    np.testing.assert_allclose(cover[i], cells.coverage_map(sample.masks[box.key]).ravel())
    assert known[i]
    boxed, known = example(dataclasses.replace(sample, masks=None))
    assert known[i]
    inside = boxed[i].reshape(cells.grid_h, cells.grid_w)
    x = (box.x0 + box.x1) / 2 * cells.grid_w / cells.Columns
    y = (box.y0 + box.y1) / 2 * cells.grid_h / cells.Rows
    assert inside[int(y), int(x)] == pytest.approx(1.0)
    assert boxed[i].sum() > cover[i].sum()  # the box claims more than the lesion
