"""A round trip through the written files recovers what the result said."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import sr_factories
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes as dcm_codes
from sr_cases import Case

from model.abcdef import STEPS
from model.findings import Code
from model.result import Box, DomainCheck, InferenceResult, finding_label, percent
from sr_templates import codes
from sr_templates.content import (
    box_polyline,
    fixation_radius,
    intended_use_statement,
)
from sr_templates.enum import ObjectKindValues
from sr_templates.sr import build_findings_sr, build_trajectory_sr
from sr_templates.templates import (
    algorithm_identification,
    fixation_group,
    visits_at_first_fixations,
)
from sr_templates.uids import tracking_uid


def read_report(path: Path) -> hd.sr.MeasurementReport:
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def _code(concept: hd.sr.CodedConcept) -> tuple[str, str]:
    return (concept.value, concept.scheme_designator)


def _texts(item: pydicom.Dataset, name: object) -> list[str]:
    return [i.value for i in find_content_items(item, name=name, value_type="TEXT")]


def _evaluations(report: hd.sr.MeasurementReport) -> pydicom.Dataset:
    containers = find_content_items(report[0], name=codes.QUALITATIVE_EVALUATIONS)
    assert len(containers) == 1
    return containers[0]


def recovered_findings(report: hd.sr.MeasurementReport) -> dict[tuple[str, str], dict[str, object]]:
    """finding code -> what the SR says about it: from the TID 1410 groups (findings with a
    box) and from the report-level CODE evaluations "<finding> = Present | Absent"."""
    out: dict[tuple[str, str], dict[str, object]] = {}
    for group in report.get_planar_roi_measurement_groups():
        assert group.finding_type is not None
        [probability] = group.get_measurements(name=_probability_concept(group.finding_type))
        assert _code(probability.unit) == ("%", "UCUM")
        [presence] = group.get_qualitative_evaluations(name=codes.PRESENCE_OF_PROPERTY)
        [step] = group.get_qualitative_evaluations(name=codes.ABCDEF_STEP)
        assert group.roi is not None
        out[_code(group.finding_type)] = {
            "tracking": group.tracking_identifier,
            "tracking_uid": group.tracking_uid,
            "probability": probability.value / 100.0,
            "present": presence.value == codes.PRESENT,
            "step": codes.STEP_BY_CODE_VALUE[step.value.value],
            "points": group.roi.value,
            "roi_source": group.roi.ContentSequence[0].ReferencedSOPSequence[0],
            "sentence": _texts(group[0], codes.FINDING),
        }
    for item in _evaluations(report).ContentSequence:
        if item.ValueType != "CODE" or item.name.scheme_designator == codes.GAZEX_SCHEME:
            continue  # the steps not inspected
        children = {c.name.value: c for c in item.ContentSequence}
        probability = children[_probability_concept(item.name).value]
        assert probability.RelationshipType == "HAS PROPERTIES"
        assert _code(probability.unit) == ("%", "UCUM")
        out[_code(item.name)] = {
            "tracking": None,
            "probability": probability.value / 100.0,
            "present": item.value == codes.PRESENT,
            "step": codes.STEP_BY_CODE_VALUE[children[codes.ABCDEF_STEP.value].value.value],
            "points": None,
            "sentence": _texts(item, codes.FINDING),
        }
    return out


def _probability_concept(finding: hd.sr.CodedConcept) -> Code:
    """The NUM concept the builder names a finding's probability with."""
    return codes.finding_probability(
        Code(finding.value, finding.scheme_designator, finding.meaning)
    )


def _report_case(cases: dict[str, Case], name: str) -> tuple[Case, hd.sr.MeasurementReport]:
    case = cases[name]
    return case, read_report(case.paths[ObjectKindValues.FINDINGS_SR])


@pytest.mark.parametrize("name", ["cr_many_findings", "dx_monochrome1", "no_finding", "huge_text"])
def test_findings_probabilities_and_boxes_survive(cases: dict[str, Case], name: str) -> None:
    """Every finding comes back with its code, probability, presence, ABCDEF step and
    sentence; grounded ones with their tracking name and UID and their box in source
    pixels, selected from the exact source image."""
    case, report = _report_case(cases, name)
    result: InferenceResult = case.result
    found = recovered_findings(report)
    assert len(found) == len(result.findings)
    for finding in result.findings:
        got = found[(finding.code.value, finding.code.scheme)]
        assert got["probability"] == pytest.approx(finding.probability, abs=1e-6)
        assert got["present"] is finding.present
        assert got["step"] is finding.step
        assert got["sentence"] == [finding.sentence]
        if finding.present and finding.box is not None:
            assert got["tracking"] == finding.code.meaning
            assert got["tracking_uid"] == tracking_uid(result, finding.key)
            assert np.allclose(got["points"], box_polyline(finding.box), atol=1e-3)
            source_ref = got["roi_source"]
            assert source_ref.ReferencedSOPInstanceUID == case.source.SOPInstanceUID
            assert source_ref.ReferencedSOPClassUID == case.source.SOPClassUID
        else:
            assert got["points"] is None


def test_only_boxed_findings_are_measurement_groups(cases: dict[str, Case]) -> None:
    """Boxed findings are the TID 1410 groups, most probable first, each with one NUM and
    no Finding Site at its top level (OHIF draws each as a label line); every other finding
    is a report-level evaluation, never a group without a SCOORD (OHIF crashes on one)."""
    case, report = _report_case(cases, "cr_many_findings")
    planar = report.get_planar_roi_measurement_groups()
    boxed = [f for f in case.result.findings if f.present and f.box is not None]
    assert [g.tracking_identifier for g in planar] == [
        f.code.meaning for f in sorted(boxed, key=lambda f: -f.probability)
    ]
    assert report.get_image_measurement_groups() == []
    for group in planar:
        top = group[0].ContentSequence
        assert [i.ValueType for i in top].count("NUM") == 1
        assert not [i for i in top if i.name.value == "363698007"]
        [num] = [i for i in top if i.ValueType == "NUM"]
        assert [c.name.value for c in num.ContentSequence] == ["363698007", "121112"]


@pytest.mark.parametrize("name", ["cr_many_findings", "dx_monochrome1"])
def test_boxed_findings_carry_what_ohif_loads_into_its_panel(
    cases: dict[str, Case], name: str
) -> None:
    """What OHIF 3.13.2 needs to list a group in its measurement panel: the group's NUM
    INFERRED FROM the same box, as a SCOORD "Source of Measurement" SELECTED FROM the
    source image (TID 300/320), and a TEXT (121106, DCM, "Comment") with the finding's name
    and probability (``model.result.finding_label``), its label; the coded Finding and the tracking
    identifier stay as they were."""
    case, report = _report_case(cases, name)
    by_code = {(f.code.value, f.code.scheme): f for f in case.result.findings}
    planar = report.get_planar_roi_measurement_groups()
    assert planar
    for group in planar:
        assert group.finding_type is not None and group.roi is not None
        finding = by_code[_code(group.finding_type)]
        assert group.tracking_identifier == finding.code.meaning
        assert _texts(group[0], codes.COMMENT) == [finding_label(finding)]
        [num] = [i for i in group[0].ContentSequence if i.ValueType == "NUM"]
        [source] = [c for c in num.ContentSequence if c.ValueType == "SCOORD"]
        assert source.RelationshipType == "INFERRED FROM"
        assert _code(source.name) == ("121112", "DCM")
        assert source.GraphicType == "POLYLINE"
        np.testing.assert_array_equal(source.value, group.roi.value)
        [image] = source.ContentSequence
        assert image.RelationshipType == "SELECTED FROM"
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            case.source.SOPInstanceUID
        )


def test_no_box_means_no_measurement_container(cases: dict[str, Case]) -> None:
    """A film with no finding that has a box has no Imaging Measurements container."""
    _, report = _report_case(cases, "no_finding")
    containers = find_content_items(report[0], name=dcm_codes.DCM.ImagingMeasurements)
    assert containers == []


@pytest.mark.parametrize("name", ["cr_many_findings", "huge_text", "no_finding"])
def test_abcdef_report_impression_and_coverage_survive(cases: dict[str, Case], name: str) -> None:
    """Each ABCDEF section and the impression come back verbatim (a 700 kB section too),
    each skipped step as 'not inspected', and the intended-use statement is there."""
    case, report = _report_case(cases, name)
    container = _evaluations(report)
    # UT drops trailing spaces (PS3.5 6.2), so compare without them.
    for section in case.result.report.sections:
        assert _texts(container, codes.STEP_CODES[section.step]) == [section.text.rstrip(" ")]
    assert _texts(container, codes.IMPRESSION) == [case.result.report.impression.rstrip(" ")]
    skipped = [
        codes.STEP_BY_CODE_VALUE[i.value.value]
        for i in find_content_items(container, name=codes.STEP_NOT_INSPECTED)
    ]
    assert skipped == list(case.result.skipped_steps)
    assert _texts(container, codes.INTENDED_USE) == [intended_use_statement(case.result.model)]
    assert "trained on synthetic data" in intended_use_statement(case.result.model)
    assert "Not for clinical use" in intended_use_statement(case.result.model)


def test_huge_text_is_really_huge(cases: dict[str, Case]) -> None:
    """The huge case is what its name says (guards the test above)."""
    assert max(len(s.text) for s in cases["huge_text"].result.report.sections) > 300_000


def test_empty_result_says_no_finding(cases: dict[str, Case]) -> None:
    """A result with no label at all still yields a valid TID 1500 saying so."""
    _, report = _report_case(cases, "empty_result")
    assert report.get_image_measurement_groups() == []
    assert report.get_planar_roi_measurement_groups() == []
    container = _evaluations(report)
    assert _texts(container, codes.FINDING) == ["The model reported no finding for this image."]
    skipped = find_content_items(container, name=codes.STEP_NOT_INSPECTED)
    assert len(skipped) == len(STEPS)


@pytest.mark.parametrize("name", ["cr_many_findings", "dx_monochrome1", "no_finding"])
def test_trajectory_order_times_and_path_survive(cases: dict[str, Case], name: str) -> None:
    """The trajectory SR gives back every fixation in order with its centre, onset, dwell,
    step and region, and the open path through the centres."""
    case = cases[name]
    result = case.result
    report = read_report(case.paths[ObjectKindValues.TRAJECTORY_SR])
    groups = report.get_planar_roi_measurement_groups(finding_type=codes.GAZE_FIXATION)
    fixations = []
    for group in groups:
        [fixation_item] = [i for i in group[0].ContentSequence if i.name == codes.FINDING]
        details = {c.name.value: c for c in fixation_item.ContentSequence}
        order = details[codes.FIXATION_ORDER.value]
        onset, dwell = details[codes.FIXATION_ONSET.value], details[codes.FIXATION_DWELL.value]
        assert codes.GAZE_PATCH_INDEX.value in details
        [step] = group.get_qualitative_evaluations(name=codes.ABCDEF_STEP)
        [region] = group.get_qualitative_evaluations(name=codes.CHEST_IMAGENOME_REGION)
        assert _code(onset.unit) == ("s", "UCUM")
        assert _code(dwell.unit) == ("ms", "UCUM")
        assert group.roi is not None
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.CIRCLE
        centre = group.roi.value[0]
        fixations.append(
            (
                int(order.value),
                float(centre[0]),
                float(centre[1]),
                onset.value * 1000.0,
                dwell.value,
                codes.STEP_BY_CODE_VALUE[step.value.value],
                codes.REGION_BY_CODE_VALUE[region.value.value],
            )
        )
    fixations.sort()
    assert [f[0] for f in fixations] == list(range(1, len(result.trajectory) + 1))
    for got, fixation in zip(fixations, result.trajectory, strict=True):
        assert got[1:3] == pytest.approx((fixation.x, fixation.y), abs=1e-3)
        assert got[3] == pytest.approx(fixation.start_ms, abs=1e-3)
        assert got[4] == pytest.approx(fixation.duration_ms, abs=1e-3)
        assert got[5:] == (fixation.step, fixation.region)
    paths = report.get_planar_roi_measurement_groups(finding_type=codes.INSPECTION_PATH)
    if len(result.trajectory) < 2:
        assert paths == []
        return
    [path] = paths
    assert path.roi is not None
    assert path.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    expected = np.array([[f.x, f.y] for f in result.trajectory])
    assert np.allclose(path.roi.value, expected, atol=1e-3)
    assert not np.allclose(path.roi.value[0], path.roi.value[-1])  # open, not a polygon


def test_trajectory_sr_declares_the_private_scheme(cases: dict[str, Case]) -> None:
    """Both SRs declare 99GAZEX in CodingSchemeIdentificationSequence."""
    for kind in (ObjectKindValues.FINDINGS_SR, ObjectKindValues.TRAJECTORY_SR):
        ds = pydicom.dcmread(cases["cr_many_findings"].paths[kind])
        designators = [i.CodingSchemeDesignator for i in ds.CodingSchemeIdentificationSequence]
        assert codes.GAZEX_SCHEME in designators


def test_repeated_fixations_label_once_per_point() -> None:
    """Fixations at one point: only the first has NUMs at the top of its group, one
    "Fixation" per visit there with the visit's step as the unit annotation (what OHIF draws
    as stacked label lines); each fixation keeps its own order among its properties."""
    ds = sr_factories.make_source()
    points = [(100.0, 80.0), (150.0, 80.0), (100.0, 80.0), (120.0, 200.0), (100.0, 80.0)]
    trajectory = tuple(
        dataclasses.replace(fixation, x=x, y=y)
        for fixation, (x, y) in zip(sr_factories.trajectory(240, 200, 5), points, strict=True)
    )
    result = sr_factories.make_result(ds, fixations=trajectory)
    assert visits_at_first_fixations(result) == {1: [1, 3, 5], 2: [2], 3: [], 4: [4], 5: []}
    # Circles closer than two radii share one label too (two labels there would overlap).
    radius = fixation_radius(int(ds.Rows), int(ds.Columns))
    near = dataclasses.replace(
        result,
        trajectory=(
            dataclasses.replace(trajectory[0], x=100.0, y=80.0),
            dataclasses.replace(trajectory[1], x=100.0 + 1.9 * radius, y=80.0),
            dataclasses.replace(trajectory[2], x=100.0 + 2.1 * radius + 1.9 * radius, y=80.0),
        ),
    )
    assert visits_at_first_fixations(near) == {1: [1, 2], 2: [], 3: [3]}
    algorithm = algorithm_identification(result.model)
    first = fixation_group(result, 1, [1, 3, 5], ds, algorithm)
    tops = [i for i in first[0].ContentSequence if i.ValueType == "NUM"]
    assert [(i.name, i.value) for i in tops] == [(codes.FIXATION_VISIT, n) for n in (1, 3, 5)]
    units = [i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for i in tops]
    assert units == ["{%s}" % trajectory[n - 1].step.value for n in (1, 3, 5)]  # noqa: UP031
    repeat = fixation_group(result, 3, [], ds, algorithm)
    assert not [i for i in repeat[0].ContentSequence if i.ValueType == "NUM"]
    [fixation_item] = [i for i in repeat[0].ContentSequence if i.name == codes.FINDING]
    [order] = [i for i in fixation_item.ContentSequence if i.name == codes.FIXATION_ORDER]
    assert order.value == 3


@pytest.mark.parametrize("in_domain", [True, False])
def test_domain_verdict_leads_and_out_of_domain_draws_nothing(in_domain: bool) -> None:
    """The domain verdict is the first report-level evaluation of both SRs, coded with its
    score and threshold; out of domain the notice follows as text, no finding is drawn (no
    measurement group) and every finding is 'Not assessed', its probability kept."""
    ds = sr_factories.make_source()
    box = Box(20.0, 30.0, 80.0, 90.0)
    findings = (
        sr_factories.finding("nodule", 0.9, box=box),
        sr_factories.finding("cardiomegaly", 0.1),
    )
    result = dataclasses.replace(
        sr_factories.make_result(ds, findings=findings),
        domain=DomainCheck(
            score=3.0 if in_domain else 75.5, threshold=40.0, in_domain=in_domain, method="m"
        ),
    )
    findings_sr = hd.sr.Comprehensive3DSR.from_dataset(build_findings_sr(result, ds))
    trajectory_sr = build_trajectory_sr(result, ds)
    assert trajectory_sr is not None
    for sr in (findings_sr, hd.sr.Comprehensive3DSR.from_dataset(trajectory_sr)):
        report = sr.content
        container = _evaluations(report)
        verdict = container.ContentSequence[0]
        assert verdict.name == codes.DOMAIN_CHECK
        assert verdict.value == (codes.IN_DOMAIN if in_domain else codes.OUT_OF_DOMAIN)
        numbers = {c.name.value: c.value for c in verdict.ContentSequence}
        assert numbers[codes.DOMAIN_SCORE.value] == pytest.approx(result.domain.score)
        assert numbers[codes.DOMAIN_THRESHOLD.value] == pytest.approx(40.0)
        notice = _texts(container, codes.DOMAIN_NOTICE)
        assert notice == ([] if in_domain else [result.domain_notice()])
    report = findings_sr.content
    drawn = report.get_planar_roi_measurement_groups()
    evaluations = {
        item.name.value: item.value
        for item in _evaluations(report).ContentSequence
        if item.ValueType == "CODE" and item.name.scheme_designator != codes.GAZEX_SCHEME
    }
    if in_domain:
        assert [g.tracking_identifier for g in drawn] == ["Nodule"]
        assert evaluations == {findings[1].code.value: codes.ABSENT}
    else:
        assert drawn == []
        assert evaluations == {f.code.value: codes.NOT_ASSESSED for f in findings}


@pytest.mark.parametrize(
    ("probability", "shown"),
    [
        (0.8742, "87 %"),
        (0.995, "99.5 %"),
        (0.99956, "99.9 %"),
        (0.004, "0.4 %"),
        (1e-5, "0.1 %"),
        (1.0, "100 %"),
        (0.0, "0 %"),
        (0.5, "50 %"),
    ],
)
def test_a_label_never_shows_certainty_the_model_does_not_have(
    probability: float, shown: str
) -> None:
    """Whole percent, except that a probability strictly between 0 and 1 is never shown as
    "0 %" or "100 %": a reader takes those for certainty."""
    assert percent(probability) == shown
