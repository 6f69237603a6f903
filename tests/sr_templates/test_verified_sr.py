"""The radiologist's signed review as a verified findings SR revision (``sr_templates.review``).

The AI findings SR is made by the project's own builder and read back from its bytes, as the
review page will get it; the verified SR is written once per module and checked by the same
validators as the other objects (dciodvfy, DCMTK dsrdump, PixelMed's DicomSRValidator with
the command line of ``conftest.PIXELMED``). The session fixtures of conftest run the
validators over every case's objects; they are not used here, because building and
validating every case would take minutes for one extra document.
"""

from __future__ import annotations

import datetime
import io
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import sr_factories as f
from conftest import PIXELMED
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage
from sr_cases import issue_lines
from test_sr_validators import ACCEPTED_DCIODVFY_WARNINGS, ACCEPTED_PIXELMED_ERRORS

from model.findings import FINDINGS_BY_KEY
from model.result import Box, InferenceResult, percent
from sr_templates import codes
from sr_templates.content import box_polyline
from sr_templates.review import (
    Decision,
    FindingDecision,
    Review,
    Reviewer,
    build_verified_sr,
    read_decisions,
    verified_sr_uids,
)
from sr_templates.sr import build_findings_sr
from sr_templates.uids import device_observer_uid, tracking_uid

#: Accepted on top of ACCEPTED_DCIODVFY_WARNINGS, with the reason.
ACCEPTED_REVIEW_WARNINGS: dict[str, str] = {
    r"CodingSchemeDesignator\(0008,0102\)\[1\]> - Unrecognized defined term = <99GAZEXSTAFF>": (
        "the reviewer identifier's local scheme (PS3.16 8.2: local designators start with "
        "'99'), declared in CodingSchemeIdentificationSequence"
    ),
}

SIGNED_AT = datetime.datetime(
    2026, 12, 5, 14, 3, 7, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
)
REVIEWER = Reviewer(
    "Gómez",
    "Ana",
    name_prefix="Dr",
    organization="St Elsewhere Radiology",
    identifier="R042",
)


def code_of(key: str) -> Code:
    c = FINDINGS_BY_KEY[key].code
    return Code(c.value, c.scheme, c.meaning)


#: One decision of each kind, on drawn and on image-level AI findings (boxes exact in FL).
DECISIONS = (
    FindingDecision(code_of("endotracheal_tube"), Decision.ACCEPT),
    FindingDecision(code_of("nodule"), Decision.REJECT, reason=codes.REJECT_ARTEFACT),
    FindingDecision(
        code_of("pleural_effusion"), Decision.CORRECT, box=Box(12.5, 150.0, 95.0, 232.25)
    ),
    FindingDecision(code_of("consolidation"), Decision.ACCEPT),
    FindingDecision(code_of("cardiomegaly"), Decision.CORRECT, box=Box(60.0, 100.0, 150.0, 180.0)),
    FindingDecision(code_of("pulmonary_edema"), Decision.REJECT, reason=codes.REJECT_NOT_PRESENT),
    FindingDecision(code_of("pneumothorax"), Decision.ADD, box=Box(120.0, 10.5, 180.0, 60.0)),
)


def _result(ds: Dataset) -> InferenceResult:
    return f.make_result(
        ds,
        findings=(
            f.finding(
                "pleural_effusion",
                0.8734,
                box=Box(10.5, 160.25, 90.0, 230.0),
                region="right costophrenic angle",
            ),
            f.finding(
                "consolidation",
                0.66,
                box=Box(30.0, 130.0, 70.0, 170.0),
                region="right lower lung zone",
            ),
            f.finding(
                "nodule", 0.91, box=Box(140.0, 60.0, 150.5, 70.5), region="left upper lung zone"
            ),
            f.finding("endotracheal_tube", 0.97, box=Box(95.0, 0.0, 105.0, 60.0), region="trachea"),
            f.finding("cardiomegaly", 0.71, region="cardiac silhouette"),
            f.finding("pulmonary_edema", 0.52),
            f.finding("pneumothorax", 0.03),
            f.finding("atelectasis", 0.2),
        ),
        fixations=f.trajectory(int(ds.Rows), int(ds.Columns), count=4),
    )


def _reread(ds: Dataset) -> Dataset:
    """``ds`` written as a Part 10 file and read back."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@dataclass(frozen=True)
class Reviewed:
    source: Dataset
    result: InferenceResult
    ai_sr: Dataset
    review: Review
    sr: Dataset
    path: Path


def _reviewed(
    out: Path, name: str, source: Dataset, result: InferenceResult, review: Review
) -> Reviewed:
    ai_sr = _reread(build_findings_sr(result, source))
    sr = build_verified_sr(ai_sr, source, review)
    path = out / f"{name}.dcm"
    sr.save_as(path, enforce_file_format=True)
    return Reviewed(source, result, ai_sr, review, pydicom.dcmread(path), path)


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    """A CR with drawn and image-level AI findings, a decision of every kind, signed."""
    source = f.make_source(
        modality="CR",
        rows=241,
        columns=199,
        charset="ISO_IR 192",
        patient_name="Gómez^José=山田^太郎",
        seed=11,
    )
    review = Review(REVIEWER, SIGNED_AT, DECISIONS)
    return _reviewed(
        tmp_path_factory.mktemp("verified-sr"), "reviewed", source, _result(source), review
    )


@pytest.fixture(scope="module")
def added_only(tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    """A film where the model claimed nothing (no measurement group in the AI SR) and the
    reviewer adds one finding."""
    source = f.make_source(modality="DX", rows=128, columns=128, seed=12)
    source.InstitutionName = "General Hospital"
    result = f.make_result(source, findings=f.all_absent(), fixations=())
    decision = FindingDecision(code_of("nodule"), Decision.ADD, box=Box(20.0, 30.0, 50.5, 60.0))
    review = Review(Reviewer("Smith", "John"), SIGNED_AT, (decision,))
    return _reviewed(tmp_path_factory.mktemp("verified-sr"), "added", source, result, review)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, errors="replace", check=False, timeout=120
    )


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/setup --dev installs dcmtk and dicom3tools)")
    return path


@pytest.fixture(scope="module")
def validator_runs(
    reviewed: Reviewed, added_only: Reviewed
) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """dciodvfy and dsrdump of both documents, PixelMed of the main one, in parallel."""
    if not Path(PIXELMED[5]).exists():
        pytest.fail("PixelMed is not installed (scripts/setup --dev installs libpixelmed-java)")
    _tool("java")
    jobs = {
        ("pixelmed", "reviewed"): [*PIXELMED, str(reviewed.path)],
        ("dciodvfy", "reviewed"): [_tool("dciodvfy"), "-new", str(reviewed.path)],
        ("dciodvfy", "added"): [_tool("dciodvfy"), "-new", str(added_only.path)],
        ("dsrdump", "reviewed"): [_tool("dsrdump"), "-v", "+Pt", str(reviewed.path)],
        ("dsrdump", "added"): [_tool("dsrdump"), "-v", "+Pt", str(added_only.path)],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = dict(zip(jobs, pool.map(_run, jobs.values()), strict=True))
    return runs


def _groups(ds: Dataset) -> dict[str, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """finding code value -> its TID 1410 group, read with highdicom."""
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(report, hd.sr.MeasurementReport)
    out = {}
    for group in report.get_planar_roi_measurement_groups():
        assert group.finding_type is not None
        out[group.finding_type.value] = group
    return out


def _evaluations(ds: Dataset) -> list[Dataset]:
    [container] = find_content_items(ds, name=codes.QUALITATIVE_EVALUATIONS)
    return list(container.ContentSequence)


def _ai_group_box(ai_sr: Dataset, value: str) -> np.ndarray:
    return np.asarray(_groups(ai_sr)[value].roi.value)


# -- the document ------------------------------------------------------------------------


def test_round_trip_is_a_tid_1500_comprehensive_3d_sr_in_its_own_series(
    reviewed: Reviewed,
) -> None:
    """The written file re-reads with highdicom as a TID 1500 "Imaging Measurement Report"
    in the source study, in its own series whose description says a person reviewed it and
    that the model was trained on synthetic data."""
    ds, ai_sr = reviewed.sr, reviewed.ai_sr
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    assert ds.SOPClassUID == Comprehensive3DSRStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    root = ds.ConceptNameCodeSequence[0]
    assert (root.CodeValue, root.CodingSchemeDesignator) == ("126000", "DCM")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.StudyInstanceUID == reviewed.source.StudyInstanceUID
    assert ds.SeriesInstanceUID not in (ai_sr.SeriesInstanceUID, reviewed.source.SeriesInstanceUID)
    assert ds.SeriesNumber == 9906
    assert "reviewed by a person" in ds.SeriesDescription
    assert "synthetic" in ds.SeriesDescription
    assert len(ds.SeriesDescription) <= 64
    assert str(ds.PatientName) == str(reviewed.source.PatientName)


def test_header_says_verified_complete_and_who_signed_when(reviewed: Reviewed) -> None:
    """VERIFIED with the reviewer's name, organisation, signing time (with its zone) and
    coded identifier; COMPLETE; FINAL; the identifier's scheme is declared."""
    ds = reviewed.sr
    assert ds.VerificationFlag == "VERIFIED"
    assert ds.CompletionFlag == "COMPLETE"
    assert ds.PreliminaryFlag == "FINAL"
    [observer] = ds.VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == "Gómez^Ana^^Dr"
    assert observer.VerifyingOrganization == "St Elsewhere Radiology"
    assert observer.VerificationDateTime == "20261205140307.000000+0100"
    [identifier] = observer.VerifyingObserverIdentificationCodeSequence
    assert (identifier.CodeValue, identifier.CodingSchemeDesignator) == ("R042", "99GAZEXSTAFF")
    assert identifier.CodeMeaning == "Dr Ana Gómez"
    declared = {item.CodingSchemeDesignator for item in ds.CodingSchemeIdentificationSequence}
    assert {"99GAZEX", "99GAZEXSTAFF"} <= declared


def test_predecessor_is_the_ai_findings_sr(reviewed: Reviewed) -> None:
    """PredecessorDocumentsSequence references the AI SR by study, series, SOP class and
    instance (SR Document General Module)."""
    ai_sr = reviewed.ai_sr
    [study] = reviewed.sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == ai_sr.StudyInstanceUID
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ai_sr.SeriesInstanceUID
    [instance] = series.ReferencedSOPSequence
    assert instance.ReferencedSOPClassUID == ai_sr.SOPClassUID
    assert instance.ReferencedSOPInstanceUID == ai_sr.SOPInstanceUID


def test_observer_context_has_the_reviewer_then_the_model(reviewed: Reviewed) -> None:
    """TID 1001 holds the reviewer as person observer (role Verifying) and the model as
    device observer, with the AI SR's Device Observer UID."""
    report = hd.sr.Comprehensive3DSR.from_dataset(reviewed.sr).content
    [person] = report.get_observer_contexts(observer_type=dcm_codes.DCM.Person)
    [device] = report.get_observer_contexts(observer_type=dcm_codes.DCM.Device)
    attributes = person.observer_identifying_attributes
    assert str(attributes.name) == "Gómez^Ana^^Dr"
    assert attributes.organization_name == "St Elsewhere Radiology"
    assert attributes.role_in_procedure == dcm_codes.DCM.Verifying
    assert device.observer_identifying_attributes.uid == device_observer_uid(reviewed.result.model)
    types = [
        item.ConceptCodeSequence[0].CodeValue
        for item in reviewed.sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "121005"  # Observer Type
    ]
    assert types == ["121006", "121007"]  # Person, then Device


# -- the decisions -----------------------------------------------------------------------


def test_decisions_read_back_from_the_content_tree(reviewed: Reviewed) -> None:
    """``read_decisions`` of the written file gives back every decision of the review."""
    read = read_decisions(reviewed.sr)
    assert len(read) == len(DECISIONS)
    assert {d.code: d for d in read} == {d.code: d for d in DECISIONS}


def test_decisions_read_back_when_the_ai_sr_drew_nothing(added_only: Reviewed) -> None:
    """A finding added to a film where the model claimed nothing reads back, and the AI's
    "<finding> = Absent" for it is gone."""
    assert read_decisions(added_only.sr) == list(added_only.review.decisions)
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in _evaluations(added_only.sr)]
    assert code_of("nodule").value not in names
    assert code_of("mass").value in names


def test_accepted_image_level_finding_stays_a_report_level_evaluation(
    reviewed: Reviewed,
) -> None:
    """An accepted AI finding without a box stays "<finding> = Present" with the property
    "Reviewer assessment = Accepted by the reviewer", and reads back as accepted."""
    decisions = _decisions(FindingDecision(code_of("cardiomegaly"), Decision.ACCEPT))
    review = replace(reviewed.review, decisions=decisions)
    ds = _reread(build_verified_sr(reviewed.ai_sr, reviewed.source, review))
    assert code_of("cardiomegaly").value not in _groups(ds)
    [item] = [
        i
        for i in _evaluations(ds)
        if i.ConceptNameCodeSequence[0].CodeValue == code_of("cardiomegaly").value
    ]
    assert item.ConceptCodeSequence[0].CodeValue == codes.PRESENT.value
    [assessment] = find_content_items(item, name=codes.REVIEWER_ASSESSMENT)
    assert assessment.RelationshipType == "HAS PROPERTIES"
    assert assessment.ConceptCodeSequence[0].CodeValue == codes.REVIEW_ACCEPTED.value
    assert {d.code: d for d in read_decisions(ds)} == {d.code: d for d in decisions}


def _comments(group: Dataset) -> list[str]:
    """The group's labels: TEXT (121106, DCM, "Comment")."""
    return [
        str(i.TextValue)
        for i in group[0].ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]


def test_accepted_finding_is_the_ai_group_plus_an_assessment(reviewed: Reviewed) -> None:
    """An accepted finding keeps the AI group's tracking UID, box and probability NUM, and
    gains "Reviewer assessment = Accepted by the reviewer"."""
    group = _groups(reviewed.sr)[code_of("endotracheal_tube").value]
    assert group.tracking_uid == tracking_uid(reviewed.result, "endotracheal_tube")
    assert group.tracking_identifier == "Endotracheal tube (accepted)"
    np.testing.assert_array_equal(
        group.roi.value, _ai_group_box(reviewed.ai_sr, code_of("endotracheal_tube").value)
    )
    [probability] = group.get_measurements(
        name=codes.finding_probability(FINDINGS_BY_KEY["endotracheal_tube"].code)
    )
    assert probability.value == pytest.approx(97.0)
    [assessment] = group.get_qualitative_evaluations(name=codes.REVIEWER_ASSESSMENT)
    assert assessment.value == codes.REVIEW_ACCEPTED


def test_corrected_finding_is_drawn_with_the_reviewers_box(reviewed: Reviewed) -> None:
    """A corrected finding keeps its tracking UID and probability but its POLYLINE is the
    reviewer's box; an image-level AI finding the reviewer located becomes a group."""
    groups = _groups(reviewed.sr)
    effusion = groups[code_of("pleural_effusion").value]
    assert effusion.tracking_uid == tracking_uid(reviewed.result, "pleural_effusion")
    np.testing.assert_array_equal(effusion.roi.value, box_polyline(DECISIONS[2].box))
    [assessment] = effusion.get_qualitative_evaluations(name=codes.REVIEWER_ASSESSMENT)
    assert assessment.value == codes.REVIEW_CORRECTED
    # The box the probability is INFERRED FROM is the reviewer's too (OHIF restores that one
    # into its measurement panel), and the label says what the reviewer did.
    [number] = [i for i in effusion[0].ContentSequence if i.ValueType == "NUM"]
    [source] = [c for c in number.ContentSequence if c.ValueType == "SCOORD"]
    np.testing.assert_array_equal(
        np.asarray(source.GraphicData, dtype=np.float32).reshape(-1, 2),
        box_polyline(DECISIONS[2].box),
    )
    assert _comments(effusion) == [f"Pleural effusion {percent(0.8734)} (corrected)"]
    heart = groups[code_of("cardiomegaly").value]
    np.testing.assert_array_equal(heart.roi.value, box_polyline(DECISIONS[4].box))
    [probability] = heart.get_measurements(
        name=codes.finding_probability(FINDINGS_BY_KEY["cardiomegaly"].code)
    )
    assert probability.value == pytest.approx(71.0)
    assert heart.tracking_identifier == "Cardiomegaly (corrected)"


def test_rejected_finding_is_not_drawn_but_kept_with_its_reason(reviewed: Reviewed) -> None:
    """A rejected AI finding has no group; a report-level "<finding> = Rejected by the
    reviewer" carries the reason, the model's probability and the AI group's tracking UID."""
    assert code_of("nodule").value not in _groups(reviewed.sr)
    [item] = [
        i
        for i in _evaluations(reviewed.sr)
        if i.ConceptNameCodeSequence[0].CodeValue == code_of("nodule").value
    ]
    assert item.ConceptCodeSequence[0].CodeValue == codes.REVIEW_REJECTED.value
    children = {c.ConceptNameCodeSequence[0].CodeValue: c for c in item.ContentSequence}
    assert children["REJECTREASON"].ConceptCodeSequence[0].CodeValue == "RJ-ARTEFACT"
    probability = children[f"PROB-{code_of('nodule').value}"]
    assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(91.0)
    assert tracking_uid(reviewed.result, "nodule") == children["112040"].UID
    assert all(c.RelationshipType == "HAS PROPERTIES" for c in item.ContentSequence)
    assert not [c for c in item.ContentSequence if c.ValueType == "SCOORD"]


def test_added_finding_is_a_new_group_without_probability(reviewed: Reviewed) -> None:
    """A finding the reviewer added is a group with the reviewer's box, presence Present,
    "Added by the reviewer" and no probability NUM nor algorithm identification."""
    group = _groups(reviewed.sr)[code_of("pneumothorax").value]
    assert group.tracking_identifier == "Pneumothorax (added by reviewer)"
    assert _comments(group) == ["Pneumothorax (added by reviewer)"]
    np.testing.assert_array_equal(group.roi.value, box_polyline(DECISIONS[6].box))
    assert group.get_measurements() == []
    assert not find_content_items(group[0], name=dcm_codes.DCM.AlgorithmName)
    [assessment] = group.get_qualitative_evaluations(name=codes.REVIEWER_ASSESSMENT)
    assert assessment.value == codes.REVIEW_ADDED
    [presence] = group.get_qualitative_evaluations(name=codes.PRESENCE_OF_PROPERTY)
    assert presence.value == codes.PRESENT


def test_every_group_keeps_the_ohif_rules(reviewed: Reviewed, added_only: Reviewed) -> None:
    """Each group has a Tracking Identifier and UID, and one SCOORD SELECTED FROM the exact
    source image with every point inside it; the Image Library holds the source image."""
    for case in (reviewed, added_only):
        source = case.source
        groups = _groups(case.sr)
        assert groups
        for group in groups.values():
            assert group.tracking_identifier and group.tracking_uid
            roi = group.roi
            assert roi is not None
            [reference] = roi.ContentSequence[0].ReferencedSOPSequence
            assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
            assert reference.ReferencedSOPClassUID == source.SOPClassUID
            points = np.asarray(roi.value)
            assert (points >= 0).all()
            assert (points[:, 0] <= source.Columns).all()
            assert (points[:, 1] <= source.Rows).all()
        [library] = find_content_items(case.sr, name=dcm_codes.DCM.ImageLibrary)
        [image] = find_content_items(library, value_type="IMAGE", recursive=True)
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        names = [i.ConceptNameCodeSequence[0].CodeValue for i in case.sr.ContentSequence]
        assert names.index("111028") + 1 == names.index("126010")  # Library, Measurements


def test_review_statement_replaces_the_ai_intended_use(reviewed: Reviewed) -> None:
    """The AI's "not reviewed by a radiologist" statement is gone; the review statement
    names the reviewer and still says the model was trained on synthetic data and that it
    is not for clinical use."""
    texts = {
        i.ConceptNameCodeSequence[0].CodeValue: i.TextValue
        for i in _evaluations(reviewed.sr)
        if i.ValueType == "TEXT"
    }
    assert codes.INTENDED_USE.value not in texts
    statement = texts[codes.REVIEW_STATEMENT.value]
    assert "Dr Ana Gómez" in statement
    assert "synthetic data" in statement
    assert "Not for clinical use" in statement
    assert "not reviewed" not in statement


def test_a_name_outside_the_films_character_set_switches_to_utf8(added_only: Reviewed) -> None:
    """A reviewer whose name the film's character set (here the default, ASCII) cannot
    encode gets a UTF-8 document, and the name survives the round trip."""
    reviewer = Reviewer("Åström", "Björn", organization="Sjukhuset Väst")
    review = replace(added_only.review, reviewer=reviewer)
    assert "SpecificCharacterSet" not in added_only.source
    ds = _reread(build_verified_sr(added_only.ai_sr, added_only.source, review))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    observer = ds.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Åström^Björn"
    assert observer.VerifyingOrganization == "Sjukhuset Väst"


# -- revisions ---------------------------------------------------------------------------


def test_re_sign_overwrites_and_a_new_revision_replaces(reviewed: Reviewed) -> None:
    """Signing the same revision again gives the same UIDs (a PACS overwrites); revision 2
    is a new instance of the same series that lists revision 1 as a predecessor."""
    later = replace(reviewed.review, signed_at=SIGNED_AT + datetime.timedelta(minutes=5))
    again = build_verified_sr(reviewed.ai_sr, reviewed.source, later)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (
        reviewed.sr.SeriesInstanceUID,
        reviewed.sr.SOPInstanceUID,
    )
    second = build_verified_sr(reviewed.ai_sr, reviewed.source, replace(later, revision=2))
    assert second.SeriesInstanceUID == reviewed.sr.SeriesInstanceUID
    assert second.SOPInstanceUID != reviewed.sr.SOPInstanceUID
    assert second.InstanceNumber == 2
    assert (second.SeriesInstanceUID, second.SOPInstanceUID) == verified_sr_uids(
        reviewed.ai_sr, reviewed.source, 2
    )
    predecessors = {
        sop.ReferencedSOPInstanceUID
        for study in second.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert predecessors == {reviewed.ai_sr.SOPInstanceUID, reviewed.sr.SOPInstanceUID}


# -- validators --------------------------------------------------------------------------


def test_dciodvfy_finds_no_error(
    validator_runs: dict[tuple[str, str], subprocess.CompletedProcess[str]],
) -> None:
    """``dciodvfy -new`` reports no error and only accepted warnings on both documents."""
    accepted = {**ACCEPTED_DCIODVFY_WARNINGS, **ACCEPTED_REVIEW_WARNINGS}
    for name in ("reviewed", "added"):
        run = validator_runs[("dciodvfy", name)]
        output = run.stdout + run.stderr
        unexpected = [
            line
            for line in issue_lines(output, "Warning")
            if not any(re.search(p, line) for p in accepted)
        ]
        assert run.returncode == 0, output
        assert not issue_lines(output, "Error"), output
        assert not unexpected, "\n".join(unexpected)


def test_dsrdump_reads_it_strictly(
    validator_runs: dict[tuple[str, str], subprocess.CompletedProcess[str]],
) -> None:
    """DCMTK's dsrdump (strict by default) reads both documents without error and sees the
    verification and TID 1500."""
    for name in ("reviewed", "added"):
        run = validator_runs[("dsrdump", name)]
        assert run.returncode == 0, run.stderr
        assert not [line for line in run.stderr.splitlines() if line.startswith("E:")]
        assert "# TID 1500 (DCMR)" in run.stdout
        assert "Verification Flag   : VERIFIED" in run.stdout
        assert "Reviewer assessment" in run.stdout


def test_pixelmed_finds_no_template_error(
    validator_runs: dict[tuple[str, str], subprocess.CompletedProcess[str]],
) -> None:
    """PixelMed's DicomSRValidator finds TID 1500 and no error beyond the accepted ones."""
    run = validator_runs[("pixelmed", "reviewed")]
    output = run.stdout + run.stderr
    assert "Found Root Template TID_1500" in output, output[-2000:]
    errors = [
        line
        for line in output.splitlines()
        if line.startswith("Error")
        and not any(re.search(p, line) for p in ACCEPTED_PIXELMED_ERRORS)
    ]
    assert not errors, "\n".join(errors)


# -- bad input ---------------------------------------------------------------------------


def _decisions(*changes: FindingDecision) -> tuple[FindingDecision, ...]:
    """DECISIONS with ``changes`` replacing the decisions on the same codes (or added)."""
    out = {d.code.value: d for d in DECISIONS}
    out.update({d.code.value: d for d in changes})
    return tuple(out.values())


BAD_REVIEWS = {
    "finding the AI SR does not claim": (
        _decisions(FindingDecision(code_of("atelectasis"), Decision.ACCEPT)),
        "has no finding Atelectasis",
    ),
    "add of a claimed finding": (
        _decisions(FindingDecision(code_of("nodule"), Decision.ADD, box=Box(1, 1, 5, 5))),
        "already claims Nodule",
    ),
    "finding left undecided": (
        tuple(d for d in DECISIONS if d.code != code_of("consolidation")),
        "left undecided: Consolidation",
    ),
    "box outside the image": (
        _decisions(
            FindingDecision(
                code_of("pneumothorax"), Decision.ADD, box=Box(150.0, 10.0, 200.0, 60.0)
            )
        ),
        "outside the 199x241 source image",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REVIEWS))
def test_bad_review_raises_one_line(reviewed: Reviewed, case: str) -> None:
    """A decision that does not fit the AI SR or the image raises a one-line ValueError."""
    decisions, message = BAD_REVIEWS[case]
    review = Review(REVIEWER, SIGNED_AT, decisions)
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        build_verified_sr(reviewed.ai_sr, reviewed.source, review)
    assert "\n" not in str(raised.value)


def test_bad_decisions_and_reviews_raise_one_line() -> None:
    """Decisions and reviews that break their own rules raise a one-line ValueError."""
    nodule = code_of("nodule")
    attempts = [
        (lambda: FindingDecision(nodule, Decision.REJECT), "needs a reason"),
        (
            lambda: FindingDecision(nodule, Decision.REJECT, reason=codes.PRESENT),
            "not one of codes.REJECTION_REASONS",
        ),
        (
            lambda: FindingDecision(nodule, Decision.ACCEPT, reason=codes.REJECT_ARTEFACT),
            "only goes with a rejection",
        ),
        (lambda: FindingDecision(nodule, Decision.CORRECT), "needs the reviewer's box"),
        (
            lambda: FindingDecision(nodule, Decision.ACCEPT, box=Box(1, 1, 2, 2)),
            "takes no box",
        ),
        (
            lambda: Review(REVIEWER, SIGNED_AT.replace(tzinfo=None), DECISIONS),
            "needs a time zone",
        ),
        (lambda: Review(REVIEWER, SIGNED_AT, DECISIONS, revision=0), "revision must be 1"),
        (lambda: Review(REVIEWER, SIGNED_AT, DECISIONS + DECISIONS[:1]), "two decisions"),
        (lambda: Reviewer(" "), "needs a family name"),
        (lambda: Reviewer("Doe^Jane"), "not a valid PN component"),
    ]
    for attempt, message in attempts:
        with pytest.raises(ValueError, match=re.escape(message)) as raised:
            attempt()
        assert "\n" not in str(raised.value)


def test_inputs_that_are_not_an_unverified_ai_sr_of_the_source_raise(
    reviewed: Reviewed,
) -> None:
    """A signed review as input, another image, or no organisation anywhere raises a
    one-line ValueError; so does reading decisions from an unverified SR."""
    review = reviewed.review
    other = f.make_source(modality="CR", rows=241, columns=199, seed=13)
    other.StudyInstanceUID = reviewed.source.StudyInstanceUID
    no_organisation = replace(review, reviewer=Reviewer("Doe", "Jane"))
    attempts = [
        (lambda: build_verified_sr(reviewed.sr, reviewed.source, review), "'VERIFIED'"),
        (lambda: build_verified_sr(reviewed.ai_sr, other, review), "Image Library"),
        (
            lambda: build_verified_sr(reviewed.ai_sr, reviewed.source, no_organisation),
            "VerifyingOrganization is required",
        ),
        (lambda: read_decisions(reviewed.ai_sr), "not a verified SR"),
    ]
    for attempt, message in attempts:
        with pytest.raises(ValueError, match=re.escape(message)) as raised:
            attempt()
        assert "\n" not in str(raised.value)
