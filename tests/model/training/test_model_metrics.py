"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from model.abcdef import STEPS, Step
from model.geometry import PatchGrid
from model.inference import RawOutput
from model.train.datasets import load_split
from model.train.evaluate import looked_at_steps, mask_metrics
from model.train.gazedata.mimic_eye import write_mimic_eye
from model.train.gazedata.sample import LabeledBox
from model.train.gazedata.supervision import locate_points
from model.train.gazedata.synth import generate_sample, generator_masks, with_generator_masks
from model.train.metrics import (
    auroc,
    bleu4,
    box_iou,
    box_pixels,
    cider,
    clinical_efficacy_f1,
    collapse,
    edit_distance,
    extract_findings,
    f1_score,
    kendall_tau,
    mask_iou,
    multimatch,
    order_agreement,
    pointing_hit,
    rouge_l,
    vqa_accuracy,
)


def test_auroc_matches_pairwise_definition_with_ties() -> None:
    """AUROC equals the fraction of (positive, negative) pairs ranked right, ties half."""
    labels = [True, True, False, False, False]
    scores = [0.9, 0.5, 0.5, 0.2, 0.1]
    assert auroc(labels, scores) == pytest.approx((3 + 2.5) / 6)
    assert math.isnan(auroc([True, True], [0.1, 0.2]))


def test_f1_and_iou_and_pointing() -> None:
    """F1, box IoU and the pointing game follow their textbook definitions."""
    assert f1_score([True, False, True], [True, True, False]) == pytest.approx(0.5)
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert pointing_hit((5.0, 5.0), (0, 0, 4, 4), tolerance=1.0)
    assert not pointing_hit((5.1, 5.0), (0, 0, 4, 4), tolerance=1.0)


def test_order_measures() -> None:
    """Kendall tau is 1 for the canonical ABCDEF order and -1 reversed; edit distance counts."""
    assert order_agreement([0, 1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert 0.95 < order_agreement([0, 1, 1, 2, 3, 4, 5]) < 1.0  # tau-b: ties cost a little
    assert order_agreement([5, 4, 3, 2, 1, 0]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert collapse(["a", "a", "b", "a"]) == ["a", "b", "a"]
    assert edit_distance(["a", "b", "c"], ["a", "c", "d"]) == 2


def test_text_metrics_reward_identical_reports() -> None:
    """Identical reports score BLEU-4 1, ROUGE-L 1 and a positive CIDEr; unrelated ones 0."""
    refs = ["the heart size is normal and the lungs are clear", "small left pleural effusion"]
    assert bleu4(refs, refs) == pytest.approx(1.0)
    assert rouge_l(refs, refs) == pytest.approx(1.0)
    assert cider(refs, refs) > 0.5
    assert bleu4(refs, ["xyz", "abc"]) == 0.0


def test_rule_based_extractor_handles_negation() -> None:
    """'No pleural effusion' is negative, 'small left pleural effusion' positive."""
    assert not extract_findings("No pleural effusion. Heart normal.")["pleural_effusion"]
    assert extract_findings("Small left pleural effusion.")["pleural_effusion"]
    assert not extract_findings("Lungs clear without pneumothorax.")["pneumothorax"]
    labels = [{"pleural_effusion": True}, {"pleural_effusion": False}]
    reports = ["Small left pleural effusion.", "No pleural effusion."]
    assert clinical_efficacy_f1(labels, reports) == pytest.approx(1.0)
    assert vqa_accuracy(["Yes", "left"], ["yes.", "right"]) == pytest.approx(0.5)


def test_multimatch_identical_scanpaths_are_perfect() -> None:
    """MultiMatch gives similarity 1 on every dimension for identical scanpaths."""
    path = [(100.0, 100.0, 0.3), (200.0, 120.0, 0.2), (150.0, 300.0, 0.4), (50.0, 250.0, 0.25)]
    scores = multimatch(path, path, (400.0, 400.0))
    assert scores is not None
    assert scores == pytest.approx((1.0, 1.0, 1.0, 1.0, 1.0), abs=1e-6)
    assert multimatch(path[:2], path, (400.0, 400.0)) is None


def _raw_output(grid: PatchGrid, patch_indices: list[int], steps: list[int]) -> RawOutput:
    k, n = len(patch_indices), grid.num_patches
    return RawOutput(
        grid=grid,
        patch_indices=patch_indices,
        regions=[0] * k,
        steps=steps,
        dwell_ms=[200.0] * k,
        gap_ms=[50.0] * k,
        gaze_probs=np.zeros((k, n), dtype=np.float32),
        probabilities=np.zeros(12, dtype=np.float32),
        boxes=np.zeros((12, 4), dtype=np.float32),
        mask_probs=np.zeros((12, n), dtype=np.float32),
        report="",
        answers=[],
    )


def test_order_agreement_follows_where_the_model_looked_not_its_step_labels() -> None:
    """Tokens visited in ABCDEF order score tau 1 (reversed -1) whatever the step head says."""
    sample = generate_sample(7, size=256)
    grid = PatchGrid(Rows=256, Columns=256, grid_h=8, grid_w=8)
    first_token: dict[Step, int] = {}
    for index in range(grid.num_patches):
        ((_, step),) = locate_points(sample, [grid.patch_centre(index)])
        if step is not None:
            first_token.setdefault(step, index)
    ordered = [first_token[s] for s in STEPS if s in first_token]
    assert len(ordered) >= 4  # the film's anatomy spans most steps at this grid
    one_label = [0] * len(ordered)  # like a model trained on shuffled gaze
    forward = _raw_output(grid, ordered, one_label)
    backward = _raw_output(grid, ordered[::-1], one_label)
    assert order_agreement([STEPS.index(s) for s in looked_at_steps(sample, forward) if s]) == 1.0
    assert order_agreement([STEPS.index(s) for s in looked_at_steps(sample, backward) if s]) == -1.0
    assert math.isnan(order_agreement(one_label))  # the step-head figure was undefined here


def test_mask_iou_and_box_pixels_by_hand() -> None:
    """Mask IoU counts pixels (NaN when both masks are empty); a box's pixels are every
    pixel it overlaps, as the SEG draws a finding without a mask."""
    a = np.zeros((4, 4), dtype=bool)
    b = np.zeros((4, 4), dtype=bool)
    a[0:2, 0:2] = True  # 4 pixels
    b[1:3, 1:3] = True  # 4 pixels, 1 shared
    assert mask_iou(a, b) == pytest.approx(1 / 7)
    assert mask_iou(a, a) == 1.0
    assert math.isnan(mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)))
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, np.zeros((3, 4), dtype=bool))
    pixels = box_pixels((0.5, 1.0, 2.2, 2.0), rows=4, columns=4)
    assert np.array_equal(np.argwhere(pixels), [[1, 0], [1, 1], [1, 2]])


def test_generator_masks_come_back_from_a_written_films_seed(tmp_path: Path) -> None:
    """A film `gazex data synth` wrote (no masks in the layout) gets the generator's masks
    back bit for bit from its seed; a film whose boxes the generator no longer draws, or one
    that is not synthetic, gets None."""
    seed = next(s for s in range(100, 200) if generate_sample(s, size=96).masks)
    generated = generate_sample(seed, size=96, reader="R3-comparer")
    write_mimic_eye([generated], tmp_path, ".png")
    (loaded,) = load_split(tmp_path, "synthetic", "test")
    assert loaded.masks is None and loaded.boxes
    masks = generator_masks(loaded)
    assert masks is not None and generated.masks is not None
    assert masks.keys() == generated.masks.keys()
    assert all(np.array_equal(masks[k], generated.masks[k]) for k in masks)
    moved = replace(loaded, boxes=tuple(replace(b, x0=b.x0 + 1) for b in loaded.boxes))
    assert generator_masks(moved) is None
    other = replace(loaded, sample_id="P1", meta={"dicom_id": "real-film-1"})
    assert generator_masks(other) is None
    # What `gazex train` gives the mask decoder: the masks where they come back, else none.
    trained, real = with_generator_masks([loaded, other])
    assert trained.masks is not None and trained.masks.keys() == masks.keys()
    assert real.masks is None


def test_mask_metrics_score_the_model_mask_and_the_box_fallback() -> None:
    """Mask IoU is scored where the film shows a boxed finding and the head calls it
    present: the model's mask against the generator's, else the box's pixels; the model's
    mask lies wholly inside its box; absent calls and unboxed findings are not averaged."""
    grid = PatchGrid(Rows=64, Columns=64, grid_h=4, grid_w=4)  # 16 px tokens
    keys = ("cardiomegaly", "nodule", "pacemaker")
    heart = np.zeros((64, 64), dtype=bool)
    heart[16:48, 16:48] = True
    nodule = np.zeros((64, 64), dtype=bool)
    nodule[4:12, 4:12] = True
    sample = replace(
        generate_sample(3, size=64),
        labels={"cardiomegaly": True, "nodule": True, "pacemaker": False},
        boxes=(LabeledBox("cardiomegaly", 16, 16, 48, 48), LabeledBox("nodule", 4, 4, 12, 12)),
        masks={"cardiomegaly": heart, "nodule": nodule},
    )
    mask_probs = np.zeros((3, 16), dtype=np.float32)
    mask_probs[0] = 1.0  # everywhere: the mask is the whole (true) box
    output = RawOutput(
        grid=grid,
        patch_indices=[],
        regions=[],
        steps=[],
        dwell_ms=[],
        gap_ms=[],
        gaze_probs=np.zeros((0, 16), dtype=np.float32),
        probabilities=np.array([0.9, 0.9, 0.9], dtype=np.float32),
        # cx, cy, w, h as fractions: the true box, and a box over the top-left quarter
        boxes=np.array([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1, 1]]),
        mask_probs=mask_probs,  # nodule: no mask anywhere -> the box's pixels
        report="",
        answers=[],
    )
    overall, per_key = mask_metrics([sample], [output], keys, (0.5, 0.5, 0.5))
    assert overall["mask_mean_iou"] == 1.0 and overall["masks_scored"] == 1
    assert overall["mask_boxes_scored"] == 1
    assert overall["mask_box_iou"] == pytest.approx(64 / 32**2)  # the nodule in its 32 px box
    assert overall["mask_seg_iou"] == pytest.approx((1.0 + 64 / 32**2) / 2)
    assert overall["mask_in_box"] == 1.0
    assert per_key["pacemaker"]["masks"] == 0  # shown absent: not scored
