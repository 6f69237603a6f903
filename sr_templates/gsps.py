"""The Grayscale Softcopy Presentation State of a result: what the model found and where it
looked, drawn over the source image for viewers that show GSPS but not SR."""

from __future__ import annotations

import itertools
import math

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian

from model.result import Box, InferenceResult, finding_label
from sr_templates import content, uids
from sr_templates._common import claimed_findings, copy_image_attributes, equipment, series
from sr_templates._drawing import Canvas, arrowhead
from sr_templates.enum import GraphicLayerValues, ObjectKindValues

#: a text bounding box, (x0, y0, x1, y1) in source pixels
Rect = tuple[float, float, float, float]


def build_gsps(
    result: InferenceResult, source: Dataset, revision: int = 1
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """GSPS on the source image: finding boxes with labels and probabilities, numbered
    fixation markers (one label per spot, listing every visit to it), the path with
    V-shaped arrowheads (Weasis does not draw ARROW), and a research-use notice, each in
    its own coloured layer; labels kept off the lines and each other; VOI window from the
    source and INVERSE presentation for MONOCHROME1."""
    content.check_source(result, source)
    rows, columns = result.source.Rows, result.source.Columns
    canvas = Canvas(rows, columns)
    graphics: dict[GraphicLayerValues, list[hd.pr.GraphicObject]] = {
        layer: [] for layer in GraphicLayerValues
    }
    texts: dict[GraphicLayerValues, list[hd.pr.TextObject]] = {
        layer: [] for layer in GraphicLayerValues
    }

    radius = content.fixation_radius(rows, columns)
    centres = [(f.x, f.y) for f in result.trajectory]
    path: list[npt.NDArray[np.float64]] = []
    if len(centres) >= 2:
        path.append(np.array(centres, dtype=np.float64))
        for start, end in itertools.pairwise(centres):
            head = arrowhead(start, end, back_off=radius, size=max(3.0, 1.5 * radius))
            if head is not None:
                path.append(head)
    graphics[GraphicLayerValues.PATH] = [canvas.polyline(points) for points in path]

    # Labels go where no line runs through them and no other label lies (seen in
    # DICOMscope: a path, an arrowhead or a box edge striking through a label).
    # Out of the training domain no finding is drawn as if the model knew: the notice says so.
    shown = claimed_findings(result)
    lines = path + [
        content.box_polyline(f.box).astype(np.float64) for f in shown if f.box is not None
    ]
    placed: list[Rect] = []
    image_level_y = 0.0
    for finding in shown:
        label = finding_label(finding)
        tracking = {
            "tracking_id": finding.code.meaning[:64],
            "tracking_uid": uids.tracking_uid(result, finding.key),
        }
        if finding.box is not None:
            graphics[GraphicLayerValues.FINDINGS].append(
                canvas.polyline(content.box_polyline(finding.box), **tracking)
            )
            where, _ = place_label(box_places(canvas, finding.box, label), lines, placed)
        else:
            label = f"{label} (image level)"
            where = canvas.text_box(0.0, image_level_y, label)
            image_level_y += canvas.text_height
        placed.append(where)
        texts[GraphicLayerValues.FINDINGS].append(canvas.text(where[0], where[1], label))

    for fixation in result.trajectory:
        graphics[GraphicLayerValues.FIXATIONS].append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.CIRCLE,
                graphic_data=content.circle(fixation.x, fixation.y, radius, rows, columns),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
        )
    leaders: list[hd.pr.GraphicObject] = []
    for spot, numbers in content.fixation_spots(result, radius):
        label = ", ".join(map(str, numbers))
        places = spot_places(canvas, spot, radius, label)
        where, choice = place_label(places, lines, placed)
        placed.append(where)
        texts[GraphicLayerValues.FIXATIONS].append(canvas.text(where[0], where[1], label))
        leader = _leader(spot, radius, where) if choice >= NEAR_PLACES else None
        if leader is not None:  # pushed out: a line from the circle to its number
            lines.append(leader)
            leaders.append(canvas.polyline(leader))
    graphics[GraphicLayerValues.FIXATIONS] += leaders

    # A margin of half a line: DICOMscope draws text a pixel or two left of its box and
    # clipped the notice's first letter at the image edge.
    margin = canvas.text_height / 2
    texts[GraphicLayerValues.NOTICE].append(
        canvas.text(margin, rows - canvas.text_height, content.short_notice(result.model))
    )
    if result.domain is not None and not result.domain.in_domain:
        domain = result.domain
        for line, text in enumerate(
            (
                "OUT OF DOMAIN: unlike the films the model was trained on",
                f"(domain score {domain.score:.1f} > {domain.threshold:.1f}): no finding shown",
            )
        ):
            texts[GraphicLayerValues.NOTICE].append(
                canvas.text(margin, margin + line * canvas.text_height, text)
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


#: spot_places' first places, touching the circle; the others are further out
NEAR_PLACES = 8


def spot_places(canvas: Canvas, spot: tuple[float, float], radius: float, label: str) -> list[Rect]:
    """Where a fixation spot's number may go, best first: above right of the circle, above
    left, below right, below left, centred above or below, right or left; then the same
    places one, two and three text heights further out."""
    x, y = spot
    x0, _, x1, _ = canvas.text_box(0.0, 0.0, label)
    width, height = x1 - x0, canvas.text_height
    places = []
    for step in range(4):
        out = radius + step * height
        right, left, centre = x + out, x - out - width, x - width / 2.0
        above, below, middle = y - out - height, y + out, y - height / 2.0
        for px, py in (
            (right, above),
            (left, above),
            (right, below),
            (left, below),
            (centre, above),
            (centre, below),
            (right, middle),
            (left, middle),
        ):
            places.append(canvas.text_box(px, py, label))
    return places


def box_places(canvas: Canvas, box: Box, label: str) -> list[Rect]:
    """Where a finding's label may go, best first: on the box's top left corner, above;
    above its right end; below its left or right end; inside its top or bottom left."""
    x0, _, x1, _ = canvas.text_box(0.0, 0.0, label)
    width, height = x1 - x0, canvas.text_height
    return [
        canvas.text_box(px, py, label)
        for px, py in (
            (box.x0, box.y0 - height),
            (box.x1 - width, box.y0 - height),
            (box.x0, box.y1),
            (box.x1 - width, box.y1),
            (box.x0, box.y0),
            (box.x0, box.y1 - height),
        )
    ]


def place_label(
    places: list[Rect],
    lines: list[npt.NDArray[np.float64]],
    placed: list[Rect],
) -> tuple[Rect, int]:
    """The first of ``places`` (and its index) that no line runs through and that covers
    no label placed before; where there is none, the least cluttered."""
    scores: list[int] = []
    for box in places:
        inner = (box[0] + 0.5, box[1] + 0.5, box[2] - 0.5, box[3] - 0.5)  # touching is fine
        crossed = sum(
            _crosses(inner, a, b) for points in lines for a, b in itertools.pairwise(points)
        )
        score = crossed + 10 * sum(_overlap(box, other) for other in placed)
        if score == 0:
            return box, len(scores)
        scores.append(score)
    best = scores.index(min(scores))
    return places[best], best


def _leader(spot: tuple[float, float], radius: float, box: Rect) -> npt.NDArray[np.float64] | None:
    """A line from the circle round ``spot`` to the nearest point of the label's box;
    ``None`` when the label touches the circle."""
    x, y = spot
    nearest = (min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3]))
    length = math.dist(spot, nearest)
    if length <= radius * math.sqrt(2.0):
        return None
    ux, uy = (nearest[0] - x) / length, (nearest[1] - y) / length
    return np.array([(x + ux * radius, y + uy * radius), nearest], dtype=np.float64)


def _overlap(a: Rect, b: Rect) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _crosses(box: tuple[float, float, float, float], a: npt.ArrayLike, b: npt.ArrayLike) -> bool:
    """Whether the segment a-b passes through the box (Liang-Barsky clipping)."""
    (ax, ay), (bx, by) = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    dx, dy = bx - ax, by - ay
    low, high = 0.0, 1.0
    for p, q in ((-dx, ax - box[0]), (dx, box[2] - ax), (-dy, ay - box[1]), (dy, box[3] - ay)):
        if p == 0.0:
            if q < 0.0:
                return False
        elif p < 0.0:
            low = max(low, q / p)
        else:
            high = min(high, q / p)
    return low < high


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
