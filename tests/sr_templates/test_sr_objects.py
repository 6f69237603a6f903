"""Header, UIDs, SEG pixels and GSPS content of the result objects."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pydicom.sr._concepts_dict as concepts
import pytest
import sr_factories as f
from pydicom.sr.coding import Code
from sr_cases import Case

from dicom_node.cli import main
from model.abcdef import REGIONS
from sr_templates import codes
from sr_templates.build import build_all
from sr_templates.content import box_mask
from sr_templates.enum import GraphicLayerValues, ObjectKindValues
from sr_templates.gsps import build_gsps, voi_window
from sr_templates.pm import attention_map, build_attention_map
from sr_templates.seg import build_segmentation, grounded_findings
from sr_templates.sr import build_findings_sr, build_trajectory_sr
from sr_templates.uids import frame_of_reference_uid, object_uids

PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)


def _read(case: Case, kind: ObjectKindValues) -> pydicom.Dataset:
    return pydicom.dcmread(case.paths[kind])


def test_objects_land_in_the_source_study_with_its_patient(cases: dict[str, Case]) -> None:
    """Every object repeats the source's patient and study modules (non-ASCII names and
    their character set included), so the results land in the same study."""
    for case in cases.values():
        for kind in case.paths:
            ds = _read(case, kind)
            for keyword in PATIENT_AND_STUDY:
                assert ds.get(keyword) == case.source.get(keyword), (case.name, kind, keyword)
            assert ds.get("SpecificCharacterSet") == case.source.get("SpecificCharacterSet")


def test_non_ascii_names_survive_on_disk(cases: dict[str, Case]) -> None:
    """The UTF-8 and Latin-1 names read back identical, ideographic group included."""
    many = _read(cases["cr_many_findings"], ObjectKindValues.FINDINGS_SR)
    assert str(many.PatientName) == "Gómez^José=山田^太郎"
    assert many.PatientName.ideographic == "山田^太郎"
    latin = _read(cases["huge_text"], ObjectKindValues.GSPS)
    assert latin.SpecificCharacterSet == "ISO_IR 100"
    assert str(latin.PatientName) == "Müller^Jürgen"


def test_series_and_equipment_read_as_ai(cases: dict[str, Case]) -> None:
    """Each object sits in its own numbered AI series; equipment comes from the model."""
    case = cases["cr_many_findings"]
    model = case.result.model
    series = set()
    for kind in case.paths:
        ds = _read(case, kind)
        assert ds.SeriesNumber == kind.series_number
        assert ds.SeriesDescription == kind.series_description
        assert ds.SeriesDescription.startswith("AI ") and len(ds.SeriesDescription) <= 64
        assert ds.Manufacturer == model.manufacturer
        assert ds.ManufacturerModelName == model.name
        assert ds.SoftwareVersions == model.version
        assert ds.DeviceSerialNumber == model.checkpoint_sha256
        assert ds.InstanceNumber == case.revision
        series.add(ds.SeriesInstanceUID)
    assert len(series) == len(case.paths)
    assert case.source.SeriesInstanceUID not in series


def test_uids_are_deterministic_and_revisions_chain(cases: dict[str, Case]) -> None:
    """Building again gives the same UIDs; revision 2 keeps the series, gets a new instance
    and names revision 1 in PredecessorDocumentsSequence."""
    case = cases["cr_many_findings"]
    again = build_all(case.result, case.source, revision=case.revision)
    for kind, ds in case.objects.items():
        assert again[kind].SOPInstanceUID == ds.SOPInstanceUID
        assert again[kind].SeriesInstanceUID == ds.SeriesInstanceUID
        assert ds.SOPInstanceUID.startswith("2.25.") and len(ds.SOPInstanceUID) <= 64
    first = build_findings_sr(case.result, case.source, revision=1)
    second = _read(case, ObjectKindValues.FINDINGS_SR)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in first
    [study] = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == case.source.StudyInstanceUID
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    [instance] = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == first.SOPClassUID


def test_uids_depend_on_model_version_and_source() -> None:
    """Another model version or another image of the study gives other UIDs."""
    ds = f.make_source()
    result = f.make_result(ds, findings=f.all_absent())
    kind = ObjectKindValues.FINDINGS_SR
    base = object_uids(result, kind)
    assert object_uids(f.with_model(result, version="9.9"), kind) != base
    other = replace(result, source=replace(result.source, SOPInstanceUID="1.2.3.4"))
    assert object_uids(other, kind).SOPInstanceUID != base.SOPInstanceUID
    with pytest.raises(ValueError, match="revision"):
        object_uids(result, kind, revision=0)


def test_srs_list_the_source_as_evidence_and_keep_their_typed_content() -> None:
    """Each SR's evidence is exactly the analysed image, and the built object's ``.content``
    is the whole tree that was written, typed by highdicom's constructor."""
    ds = f.make_source()
    result = f.make_result(ds)
    for sr in (build_findings_sr(result, ds), build_trajectory_sr(result, ds)):
        assert sr is not None
        [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == ds.StudyInstanceUID
        [series] = evidence.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == ds.SeriesInstanceUID
        [image] = series.ReferencedSOPSequence
        assert image.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert "PertinentOtherEvidenceSequence" not in sr
        [root] = sr.content
        assert len(root.ContentSequence) == len(sr.ContentSequence) > 1
        assert list(root.ContentSequence) == list(sr.ContentSequence)


def test_builders_refuse_a_source_that_is_not_the_analysed_image() -> None:
    """A dataset of another image (or of another size) is a ValueError naming the problem."""
    ds = f.make_source()
    result = f.make_result(ds, findings=f.all_absent())
    other = f.make_source()
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        build_gsps(result, other)
    resized = pydicom.Dataset(ds)
    resized.Rows = 10
    with pytest.raises(ValueError, match="computed on"):
        build_findings_sr(result, resized)


def test_binary_seg_is_pixel_aligned_with_the_source(cases: dict[str, Case]) -> None:
    """One segment per grounded finding, each the finding's mask (else its box's pixels),
    same size as the source, with coded type, algorithm and the SR's tracking UID."""
    for name in ("cr_many_findings", "dx_monochrome1"):
        case = cases[name]
        seg = hd.seg.Segmentation.from_dataset(_read(case, ObjectKindValues.SEGMENTATION))
        findings = grounded_findings(case.result)
        assert seg.number_of_segments == len(findings)
        assert (seg.Rows, seg.Columns) == (case.source.Rows, case.source.Columns)
        assert seg.SegmentationType == "BINARY"
        assert seg.PatientOrientation == case.source.PatientOrientation
        [source_ref] = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert source_ref.ReferencedSOPInstanceUID == case.source.SOPInstanceUID
        pixels = seg.get_pixels_by_source_instance(
            [case.source.SOPInstanceUID], combine_segments=False, skip_overlap_checks=True
        )[0]
        for number, finding in enumerate(findings, start=1):
            expected = (
                finding.mask
                if finding.mask is not None
                else box_mask(
                    finding.box,
                    case.source.Rows,
                    case.source.Columns,  # type: ignore[arg-type]
                )
            )
            assert np.array_equal(pixels[..., number - 1].astype(bool), expected), finding.key
            description = seg.get_segment_description(number)
            assert description.segment_label == finding.code.meaning
            assert description.segmented_property_type.value == finding.code.value
            assert description.tracking_uid == str(object_tracking(case, finding.key))
            assert description.algorithm_identification[0].AlgorithmName == case.result.model.name


def object_tracking(case: Case, key: str) -> str:
    from sr_templates.uids import tracking_uid

    return str(tracking_uid(case.result, key))


def test_attention_map_is_a_float_parametric_map(cases: dict[str, Case]) -> None:
    """The attention map, resampled to the source size, is a Parametric Map of 32-bit floats
    in [0, 1] with an identity Real World Value Mapping whose quantity is Saliency, named
    "Model attention", pixel-aligned with the source and saying it is research output."""
    case = cases["cr_many_findings"]
    ds = _read(case, ObjectKindValues.ATTENTION_MAP)
    pm = hd.pm.ParametricMap.from_dataset(ds)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and "FloatPixelData" in ds
    expected = attention_map(case.result)
    assert expected is not None and expected.shape == (case.source.Rows, case.source.Columns)
    pixels = np.frombuffer(ds.FloatPixelData, dtype="<f4").reshape(expected.shape)
    assert np.array_equal(pixels, expected)
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
    shared = pm.SharedFunctionalGroupsSequence[0]
    [mapping] = shared.RealWorldValueMappingSequence
    assert mapping.LUTExplanation == "Model attention" and mapping.LUTLabel == "ATTENTION"
    assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == codes.NO_UNITS.value
    [quantity] = mapping.QuantityDefinitionSequence
    assert quantity.ConceptCodeSequence[0].CodeValue == codes.SALIENCY.value
    [voi] = shared.FrameVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (0.5, 1.0)
    [anatomy] = shared.FrameAnatomySequence
    assert anatomy.FrameLaterality == "U"
    [frame] = pm.PerFrameFunctionalGroupsSequence
    [derivation] = frame.DerivationImageSequence
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == case.source.SOPInstanceUID
    assert "synthetic" in ds.ContentDescription and "NOT FOR CLINICAL USE" in ds.ContentDescription
    assert ds.PatientOrientation == case.source.PatientOrientation


@pytest.mark.parametrize(
    ("name", "spacing"),
    [
        ("cr_many_findings", (0.15, 0.15)),
        ("dx_monochrome1", (0.2, 0.2)),
        ("cr_zero_spacing", (1.0, 1.0)),
    ],
)
def test_seg_and_map_lie_on_the_pixel_grid_frame_of_the_source(
    cases: dict[str, Case], name: str, spacing: tuple[float, float]
) -> None:
    """A radiograph without patient geometry lends the SEG and the attention map a frame of
    reference of its pixel grid (the plane viewers assume: orientation (1, 0, 0, 0, 1, 0),
    position (0, 0, 0)), shared by both; Pixel Measures carry the image's spacing, or a
    nominal 1 mm where it has none or a header says 0 (never a 0 that puts a viewer's
    drawing at NaN)."""
    case = cases[name]
    assert "FrameOfReferenceUID" not in case.source
    for kind in (ObjectKindValues.SEGMENTATION, ObjectKindValues.ATTENTION_MAP):
        if kind not in case.paths:
            continue
        ds = _read(case, kind)
        assert ds.FrameOfReferenceUID == frame_of_reference_uid(case.result)
        shared = ds.SharedFunctionalGroupsSequence[0]
        [orientation] = shared.PlaneOrientationSequence
        assert [float(v) for v in orientation.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        [measures] = shared.PixelMeasuresSequence
        assert tuple(float(v) for v in measures.PixelSpacing) == pytest.approx(spacing)
        assert float(measures.SliceThickness) > 0
        for frame in ds.PerFrameFunctionalGroupsSequence:
            [position] = frame.PlanePositionSequence
            assert [float(v) for v in position.ImagePositionPatient] == [0, 0, 0]
            [derivation] = frame.DerivationImageSequence
            [image] = derivation.SourceImageSequence
            assert image.ReferencedSOPInstanceUID == case.source.SOPInstanceUID


def test_a_source_with_patient_geometry_lends_it_to_the_seg() -> None:
    """A DX that places itself in a patient frame of reference keeps it: the SEG and the map
    take its frame, orientation and position (and a usable spacing in place of a zero)."""
    ds = f.make_source(modality="DX", rows=90, columns=70)
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImagePositionPatient = [-100.0, 50.0, 200.0]
    ds.PixelSpacing = [0, 0]
    result = f.make_result(
        ds,
        findings=(f.finding("nodule", 0.9, box=f.Box(10.0, 10.0, 30.0, 40.0)),),
        attention=np.full((3, 3), 0.5, dtype=np.float32),
    )
    for built in (build_segmentation(result, ds), build_attention_map(result, ds)):
        assert built is not None
        assert built.FrameOfReferenceUID == ds.FrameOfReferenceUID
        shared = built.SharedFunctionalGroupsSequence[0]
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        assert [float(v) for v in orientation] == [1, 0, 0, 0, 0, -1]
        position = built.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        assert [float(v) for v in position.ImagePositionPatient] == [-100.0, 50.0, 200.0]
        spacing = shared.PixelMeasuresSequence[0].PixelSpacing
        assert [float(v) for v in spacing] == [0.2, 0.2]  # ImagerPixelSpacing, not the 0


def test_gsps_draws_boxes_fixations_path_and_notice(cases: dict[str, Case]) -> None:
    """The GSPS references the source and carries coloured layers: a labelled box per
    grounded finding, a numbered circle per fixation, the path with one arrowhead per
    step, and the research-use notice."""
    case = cases["cr_many_findings"]
    ds = _read(case, ObjectKindValues.GSPS)
    [series] = ds.ReferencedSeriesSequence
    assert series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == case.source.SOPInstanceUID
    layers = {layer.GraphicLayer: layer for layer in ds.GraphicLayerSequence}
    assert set(layers) == {layer.value for layer in GraphicLayerValues}
    for name, layer in layers.items():
        assert name == name.upper() and len(name) <= 16
        assert "GraphicLayerRecommendedDisplayCIELabValue" in layer
    annotations = {a.GraphicLayer: a for a in ds.GraphicAnnotationSequence}
    boxed = [f for f in case.result.findings if f.present and f.box is not None]
    findings_layer = annotations[GraphicLayerValues.FINDINGS.value]
    assert len(findings_layer.GraphicObjectSequence) == len(boxed)
    labels = [t.UnformattedTextValue for t in findings_layer.TextObjectSequence]
    assert "Pleural effusion 87 %" in labels
    assert "Cardiomegaly 71 % (image level)" in labels
    fixations = annotations[GraphicLayerValues.FIXATIONS.value]
    assert [g.GraphicType for g in fixations.GraphicObjectSequence] == ["CIRCLE"] * len(
        case.result.trajectory
    )
    numbers = [t.UnformattedTextValue for t in fixations.TextObjectSequence]
    assert numbers == [str(n) for n in range(1, len(case.result.trajectory) + 1)]
    path = annotations[GraphicLayerValues.PATH.value].GraphicObjectSequence
    assert len(path) == 1 + (len(case.result.trajectory) - 1)
    assert all(len(g.GraphicData) == 6 for g in path[1:])  # V arrowheads: three points
    notice = annotations[GraphicLayerValues.NOTICE.value].TextObjectSequence[0]
    assert "NOT FOR CLINICAL USE" in notice.UnformattedTextValue
    assert "synthetic" in notice.UnformattedTextValue
    for annotation in ds.GraphicAnnotationSequence:
        for graphic in annotation.get("GraphicObjectSequence", []):
            points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
            assert points[:, 0].min() >= 0 and points[:, 0].max() <= case.source.Columns
            assert points[:, 1].min() >= 0 and points[:, 1].max() <= case.source.Rows


@pytest.mark.parametrize(
    ("name", "shape"),
    [("cr_many_findings", "IDENTITY"), ("dx_monochrome1", "INVERSE"), ("no_finding", "IDENTITY")],
)
def test_gsps_window_and_presentation_follow_the_source(
    cases: dict[str, Case], name: str, shape: str
) -> None:
    """The VOI window is the source's (or its pixel range when it has none); MONOCHROME1
    sources get INVERSE; BodyPartExamined is copied."""
    case = cases[name]
    ds = _read(case, ObjectKindValues.GSPS)
    assert ds.PresentationLUTShape == shape
    [voi] = ds.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == pytest.approx(
        voi_window(case.source)
    )
    if "WindowCenter" in case.source:
        assert float(voi.WindowCenter) == float(case.source.WindowCenter)
    else:
        pixels = case.source.pixel_array
        assert float(voi.WindowWidth) == pytest.approx(float(pixels.max()) - pixels.min() + 1)
    assert ds.BodyPartExamined == case.source.BodyPartExamined


#: Standard codes outside pydicom's tables, with where they come from.
CHECKED_ELSEWHERE: dict[tuple[str, str], str] = {
    ("C0034375", "UMLS"): "the 'Qualitative Evaluations' container concept of TID 1500 itself",
    ("399208008", "SCT"): "SNOMED CT 'Plain X-ray of chest (procedure)'; CID 100 has no chest "
    "radiograph, and pydicom's tables are built from the CIDs",
}


def _known(code: Code) -> bool:
    if (code.value, code.scheme_designator) in CHECKED_ELSEWHERE:
        return True
    table = concepts.concepts.get(code.scheme_designator, {})
    return any(code.value in entry for entry in table.values())


def test_standard_codes_are_real() -> None:
    """Every DCM, SCT, UCUM and UMLS code used is in DICOM's tables as shipped by pydicom,
    and every private code uses 99GAZEX with a value that fits SH."""
    used = [v for v in vars(codes).values() if isinstance(v, Code)]
    used += list(codes.STEP_CODES.values())
    for region in codes.REGION_CODES.values():
        used += [region.region, region.anatomy] + ([region.laterality] if region.laterality else [])
    assert len(used) > 40
    for code in used:
        if code.scheme_designator == codes.GAZEX_SCHEME:
            assert 0 < len(code.value) <= 16, code
        else:
            assert _known(code), f"{code} is not in DICOM's tables"


def test_every_chest_imagenome_region_is_coded() -> None:
    """Each region the model names has a private code and a standard anatomy."""
    assert set(codes.REGION_CODES) == set(REGIONS)
    values = [c.region.value for c in codes.REGION_CODES.values()]
    assert len(set(values)) == len(values)


def test_render_command_writes_every_object(tmp_path: Path) -> None:
    """``gazex render`` reads a saved result JSON and its image and writes the objects."""
    ds = f.make_source(modality="DX", rows=90, columns=70)
    source = tmp_path / "image.dcm"
    ds.save_as(source, enforce_file_format=True)
    result = f.make_result(
        ds,
        findings=(f.finding("nodule", 0.9, box=f.Box(10, 10, 30, 40)),),
        attention=np.full((4, 4), 0.5, dtype=np.float32),
    )
    saved = tmp_path / "result.json"
    saved.write_text(result.to_json(), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["render", "--result", str(saved), "--source", str(source), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{kind.file_stem}-r1.dcm" for kind in ObjectKindValues]
    sr = pydicom.dcmread(out / written[0])
    assert sr.SOPInstanceUID == object_uids(result, ObjectKindValues.FINDINGS_SR).SOPInstanceUID


def test_render_command_reports_a_bad_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A document that is not a result is a one-line error and exit code 2."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}', encoding="utf-8")
    image = tmp_path / "image.dcm"
    f.make_source().save_as(image, enforce_file_format=True)
    code = main(["render", "--result", str(bad), "--source", str(image), "--out", str(tmp_path)])
    assert code == 2
    assert "not a gazex.result/1 document" in capsys.readouterr().err


def test_building_leaves_the_source_untouched(cases: dict[str, Case]) -> None:
    """The builders read the source image and never change it (the SEG's plane geometry
    once rewrote a quirky film's PixelSpacing 0\\0 to the nominal 1\\1 it uses)."""
    case = cases["cr_zero_spacing"]
    before = case.source.to_json_dict()
    build_all(case.result, case.source)
    assert case.source.to_json_dict() == before
    assert [float(v) for v in case.source.PixelSpacing] == [0.0, 0.0]
