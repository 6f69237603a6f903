"""The Segmentation of a result: a BINARY SEG of the grounded findings, pixel-aligned with
the source image, in its own series (the attention map is a Parametric Map: see ``pm``).

OHIF does not display FRACTIONAL SEG ("Fractional segmentations are not yet supported"),
which is why the attention map is not a SEG. The plane geometry viewers need comes from
``_geometry``."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from model.findings import FINDINGS_BY_KEY
from model.result import Finding, InferenceResult
from sr_templates import codes, content, uids
from sr_templates._common import (
    claimed_findings,
    content_description,
    copy_image_attributes,
    equipment,
    series,
)
from sr_templates._geometry import plane_geometry
from sr_templates.enum import ObjectKindValues

#: Display colours of the segments (sRGB), by segment number from 1, then repeated: OHIF
#: otherwise picks its own and says so in a warning.
SEGMENT_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 80, 80),
    (60, 200, 90),
    (70, 140, 255),
    (255, 190, 40),
    (200, 90, 230),
    (0, 210, 210),
    (255, 130, 200),
    (170, 220, 60),
)


def grounded_findings(result: InferenceResult) -> list[Finding]:
    """Claimed findings with a box or a mask: the ones that get a segment."""
    return [f for f in claimed_findings(result) if f.box is not None or f.mask is not None]


def build_segmentation(
    result: InferenceResult, source: Dataset, revision: int = 1
) -> hd.seg.Segmentation | None:
    """BINARY SEG, pixel-aligned with the source: one segment per grounded finding (its mask,
    else the pixels its box overlaps); ``None`` when no finding is grounded."""
    content.check_source(result, source)
    findings = grounded_findings(result)
    if not findings:
        return None
    rows, columns = result.source.Rows, result.source.Columns
    algorithm = _algorithm_sequence(result)
    masks: list[npt.NDArray[np.bool_]] = []
    descriptions: list[hd.seg.SegmentDescription] = []
    for number, finding in enumerate(findings, start=1):
        if finding.mask is not None:
            masks.append(np.asarray(finding.mask, dtype=bool))
        else:
            assert finding.box is not None
            masks.append(content.box_mask(finding.box, rows, columns))
        finding_type = FINDINGS_BY_KEY.get(finding.key)
        device = finding_type is not None and finding_type.device
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=finding.code.meaning[:64],
                segmented_property_category=codes.PHYSICAL_OBJECT
                if device
                else codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                segmented_property_type=codes.from_model(finding.code),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=uids.tracking_uid(result, finding.key),
                tracking_id=finding.code.meaning[:64],
                anatomic_regions=_anatomy(finding.region),
                display_color=hd.color.CIELabColor.from_rgb(
                    *SEGMENT_RGB[(number - 1) % len(SEGMENT_RGB)]
                ),
            )
        )
    # Segment-major in memory, (1, rows, columns, segments) as a view: highdicom's overlap
    # check and per-segment reads then run over contiguous planes (3x faster at 2048^2).
    pixel_array = np.moveaxis(np.stack(masks).astype(np.uint8), 0, -1)[np.newaxis]
    geometry = plane_geometry(result, source)
    seg = hd.seg.Segmentation(
        source_images=[geometry.source],
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        content_label="GAZEX_FINDINGS",
        content_description=content_description(result.model),
        pixel_measures=geometry.pixel_measures,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
        **series(result, ObjectKindValues.SEGMENTATION, revision),
        **equipment(result),
    )
    # highdicom leaves PatientOrientation out (a dciodvfy error): the image's directions.
    copy_image_attributes(seg, source, "PatientOrientation")
    return seg


def _algorithm_sequence(result: InferenceResult) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=result.model.name,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=result.model.version,
        source=result.model.manufacturer,
    )


def _anatomy(region: str | None) -> list[Code] | None:
    if region is None or region not in codes.REGION_CODES:
        return None
    return [codes.REGION_CODES[region].anatomy]
