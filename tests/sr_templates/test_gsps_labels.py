"""Where the GSPS puts its fixation numbers: readable in a real viewer (DICOMscope, see
tests/viewers/test_gsps_viewer.py) when the model looks at the same spot more than once,
and when the path comes in where the number would go."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
from sr_factories import finding, make_result, make_source, trajectory

from model.result import Box
from sr_templates.enum import GraphicLayerValues
from sr_templates.gsps import build_gsps


def test_revisited_spot_gets_one_label_listing_every_visit() -> None:
    """Fixations at the same place share one label, "2, 4", instead of numbers printed
    over each other; each fixation still gets its own circle."""
    ds = make_source(rows=240, columns=200)
    first, second, third, fourth = trajectory(240, 200, count=4)
    fourth = replace(fourth, x=second.x, y=second.y)
    result = make_result(ds, fixations=(first, second, third, fourth))
    gsps = build_gsps(result, ds)
    [layer] = [
        a
        for a in gsps.GraphicAnnotationSequence
        if a.GraphicLayer == GraphicLayerValues.FIXATIONS.value
    ]
    assert [g.GraphicType for g in layer.GraphicObjectSequence] == ["CIRCLE"] * 4
    labels = [t.UnformattedTextValue for t in layer.TextObjectSequence]
    assert labels == ["1", "2, 4", "3"]
    boxes = [
        (*t.BoundingBoxTopLeftHandCorner, *t.BoundingBoxBottomRightHandCorner)
        for t in layer.TextObjectSequence
    ]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            overlap = min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
            assert not overlap, (a, b)


def _crosses(box: tuple[float, ...], a: np.ndarray, b: np.ndarray) -> bool:
    """Whether segment a-b passes through the box, by sampling it every 0.1 px."""
    steps = max(2, int(np.hypot(*(b - a)) * 10))
    points = a + np.linspace(0.0, 1.0, steps)[:, None] * (b - a)
    inside = (
        (points[:, 0] > box[0])
        & (points[:, 0] < box[2])
        & (points[:, 1] > box[1])
        & (points[:, 1] < box[3])
    )
    return bool(inside.any())


def test_fixation_numbers_stay_off_the_path() -> None:
    """A number goes above left (or below) of its circle when the path comes in from above
    right (seen in DICOMscope: the arrowhead into fixation 12 struck through its "1"); no
    path segment or arrowhead runs through any number."""
    ds = make_source(rows=240, columns=200)
    first, second, *_ = trajectory(240, 200, count=3)
    # the second fixation is reached from its upper right, along the default label place
    second = replace(second, x=60.0, y=120.0)
    first = replace(first, x=110.0, y=70.0)
    result = make_result(ds, fixations=(first, second))
    gsps = build_gsps(result, ds)
    layers = {a.GraphicLayer: a for a in gsps.GraphicAnnotationSequence}
    labels = layers[GraphicLayerValues.FIXATIONS.value].TextObjectSequence
    path = [
        np.asarray(g.GraphicData, dtype=float).reshape(-1, 2)
        for g in layers[GraphicLayerValues.PATH.value].GraphicObjectSequence
    ]
    for text in labels:
        box = (*text.BoundingBoxTopLeftHandCorner, *text.BoundingBoxBottomRightHandCorner)
        for points in path:
            for a, b in itertools.pairwise(points):
                assert not _crosses(box, a, b), (text.UnformattedTextValue, box, a, b)
    second_label = labels[1]
    assert second_label.BoundingBoxBottomRightHandCorner[0] <= second.x


def test_fixation_numbers_stay_off_the_boxes() -> None:
    """A number goes elsewhere when a finding box's edge runs through its usual place
    above right (seen in DICOMscope: a box edge struck through "12" of "3, 10, 12")."""
    ds = make_source(rows=240, columns=200)
    first, second = trajectory(240, 200, count=2)
    first = replace(first, x=60.0, y=200.0)
    second = replace(second, x=100.0, y=120.0)
    # the box's left edge x=105 crosses the space above right of the second circle
    boxed = finding("nodule", 0.9, box=Box(105.0, 60.0, 160.0, 180.0))
    result = make_result(ds, findings=(boxed,), fixations=(first, second))
    gsps = build_gsps(result, ds)
    layers = {a.GraphicLayer: a for a in gsps.GraphicAnnotationSequence}
    labels = layers[GraphicLayerValues.FIXATIONS.value].TextObjectSequence
    lines = [
        np.asarray(g.GraphicData, dtype=float).reshape(-1, 2)
        for name in (GraphicLayerValues.PATH.value, GraphicLayerValues.FINDINGS.value)
        for g in layers[name].GraphicObjectSequence
    ]
    for text in labels:
        box = (*text.BoundingBoxTopLeftHandCorner, *text.BoundingBoxBottomRightHandCorner)
        for points in lines:
            for a, b in itertools.pairwise(points):
                assert not _crosses(box, a, b), (text.UnformattedTextValue, box, a, b)
