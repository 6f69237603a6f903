"""The `gazex predict --png` figure: source aspect, legend, footer and readable labels."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFont

from model.abcdef import STEPS, Step
from model.findings import FINDING_TYPES as FINDINGS
from model.overlay import (
    FOOTER,
    OverlayLayout,
    Rect,
    layout,
    load_font,
    overlay,
    render,
)
from model.result import (
    Box,
    Finding,
    Fixation,
    InferenceResult,
    ModelInfo,
    Report,
    ReportSection,
    SourceImage,
)


def make_result(
    rows: int,
    columns: int,
    points: Sequence[tuple[float, float]],
    steps: Sequence[Step] | None = None,
    box: Box | None = None,
    skipped: Sequence[Step] = (),
) -> InferenceResult:
    """A result on a ``rows`` x ``columns`` film with fixations at ``points`` (source px)."""
    steps = steps or [STEPS[i % len(STEPS)] for i in range(len(points))]
    trajectory = tuple(
        Fixation(x, y, 300.0 * i, 250.0, "trachea", step, i)
        for i, ((x, y), step) in enumerate(zip(points, steps, strict=True))
    )
    spec = FINDINGS[0]
    findings = (
        ()
        if box is None
        else (Finding(spec.key, spec.code, 0.87, True, spec.step, "Present.", box=box),)
    )
    return InferenceResult(
        source=SourceImage("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1", rows, columns),
        model=ModelInfo("gazex-test", "0", "0" * 64, True),
        findings=findings,
        trajectory=trajectory,
        report=Report(tuple(ReportSection(s, "Normal.") for s in STEPS), "Normal."),
        coverage=tuple((s, s not in skipped) for s in STEPS),
    )


def film(rows: int, columns: int) -> npt.NDArray[np.float32]:
    """A diagonal grey ramp (any content: the tests look at what is drawn on it)."""
    yy, xx = np.mgrid[0:rows, 0:columns]
    image: npt.NDArray[np.float32] = ((xx + yy) % 97 / 97.0).astype(np.float32)
    return image


def overlap(a: Rect, b: Rect) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


@pytest.mark.parametrize(
    ("rows", "columns", "long_side"),
    [(2500, 2048, 2048), (300, 420, 1024), (112, 96, 1024), (1500, 1200, 1500), (64, 640, 1024)],
)
def test_overlay_keeps_the_source_aspect_at_a_readable_size(
    rows: int, columns: int, long_side: int
) -> None:
    """The PNG is the film at its source aspect, its long side 1024 px or more (the source
    size up to 2048); it used to be shrunk to at most 768 px."""
    result = make_result(rows, columns, [(columns / 3, rows / 3), (columns / 2, rows / 2)])
    png = overlay(film(rows, columns), result)
    width, height = png.size
    assert max(width, height) == long_side
    scale = long_side / max(rows, columns)  # one factor for both axes: the source aspect
    assert abs(width - columns * scale) <= 0.5 and abs(height - rows * scale) <= 0.5


def test_legend_and_footer_are_drawn() -> None:
    """The legend names the six ABCDEF steps by their colours (a step the trajectory skipped
    marked), and the legend panel and the research-use footer are drawn on the film."""
    rows, columns = 400, 320
    result = make_result(
        rows, columns, [(100, 100), (200, 250), (160, 300)], skipped=[Step.EXTERNAL]
    )
    image = film(rows, columns)
    plan = layout((rows, columns), result)
    steps = [e.label.text for e in plan.legend if e.kind == "step"]
    assert steps == [
        "A  Airways",
        "B  Breathing",
        "C  Circulation",
        "D  Diaphragm",
        "E  External (not inspected)",
        "F  Foreign material",
    ]
    assert [e.kind for e in plan.legend][6:] == ["path"]
    assert (
        plan.footer.text
        == FOOTER
        == ("Research use only - model trained on synthetic data - not for clinical use")
    )
    drawn = np.asarray(render(image, plan), dtype=np.int16)
    plain = np.asarray(
        Image.fromarray(np.round(image * 255).astype(np.uint8))
        .resize(plan.size, Image.Resampling.LANCZOS)
        .convert("RGB"),
        dtype=np.int16,
    )
    for rect in (plan.legend_rect, plan.footer_rect, plan.footer.rect, plan.legend[0].label.rect):
        x0, y0, x1, y1 = (round(v) for v in rect)
        assert np.abs(drawn[y0:y1, x0:x1] - plain[y0:y1, x0:x1]).mean() > 20, rect
    x0, y0, x1, y1 = (round(v) for v in plan.footer_rect)
    assert y1 == plan.size[1] and x0 == 0 and x1 == plan.size[0]


def test_repeated_fixations_share_one_label() -> None:
    """Fixations 3 and 7 at one place get one ring labelled "3,7" (each number in its own
    step's colour) instead of two numbers printed over each other."""
    points = [(50, 50), (150, 60), (100, 100), (40, 150), (160, 150), (100, 180), (100, 100)]
    steps = [Step.AIRWAYS] * 2 + [Step.BREATHING] + [Step.CIRCULATION] * 3 + [Step.DIAPHRAGM]
    plan = layout((200, 200), make_result(200, 200, points, steps))
    shared = [m for m in plan.markers if 3 in m.numbers]
    assert len(shared) == 1 and shared[0].numbers == (3, 7)
    assert shared[0].label.text == "3,7"
    colours = [run.colour for run in shared[0].label.runs if run.text != ","]
    assert colours[0] != colours[1]  # B and D
    assert len(plan.markers) == 6
    _assert_labels_apart(plan)


def test_nearby_fixations_get_labels_apart() -> None:
    """Fixations a ring apart (two rings, not one) get labels that do not overlap each
    other, the rings or the legend and footer."""
    points = [(100.0 + 3.5 * i, 100.0 + 2.0 * (i % 2)) for i in range(12)]
    plan = layout((200, 200), make_result(200, 200, points))
    assert len(plan.markers) >= 2
    _assert_labels_apart(plan)


def _assert_labels_apart(plan: OverlayLayout) -> None:
    labels = plan.labels
    positions = {label.rect[:2] for label in labels}
    assert len(positions) == len(labels)
    for a, b in itertools.combinations(labels, 2):
        assert not overlap(a.rect, b.rect), (a.text, b.text)
    rings = {m.centre for m in plan.markers}
    radius = plan.sizes.ring
    for label in labels:
        assert not overlap(label.rect, plan.footer_rect)
        for x, y in rings:
            assert not overlap(label.rect, (x - radius, y - radius, x + radius, y + radius))


def test_finding_box_is_labelled_with_name_and_probability() -> None:
    """A present finding's box is drawn scaled to the canvas, with its name and probability
    (in the one label format of every output) in a tag that overlaps no fixation label."""
    box = Box(40.0, 60.0, 160.0, 150.0)
    result = make_result(200, 200, [(100, 100), (120, 90)], box=box)
    plan = layout((200, 200), result)
    (mark,) = plan.findings
    assert mark.rect == pytest.approx(
        (40 * plan.scale, 60 * plan.scale, 160 * plan.scale, 150 * plan.scale)
    )
    # The label the SR, OHIF's panel and the GSPS show too (model.result.finding_label).
    assert mark.label.text == f"{FINDINGS[0].code.meaning} 87 %"
    assert [e.kind for e in plan.legend][-1] == "box"
    _assert_labels_apart(plan)


def test_text_uses_a_scalable_font_sized_to_the_image() -> None:
    """Labels are a TrueType font (DejaVu Sans, or Pillow's scalable default without it)
    whose size grows with the figure."""
    small = layout((300, 300), make_result(300, 300, [(100, 100)]))
    large = layout((2500, 2048), make_result(2500, 2048, [(1000, 1000)]))
    for plan in (small, large):
        assert isinstance(plan.markers[0].label.font, ImageFont.FreeTypeFont)
    assert large.markers[0].label.font.size > small.markers[0].label.font.size  # type: ignore[union-attr]
    assert isinstance(load_font(20, bold=True), ImageFont.FreeTypeFont)
