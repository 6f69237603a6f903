"""The Segmentations of a result: a BINARY SEG of the grounded findings and a FRACTIONAL
(probability) SEG of the attention map, each pixel-aligned with the source image in its own
series."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from model.findings import FINDINGS_BY_KEY
from model.result import Finding, InferenceResult
from sr_templates import codes, content, uids
from sr_templates._common import (
    Equipment,
    Series,
    copy_image_attributes,
    equipment,
    ordered_findings,
    series,
)
from sr_templates.enum import ObjectKindValues

_MAX_FRACTIONAL_VALUE = 255


class _SegmentationCommon(Series, Equipment):
    source_images: list[Dataset]
    content_description: str
    transfer_syntax_uid: str
    omit_empty_frames: bool


def grounded_findings(result: InferenceResult) -> list[Finding]:
    """Present findings with a box or a mask: the ones that get a segment and a GSPS box."""
    return [
        f
        for f in ordered_findings(result)
        if f.present and (f.box is not None or f.mask is not None)
    ]


def attention_map(result: InferenceResult) -> npt.NDArray[np.float32] | None:
    """The attention map resampled (bilinear) to the source image size, in [0, 1]."""
    if result.attention is None:
        return None
    rows, columns = result.source.Rows, result.source.Columns
    attention = np.asarray(result.attention, dtype=np.float32)
    if attention.shape != (rows, columns):
        image = Image.fromarray(attention).resize(
            (columns, rows), resample=Image.Resampling.BILINEAR
        )
        attention = np.asarray(image, dtype=np.float32)
    return np.clip(attention, 0.0, 1.0)


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
            )
        )
    # Segment-major in memory, (1, rows, columns, segments) as a view: highdicom's overlap
    # check and per-segment reads then run over contiguous planes (3x faster at 2048^2).
    pixel_array = np.moveaxis(np.stack(masks).astype(np.uint8), 0, -1)[np.newaxis]
    seg = hd.seg.Segmentation(
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        content_label="GAZEX_FINDINGS",
        **_segmentation_common(result, source, ObjectKindValues.SEGMENTATION, revision),
    )
    _finish_segmentation(seg, source)
    return seg


def build_attention_segmentation(
    result: InferenceResult, source: Dataset, revision: int = 1
) -> hd.seg.Segmentation | None:
    """FRACTIONAL (probability) SEG of the attention map; ``None`` when the result has none."""
    content.check_source(result, source)
    attention = attention_map(result)
    if attention is None:
        return None
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Model attention",
        segmented_property_category=codes.SPATIAL_AND_RELATIONAL_CONCEPT,
        segmented_property_type=codes.SALIENCY,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_sequence(result),
        tracking_uid=uids.tracking_uid(result, "attention"),
        tracking_id="Model attention",
    )
    # highdicom checks a float array's values with np.unique, a sort of every pixel (0.2 s
    # of a study's 0.5 s of building at 2048^2), and the map is in [0, 1] already. So the
    # SEG is built around an empty frame and its one frame is then filled the way
    # highdicom fills it: round(value * MaximumFractionalValue), 8 bits per pixel.
    seg = hd.seg.Segmentation(
        pixel_array=np.zeros((1, *attention.shape), dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=_MAX_FRACTIONAL_VALUE,
        segment_descriptions=[description],
        content_label="GAZEX_ATTENTION",
        **_segmentation_common(result, source, ObjectKindValues.ATTENTION_SEGMENTATION, revision),
    )
    frame = np.around(attention * float(_MAX_FRACTIONAL_VALUE)).astype(np.uint8).tobytes()
    seg.PixelData = frame + b"\0" * (len(frame) % 2)  # even length, as DICOM requires
    _finish_segmentation(seg, source)
    return seg


def _segmentation_common(
    result: InferenceResult, source: Dataset, kind: ObjectKindValues, revision: int
) -> _SegmentationCommon:
    return {
        "source_images": [source],
        **series(result, kind, revision),
        **equipment(result),
        "content_description": content.short_notice(result.model)[:64],
        "transfer_syntax_uid": ExplicitVRLittleEndian,
        "omit_empty_frames": False,
    }


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


def _finish_segmentation(seg: hd.seg.Segmentation, source: Dataset) -> None:
    """What highdicom's SEG needs for a projection radiograph.

    - PatientOrientation is copied from the image (highdicom leaves it out; dciodvfy error).
    - The shared Pixel Measures item is removed when the image has no frame of reference:
      highdicom writes it from PixelSpacing without SliceThickness, and its own reader then
      refuses the SEG; the macro is not required there (dciodvfy agrees), and the SEG is
      pixel-aligned with the referenced image, whose spacing stays in that image.
    """
    copy_image_attributes(seg, source, "PatientOrientation")
    if "FrameOfReferenceUID" not in source:
        shared = seg.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            del shared.PixelMeasuresSequence
