"""The trajectory overlay PNG of a result: a figure a reader can read, drawn with Pillow.

The film keeps its source aspect and fills the whole PNG, scaled so that its long side is
:data:`MIN_LONG_SIDE` px or more (the source size when larger, up to :data:`MAX_LONG_SIDE`):
one factor maps PNG pixels to source pixels. On the film:

- each finding present with a box: the box and a tag with its name and probability;
- the inspection path: white with a dark halo and an arrowhead at each fixation, every leg
  bowed a little to its left, so a return trip (A to B to A) draws two arcs, not one line;
- each fixation: a ring in its ABCDEF step's colour and its number beside it; fixations
  that repeat a place share one ring and one label ("3,7"), each number in its own step's
  colour; labels go where they overlap no other label, ring or tag;
- a legend of the step colours (A Airways ... F Foreign material, steps the trajectory did
  not inspect marked) in the corner with least drawn under it, on a translucent panel;
- a footer strip with the research-use notice (:data:`FOOTER`);
- when the domain gate found the film unlike the training films
  (:attr:`model.result.InferenceResult.out_of_domain`), a red banner across the top that
  says so (:func:`banner_text`): nothing drawn below it is to be trusted.

Text is DejaVu Sans (Debian's ``fonts-dejavu-core``) sized to the image with a dark outline;
without that font, Pillow's scalable default. :func:`layout` computes where everything goes
(no pixels), :func:`render` draws it, :func:`overlay` does both.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from model.abcdef import STEPS, Step
from model.result import InferenceResult, finding_label

RGB = tuple[int, int, int]
Point = tuple[float, float]
#: (x0, y0, x1, y1) on the canvas.
Rect = tuple[float, float, float, float]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: Colours of other plots (``gazex eval``'s ROC curves).
PALETTE: tuple[RGB, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)

#: One colour per ABCDEF step, bright enough for dark lung and, with the dark outline, for
#: bright mediastinum.
STEP_COLOURS: dict[Step, RGB] = {
    Step.AIRWAYS: (80, 200, 255),
    Step.BREATHING: (80, 230, 110),
    Step.CIRCULATION: (255, 80, 80),
    Step.DIAPHRAGM: (255, 225, 50),
    Step.EXTERNAL: (190, 120, 255),
    Step.FOREIGN_MATERIAL: (255, 140, 0),
}
#: Finding boxes, in turn (none of them a step colour).
FINDING_COLOURS: tuple[RGB, ...] = ((255, 110, 200), (120, 255, 235), (245, 245, 245))
PATH_COLOUR: RGB = (255, 255, 255)
REFERENCE_COLOUR: RGB = (175, 175, 175)
TEXT_COLOUR: RGB = (255, 255, 255)
HALO: RGB = (0, 0, 0)
PANEL_ALPHA = 170

FOOTER = "Research use only - model trained on synthetic data - not for clinical use"
BANNER_COLOUR: RGB = (200, 0, 0)
BANNER_ALPHA = 225
MIN_LONG_SIDE = 1024
MAX_LONG_SIDE = 2048
FONT_DIRS: tuple[Path, ...] = (Path("/usr/share/fonts/truetype/dejavu"),)


@functools.lru_cache(maxsize=32)
def load_font(size: int, bold: bool = False) -> Font:
    """DejaVu Sans (bold) at ``size`` px; Pillow's scalable default font without it."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in FONT_DIRS:
        if (folder / name).is_file():
            return ImageFont.truetype(str(folder / name), size)
    try:
        return ImageFont.truetype(name, size)  # Pillow searches the system's font folders
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)  # scalable from Pillow 10.1
    except TypeError:
        return ImageFont.load_default()


_MEASURE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def text_size(text: str, font: Font, stroke: int = 0) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of ``text`` drawn at (0, 0), outline included."""
    return _MEASURE.textbbox((0, 0), text, font=font, stroke_width=stroke)


# -- the layout -------------------------------------------------------------------------


@dataclass(frozen=True)
class TextRun:
    text: str
    colour: RGB


@dataclass(frozen=True)
class Label:
    """Text of one or more coloured runs whose ink fills ``rect``."""

    runs: tuple[TextRun, ...]
    rect: Rect
    font: Font

    @property
    def text(self) -> str:
        return "".join(run.text for run in self.runs)


@dataclass(frozen=True)
class Marker:
    """One place the trajectory fixated: a ring, and the fixations' numbers (1-based)."""

    centre: Point
    numbers: tuple[int, ...]
    colour: RGB
    label: Label


@dataclass(frozen=True)
class FindingMark:
    rect: Rect
    colour: RGB
    label: Label


@dataclass(frozen=True)
class LegendEntry:
    """A swatch (``"step"`` ring, ``"path"`` arrow, ``"box"``, ``"reference"`` line) and
    its text; ``label`` is where the text goes."""

    kind: str
    colour: RGB
    label: Label


@dataclass(frozen=True)
class Sizes:
    """Line widths and radii in canvas pixels, from the canvas size."""

    ring: float
    ring_width: int
    line: int
    halo: int
    arrow: float
    box: int
    gap: float
    pad: float

    @classmethod
    def for_canvas(cls, long_side: int) -> Sizes:
        u = long_side / 1024
        return cls(
            ring=14 * u,
            ring_width=max(2, round(3 * u)),
            line=max(2, round(3.5 * u)),
            halo=max(1, round(1.5 * u)),
            arrow=24 * u,
            box=max(2, round(3 * u)),
            gap=5 * u,
            pad=8 * u,
        )


@dataclass(frozen=True)
class OverlayLayout:
    """Where everything of the figure goes, in canvas pixels (``size`` = (width, height))."""

    size: tuple[int, int]
    #: Canvas pixels per source pixel (the same along both axes).
    scale: float
    sizes: Sizes
    path: tuple[Point, ...]
    reference: tuple[Point, ...]
    markers: tuple[Marker, ...]
    findings: tuple[FindingMark, ...]
    legend_rect: Rect
    legend: tuple[LegendEntry, ...]
    footer_rect: Rect
    footer: Label
    #: The out-of-domain banner across the top, when the film is out of domain.
    banner_rect: Rect | None = None
    banner: Label | None = None

    @property
    def labels(self) -> list[Label]:
        """Every label on the film (fixations and findings; not the legend or footer)."""
        return [m.label for m in self.markers] + [f.label for f in self.findings]


def canvas_size(rows: int, columns: int) -> tuple[tuple[int, int], float]:
    """((width, height), scale): the source aspect, long side within the figure's bounds."""
    long_side = max(rows, columns)
    target = min(max(long_side, MIN_LONG_SIDE), MAX_LONG_SIDE)
    scale = target / long_side
    return (max(1, round(columns * scale)), max(1, round(rows * scale))), scale


def _overlap(a: Rect, b: Rect) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _outside(rect: Rect, size: tuple[int, int]) -> float:
    """The area of ``rect`` outside the canvas."""
    area = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return area - _overlap(rect, (0.0, 0.0, float(size[0]), float(size[1])))


def _label(runs: Sequence[TextRun], font: Font, x: float, y: float) -> Label:
    left, top, right, bottom = text_size("".join(r.text for r in runs), font)
    return Label(tuple(runs), (x, y, x + right - left, y + bottom - top), font)


def _place(
    runs: Sequence[TextRun],
    font: Font,
    options: Sequence[tuple[Point, tuple[float, float]]],
    obstacles: Sequence[Rect],
    size: tuple[int, int],
) -> Label:
    """The label at the first option with the least overlap (other labels, rings, the path,
    the canvas edge). An option is a point and the label's offset from it in units of its
    own (width, height): (0, -0.5) puts the label right of the point, centred."""
    left, top, right, bottom = text_size("".join(r.text for r in runs), font)
    w, h = right - left, bottom - top
    best: tuple[float, Label] | None = None
    for (px, py), (fx, fy) in options:
        x, y = px + fx * w, py + fy * h
        rect = (x, y, x + w, y + h)
        cost = sum(_overlap(rect, o) for o in obstacles) + 4 * _outside(rect, size)
        if best is None or cost < best[0]:
            best = (cost, Label(tuple(runs), rect, font))
        if cost == 0:
            break
    assert best is not None
    return best[1]


def layout(
    image_shape: tuple[int, int],
    result: InferenceResult,
    reference: Sequence[tuple[float, float]] = (),
) -> OverlayLayout:
    """Where the figure of ``result`` on a film of ``image_shape`` (rows, columns) puts
    each ring, label, box, the legend and the footer."""
    rows, columns = image_shape
    size, scale = canvas_size(rows, columns)
    long_side = max(size)
    sizes = Sizes.for_canvas(long_side)
    label_font = load_font(max(11, round(22 * long_side / 1024)), bold=True)
    small_font = load_font(max(10, round(19 * long_side / 1024)))

    # Footer strip, its font shrunk until the notice fits the width.
    footer_size = max(10, round(17 * long_side / 1024))
    footer_font = load_font(footer_size)
    left, top, right, bottom = text_size(FOOTER, footer_font)
    while right - left > size[0] - 2 * sizes.pad and footer_size > 6:
        footer_size -= 1
        footer_font = load_font(footer_size)
        left, top, right, bottom = text_size(FOOTER, footer_font)
    footer_h = (bottom - top) + 2 * sizes.pad
    footer_rect: Rect = (0.0, size[1] - footer_h, float(size[0]), float(size[1]))
    footer = _label(
        [TextRun(FOOTER, TEXT_COLOUR)],
        footer_font,
        (size[0] - (right - left)) / 2,
        size[1] - footer_h + sizes.pad,
    )
    obstacles: list[Rect] = [footer_rect]
    banner_rect: Rect | None = None
    banner: Label | None = None
    text = banner_text(result)
    if text is not None:
        banner_rect, banner = _strip(text, load_font(footer_size + 4, bold=True), size, sizes)
        obstacles.append(banner_rect)

    # Finding boxes and their tags (above the box, else inside its top).
    findings: list[FindingMark] = []
    colour_index = 0
    for finding in result.findings:
        if finding.box is None or not finding.present:
            continue
        b = finding.box
        rect: Rect = (b.x0 * scale, b.y0 * scale, b.x1 * scale, b.y1 * scale)
        colour = FINDING_COLOURS[colour_index % len(FINDING_COLOURS)]
        colour_index += 1
        runs = [TextRun(finding_label(finding), colour)]
        p = sizes.pad / 2
        x0, y0, x1, y1 = rect
        tag = _place(
            runs,
            small_font,
            [
                ((x0 + p, y0 - p), (0, -1)),  # above the box, left
                ((x0 + p, y0 + p), (0, 0)),  # inside, top left
                ((x1 - p, y0 - p), (-1, -1)),  # above, right
                ((x1 - p, y0 + p), (-1, 0)),  # inside, top right
                ((x0 + p, y1 - p), (0, -1)),  # inside, bottom left
                ((x0 + p, y1 + p), (0, 0)),  # below
            ],
            obstacles,
            size,
        )
        findings.append(FindingMark(rect, colour, tag))
        obstacles.append(_grow(tag.rect, p))

    # Fixations: one ring per place, numbers grouped.
    points = [(fx.x * scale, fx.y * scale) for fx in result.trajectory]
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(points):
        for group in groups:
            gx, gy = points[group[0]]
            if math.hypot(x - gx, y - gy) <= sizes.ring:
                group.append(i)
                break
        else:
            groups.append([i])
    rings = [_ring_rect(points[g[0]], sizes.ring + sizes.ring_width) for g in groups]
    obstacles.extend(rings)
    obstacles.extend(_path_rects(points, sizes))
    markers: list[Marker] = []
    for group in groups:
        x, y = points[group[0]]
        runs = []
        for k, i in enumerate(group):
            if k:
                runs.append(TextRun(",", TEXT_COLOUR))
            runs.append(TextRun(str(i + 1), STEP_COLOURS[result.trajectory[i].step]))
        d = sizes.ring + sizes.gap
        e = d * 0.75
        label = _place(
            runs,
            label_font,
            [
                ((x + d, y), (0, -0.5)),  # right
                ((x + e, y - e), (0, -1)),  # upper right
                ((x - d, y), (-1, -0.5)),  # left
                ((x - e, y - e), (-1, -1)),  # upper left
                ((x + e, y + e), (0, 0)),  # lower right
                ((x - e, y + e), (-1, 0)),  # lower left
                ((x, y - d), (-0.5, -1)),  # above
                ((x, y + d), (-0.5, 0)),  # below
            ],
            obstacles,
            size,
        )
        obstacles.append(_grow(label.rect, sizes.gap / 2))
        colour = STEP_COLOURS[result.trajectory[group[0]].step]
        markers.append(Marker((x, y), tuple(i + 1 for i in group), colour, label))

    legend_rect, legend = _legend(
        result, bool(findings), bool(reference), small_font, sizes, size, footer_rect, obstacles
    )
    return OverlayLayout(
        size=size,
        scale=scale,
        sizes=sizes,
        path=tuple(points),
        reference=tuple((x * scale, y * scale) for x, y in reference),
        markers=tuple(markers),
        findings=tuple(findings),
        legend_rect=legend_rect,
        legend=legend,
        footer_rect=footer_rect,
        footer=footer,
        banner_rect=banner_rect,
        banner=banner,
    )


def banner_text(result: InferenceResult) -> str | None:
    """The out-of-domain banner's words, or None when the film is in domain (or unchecked)."""
    if result.domain is None or result.domain.in_domain:
        return None
    return (
        f"OUT OF DOMAIN - unlike the training films (score {result.domain.score:.1f} > "
        f"{result.domain.threshold:.1f}): findings not to be trusted"
    )


def _strip(text: str, font: Font, size: tuple[int, int], sizes: Sizes) -> tuple[Rect, Label]:
    """A full-width strip at the top holding ``text``, its font shrunk until it fits."""
    left, top, right, bottom = text_size(text, font)
    points = font.size if isinstance(font, ImageFont.FreeTypeFont) else 0
    while right - left > size[0] - 2 * sizes.pad and points > 6:
        points -= 1
        font = load_font(points, bold=True)
        left, top, right, bottom = text_size(text, font)
    height = (bottom - top) + 2 * sizes.pad
    label = _label([TextRun(text, TEXT_COLOUR)], font, (size[0] - (right - left)) / 2, sizes.pad)
    return (0.0, 0.0, float(size[0]), height), label


def _grow(rect: Rect, by: float) -> Rect:
    return (rect[0] - by, rect[1] - by, rect[2] + by, rect[3] + by)


def _ring_rect(centre: Point, radius: float) -> Rect:
    return (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)


def _path_rects(points: Sequence[Point], sizes: Sizes) -> list[Rect]:
    """Small squares along the path, so labels keep off it where they can."""
    rects: list[Rect] = []
    for p, q in itertools.pairwise(points):
        for t in (0.25, 0.5, 0.75):
            x, y = _bezier(p, q, t)
            rects.append(_ring_rect((x, y), sizes.line * 2))
    return rects


def _legend(
    result: InferenceResult,
    with_boxes: bool,
    with_reference: bool,
    font: Font,
    sizes: Sizes,
    size: tuple[int, int],
    footer_rect: Rect,
    obstacles: Sequence[Rect],
) -> tuple[Rect, tuple[LegendEntry, ...]]:
    """The legend's entries and panel, in the corner with least drawn under it."""
    skipped = set(result.skipped_steps)
    items: list[tuple[str, RGB, str]] = [
        ("step", STEP_COLOURS[s], f"{s.value}  {s.title}" + (" (not inspected)" * (s in skipped)))
        for s in STEPS
    ]
    items.append(("path", PATH_COLOUR, "path, numbered in order"))
    if with_boxes:
        items.append(("box", FINDING_COLOURS[0], "finding, probability"))
    if with_reference:
        items.append(("reference", REFERENCE_COLOUR, "reader's scanpath"))
    _, top, _, bottom = text_size("Ag", font)
    line = (bottom - top) * 1.45
    swatch = line * 1.3
    width = max(text_size(text, font)[2] for _, _, text in items) + swatch + 2.5 * sizes.pad
    height = line * len(items) + 1.5 * sizes.pad
    margin = sizes.pad
    corners = (
        (margin, margin),
        (size[0] - margin - width, margin),
        (margin, footer_rect[1] - margin - height),
        (size[0] - margin - width, footer_rect[1] - margin - height),
    )
    best: tuple[float, Rect] | None = None
    for x, y in corners:
        rect = (x, y, x + width, y + height)
        cost = sum(_overlap(rect, o) for o in obstacles)
        if best is None or cost < best[0]:
            best = (cost, rect)
    assert best is not None
    rect = best[1]
    entries = []
    for i, (kind, colour, text) in enumerate(items):
        x = rect[0] + sizes.pad + swatch
        y = rect[1] + 0.75 * sizes.pad + i * line + (line - (bottom - top)) / 2
        entries.append(LegendEntry(kind, colour, _label([TextRun(text, TEXT_COLOUR)], font, x, y)))
    return rect, tuple(entries)


# -- drawing ----------------------------------------------------------------------------


def _bezier(p: Point, q: Point, t: float, bow: float = 0.15) -> Point:
    """The point at ``t`` of the leg from ``p`` to ``q``, bowed to its left by ``bow`` of
    its length (so the way back bows to the other side)."""
    mx, my = (p[0] + q[0]) / 2, (p[1] + q[1]) / 2
    dx, dy = q[0] - p[0], q[1] - p[1]
    cx, cy = mx + dy * bow, my - dx * bow
    s = 1 - t
    return (
        s * s * p[0] + 2 * s * t * cx + t * t * q[0],
        s * s * p[1] + 2 * s * t * cy + t * t * q[1],
    )


def _leg(p: Point, q: Point, trim: float) -> list[Point]:
    """The bowed leg from ``p`` to ``q`` as a polyline, without its ends inside the rings."""
    points = [_bezier(p, q, i / 32) for i in range(33)]
    return [
        pt
        for pt in points
        if math.hypot(pt[0] - p[0], pt[1] - p[1]) > trim
        and math.hypot(pt[0] - q[0], pt[1] - q[1]) > trim
    ]


def _arrowhead(tip: Point, before: Point, length: float) -> list[Point]:
    angle = math.atan2(tip[1] - before[1], tip[0] - before[0])
    half = math.radians(24)
    return [
        tip,
        (tip[0] - length * math.cos(angle - half), tip[1] - length * math.sin(angle - half)),
        (tip[0] - length * math.cos(angle + half), tip[1] - length * math.sin(angle + half)),
    ]


def _draw_label(draw: ImageDraw.ImageDraw, label: Label, stroke: int) -> None:
    left, top, _, _ = text_size(label.text, label.font)
    x, y = label.rect[0] - left, label.rect[1] - top
    font = label.font
    for run in label.runs:
        draw.text((x, y), run.text, run.colour, font, stroke_width=stroke, stroke_fill=HALO)
        x += draw.textlength(run.text, font=font)


def render(image: npt.NDArray[np.float32], plan: OverlayLayout) -> Image.Image:
    """Draw ``plan`` on the film (float, [0, 1], 1.0 white); an RGB image of ``plan.size``."""
    s = plan.sizes
    grey = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L")
    canvas = grey.resize(plan.size, Image.Resampling.LANCZOS).convert("RGBA")
    draw = ImageDraw.Draw(canvas)
    if len(plan.reference) > 1:
        draw.line(plan.reference, fill=REFERENCE_COLOUR, width=max(1, s.line // 2))
    for mark in plan.findings:
        draw.rectangle(_grow(mark.rect, s.halo), outline=HALO, width=s.box + 2 * s.halo)
        draw.rectangle(mark.rect, outline=mark.colour, width=s.box)
    for p, q in itertools.pairwise(plan.path):
        leg = _leg(p, q, s.ring + s.ring_width)
        if len(leg) < 2:
            continue
        head = _arrowhead(leg[-1], leg[-2], s.arrow)
        back = math.hypot(leg[-1][0] - leg[-2][0], leg[-1][1] - leg[-2][1]) or 1.0
        # The line stops inside the arrowhead so its square end does not poke out.
        k = min(1.0, 0.6 * s.arrow / back)
        end = (
            leg[-1][0] - k * (leg[-1][0] - leg[-2][0]),
            leg[-1][1] - k * (leg[-1][1] - leg[-2][1]),
        )
        body = [*leg[:-1], end]
        draw.line(body, fill=HALO, width=s.line + 2 * s.halo, joint="curve")
        draw.polygon(head, fill=HALO, outline=HALO, width=2 * s.halo)
        draw.line(body, fill=PATH_COLOUR, width=s.line, joint="curve")
        draw.polygon(head, fill=PATH_COLOUR)
    for marker in plan.markers:
        outer = _ring_rect(marker.centre, s.ring + s.halo)
        draw.ellipse(outer, outline=HALO, width=s.ring_width + 2 * s.halo)
        draw.ellipse(_ring_rect(marker.centre, s.ring), outline=marker.colour, width=s.ring_width)
        dot = max(2.0, s.ring_width * 0.8)
        draw.ellipse(_ring_rect(marker.centre, dot), fill=marker.colour, outline=HALO)

    panels = Image.new("RGBA", plan.size, (0, 0, 0, 0))
    pd = ImageDraw.Draw(panels)
    pd.rectangle(plan.footer_rect, fill=(0, 0, 0, PANEL_ALPHA))
    if plan.banner_rect is not None:
        pd.rectangle(plan.banner_rect, fill=(*BANNER_COLOUR, BANNER_ALPHA))
    pd.rounded_rectangle(plan.legend_rect, radius=s.pad, fill=(0, 0, 0, PANEL_ALPHA))
    for mark in plan.findings:
        pd.rectangle(_grow(mark.label.rect, s.pad / 3), fill=(0, 0, 0, PANEL_ALPHA))
    canvas = Image.alpha_composite(canvas, panels)
    draw = ImageDraw.Draw(canvas)

    stroke = max(1, round(plan.sizes.halo * 1.4))
    for mark in plan.findings:
        _draw_label(draw, mark.label, 0)
    for marker in plan.markers:
        _draw_label(draw, marker.label, stroke)
    for entry in plan.legend:
        _draw_swatch(draw, entry, s)
        _draw_label(draw, entry.label, 0)
    _draw_label(draw, plan.footer, 0)
    if plan.banner is not None:
        _draw_label(draw, plan.banner, 0)
    return canvas.convert("RGB")


def _draw_swatch(draw: ImageDraw.ImageDraw, entry: LegendEntry, s: Sizes) -> None:
    """The entry's symbol left of its text, one size for every entry."""
    size = entry.label.font.size if isinstance(entry.label.font, ImageFont.FreeTypeFont) else 12
    x1 = entry.label.rect[0] - s.pad
    cy = (entry.label.rect[1] + entry.label.rect[3]) / 2
    x0 = x1 - 1.6 * size
    cx = (x0 + x1) / 2
    if entry.kind == "step":
        ring = _ring_rect((cx, cy), size * 0.42)
        draw.ellipse(_grow(ring, s.halo), outline=HALO, width=s.ring_width + 2 * s.halo)
        draw.ellipse(ring, outline=entry.colour, width=s.ring_width)
    elif entry.kind == "path":
        draw.line([(x0, cy), (x1 - size * 0.5, cy)], fill=entry.colour, width=s.line)
        draw.polygon(_arrowhead((x1, cy), (x0, cy), size * 0.8), fill=entry.colour)
    elif entry.kind == "box":
        draw.rectangle(
            (x0, cy - size * 0.4, x1, cy + size * 0.4), outline=entry.colour, width=s.box
        )
    else:
        draw.line([(x0, cy), (x1, cy)], fill=entry.colour, width=max(1, s.line // 2))


def overlay(
    image: npt.NDArray[np.float32],
    result: InferenceResult,
    reference: Sequence[tuple[float, float]] = (),
) -> Image.Image:
    """The figure of ``result`` on its film (module docstring); ``reference`` optionally
    draws a reader's scanpath (grey) for comparison. Coordinates are source pixels."""
    rows, columns = image.shape
    return render(image, layout((rows, columns), result, reference))
