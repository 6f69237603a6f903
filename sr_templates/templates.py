"""SR templates of the result objects, built with highdicom's template classes.

Each builder cites the PS3.16 template it fills. The findings SR and the trajectory SR are
both TID 1500 documents; they differ in their measurement groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from model.findings import FINDINGS_BY_KEY
from model.result import Finding, InferenceResult, ModelInfo, finding_label
from sr_templates import codes, content, uids

MeasurementGroup = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)
EvaluationItem = hd.sr.TextContentItem | hd.sr.CodeContentItem

NO_FINDING_TEXT = "The model reported no finding for this image."


def algorithm_identification(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification: name, version, family, manufacturer, checkpoint."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        manufacturer=model.manufacturer,
        parameters=[f"checkpoint sha256 {model.checkpoint_sha256}"],
    )


def observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    """TID 1001 Observation Context with the algorithm as device observer (TID 1004)."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=uids.device_observer_uid(model),
                name=model.name,
                manufacturer_name=model.manufacturer,
                model_name=model.name,
                serial_number=model.checkpoint_sha256[:64],
            ),
        )
    )


def finding_group(
    result: InferenceResult,
    finding: Finding,
    ds: Dataset,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A present finding with a box as a TID 1410 "Planar ROI Measurements and Qualitative
    Evaluations" group whose closed POLYLINE is SELECTED FROM the source image.

    It carries the tracking identifier (the finding's name) and UID, the finding code, its
    presence, one NUM "<finding> probability" in percent (with the finding site nested in
    it, and INFERRED FROM the box: see ``content.measurement_source``), the ABCDEF
    step, the region, a TEXT (121106, DCM, "Comment") with the finding's label ("Nodule
    87 %") and the report sentence. OHIF draws the SR's box labelled with that NUM,
    "Nodule probability: 87.00 %"; when the user loads the SR into OHIF's measurement panel
    ("Do you want to continue tracking measurements for this study?" Yes), the box becomes
    a rectangle tool listed by the Comment, which OHIF's Cornerstone3D adapter takes as the
    measurement's label. Findings without a box are report-level evaluations
    (``finding_evaluation``): OHIF crashes on a measurement group without a SCOORD.
    """
    if not finding.present or finding.box is None:
        raise ValueError(f"{finding.key} has no box to draw: it is a report-level evaluation")
    box = (hd.sr.GraphicTypeValues.POLYLINE, content.box_polyline(finding.box))
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(result, finding.key), identifier=finding.code.meaning
        ),
        referenced_region=content.image_region(*box, ds),
        finding_type=codes.from_model(finding.code),
        finding_category=_category(finding),
        algorithm_id=algorithm_id,
        measurements=[content.probability_measurement(finding)],
        qualitative_evaluations=[
            content.presence_evaluation(finding.present),
            content.step_evaluation(finding.step),
            *content.region_evaluation(finding.region),
        ],
    )
    # OHIF 3.13.2 loads a group into its panel only when the group's NUM holds the region it
    # was inferred from. TID 1419 lists no such row (highdicom refuses one in its
    # constructor), but it is extensible, and TID 300 has the row (TID 320): added here.
    [probability] = [item for item in group[0].ContentSequence if item.ValueType == "NUM"]
    probability.ContentSequence = hd.sr.ContentSequence(
        [*probability.get("ContentSequence", []), content.measurement_source(*box, ds)]
    )
    group[0].ContentSequence.append(content.text(codes.COMMENT, finding_label(finding)))
    if finding.sentence.strip():
        group[0].ContentSequence.append(content.text(codes.FINDING, finding.sentence))
    return group


def finding_evaluation(finding: Finding, assessed: bool = True) -> hd.sr.CodeContentItem:
    """A finding without a box (absent, or present for the whole image) as a report-level
    CODE "<finding> = Present | Absent" with HAS PROPERTIES its probability (NUM, percent),
    ABCDEF step, region and report sentence. On a film outside the training domain
    (``assessed`` False) every finding is "Not assessed", its probability kept as output."""
    presence = codes.PRESENT if finding.present else codes.ABSENT
    item = hd.sr.CodeContentItem(
        name=codes.from_model(finding.code),
        value=presence if assessed else codes.NOT_ASSESSED,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    properties = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
    children: list[hd.sr.ContentItem] = [
        hd.sr.NumContentItem(
            name=codes.finding_probability(finding.code),
            value=round(100.0 * finding.probability, 4),
            unit=codes.PERCENT,
            relationship_type=properties,
        ),
        hd.sr.CodeContentItem(
            name=codes.ABCDEF_STEP,
            value=codes.STEP_CODES[finding.step],
            relationship_type=properties,
        ),
    ]
    if finding.region in codes.REGION_CODES:
        children.append(
            hd.sr.CodeContentItem(
                name=codes.CHEST_IMAGENOME_REGION,
                value=codes.REGION_CODES[finding.region].region,
                relationship_type=properties,
            )
        )
    if finding.sentence.strip():
        children.append(
            hd.sr.TextContentItem(
                name=codes.FINDING, value=finding.sentence, relationship_type=properties
            )
        )
    item.ContentSequence = hd.sr.ContentSequence(children)
    return item


def _category(finding: Finding) -> Code:
    finding_type = FINDINGS_BY_KEY.get(finding.key)
    if finding_type is not None and finding_type.device:
        return codes.PHYSICAL_OBJECT
    return codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE


def visits_at_first_fixations(result: InferenceResult) -> dict[int, list[int]]:
    """Fixation number -> the numbers of every fixation at its spot, for the first fixation
    at each spot (1-based, in order); the others there map to []. A spot
    (``content.fixation_spots``) holds the fixations within two circle radii of its first:
    a viewer writes each label beside its circle in screen-sized text, so two labels of
    circles that close would overlap (OHIF did, at the carina)."""
    source = result.source
    within = 2 * content.fixation_radius(source.Rows, source.Columns)
    visits: dict[int, list[int]] = {n: [] for n in range(1, len(result.trajectory) + 1)}
    for _, numbers in content.fixation_spots(result, within):
        visits[numbers[0]] = numbers
    return visits


def fixation_group(
    result: InferenceResult,
    number: int,
    visits: Sequence[int],
    ds: Dataset,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 "Planar ROI Measurements and Qualitative Evaluations" for fixation ``number``.

    A CIRCLE centred on the fixation (geometric purpose (111010, DCM, "Center")). Its finding
    type, (FIX, 99GAZEX, "Model gaze fixation"), HAS PROPERTIES the fixation's order, onset
    (s), dwell (ms) and gaze-token patch index as NUMs (TCOORD is not allowed against images
    here); then the ABCDEF step and Chest ImaGenome region as evaluations.

    OHIF draws each NUM at the top of a group as a label line beside its shape, and repeated
    fixations share a point: so only the first fixation at a point has NUMs at the top, one
    "Fixation" per visit there (``visits``, see ``visits_at_first_fixations``) in the unit
    "{<step letter>}", with the finding site nested (TID 300): the lines "Fixation: 2.00 {A}"
    and "Fixation: 5.00 {B}" stack in one box instead of piling up.
    """
    fixation = result.trajectory[number - 1]
    rows, columns = result.source.Rows, result.source.Columns
    radius = content.fixation_radius(rows, columns)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(result, f"fixation-{number}"),
            identifier=f"Fixation {number}",
        ),
        referenced_region=content.image_region(
            hd.sr.GraphicTypeValues.CIRCLE,
            content.circle(fixation.x, fixation.y, radius, rows, columns),
            ds,
        ),
        geometric_purpose=codes.CENTER,
        finding_type=codes.GAZE_FIXATION,
        algorithm_id=algorithm_id,
        measurements=[
            content.number(
                codes.FIXATION_VISIT,
                visit,
                codes.STEP_UNITS[result.trajectory[visit - 1].step],
                finding_sites=content.finding_sites(result.trajectory[visit - 1].region),
            )
            for visit in visits
        ]
        or None,
        qualitative_evaluations=[
            content.step_evaluation(fixation.step),
            *content.region_evaluation(fixation.region),
        ],
    )
    [finding_type] = [item for item in group[0].ContentSequence if item.name == codes.FINDING]
    properties = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
    finding_type.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.NumContentItem(name=name, value=value, unit=unit, relationship_type=properties)
            for name, value, unit in (
                (codes.FIXATION_ORDER, number, codes.NO_UNITS),
                (codes.FIXATION_ONSET, fixation.start_ms / 1000.0, codes.SECOND),
                (codes.FIXATION_DWELL, fixation.duration_ms, codes.MILLISECOND),
                (codes.GAZE_PATCH_INDEX, fixation.patch_index, codes.NO_UNITS),
            )
        ]
    )
    return group


def path_group(
    result: InferenceResult, ds: Dataset, algorithm_id: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group whose open POLYLINE joins the fixation centres in reading order."""
    if len(result.trajectory) < 2:
        raise ValueError("an inspection path needs at least two fixations")
    points = np.array([[f.x, f.y] for f in result.trajectory], dtype=np.float32)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(result, "inspection-path"), identifier="Inspection path"
        ),
        referenced_region=content.image_region(hd.sr.GraphicTypeValues.POLYLINE, points, ds),
        finding_type=codes.INSPECTION_PATH,
        algorithm_id=algorithm_id,
    )


def report_evaluations(
    result: InferenceResult, findings: Sequence[Finding], drawn: Sequence[Finding]
) -> list[EvaluationItem]:
    """The findings SR's report-level evaluations: each finding not ``drawn`` as a group (see
    ``finding_evaluation``), the ABCDEF sections and the impression as TEXT, each step the
    trajectory skipped as "not inspected", and the intended use."""
    items: list[EvaluationItem] = [
        *content.domain_evaluations(result),
        *(
            finding_evaluation(f, assessed=not result.out_of_domain)
            for f in findings
            if f not in drawn
        ),
    ]
    if not findings:
        items.append(content.text(codes.FINDING, NO_FINDING_TEXT))
    items += [
        content.text(codes.STEP_CODES[section.step], section.text)
        for section in result.report.sections
        if section.text.strip()
    ]
    if result.report.impression.strip():
        items.append(content.text(codes.IMPRESSION, result.report.impression))
    items.extend(coverage_evaluations(result))
    return items


def coverage_evaluations(result: InferenceResult) -> list[EvaluationItem]:
    """Each skipped ABCDEF step as a CODE, then the intended-use statement."""
    items: list[EvaluationItem] = [
        content.code(codes.STEP_NOT_INSPECTED, codes.STEP_CODES[step])
        for step in result.skipped_steps
    ]
    items.append(content.text(codes.INTENDED_USE, content.intended_use_statement(result.model)))
    return items


class _ImageLibraryEntryDescriptors(hd.sr.ImageLibraryEntryDescriptors):
    """TID 1602 descriptors that tolerate a radiograph without PatientOrientation or
    ImagerPixelSpacing (both optional for CR), which highdicom's class requires."""

    def _generate_projection_radiography_descriptors(
        self, dataset: Dataset
    ) -> Sequence[hd.sr.ContentItem]:
        """TID 1603 rows for the attributes the image has."""
        acquisition = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
        items: list[hd.sr.ContentItem] = []
        orientation = dataset.get("PatientOrientation") or []
        if len(orientation) == 2 and all(orientation):
            items += [
                hd.sr.TextContentItem(
                    name=dcm_codes.DCM.PatientOrientationRow,
                    value=orientation[0],
                    relationship_type=acquisition,
                ),
                hd.sr.TextContentItem(
                    name=dcm_codes.DCM.PatientOrientationColumn,
                    value=orientation[1],
                    relationship_type=acquisition,
                ),
            ]
        spacing = [float(v) for v in dataset.get("ImagerPixelSpacing") or []]
        # Only a real spacing: quirky films carry 0\0, and a 0 mm pixel misleads viewers.
        if len(spacing) == 2 and all(math.isfinite(v) and v > 0 for v in spacing):
            items += [
                hd.sr.NumContentItem(
                    name=dcm_codes.DCM.HorizontalPixelSpacing,
                    value=spacing[1],
                    unit=dcm_codes.UCUM.Millimeter,
                    relationship_type=acquisition,
                ),
                hd.sr.NumContentItem(
                    name=dcm_codes.DCM.VerticalPixelSpacing,
                    value=spacing[0],
                    unit=dcm_codes.UCUM.Millimeter,
                    relationship_type=acquisition,
                ),
            ]
        return items


def image_library(ds: Dataset) -> hd.sr.ContainerContentItem:
    """TID 1600 "Image Library" with one group holding the source image (TID 1601) and its
    descriptors (TID 1602/1603)."""
    image = hd.sr.ImageContentItem(
        name=codes.SOURCE,
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    descriptors = cast(Sequence[hd.sr.ContentItem], _ImageLibraryEntryDescriptors(ds))
    image.ContentSequence = hd.sr.ContentSequence(list(descriptors))
    group = hd.sr.ContainerContentItem(
        name=dcm_codes.DCM.ImageLibraryGroup,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group.ContentSequence = hd.sr.ContentSequence([image])
    library = hd.sr.ContainerContentItem(
        name=dcm_codes.DCM.ImageLibrary,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def measurement_report(
    model: ModelInfo,
    groups: Sequence[MeasurementGroup],
    ds: Dataset,
    evaluations: Sequence[EvaluationItem],
) -> hd.sr.MeasurementReport:
    """TID 1500 "Measurement Report", titled (126000, DCM, "Imaging Measurement Report").

    ``groups`` may be empty: the report then has no "Imaging Measurements" container.

    Language (TID 1204), observation context with the device observer (TID 1001),
    procedure reported (399208008, SCT, "Plain X-ray of chest"), the Image Library
    (TID 1600, built here: see ``image_library``) holding the source image, the
    measurement groups in "Imaging Measurements", and the report-level TEXT and CODE items
    in the (C0034375, UMLS, "Qualitative Evaluations") container that TID 1500 provides for
    them (highdicom has no argument for it, so it is appended here).
    """
    # highdicom asks for one group at least; TID 1500 does not (a film with no finding that
    # has a box has none), so a placeholder group stands in and its container goes.
    placeholder = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=ds.SOPInstanceUID, identifier="-")
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model),
        procedure_reported=codes.PLAIN_CHEST_XRAY,
        imaging_measurements=list(groups) or [placeholder],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    items = report[0].ContentSequence
    measurements_at = next(
        i for i, item in enumerate(items) if item.name == dcm_codes.DCM.ImagingMeasurements
    )
    if not groups:
        del items[measurements_at]
    items.insert(measurements_at, image_library(ds))
    if evaluations:
        container = hd.sr.ContainerContentItem(
            name=codes.QUALITATIVE_EVALUATIONS,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        container.ContentSequence = hd.sr.ContentSequence(list(evaluations))
        report[0].ContentSequence.append(container)
    return report
