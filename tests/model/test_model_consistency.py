"""One story per film (issue 16): report, answers and coverage agree with the decisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from model.abcdef import STEPS, Step
from model.consistency import (
    NOT_INSPECTED,
    agree,
    agree_report,
    claims,
    decided_answer,
)
from model.findings import FINDING_KEYS
from model.geometry import PatchGrid
from model.inference import RawOutput
from model.predictor import Predictor, build_result, source_image
from model.result import InferenceResult


def _decisions(*present: str) -> dict[str, bool]:
    return {k: k in present for k in FINDING_KEYS}


def test_claims_read_negation_normal_statements_and_groups() -> None:
    """The extractor reads assertions, negations, "Heart size is normal." and group phrases."""
    said = claims(
        "Heart size is normal. No suspicious pulmonary nodule or mass. "
        "Moderate right pleural effusions. No pneumothorax but a small consolidation."
    )
    assert said.findings == {
        "cardiomegaly": False,
        "nodule": False,
        "mass": False,
        "pleural_effusion": True,
        "pneumothorax": False,
        "consolidation": True,
    }
    assert claims("No lines or tubes.").contradictions(_decisions("pacemaker")) == ("pacemaker",)
    assert claims("Small nodule and support devices as described.").contradictions(
        _decisions("nodule")
    ) == ("endotracheal_tube", "central_venous_catheter", "nasogastric_tube", "pacemaker")


def test_agree_replaces_only_the_sentences_that_contradict() -> None:
    """A contradicting sentence becomes the findings' own sentences; the others are kept."""
    text = (
        "The heart is enlarged with a cardiothoracic ratio of about 60 percent. "
        "The mediastinal contours and hila are unremarkable."
    )
    assert agree(text, _decisions("cardiomegaly")) == text
    assert agree(text, _decisions()) == (
        "No cardiomegaly. The mediastinal contours and hila are unremarkable."
    )
    assert agree("No suspicious pulmonary nodule or mass.", _decisions("mass")) == (
        "Mass present. No nodule."
    )
    assert agree("Small left nodule and support devices as described.", _decisions("nodule")) == (
        "Small left nodule."
    )


def test_a_step_not_inspected_says_so_and_keeps_the_heads_present_findings() -> None:
    """Sections of uninspected steps carry the notice, not generated text as if reviewed."""
    sections = {
        Step.CIRCULATION: "Heart size is normal. The mediastinal contours are unremarkable.",
        Step.DIAPHRAGM: "No pleural effusion and the costophrenic angles are sharp.",
    }
    inspected = set(STEPS) - {Step.CIRCULATION, Step.DIAPHRAGM}
    out, impression = agree_report(
        sections, "No acute cardiopulmonary abnormality.", _decisions("cardiomegaly"), inspected
    )
    assert out[Step.CIRCULATION] == f"{NOT_INSPECTED} Cardiomegaly present."
    assert out[Step.DIAPHRAGM] == NOT_INSPECTED
    assert impression == "Cardiomegaly present."


def test_present_findings_the_report_omits_are_written() -> None:
    """A present finding the text never asserts gets its own sentence and an impression word."""
    out, impression = agree_report(
        {Step.FOREIGN_MATERIAL: "No lines or tubes."},
        "Moderate cardiomegaly.",
        _decisions("cardiomegaly", "consolidation", "nasogastric_tube"),
        STEPS,
    )
    assert out[Step.FOREIGN_MATERIAL] == (
        "Feeding tube present. No endotracheal tube, central venous catheter or cardiac pacemaker."
    )
    assert "Consolidation present." in out[Step.BREATHING]
    assert "Cardiomegaly present." in out[Step.CIRCULATION]
    assert impression == (
        "Moderate cardiomegaly. Also found by the model: consolidation. "
        "Support devices as described."
    )


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("Is there a lung nodule or mass?", "yes"),
        ("Is there a cardiomegaly?", "no"),
        ("Is there pulmonary edema?", "no"),
        ("How many support devices are present?", "1"),
        ("Where is the nodule?", "none: no nodule was found"),
        ("Where is the mass?", None),
        ("Which region was inspected first?", None),
    ],
)
def test_answers_about_findings_come_from_the_decisions(question: str, answer: str | None) -> None:
    """Presence, device-count and absent-finding questions are answered by the decisions."""
    assert decided_answer(question, _decisions("mass", "pacemaker")) == answer


def _raw(predictor: Predictor, report: str, answers: list[str], present: set[str]) -> RawOutput:
    """A crafted raw output: a 2x2 token grid, every fixation in the trachea (step A only)."""
    settings = predictor.model.settings
    keys = settings.finding_keys
    thresholds = settings.thresholds or (0.5,) * len(keys)
    assert all(0.0 < t <= 1.0 for t in thresholds)
    k, n = settings.num_gaze_tokens, 4
    probabilities = np.array(
        [
            min(t + 0.2, 1.0) if key in present else t / 2
            for key, t in zip(keys, thresholds, strict=True)
        ],
        dtype=np.float32,
    )
    return RawOutput(
        grid=PatchGrid(56, 56, 2, 2),
        patch_indices=[0] * k,
        regions=[settings.regions.index("trachea")] * k,
        steps=[STEPS.index(Step.AIRWAYS)] * k,
        dwell_ms=[200.0] * k,
        gap_ms=[20.0] * k,
        gaze_probs=np.full((k, n), 0.25, dtype=np.float32),
        probabilities=probabilities,
        boxes=np.tile(np.array([0.5, 0.5, 0.4, 0.4], dtype=np.float32), (len(keys), 1)),
        mask_probs=np.full((len(keys), n), 0.9, dtype=np.float32),
        report=report,
        answers=answers,
    )


def test_the_result_tells_one_story_when_the_model_text_contradicts_the_head(
    tiny_checkpoint: Path,
) -> None:
    """Issue 16's film: "+ Cardiomegaly" beside "Heart size is normal.", a pacemaker scored
    absent but described, text for uninspected steps, "no" to a nodule-or-mass question with
    a mass scored: the result agrees with the decisions; consistent=False keeps the raw text."""
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    report = "\n".join(
        [
            "Airways: Heart size is normal. The trachea is midline.",
            "Breathing: No suspicious pulmonary nodule or mass.",
            "Circulation: Heart size is normal.",
            "Foreign material: Left-sided pacemaker with 2 leads in the right heart.",
            "Impression: No acute cardiopulmonary abnormality.",
        ]
    )
    questions = ["Is there a lung nodule or mass?", "Is there a cardiac pacemaker?"]
    raw = _raw(predictor, report, ["no", "yes"], {"cardiomegaly", "mass"})
    source = source_image(Dataset(), 56, 56)
    result = predictor.to_result(raw, source, questions)
    present = {f.key: f.present for f in result.findings}
    assert {k for k, v in present.items() if v} == {"cardiomegaly", "mass"}
    assert result.skipped_steps == tuple(s for s in STEPS if s is not Step.AIRWAYS)
    assert result.report.text(Step.AIRWAYS) == "Cardiomegaly present. The trachea is midline."
    for step in result.skipped_steps:
        assert result.report.text(step).startswith(NOT_INSPECTED)
    assert result.report.text(Step.BREATHING) == f"{NOT_INSPECTED} Mass present."
    texts = [s.text for s in result.report.sections]
    texts += [result.report.impression, *(f.sentence for f in result.findings)]
    for text in texts:
        assert not claims(text).contradictions(present), text
    assert [a.answer for a in result.answers] == ["yes", "no"]
    assert InferenceResult.from_json(result.to_json()).report == result.report

    raw_result = build_result(
        raw, source, predictor.model, predictor.info, questions, consistent=False
    )
    assert raw_result.report.text(Step.CIRCULATION) == "Heart size is normal."
    assert [a.answer for a in raw_result.answers] == ["no", "yes"]
