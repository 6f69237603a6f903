"""Defined terms of the result objects: which objects exist, their series and GSPS layers."""

from __future__ import annotations

from enum import StrEnum


class ObjectKindValues(StrEnum):
    """The kinds of object written for one analysed image.

    The value enters the derivation of every UID (see ``sr_templates.uids``), so it must
    never change once objects have been sent to a PACS.
    """

    FINDINGS_SR = "findings-sr"
    TRAJECTORY_SR = "trajectory-sr"
    SEGMENTATION = "seg-binary"
    ATTENTION_MAP = "pm-attention"
    GSPS = "gsps"

    @property
    def series_number(self) -> int:
        """High, fixed numbers so AI series sort together after the acquired ones."""
        return _SERIES_NUMBERS[self]

    @property
    def series_description(self) -> str:
        """A SeriesDescription (LO, at most 64 characters) that reads as AI output."""
        return _SERIES_DESCRIPTIONS[self]

    @property
    def file_stem(self) -> str:
        return f"{_SERIES_NUMBERS[self]}-{self.value}"


_SERIES_NUMBERS: dict[ObjectKindValues, int] = {
    ObjectKindValues.FINDINGS_SR: 9901,
    ObjectKindValues.TRAJECTORY_SR: 9902,
    ObjectKindValues.SEGMENTATION: 9903,
    ObjectKindValues.ATTENTION_MAP: 9904,
    ObjectKindValues.GSPS: 9905,
}

_SERIES_DESCRIPTIONS: dict[ObjectKindValues, str] = {
    ObjectKindValues.FINDINGS_SR: "AI GazeX findings SR (research use only)",
    ObjectKindValues.TRAJECTORY_SR: "AI GazeX inspection trajectory SR (research use only)",
    ObjectKindValues.SEGMENTATION: "AI GazeX finding segmentation (research use only)",
    ObjectKindValues.ATTENTION_MAP: "AI GazeX attention map (research use only)",
    ObjectKindValues.GSPS: "AI GazeX overlay GSPS (research use only)",
}


class GraphicLayerValues(StrEnum):
    """GSPS graphic layer names: uppercase CS, at most 16 characters."""

    FINDINGS = "GAZEX FINDINGS"
    FIXATIONS = "GAZEX FIXATIONS"
    PATH = "GAZEX PATH"
    NOTICE = "GAZEX NOTICE"

    @property
    def order(self) -> int:
        """Drawing order: the notice on top, the boxes over the path."""
        return _LAYER_ORDER[self]

    @property
    def description(self) -> str:
        return _LAYER_DESCRIPTIONS[self]

    @property
    def rgb(self) -> tuple[int, int, int]:
        """Display colour of the layer (sRGB)."""
        return _LAYER_RGB[self]


_LAYER_ORDER: dict[GraphicLayerValues, int] = {
    GraphicLayerValues.PATH: 1,
    GraphicLayerValues.FIXATIONS: 2,
    GraphicLayerValues.FINDINGS: 3,
    GraphicLayerValues.NOTICE: 4,
}

_LAYER_DESCRIPTIONS: dict[GraphicLayerValues, str] = {
    GraphicLayerValues.FINDINGS: "AI finding boxes with labels and probabilities",
    GraphicLayerValues.FIXATIONS: "AI inspection fixations, numbered in reading order",
    GraphicLayerValues.PATH: "AI inspection path with arrowheads",
    GraphicLayerValues.NOTICE: "Research use only notice",
}

_LAYER_RGB: dict[GraphicLayerValues, tuple[int, int, int]] = {
    GraphicLayerValues.FINDINGS: (255, 200, 0),
    GraphicLayerValues.FIXATIONS: (0, 220, 255),
    GraphicLayerValues.PATH: (0, 255, 120),
    GraphicLayerValues.NOTICE: (255, 255, 255),
}


class ReviewedObjectKindValues(StrEnum):
    """The kinds of object written when a person reviews and signs a result.

    Apart from ``ObjectKindValues`` on purpose: those are what ``build_all`` and the workers
    write for every analysed image, these only exist after a review. The value enters the
    derivation of the UIDs like an ``ObjectKindValues`` value (see
    ``sr_templates.review``), so it must never change.
    """

    VERIFIED_FINDINGS_SR = "findings-sr-verified"

    @property
    def series_number(self) -> int:
        """After the AI series (9901-9905), so the signed review sorts last."""
        return _REVIEWED_SERIES_NUMBERS[self]

    @property
    def series_description(self) -> str:
        """A SeriesDescription (LO, at most 64 characters) saying a person reviewed it."""
        return _REVIEWED_SERIES_DESCRIPTIONS[self]

    @property
    def file_stem(self) -> str:
        return f"{_REVIEWED_SERIES_NUMBERS[self]}-{self.value}"


_REVIEWED_SERIES_NUMBERS: dict[ReviewedObjectKindValues, int] = {
    ReviewedObjectKindValues.VERIFIED_FINDINGS_SR: 9906,
}

_REVIEWED_SERIES_DESCRIPTIONS: dict[ReviewedObjectKindValues, str] = {
    ReviewedObjectKindValues.VERIFIED_FINDINGS_SR: (
        "GazeX findings reviewed by a person (AI part: research use only)"
    ),
}
