"""Pure builders: an ``InferenceResult`` plus its source image dataset -> DICOM objects.

No I/O here: each function returns a highdicom dataset (or ``None`` when the result has
nothing for that object) that the caller writes or sends. Every object lands in the source
study with the source's patient and study modules, in its own series (see ``enum``), with
UIDs derived from the result (see ``uids``). Raises ``ValueError`` when the source dataset
is not the image the result describes.

    objects = build_all(result, ds, revision=1)     # {ObjectKindValues: Dataset}
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import TypedDict, cast

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from model.findings import FINDINGS_BY_KEY
from model.result import Finding, InferenceResult
from sr_templates import codes, content, templates, uids
from sr_templates.enum import GraphicLayerValues, ObjectKindValues

logger = logging.getLogger(__name__)

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
_MAX_FRACTIONAL_VALUE = 255


class _Equipment(TypedDict):
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


class _Series(TypedDict):
    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    series_description: str


class _SegmentationCommon(_Series, _Equipment):
    source_images: list[Dataset]
    content_description: str
    transfer_syntax_uid: str
    omit_empty_frames: bool


def _equipment(result: InferenceResult) -> _Equipment:
    """General Equipment from the model info (never placeholders)."""
    model = result.model
    return {
        "manufacturer": model.manufacturer,
        "manufacturer_model_name": model.name,
        "software_versions": model.version,
        "device_serial_number": model.checkpoint_sha256[:64],
    }


def _series(result: InferenceResult, kind: ObjectKindValues, revision: int) -> _Series:
    ids = uids.object_uids(result, kind, revision)
    return {
        "series_instance_uid": ids.SeriesInstanceUID,
        "series_number": ids.SeriesNumber,
        "sop_instance_uid": ids.SOPInstanceUID,
        "instance_number": ids.InstanceNumber,
        "series_description": kind.series_description,
    }


def _predecessor(result: InferenceResult, kind: ObjectKindValues, revision: int) -> Dataset:
    """Enough of revision ``revision - 1`` to list it in PredecessorDocumentsSequence."""
    ids = uids.object_uids(result, kind, revision - 1)
    ds = Dataset()
    ds.StudyInstanceUID = result.source.StudyInstanceUID
    ds.SeriesInstanceUID = ids.SeriesInstanceUID
    ds.SOPInstanceUID = ids.SOPInstanceUID
    ds.SOPClassUID = COMPREHENSIVE_3D_SR
    return ds


def _sr(
    result: InferenceResult,
    source: Dataset,
    kind: ObjectKindValues,
    revision: int,
    report: hd.sr.MeasurementReport,
) -> hd.sr.Comprehensive3DSR:
    """The SR document around ``report``.

    highdicom's constructor deep-copies the content tree, parses the copy and walks the
    tree again to collect the evidence: about half the time it takes to build and encode
    a study's objects (profiled). So it is given the root holding only the Image Library,
    whose image is the one instance the content references (the evidence it collects is
    the same), and the whole content is attached afterwards, already typed.
    """
    root = cast(hd.sr.ContainerContentItem, report[0])
    items = root.ContentSequence
    library = next(item for item in items if item.name == dcm_codes.DCM.ImageLibrary)
    root.ContentSequence = hd.sr.ContentSequence([library])
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source],
            content=root,
            **_series(result, kind, revision),
            **_equipment(result),
            is_complete=True,
            is_final=False,
            is_verified=False,
            previous_versions=[_predecessor(result, kind, revision)] if revision > 1 else None,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            coding_schemes=[codes.gazex_coding_scheme()],
        )
    finally:
        root.ContentSequence = items
    sr.ContentSequence = items
    sr._content = hd.sr.ContentSequence([root], is_root=True)  # what .content returns
    return sr


def build_findings_sr(
    result: InferenceResult, source: Dataset, revision: int = 1
) -> hd.sr.Comprehensive3DSR:
    """The findings SR: Comprehensive 3D SR, TID 1500 with one group per finding, the ABCDEF
    report, skipped steps and the intended-use statement (see ``templates``)."""
    content.check_source(result, source)
    algorithm_id = templates.algorithm_identification(result.model)
    groups = [templates.finding_group(result, f, source, algorithm_id) for f in _ordered(result)]
    if not groups:
        groups = [_no_finding_group(result, source, algorithm_id)]
    report = templates.measurement_report(
        result.model, groups, source, templates.report_evaluations(result)
    )
    return _sr(result, source, ObjectKindValues.FINDINGS_SR, revision, report)


def _ordered(result: InferenceResult) -> list[Finding]:
    """Grounded findings first, then image-level ones, then absent ones; each by
    decreasing probability."""

    def rank(finding: Finding) -> tuple[int, float]:
        tier = 0 if finding.present and finding.box is not None else 1 if finding.present else 2
        return (tier, -finding.probability)

    return sorted(result.findings, key=rank)


def _no_finding_group(
    result: InferenceResult, source: Dataset, algorithm_id: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group saying the model reported no finding label at all (TID 1500 needs one
    group at least)."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(result, "no-finding"), identifier="No finding reported"
        ),
        algorithm_id=algorithm_id,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=source.SOPClassUID,
                referenced_sop_instance_uid=source.SOPInstanceUID,
            )
        ],
    )
    group[0].ContentSequence.append(
        content.text(codes.FINDING, "The model reported no finding for this image.")
    )
    return group


def build_trajectory_sr(
    result: InferenceResult, source: Dataset, revision: int = 1
) -> hd.sr.Comprehensive3DSR | None:
    """The trajectory SR (its own series): TID 1500 with one TID 1410 group per fixation and
    the open POLYLINE path; ``None`` when the result has no fixation."""
    content.check_source(result, source)
    if not result.trajectory:
        return None
    algorithm_id = templates.algorithm_identification(result.model)
    groups: list[templates.MeasurementGroup] = [
        templates.fixation_group(result, number, fixation, source, algorithm_id)
        for number, fixation in enumerate(result.trajectory, start=1)
    ]
    if len(result.trajectory) >= 2:
        groups.append(templates.path_group(result, source, algorithm_id))
    report = templates.measurement_report(
        result.model, groups, source, templates.coverage_evaluations(result)
    )
    return _sr(result, source, ObjectKindValues.TRAJECTORY_SR, revision, report)


def grounded_findings(result: InferenceResult) -> list[Finding]:
    """Present findings with a box or a mask: the ones that get a segment and a GSPS box."""
    return [f for f in _ordered(result) if f.present and (f.box is not None or f.mask is not None)]


def _segmentation_common(
    result: InferenceResult, source: Dataset, kind: ObjectKindValues, revision: int
) -> _SegmentationCommon:
    return {
        "source_images": [source],
        **_series(result, kind, revision),
        **_equipment(result),
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


def _finish_segmentation(seg: hd.seg.Segmentation, source: Dataset) -> None:
    """What highdicom's SEG needs for a projection radiograph.

    - PatientOrientation is copied from the image (highdicom leaves it out; dciodvfy error).
    - The shared Pixel Measures item is removed when the image has no frame of reference:
      highdicom writes it from PixelSpacing without SliceThickness, and its own reader then
      refuses the SEG; the macro is not required there (dciodvfy agrees), and the SEG is
      pixel-aligned with the referenced image, whose spacing stays in that image.
    """
    _copy_image_attributes(seg, source, "PatientOrientation")
    if "FrameOfReferenceUID" not in source:
        shared = seg.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            del shared.PixelMeasuresSequence


def _copy_image_attributes(obj: Dataset, source: Dataset, *keywords: str) -> None:
    """Copy what highdicom leaves out but the IOD asks for (see DICOM_OUTPUTS.md)."""
    for keyword in keywords:
        if keyword in source and keyword not in obj:
            obj[keyword] = source[keyword]


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


def _anatomy(region: str | None) -> list[Code] | None:
    if region is None or region not in codes.REGION_CODES:
        return None
    return [codes.REGION_CODES[region].anatomy]


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


# -- GSPS ------------------------------------------------------------------------------


def voi_window(source: Dataset) -> tuple[float, float]:
    """(centre, width) of the source's first VOI window, else of its pixel value range
    after the modality LUT, else of its stored bit depth."""
    if "WindowCenter" in source and "WindowWidth" in source:
        return _first(source.WindowCenter), max(1.0, _first(source.WindowWidth))
    if "PixelData" in source:
        values = apply_modality_lut(source.pixel_array, source)
        low, high = float(np.min(values)), float(np.max(values))
    else:
        bits = int(source.get("BitsStored", 12))
        slope = float(source.get("RescaleSlope", 1.0))
        intercept = float(source.get("RescaleIntercept", 0.0))
        low, high = intercept, intercept + slope * (2**bits - 1)
    return (low + high) / 2.0, max(1.0, high - low + 1.0)


def _first(value: object) -> float:
    """The first value of a possibly multi-valued DS attribute."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


class _Canvas:
    """Places graphics and text in source pixel coordinates, clamped inside the image."""

    def __init__(self, rows: int, columns: int) -> None:
        self.rows = rows
        self.columns = columns
        self.text_height = max(6.0, round(0.025 * rows, 1))

    def clamp(self, x: float, y: float) -> tuple[float, float]:
        return (min(max(x, 0.0), float(self.columns)), min(max(y, 0.0), float(self.rows)))

    def text_box(self, x: float, y: float, text: str) -> tuple[float, float, float, float]:
        """A bounding box for ``text`` with its top-left corner at (x, y), kept inside."""
        height = min(self.text_height, float(self.rows))
        width = min(max(height, 0.6 * height * len(text)), float(self.columns))
        x0 = min(max(x, 0.0), self.columns - width)
        y0 = min(max(y, 0.0), self.rows - height)
        return (x0, y0, x0 + width, y0 + height)

    def text(self, x: float, y: float, text: str, **kwargs: object) -> hd.pr.TextObject:
        return hd.pr.TextObject(
            text_value=text,
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            bounding_box=self.text_box(x, y, text),
            text_justification=hd.pr.TextJustificationValues.LEFT,
            **kwargs,  # type: ignore[arg-type]
        )

    def polyline(self, points: npt.ArrayLike, **kwargs: object) -> hd.pr.GraphicObject:
        data = np.array([self.clamp(float(x), float(y)) for x, y in np.asarray(points)])
        return hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=data.astype(np.float32),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            **kwargs,  # type: ignore[arg-type]
        )


def _arrowhead(
    start: tuple[float, float], end: tuple[float, float], back_off: float, size: float
) -> npt.NDArray[np.float64] | None:
    """A V-shaped arrowhead pointing along start -> end, its tip ``back_off`` before end
    (outside the fixation circle); ``None`` for a zero-length segment."""
    dx, dy = end[0] - start[0], end[1] - start[1]
    length = math.hypot(dx, dy)
    if length < 1e-6:
        return None
    ux, uy = dx / length, dy / length
    back = back_off if length > 2.0 * back_off else length / 2.0
    tip = (end[0] - ux * back, end[1] - uy * back)
    angle = math.radians(25.0)
    wings = []
    for sign in (1.0, -1.0):
        cos, sin = math.cos(sign * angle), math.sin(sign * angle)
        rx, ry = ux * cos - uy * sin, ux * sin + uy * cos
        wings.append((tip[0] - rx * size, tip[1] - ry * size))
    return np.array([wings[0], tip, wings[1]], dtype=np.float64)


def build_gsps(
    result: InferenceResult, source: Dataset, revision: int = 1
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """GSPS on the source image: finding boxes with labels and probabilities, numbered
    fixation markers, the path with V-shaped arrowheads (Weasis does not draw ARROW), and a
    research-use notice, each in its own coloured layer; VOI window from the source and
    INVERSE presentation for MONOCHROME1."""
    content.check_source(result, source)
    rows, columns = result.source.Rows, result.source.Columns
    canvas = _Canvas(rows, columns)
    graphics: dict[GraphicLayerValues, list[hd.pr.GraphicObject]] = {
        layer: [] for layer in GraphicLayerValues
    }
    texts: dict[GraphicLayerValues, list[hd.pr.TextObject]] = {
        layer: [] for layer in GraphicLayerValues
    }

    image_level_y = 0.0
    for finding in result.findings:
        if not finding.present:
            continue
        label = f"{finding.code.meaning} {finding.probability:.0%}"
        tracking = {
            "tracking_id": finding.code.meaning[:64],
            "tracking_uid": uids.tracking_uid(result, finding.key),
        }
        if finding.box is not None:
            box = finding.box
            graphics[GraphicLayerValues.FINDINGS].append(
                canvas.polyline(content.box_polyline(box), **tracking)
            )
            above = box.y0 - canvas.text_height
            texts[GraphicLayerValues.FINDINGS].append(
                canvas.text(box.x0, above if above >= 0 else box.y0, label)
            )
        else:
            texts[GraphicLayerValues.FINDINGS].append(
                canvas.text(0.0, image_level_y, f"{label} (image level)")
            )
            image_level_y += canvas.text_height

    radius = content.fixation_radius(rows, columns)
    for number, fixation in enumerate(result.trajectory, start=1):
        graphics[GraphicLayerValues.FIXATIONS].append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.CIRCLE,
                graphic_data=content.circle(fixation.x, fixation.y, radius, rows, columns),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
        )
        texts[GraphicLayerValues.FIXATIONS].append(
            canvas.text(fixation.x + radius, fixation.y - radius - canvas.text_height, str(number))
        )

    centres = [(f.x, f.y) for f in result.trajectory]
    if len(centres) >= 2:
        graphics[GraphicLayerValues.PATH].append(canvas.polyline(centres))
        for start, end in itertools.pairwise(centres):
            head = _arrowhead(start, end, back_off=radius, size=max(3.0, 1.5 * radius))
            if head is not None:
                graphics[GraphicLayerValues.PATH].append(canvas.polyline(head))

    texts[GraphicLayerValues.NOTICE].append(
        canvas.text(0.0, rows - canvas.text_height, content.short_notice(result.model))
    )

    layers: list[hd.pr.GraphicLayer] = []
    annotations: list[hd.pr.GraphicAnnotation] = []
    for layer_name in GraphicLayerValues:
        if not graphics[layer_name] and not texts[layer_name]:
            continue
        layer = hd.pr.GraphicLayer(
            layer_name=layer_name.value,
            order=layer_name.order,
            description=layer_name.description,
            display_color=hd.color.CIELabColor.from_rgb(*layer_name.rgb),
        )
        layers.append(layer)
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[source],
                graphic_layer=layer,
                graphic_objects=graphics[layer_name] or None,
                text_objects=texts[layer_name] or None,
            )
        )

    centre, width = voi_window(source)
    inverse = source.get("PhotometricInterpretation") == "MONOCHROME1"
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        **_series(result, ObjectKindValues.GSPS, revision),
        **_equipment(result),
        content_label="GAZEX_AI",
        content_description=content.short_notice(result.model)[:64],
        graphic_annotations=annotations,
        graphic_layers=layers,
        voi_lut_transformations=[
            hd.pr.SoftcopyVOILUTTransformation(window_center=centre, window_width=width)
        ],
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE
            if inverse
            else hd.PresentationLUTShapeValues.IDENTITY
        ),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    _copy_image_attributes(gsps, source, "BodyPartExamined")
    return gsps


#: The builder of each kind, in series order.
BUILDERS: dict[ObjectKindValues, Callable[[InferenceResult, Dataset, int], Dataset | None]] = {
    ObjectKindValues.FINDINGS_SR: build_findings_sr,
    ObjectKindValues.TRAJECTORY_SR: build_trajectory_sr,
    ObjectKindValues.SEGMENTATION: build_segmentation,
    ObjectKindValues.ATTENTION_SEGMENTATION: build_attention_segmentation,
    ObjectKindValues.GSPS: build_gsps,
}


def build_all(
    result: InferenceResult,
    source: Dataset,
    revision: int = 1,
    kinds: Iterable[ObjectKindValues] = BUILDERS,
) -> dict[ObjectKindValues, Dataset]:
    """Every object of ``kinds`` the result yields, in series order (absent ones left out)."""
    wanted = set(kinds)
    built = {
        kind: build(result, source, revision) for kind, build in BUILDERS.items() if kind in wanted
    }
    return {kind: ds for kind, ds in built.items() if ds is not None}


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
