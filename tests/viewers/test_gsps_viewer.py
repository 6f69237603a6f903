"""The GSPS applied to its film by a real GSPS viewer, DICOMscope 3.6.0 (OFFIS, Debian
package ``dicomscope``) under Xvfb, driven like a user: the path, the numbered fixations,
the boxes and their labels are drawn where the SRs say. DCMTK's own parse of the GSPS
(``dcmpschk``, ``dcmp2pgm -v``) lists the same graphics at the same coordinates.

Screenshots (``film.png``, ``gsps.png``, ``graphics.png``: what the GSPS changed,
``expected.png``: the SR geometry drawn in red over ``gsps.png``) and ``report.json`` land
in pytest's tmp folder ``dicomscope*`` and in ``$GAZEX_VIEWER_ARTEFACTS/dicomscope`` when
that is set. How DICOMscope draws (all layers white, 2 image pixels up and left) is in
dicomscopekit's docstring.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from dicomscopekit import (
    SETUP_HINT,
    SHIFT,
    DicomScope,
    ParsedLayer,
    SrGeometry,
    Views,
    Xvfb,
    annotate,
    dcmp2pgm_layers,
    dilate,
    hits,
    missing_tools,
    open_film_and_gsps,
    run_dcmp2pgm,
    segment_points,
    sr_geometry,
)
from ohifkit import copy_artefacts
from pydicom import dcmread
from result_study import ResultStudy

from model.result import percent

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.viewer]

LAYERS = {"GAZEX FINDINGS", "GAZEX FIXATIONS", "GAZEX PATH", "GAZEX NOTICE"}
#: DCMTK prints coordinates with 6 significant digits
COORDINATE_TOLERANCE = 0.01
#: how far (screen pixels) a drawn line may be from where it is expected
LINE_TOLERANCE = 2


@pytest.fixture(scope="module")
def dcmtk_tools() -> None:
    """Skip unless DCMTK's presentation state tools are installed."""
    missing = missing_tools(viewer=False)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}; {SETUP_HINT}")


@pytest.fixture(scope="module")
def dicomscope_tools() -> None:
    """Skip unless Xvfb, xdotool, DICOMscope and DCMTK are installed."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}; {SETUP_HINT}")


@pytest.fixture(scope="module")
def geometry(result_study: ResultStudy) -> SrGeometry:
    """The boxes, fixations and path the findings and trajectory SRs carry."""
    return sr_geometry(result_study.objects["findings_sr"], result_study.objects["trajectory_sr"])


@pytest.fixture(scope="module")
def layers(dcmtk_tools: None, result_study: ResultStudy) -> dict[str, ParsedLayer]:
    """DCMTK's parse of the GSPS applied to the film (``dcmp2pgm -v``)."""
    done = run_dcmp2pgm(result_study.objects["gsps"], result_study.film)
    assert done.returncode == 0, done.stdout + done.stderr
    return dcmp2pgm_layers(done.stdout + done.stderr)


def _drawn_lines(layers: dict[str, ParsedLayer]) -> list[npt.NDArray[np.float64]]:
    """The GSPS's lines that the SRs do not carry: arrowheads and leader lines."""
    heads = layers["GAZEX PATH"].graphics[1:]
    leaders = [g for g in layers["GAZEX FIXATIONS"].graphics if g.graphic_type == "polyline"]
    return [g.points for g in [*heads, *leaders]]


@dataclass
class Seen:
    """DICOMscope's two views and what the test expects on them, in screen pixels."""

    views: Views
    out: Path
    #: the pixels the GSPS changed, grown by the tolerance
    near_ink: npt.NDArray[np.bool_]
    #: where the test expects lines: the SRs' boxes, circles and path, the GSPS's
    #: arrowheads and leaders
    lines: npt.NDArray[np.bool_]

    def screen(self, x: float, y: float) -> tuple[float, float]:
        return self.views.mapping.screen(x, y, SHIFT)

    def line(self, points: npt.ArrayLike, step: float = 3.0) -> list[tuple[float, float]]:
        """Screen points every ``step`` pixels along a polyline in image coordinates."""
        screen = [self.screen(x, y) for x, y in np.asarray(points, dtype=float)]
        sampled: list[tuple[float, float]] = []
        for a, b in itertools.pairwise(screen):
            sampled += segment_points(a, b, step)
        return sampled

    def circle(self, x: float, y: float, radius: float) -> list[tuple[float, float]]:
        return [
            self.screen(x + radius * math.cos(t), y + radius * math.sin(t))
            for t in np.linspace(0.0, 2.0 * math.pi, 36, endpoint=False)
        ]

    def text_box(self, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        x0, y0 = self.screen(box[0], box[1])
        x1, y1 = self.screen(box[2], box[3])
        return (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))


@pytest.fixture(scope="module")
def seen(
    dicomscope_tools: None,
    result_study: ResultStudy,
    geometry: SrGeometry,
    layers: dict[str, ParsedLayer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Seen]:
    """DICOMscope under Xvfb: the film opened with its default presentation, then the
    GSPS opened from the study browser; both screenshotted."""
    out = tmp_path_factory.mktemp("dicomscope")
    run = tmp_path_factory.mktemp("dicomscope-run")
    gsps = result_study.objects["gsps"]
    try:
        with (
            Xvfb(run / "xvfb") as xvfb,
            DicomScope(run / "dicomscope", xvfb.display, [result_study.film, gsps]) as scope,
        ):
            views = open_film_and_gsps(scope, dcmread(result_study.film), dcmread(gsps), out)
        seen = Seen(views, out, dilate(views.ink, LINE_TOLERANCE), np.zeros_like(views.ink))
        shapes: list[Any] = [("line", seen.line(box, 1.0)) for box in geometry.boxes.values()]
        shapes += [
            ("line", seen.circle(x, y, r) + seen.circle(x, y, r)[:1])
            for x, y, r in geometry.fixations
        ]
        shapes.append(("line", seen.line(geometry.path, 1.0)))
        shapes += [("line", seen.line(points, 1.0)) for points in _drawn_lines(layers)]
        height, width = seen.lines.shape
        for _, points in shapes:
            for x, y in points:
                if 0 <= x < width and 0 <= y < height:
                    seen.lines[int(y), int(x)] = True
        shapes += [("box", seen.text_box(t.box)) for layer in layers.values() for t in layer.texts]
        annotate(views, shapes, out / "expected.png")
        report = {"steps": views.steps, "mapping": asdict(views.mapping), "shift": SHIFT}
        (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
        yield seen
    finally:
        for log in (run / "dicomscope" / "dicomscope.log", run / "xvfb" / "xvfb.log"):
            if log.exists():
                shutil.copyfile(log, out / log.name)
        for timeout in (run / "dicomscope").glob("timeout-*.png"):
            shutil.copyfile(timeout, out / timeout.name)
        copy_artefacts(out, "dicomscope")


# --- DCMTK's independent parse ------------------------------------------------------------


def _close(a: npt.ArrayLike, b: npt.ArrayLike) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, atol=COORDINATE_TOLERANCE, rtol=0))


def test_dcmpschk_passes(dcmtk_tools: None, result_study: ResultStudy) -> None:
    """DCMTK's presentation state checker finds nothing wrong with the GSPS."""
    done = subprocess.run(
        ["dcmpschk", str(result_study.objects["gsps"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Test passed" in output, output
    assert not re.search(r"^(E|F):", output, re.MULTILINE), output


def test_sr_geometry_is_the_prediction(result_study: ResultStudy, geometry: SrGeometry) -> None:
    """The SRs carry the predicted boxes and the fixations in reading order."""
    boxed = [f["box"] for f in result_study.result["findings"] if f["present"] and f["box"]]
    assert len(geometry.boxes) == len(boxed)
    for box in boxed:
        corners = [
            [box["x0"], box["y0"]],
            [box["x1"], box["y0"]],
            [box["x1"], box["y1"]],
            [box["x0"], box["y1"]],
            [box["x0"], box["y0"]],
        ]
        assert any(_close(corners, drawn) for drawn in geometry.boxes.values()), box
    centres = [[f["x"], f["y"]] for f in result_study.result["trajectory"]]
    assert _close([[x, y] for x, y, _ in geometry.fixations], centres)
    assert _close(geometry.path, centres)


def test_dcmp2pgm_lists_the_boxes_and_labels(
    result_study: ResultStudy, geometry: SrGeometry, layers: dict[str, ParsedLayer]
) -> None:
    """The findings layer holds the SR's boxes as closed polylines, each labelled with
    the finding and its probability at one of its corners."""
    assert set(layers) == LAYERS
    findings = layers["GAZEX FINDINGS"]
    assert all(g.graphic_type == "polyline" for g in findings.graphics)
    assert len(findings.graphics) == len(geometry.boxes)
    for name, box in geometry.boxes.items():
        assert any(_close(g.points, box) for g in findings.graphics), name
    for finding in result_study.result["findings"]:
        if not (finding["present"] and finding["box"]):
            continue
        meaning, box = finding["code"]["meaning"], finding["box"]
        label = f"{meaning} {percent(finding['probability'])}"
        [text] = [t for t in findings.texts if t.value == label]
        x0, y0, x1, y1 = text.box
        aligned = min(abs(x0 - box["x0"]), abs(x1 - box["x1"])) < COORDINATE_TOLERANCE
        edges = (box["y0"], box["y1"])
        touching = min(abs(v - edge) for v in (y0, y1) for edge in edges) < COORDINATE_TOLERANCE
        assert aligned and touching, (label, text.box, box)


def test_dcmp2pgm_lists_the_numbered_fixations(
    geometry: SrGeometry, layers: dict[str, ParsedLayer]
) -> None:
    """The fixations layer holds one circle per SR fixation, same centre and radius, in
    reading order, and numbers beside them (or joined to them by a leader line where
    there is no room beside): every fixation numbered once, a revisited spot's numbers on
    one label."""
    fixations = layers["GAZEX FIXATIONS"]
    circles = fixations.graphics[: len(geometry.fixations)]
    leaders = fixations.graphics[len(geometry.fixations) :]
    assert [g.graphic_type for g in circles] == ["circle"] * len(geometry.fixations)
    for graphic, (x, y, r) in zip(circles, geometry.fixations, strict=True):
        assert _close(graphic.points[0], [x, y])
        assert abs(math.dist(*graphic.points[:2]) - r) < COORDINATE_TOLERANCE
    assert all(g.graphic_type == "polyline" and len(g.points) == 2 for g in leaders)
    numbered: list[int] = []
    for text in fixations.texts:
        numbers = [int(n) for n in text.value.split(", ")]
        numbered += numbers
        x, y, r = geometry.fixations[numbers[0] - 1]
        for n in numbers:
            assert math.dist(geometry.fixations[n - 1][:2], (x, y)) <= r, text.value
        x0, y0, x1, y1 = text.box
        nearest = (min(max(x, x0), x1), min(max(y, y0), y1))
        outside = max(x0 - (x + r), (x - r) - x1, y0 - (y + r), (y - r) - y1) >= -0.01
        assert outside, (text.value, text.box, (x, y, r))
        if math.dist((x, y), nearest) > r * math.sqrt(2) + 0.01:
            # pushed out: a leader runs from the circle to the label
            assert any(
                abs(math.dist(g.points[0], (x, y)) - r) < COORDINATE_TOLERANCE
                and _close(g.points[1], nearest)
                for g in leaders
            ), (text.value, text.box, (x, y, r))
    assert sorted(numbered) == list(range(1, len(geometry.fixations) + 1))


def test_no_line_runs_through_a_label(layers: dict[str, ParsedLayer]) -> None:
    """No path, arrowhead, leader or box edge strikes through a finding label or a
    fixation number (seen in DICOMscope before the GSPS placed its labels: a box edge
    through "12" of "3, 10, 12", the path through "Mass 77%")."""
    lines = [g.points for layer in layers.values() for g in layer.graphics]
    lines = [points for points in lines if len(points) >= 2]
    for name in ("GAZEX FINDINGS", "GAZEX FIXATIONS"):
        for text in layers[name].texts:
            x0, y0, x1, y1 = text.box
            inner = (x0 + 0.5, y0 + 0.5, x1 - 0.5, y1 - 0.5)
            for points in lines:
                for a, b in itertools.pairwise(points):
                    assert not _crosses(inner, a, b), f"{a}-{b} runs through {text.value!r}"


def test_dcmp2pgm_lists_the_path_and_notice(
    geometry: SrGeometry, layers: dict[str, ParsedLayer]
) -> None:
    """The path layer holds the SR's inspection path and one V arrowhead per step, its
    tip on the step a fixation radius before the next fixation; the notice says it is
    not for clinical use."""
    path = layers["GAZEX PATH"]
    first, *heads = path.graphics
    assert first.graphic_type == "polyline" and _close(first.points, geometry.path)
    steps = [(a, b) for a, b in itertools.pairwise(geometry.path) if math.dist(a, b) > 0]
    assert len(heads) == len(steps)
    radius = geometry.fixations[0][2]
    for head, (a, b) in zip(heads, steps, strict=True):
        assert head.graphic_type == "polyline" and head.points.shape == (3, 2)
        tip = head.points[1]
        back = radius if math.dist(a, b) > 2 * radius else math.dist(a, b) / 2
        expected = b - (b - a) / math.dist(a, b) * back
        assert _close(tip, expected), (tip, expected)
    [notice] = layers["GAZEX NOTICE"].texts
    assert "NOT FOR CLINICAL USE" in notice.value


def _crosses(box: tuple[float, float, float, float], a: npt.ArrayLike, b: npt.ArrayLike) -> bool:
    """Whether the segment a-b passes through the box (sampled every 0.1 pixel)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    t = np.linspace(0.0, 1.0, max(2, int(math.dist(a, b) * 10)))[:, None]
    x, y = (a + t * (b - a)).T
    return bool(np.any((x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])))


# --- DICOMscope -------------------------------------------------------------------------


def test_film_displays(seen: Seen) -> None:
    """DICOMscope shows the film scaled to fit, with the GSPS's window: the screenshot
    matches the film rendered here (correlation above 0.98)."""
    mapping = seen.views.mapping
    assert mapping.correlation > 0.98, mapping
    right, bottom = seen.views.canvas[2:]
    assert mapping.image_box[2] <= right + 1 and mapping.image_box[3] <= bottom + 1


def test_boxes_and_labels_drawn_where_the_sr_says(
    seen: Seen, geometry: SrGeometry, layers: dict[str, ParsedLayer]
) -> None:
    """Each SR box is drawn along its whole outline, and its label's text is drawn on
    the box's top left corner."""
    for name, box in geometry.boxes.items():
        drawn = hits(seen.near_ink, seen.line(box))
        assert drawn > 0.95, f"{name}: {drawn:.0%} of the outline drawn ({seen.out})"
    for text in layers["GAZEX FINDINGS"].texts:
        _assert_text(seen, text.value, text.box)


def test_fixations_drawn_and_numbered_where_the_sr_says(
    seen: Seen, geometry: SrGeometry, layers: dict[str, ParsedLayer]
) -> None:
    """A circle is drawn round each SR fixation, and each number beside its circle (or at
    the end of its leader line)."""
    for number, (x, y, r) in enumerate(geometry.fixations, start=1):
        drawn = hits(seen.near_ink, seen.circle(x, y, r))
        assert drawn > 0.9, f"fixation {number}: {drawn:.0%} of the circle drawn ({seen.out})"
    for text in layers["GAZEX FIXATIONS"].texts:
        _assert_text(seen, text.value, text.box)
    for graphic in layers["GAZEX FIXATIONS"].graphics[len(geometry.fixations) :]:
        drawn = hits(seen.near_ink, seen.line(graphic.points, 1.0))
        assert drawn > 0.9, f"leader {graphic.points.tolist()}: {drawn:.0%} drawn ({seen.out})"


def test_path_drawn_where_the_sr_says(
    seen: Seen, geometry: SrGeometry, layers: dict[str, ParsedLayer]
) -> None:
    """The SR's inspection path is drawn from fixation to fixation, with its arrowheads."""
    for number, (a, b) in enumerate(itertools.pairwise(geometry.path), 1):
        drawn = hits(seen.near_ink, seen.line([a, b]))
        assert drawn > 0.95, f"path step {number}: {drawn:.0%} drawn ({seen.out})"
    for number, head in enumerate(layers["GAZEX PATH"].graphics[1:], start=1):
        drawn = hits(seen.near_ink, seen.line(head.points, 1.0))
        assert drawn > 0.9, f"arrowhead {number}: {drawn:.0%} drawn ({seen.out})"


def test_notice_drawn(seen: Seen, layers: dict[str, ParsedLayer]) -> None:
    """The research-use notice is written along the bottom of the image."""
    [notice] = layers["GAZEX NOTICE"].texts
    _assert_text(seen, notice.value, notice.box)


def test_nothing_else_drawn(seen: Seen, layers: dict[str, ParsedLayer]) -> None:
    """Every pixel the GSPS changes belongs to a box, a circle, the path, an arrowhead, a
    leader or a label: nothing is drawn elsewhere (nor misplaced beyond the tolerance)."""
    expected = dilate(seen.lines, LINE_TOLERANCE + 1)
    for layer in layers.values():
        for text in layer.texts:
            x0, y0, x1, y1 = seen.text_box(text.box)
            expected[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = True
    stray = seen.views.ink & ~expected
    ink = int(seen.views.ink.sum())
    assert ink > 1000, f"the GSPS changed only {ink} pixels ({seen.out})"
    assert stray.sum() <= 0.002 * ink, f"{int(stray.sum())} stray pixels of {ink} ({seen.out})"


def _assert_text(seen: Seen, value: str, box: tuple[float, float, float, float]) -> None:
    """Text is drawn from the top left corner of its bounding box: ink that no line or
    circle explains starts within a few pixels of that corner, a line of text high."""
    x0, y0, x1, y1 = seen.text_box(box)
    region = (slice(max(0, y0 - 3), y1 + 3), slice(max(0, x0 - 3), x1 + 3))
    text_ink = seen.views.ink[region] & ~dilate(seen.lines, LINE_TOLERANCE + 2)[region]
    ys, xs = np.nonzero(text_ink)
    where = f"{value!r} at {(x0, y0, x1, y1)} ({seen.out})"
    assert xs.size >= 8 * len(value.replace(" ", "")), f"no text drawn for {where}"
    left, top = max(0, x0 - 3) + int(xs.min()), max(0, y0 - 3) + int(ys.min())
    assert abs(left - x0) <= 6 and abs(top - y0) <= 8, f"text starts at {(left, top)}: {where}"
