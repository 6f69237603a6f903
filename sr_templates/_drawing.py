"""Drawing helpers of the GSPS: graphics and text placed in source pixel coordinates."""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
import numpy.typing as npt


class Canvas:
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


def arrowhead(
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
