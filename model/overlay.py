"""The trajectory overlay PNG of a result, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from model.result import InferenceResult

PALETTE: tuple[tuple[int, int, int], ...] = (
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


def overlay(
    image: npt.NDArray[np.float32],
    result: InferenceResult,
    reference: Sequence[tuple[float, float]] = (),
    max_side: int = 768,
    min_side: int = 0,
) -> Image.Image:
    """The image with numbered fixations, the inspection path and present-finding boxes.

    ``reference`` optionally draws a reader's scanpath (grey) for comparison. Drawn on a copy
    scaled to at most ``max_side`` pixels (at least ``min_side``); coordinates are scaled
    from source pixels.
    """
    rows, columns = image.shape
    scale = min(1.0, max_side / max(rows, columns))
    if min_side and max(rows, columns) * scale < min_side:
        scale = min_side / max(rows, columns)
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    grey = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L")
    canvas = grey.resize(size, Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    if reference:
        points = [(x * scale, y * scale) for x, y in reference]
        draw.line(points, fill=(160, 160, 160), width=1)
    points = [(fx.x * scale, fx.y * scale) for fx in result.trajectory]
    if len(points) > 1:
        draw.line(points, fill=(0, 200, 255), width=2)
    radius = max(3.0, 6.0 * scale * max(rows, columns) / 512)
    for number, (x, y) in enumerate(points, start=1):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(255, 255, 0))
        draw.text((x + radius, y - radius), str(number), fill=(255, 255, 0))
    for i, finding in enumerate(result.findings):
        if finding.box is None or not finding.present:
            continue
        colour = PALETTE[i % len(PALETTE)]
        b = finding.box
        draw.rectangle((b.x0 * scale, b.y0 * scale, b.x1 * scale, b.y1 * scale), outline=colour)
        draw.text(
            (b.x0 * scale + 2, b.y0 * scale + 2),
            f"{finding.code.meaning} {finding.probability:.2f}",
            fill=colour,
        )
    return canvas
