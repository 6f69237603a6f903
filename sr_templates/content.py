"""Content-item and geometry builders shared by the SR, SEG and GSPS builders.

Geometry follows the result contract (``model.result``): (column, row) source pixels with
0.0 at the top-left corner of the top-left pixel, every point within 0..Columns, 0..Rows,
which is also what SCOORD and GSPS PIXEL annotation units use.
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from model.abcdef import Step
from model.result import Box, Finding, InferenceResult, ModelInfo
from sr_templates import codes


def intended_use_statement(model: ModelInfo) -> str:
    """The plain statement carried by every object and message."""
    trained = (
        "The model was trained on synthetic data only. " if model.trained_on_synthetic_data else ""
    )
    return (
        f"Generated automatically by {model.name} {model.version} (research software). "
        f"{trained}Not for clinical use: not a diagnosis, not reviewed by a radiologist."
    )


def domain_evaluations(
    result: InferenceResult,
) -> list[hd.sr.CodeContentItem | hd.sr.TextContentItem]:
    """The domain gate's verdict, first among the report-level evaluations: a CODE "Training
    domain check = Within | Outside the training domain" with the score and threshold as
    properties, and out of domain the plain notice as TEXT. Nothing when not checked."""
    domain = result.domain
    if domain is None:
        return []
    properties = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
    verdict = hd.sr.CodeContentItem(
        name=codes.DOMAIN_CHECK,
        value=codes.IN_DOMAIN if domain.in_domain else codes.OUT_OF_DOMAIN,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    verdict.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.NumContentItem(
                name=name, value=value, unit=codes.NO_UNITS, relationship_type=properties
            )
            for name, value in (
                (codes.DOMAIN_SCORE, round(domain.score, 4)),
                (codes.DOMAIN_THRESHOLD, round(domain.threshold, 4)),
            )
        ]
    )
    notice = result.domain_notice()
    items: list[hd.sr.CodeContentItem | hd.sr.TextContentItem] = [verdict]
    if notice:
        items.append(text(codes.DOMAIN_NOTICE, notice))
    return items


def short_notice(model: ModelInfo) -> str:
    """One line for overlays: the same statement, short enough to draw on an image."""
    trained = ", trained on synthetic data" if model.trained_on_synthetic_data else ""
    return f"AI {model.name} {model.version}{trained}: NOT FOR CLINICAL USE"


def box_polyline(box: Box) -> npt.NDArray[np.float32]:
    """A closed POLYLINE (first point repeated last) tracing the box clockwise."""
    return np.array(
        [
            [box.x0, box.y0],
            [box.x1, box.y0],
            [box.x1, box.y1],
            [box.x0, box.y1],
            [box.x0, box.y0],
        ],
        dtype=np.float32,
    )


def fixation_radius(rows: int, columns: int) -> float:
    """Radius drawn around a fixation: about 1.5 % of the shorter side, at least 2 px."""
    return max(2.0, round(0.015 * min(rows, columns), 1))


def fixation_spots(
    result: InferenceResult, within: float
) -> list[tuple[tuple[float, float], list[int]]]:
    """The places the model looked at, each with the numbers (from 1, in reading order) of
    the fixations on it: a fixation within ``within`` pixels of an earlier spot is a visit
    to that spot, whose number joins the spot's one label rather than being printed over or
    beside it (the GSPS and the trajectory SR label spots, not fixations)."""
    spots: list[tuple[tuple[float, float], list[int]]] = []
    for number, fixation in enumerate(result.trajectory, start=1):
        for (x, y), numbers in spots:
            if math.hypot(fixation.x - x, fixation.y - y) <= within:
                numbers.append(number)
                break
        else:
            spots.append(((fixation.x, fixation.y), [number]))
    return spots


def circle(x: float, y: float, radius: float, rows: int, columns: int) -> npt.NDArray[np.float32]:
    """CIRCLE graphic data: the centre, then a point on the perimeter inside the image."""
    dx = radius if x + radius <= columns else -radius
    if not 0.0 <= x + dx <= columns:  # an image narrower than the circle: go vertically
        dy = radius if y + radius <= rows else -radius
        return np.array([[x, y], [x, y + dy]], dtype=np.float32)
    return np.array([[x, y], [x + dx, y]], dtype=np.float32)


def box_mask(box: Box, rows: int, columns: int) -> npt.NDArray[np.bool_]:
    """The pixels the box overlaps (never empty: a box inside the image overlaps a pixel)."""
    mask = np.zeros((rows, columns), dtype=bool)
    c0 = min(math.floor(box.x0), columns - 1)
    r0 = min(math.floor(box.y0), rows - 1)
    c1 = max(math.ceil(box.x1), c0 + 1)
    r1 = max(math.ceil(box.y1), r0 + 1)
    mask[r0:r1, c0:c1] = True
    return mask


def source_image_for_region(ds: Dataset) -> hd.sr.SourceImageForRegion:
    """The exact source image a SCOORD is SELECTED FROM (frame 1 of multi-frame images)."""
    frames = [1] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        referenced_frame_numbers=frames,
    )


def image_region(
    graphic_type: hd.sr.GraphicTypeValues, graphic_data: npt.NDArray[np.float32], ds: Dataset
) -> hd.sr.ImageRegion:
    return hd.sr.ImageRegion(
        graphic_type=graphic_type,
        graphic_data=graphic_data,
        source_image=source_image_for_region(ds),
    )


def finding_sites(region: str | None) -> list[hd.sr.FindingSite]:
    """Finding Site (SCT anatomy with laterality) of a Chest ImaGenome region, if known."""
    if region is None or region not in codes.REGION_CODES:
        return []
    coded = codes.REGION_CODES[region]
    return [hd.sr.FindingSite(anatomic_location=coded.anatomy, laterality=coded.laterality)]


def region_evaluation(region: str | None) -> list[hd.sr.QualitativeEvaluation]:
    """The exact Chest ImaGenome region as a private-coded evaluation, if known."""
    if region is None or region not in codes.REGION_CODES:
        return []
    return [
        hd.sr.QualitativeEvaluation(
            name=codes.CHEST_IMAGENOME_REGION, value=codes.REGION_CODES[region].region
        )
    ]


def step_evaluation(step: Step) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=codes.ABCDEF_STEP, value=codes.STEP_CODES[step])


def presence_evaluation(present: bool) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(
        name=codes.PRESENCE_OF_PROPERTY, value=codes.PRESENT if present else codes.ABSENT
    )


def probability_measurement(finding: Finding) -> hd.sr.Measurement:
    """The finding's probability as a NUM in percent named "<finding> probability", with its
    Finding Site nested in the NUM (TID 300) rather than beside it: OHIF draws every NUM and
    Finding Site at the top of a group as a label line, the site as "363698007: Lung"."""
    return hd.sr.Measurement(
        name=codes.finding_probability(finding.code),
        value=round(100.0 * finding.probability, 4),
        unit=codes.PERCENT,
        finding_sites=finding_sites(finding.region) or None,
    )


def measurement_source(
    graphic_type: hd.sr.GraphicTypeValues, graphic_data: npt.NDArray[np.float32], ds: Dataset
) -> hd.sr.CoordinatesForMeasurement:
    """The region a NUM is INFERRED FROM, as TID 300 row 8 includes TID 320: a SCOORD named
    (121112, DCM, "Source of Measurement"), SELECTED FROM the exact source image."""
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=graphic_type,
        graphic_data=graphic_data,
        source_image=source_image_for_region(ds),
        purpose=codes.SOURCE_OF_MEASUREMENT,
    )


def number(
    name: Code, value: float, unit: Code, finding_sites: list[hd.sr.FindingSite] | None = None
) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=value, unit=unit, finding_sites=finding_sites or None)


def text(name: Code, value: str) -> hd.sr.TextContentItem:
    """A TEXT item CONTAINed by its parent (newlines kept; UT has no practical limit)."""
    if not value:
        raise ValueError(f"empty text for {name.meaning!r}")
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def code(name: Code, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def check_source(result: InferenceResult, ds: Dataset) -> None:
    """Raise ``ValueError`` unless ``ds`` is the image the result was computed on."""
    expected = result.source
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if str(ds.get(keyword, "")) != getattr(expected, keyword):
            raise ValueError(
                f"source dataset {keyword} {ds.get(keyword)!r} does not match the result's "
                f"{getattr(expected, keyword)!r}"
            )
    if (int(ds.Rows), int(ds.Columns)) != (expected.Rows, expected.Columns):
        raise ValueError(
            f"source dataset is {ds.Columns}x{ds.Rows}, the result was computed on "
            f"{expected.Columns}x{expected.Rows}"
        )
