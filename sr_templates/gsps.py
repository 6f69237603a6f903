"""The Grayscale Softcopy Presentation State of a result: what the model found and where it
looked, drawn over the source image for viewers that show GSPS but not SR."""

from __future__ import annotations

import itertools

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian

from model.result import InferenceResult
from sr_templates import content, uids
from sr_templates._common import copy_image_attributes, equipment, series
from sr_templates._drawing import Canvas, arrowhead
from sr_templates.enum import GraphicLayerValues, ObjectKindValues


def build_gsps(
    result: InferenceResult, source: Dataset, revision: int = 1
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """GSPS on the source image: finding boxes with labels and probabilities, numbered
    fixation markers, the path with V-shaped arrowheads (Weasis does not draw ARROW), and a
    research-use notice, each in its own coloured layer; VOI window from the source and
    INVERSE presentation for MONOCHROME1."""
    content.check_source(result, source)
    rows, columns = result.source.Rows, result.source.Columns
    canvas = Canvas(rows, columns)
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
            head = arrowhead(start, end, back_off=radius, size=max(3.0, 1.5 * radius))
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
        **series(result, ObjectKindValues.GSPS, revision),
        **equipment(result),
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
    copy_image_attributes(gsps, source, "BodyPartExamined")
    return gsps


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
