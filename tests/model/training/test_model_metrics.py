"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.abcdef import STEPS, Step
from model.geometry import PatchGrid
from model.inference import RawOutput
from model.train.evaluate import looked_at_steps
from model.train.gazedata.supervision import locate_points
from model.train.gazedata.synth import generate_sample
from model.train.metrics import (
    auroc,
    bleu4,
    box_iou,
    cider,
    clinical_efficacy_f1,
    collapse,
    edit_distance,
    extract_findings,
    f1_score,
    kendall_tau,
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
