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
    locate_sentence,
    locate_text,
    located_answer,
    named_location,
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
    # The checkpoint's anatomy prior names where the mass's box lies.
    [mass] = [f for f in result.findings if f.key == "mass"]
    where = f" in the {mass.region}" if mass.region else ""
    assert result.report.text(Step.BREATHING) == f"{NOT_INSPECTED} Mass present{where}."
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


def test_location_words_follow_the_region_of_the_box() -> None:
    """A zone phrase becomes the box's zone, a side word the box's side (case kept); a
    bilateral sentence and other findings' sentences are left alone."""
    nodule = "A 12 mm nodule in the left upper lung zone."
    assert (
        locate_sentence(nodule, "nodule", "right lower lung zone")
        == "A 12 mm nodule in the right lower lung zone."
    )
    effusion = "Small left pleural effusion blunting the costophrenic angle."
    assert locate_sentence(effusion, "pleural_effusion", "right costophrenic angle") == (
        "Small right pleural effusion blunting the costophrenic angle."
    )
    assert locate_sentence("Left apical pneumothorax.", "pneumothorax", "right apical zone") == (
        "Right apical pneumothorax."
    )
    both = "Small bilateral pleural effusions blunting the costophrenic angles."
    assert locate_sentence(both, "pleural_effusion", "right costophrenic angle") == both
    text = f"{nodule} No pneumothorax. Consolidation in the left mid lung zone."
    assert locate_text(text, {"nodule": "right lower lung zone"}) == (
        "A 12 mm nodule in the right lower lung zone. No pneumothorax. "
        "Consolidation in the left mid lung zone."
    )
    assert locate_text("Nodule present. No mass.", {"nodule": "right lower lung zone"}) == (
        "Nodule present in the right lower lung zone. No mass."
    )
    assert named_location(nodule, "nodule") == "left upper lung zone"
    assert named_location(effusion, "pleural_effusion") == "left"
    assert named_location(both, "pleural_effusion") is None


def test_where_and_which_side_are_answered_by_the_box() -> None:
    """ "Where is the nodule?" names the region of its box, "Which side" its side; a finding
    without a located box, or a tip question, is left to the model."""
    regions = {"nodule": "right lower lung zone"}
    assert located_answer("Where is the nodule?", regions) == "right lower lung zone"
    assert located_answer("Which side is the nodule on?", regions) == "right"
    assert located_answer("Where is the mass?", regions) is None
    assert located_answer("Where is the tip of the nodule?", regions) is None


def test_the_report_names_where_the_nodule_box_lies(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Issue 16's synthetic DX seed 100003: "A 12 mm nodule in the left upper lung zone"
    beside a box in the patient's right lower zone. With an anatomy prior the sentence, the
    finding's region and the answers name the box's zone; without, the finding's region is
    the fixations' as before."""
    import shutil

    from model.anatomy_prior import AnatomyPrior
    from model.architecture import SETTINGS_FILE, GazeXSettings
    from model.train.anatomy_prior import fit_anatomy_prior, write_anatomy_prior
    from model.train.gazedata.synth import generate_sample

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    films = [generate_sample(seed, height=256, width=256) for seed in range(30)]
    fitted = fit_anatomy_prior(films, settings)
    write_anatomy_prior(ckpt, fitted)
    prior = AnatomyPrior.from_json(fitted)
    zone = prior.regions.index("right lower lung zone")
    row, col = np.unravel_index(int(prior.atlas[:, :, zone].argmax()), prior.atlas.shape[:2])
    centre = ((col + 0.5) / prior.size, (row + 0.5) / prior.size)

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    report = "Breathing: A 12 mm nodule in the left upper lung zone.\nImpression: Lung nodule."
    questions = ["Where is the nodule?", "Which side is the nodule on?"]
    raw = _raw(predictor, report, ["left upper lung zone", "left"], {"nodule"})
    keys = predictor.model.settings.finding_keys
    raw.grid = PatchGrid(256, 256, 8, 8)
    raw.steps = [STEPS.index(Step.BREATHING)] * len(raw.steps)  # step B inspected
    raw.gaze_probs = np.full((len(raw.patch_indices), 64), 1 / 64, dtype=np.float32)
    raw.mask_probs = np.full((len(keys), 64), 0.9, dtype=np.float32)
    raw.boxes[keys.index("nodule")] = (*centre, 0.04, 0.04)
    source = source_image(Dataset(), 256, 256)
    result = predictor.to_result(raw, source, questions)
    nodule = next(f for f in result.findings if f.key == "nodule")
    assert nodule.region == "right lower lung zone"
    assert nodule.sentence == "A 12 mm nodule in the right lower lung zone."
    assert "left upper" not in result.report.text(Step.BREATHING)
    assert [a.answer for a in result.answers] == ["right lower lung zone", "right"]
    raw_result = build_result(
        raw, source, predictor.model, predictor.info, questions, consistent=False
    )
    assert raw_result.report.text(Step.BREATHING).endswith("left upper lung zone.")


def test_an_inspected_step_f_without_devices_reports_no_foreign_material() -> None:
    """Step F inspected on a film without devices is still reported: "No foreign material
    seen." when its text says nothing about lines and tubes; "No lines or tubes." is kept."""
    present = _decisions()
    out, _ = agree_report({Step.FOREIGN_MATERIAL: ""}, "", present, STEPS)
    assert out[Step.FOREIGN_MATERIAL] == "No foreign material seen."
    assert not claims(out[Step.FOREIGN_MATERIAL]).contradictions(present)
    kept, _ = agree_report({Step.FOREIGN_MATERIAL: "No lines or tubes."}, "", present, STEPS)
    assert kept[Step.FOREIGN_MATERIAL] == "No lines or tubes."
    with_device, _ = agree_report({}, "", _decisions("pacemaker"), STEPS)
    assert with_device[Step.FOREIGN_MATERIAL] == "Cardiac pacemaker present."
