"""The one sample type every loader and the synthetic generator produce.

A :class:`GazeSample` is one radiologist reading one chest radiograph: the display-ready
image, where the reader looked and when (:class:`GazeFixation`), what was dictated and when
(:class:`TranscriptSentence`), the finding labels (keys of :data:`model.findings.FINDING_KEYS`),
boxes and (synthetic only) masks, an ABCDEF-structured report and VQA pairs.

Coordinates are image-pixel SCOORD: ``(0.0, 0.0)`` is the top-left corner of the top-left
pixel, so the centre of pixel ``(row r, column c)`` is ``(x=c + 0.5, y=r + 0.5)``. Fixations
that fell outside the image are kept (their ``x``/``y`` lie outside ``[0, W] x [0, H]``);
use :meth:`GazeSample.on_image_fixations` to drop them.

Times are milliseconds from the start of the reading (image shown).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from model.abcdef import STEPS, Step
from model.findings import FINDING_KEYS

__all__ = [
    "VIEWS",
    "GazeFixation",
    "GazeSample",
    "LabeledBox",
    "Report",
    "TranscriptSentence",
]

#: Views a sample can have.
VIEWS: tuple[str, ...] = ("PA", "AP", "LATERAL")


@dataclass(frozen=True)
class GazeFixation:
    """One fixation, in image pixel SCOORD coordinates, with its time and dwell."""

    x: float
    y: float
    start_ms: float
    duration_ms: float
    #: Chest ImaGenome region name (model.abcdef.REGIONS) the fixation lands in, if known.
    region: str | None = None
    #: ABCDEF step the reader was on during this fixation, if known.
    step: Step | None = None

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms


@dataclass(frozen=True)
class TranscriptSentence:
    """One dictated sentence with its start and end time."""

    text: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class LabeledBox:
    """An axis-aligned box around a finding, image pixel SCOORD coordinates, x0<x1, y0<y1."""

    key: str
    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not (self.x0 <= self.x1 and self.y0 <= self.y1):
            raise ValueError(f"box for {self.key!r} is not ordered: x0<=x1 and y0<=y1 required")

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1


@dataclass(frozen=True)
class Report:
    """An ABCDEF-structured report: one paragraph per step plus an impression."""

    sections: Mapping[Step, str]
    impression: str

    def text(self) -> str:
        """The report as plain text, one ``Title: text`` line per step, then the impression."""
        lines = [f"{s.title}: {self.sections[s]}" for s in STEPS if self.sections.get(s)]
        lines.append(f"Impression: {self.impression}")
        return "\n".join(lines)


@dataclass(frozen=True)
class GazeSample:
    """One reading of one chest radiograph by one reader."""

    sample_id: str
    #: float32, H x W, values in [0, 1], display-ready (after modality LUT and VOI window,
    #: MONOCHROME2 sense: 1.0 is white / dense).
    image: npt.NDArray[np.float32]
    view: str
    reader_id: str
    pixels_per_degree: float | None
    fixations: tuple[GazeFixation, ...]
    sentences: tuple[TranscriptSentence, ...]
    #: Finding key (model.findings.FINDING_KEYS) -> present.
    labels: Mapping[str, bool]
    boxes: tuple[LabeledBox, ...]
    #: Finding key -> H x W bool mask (synthetic data only).
    masks: Mapping[str, npt.NDArray[np.bool_]] | None = None
    report: Report | None = None
    vqa: tuple[tuple[str, str], ...] = ()
    #: Free-form provenance (dataset name, source paths, study UIDs); never patient IDs.
    meta: Mapping[str, str] = field(default_factory=dict)
    #: Anatomical boxes, ``key`` = Chest ImaGenome region name (model.abcdef.REGIONS), when
    #: known (synthetic data, EGD-CXR ``bounding_boxes.csv``).
    anatomy: tuple[LabeledBox, ...] = ()

    def __post_init__(self) -> None:
        if self.image.ndim != 2:
            raise ValueError(f"sample {self.sample_id}: image must be 2-D, got {self.image.ndim}-D")
        if self.view not in VIEWS:
            raise ValueError(f"sample {self.sample_id}: view {self.view!r} not in {VIEWS}")
        unknown = set(self.labels) - set(FINDING_KEYS)
        if unknown:
            raise ValueError(f"sample {self.sample_id}: unknown finding keys {sorted(unknown)}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def on_image_fixations(self) -> tuple[GazeFixation, ...]:
        """Fixations whose point lies inside the image."""
        h, w = self.height, self.width
        return tuple(f for f in self.fixations if 0.0 <= f.x < w and 0.0 <= f.y < h)
