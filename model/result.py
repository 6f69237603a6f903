"""What the model hands to ``sr_templates`` and ``workers``: the inference result contract.

Coordinates are in source pixels as DICOM SCOORD has them: (column, row), with 0.0 at the
top-left corner of the top-left pixel, so the centre of pixel (r, c) is (c + 0.5, r + 0.5)
and every point lies within 0..Columns, 0..Rows.

The JSON form (``to_json`` / ``from_json``) is this contract serialised; ``gazex render``
and ``gazex predict --json`` read and write it. Masks travel as row-major run lengths
starting with a run of zeros; the attention map as a nested list of floats.

``InferenceResult.domain`` is the domain gate's verdict (:mod:`model.domain`): whether the
film is like the films the checkpoint was trained on. When it is not
(:attr:`InferenceResult.out_of_domain`), every consumer leads with
:meth:`DomainCheck.notice` and does not report the findings as if the model knew. A result
without it (older JSON, a checkpoint without a gate) was not checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from model.abcdef import STEPS, Step
from model.findings import Code

SCHEMA = "gazex.result/1"


class ResultError(ValueError):
    """A result that breaks the contract (bad coordinates, probabilities, shapes, JSON)."""


@dataclass(frozen=True)
class SourceImage:
    """The image that was analysed."""

    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    SOPClassUID: str
    Rows: int
    Columns: int

    def __post_init__(self) -> None:
        if self.Rows <= 0 or self.Columns <= 0:
            raise ResultError(f"source image size must be positive, got {self.Rows}x{self.Columns}")


@dataclass(frozen=True)
class ModelInfo:
    """Which model produced the result."""

    name: str
    version: str
    checkpoint_sha256: str
    trained_on_synthetic_data: bool
    manufacturer: str = "GazeX Node project"


@dataclass(frozen=True)
class DomainCheck:
    """The domain gate's verdict on the analysed film (:mod:`model.domain`).

    ``score`` is the film's distance from the training films (the checkpoint's gate says how it
    is measured: ``method``); above ``threshold``, set from the training films alone, the film
    is out of domain.
    """

    score: float
    threshold: float
    in_domain: bool
    method: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ResultError(f"domain threshold must be positive, got {self.threshold}")
        if math.isnan(self.score) or self.score < 0:
            raise ResultError(f"domain score must be a non-negative number, got {self.score}")
        if self.in_domain != (self.score <= self.threshold):
            raise ResultError(
                f"domain verdict in_domain={self.in_domain} contradicts score {self.score} "
                f"and threshold {self.threshold}"
            )

    def notice(
        self, subject: str = "this film", training: str = "the films the model was trained on"
    ) -> str | None:
        """The plain-words out-of-domain notice (one line), or None when in domain."""
        if self.in_domain:
            return None
        return (
            f"OUT OF DOMAIN: {subject} is unlike {training} (domain score {self.score:.1f} > "
            f"threshold {self.threshold:.1f}); the model's findings, report and trajectory "
            "for it are not to be trusted."
        )


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in SCOORD source pixel coordinates (x = column, y = row)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not (self.x0 < self.x1 and self.y0 < self.y1):
            raise ResultError(f"box corners out of order: {self}")

    def check_within(self, source: SourceImage) -> None:
        if self.x0 < 0 or self.y0 < 0 or self.x1 > source.Columns or self.y1 > source.Rows:
            raise ResultError(f"box {self} outside the {source.Columns}x{source.Rows} source image")

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)


@dataclass(frozen=True)
class Fixation:
    """One fixation of the inspection trajectory, in temporal order."""

    x: float
    y: float
    start_ms: float
    duration_ms: float
    region: str
    step: Step
    patch_index: int


@dataclass(frozen=True)
class Finding:
    """One label of the finding head, grounded when present."""

    key: str
    code: Code
    probability: float
    present: bool
    step: Step
    sentence: str
    box: Box | None = None
    #: Boolean mask of shape (Rows, Columns) of the source image, when the model has one.
    mask: npt.NDArray[np.bool_] | None = field(default=None, compare=False)
    #: Indices into ``InferenceResult.trajectory`` of the fixations that support it.
    fixation_indices: tuple[int, ...] = ()
    #: Anatomical site (Chest ImaGenome region name), when known.
    region: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ResultError(f"probability of {self.key} not in [0, 1]: {self.probability}")


@dataclass(frozen=True)
class ReportSection:
    step: Step
    text: str


@dataclass(frozen=True)
class Report:
    """The draft report: one section per ABCDEF step, in order, and an impression."""

    sections: tuple[ReportSection, ...]
    impression: str

    def __post_init__(self) -> None:
        if tuple(s.step for s in self.sections) != STEPS:
            raise ResultError("report needs exactly one section per ABCDEF step, in order")

    def text(self, step: Step) -> str:
        return next(s.text for s in self.sections if s.step is step)


@dataclass(frozen=True)
class Answer:
    """A visual question and the model's answer."""

    question: str
    answer: str


@dataclass(frozen=True)
class InferenceResult:
    source: SourceImage
    model: ModelInfo
    findings: tuple[Finding, ...]
    trajectory: tuple[Fixation, ...]
    report: Report
    #: For each ABCDEF step, whether the trajectory visited it; a skipped step is reported.
    coverage: tuple[tuple[Step, bool], ...]
    #: Optional attention map in [0, 1] covering the whole image (any resolution).
    attention: npt.NDArray[np.float32] | None = field(default=None, compare=False)
    answers: tuple[Answer, ...] = ()
    #: The domain gate's verdict; None: not checked (a checkpoint without a gate, older JSON).
    domain: DomainCheck | None = None

    def __post_init__(self) -> None:
        for finding in self.findings:
            if finding.box is not None:
                finding.box.check_within(self.source)
            if finding.mask is not None and finding.mask.shape != (
                self.source.Rows,
                self.source.Columns,
            ):
                raise ResultError(f"mask of {finding.key} is not the source image size")
            for index in finding.fixation_indices:
                if not 0 <= index < len(self.trajectory):
                    raise ResultError(f"{finding.key} cites fixation {index}, which is absent")
        for fixation in self.trajectory:
            if not (0 <= fixation.x <= self.source.Columns and 0 <= fixation.y <= self.source.Rows):
                raise ResultError(f"fixation at ({fixation.x}, {fixation.y}) outside the image")
        if tuple(step for step, _ in self.coverage) != STEPS:
            raise ResultError("coverage needs exactly one entry per ABCDEF step, in order")
        if self.attention is not None:
            if self.attention.ndim != 2:
                raise ResultError("attention map must be two-dimensional")
            if float(self.attention.min()) < 0.0 or float(self.attention.max()) > 1.0:
                raise ResultError("attention map values must lie in [0, 1]")

    @property
    def out_of_domain(self) -> bool:
        """True when the domain gate found the film unlike the training films."""
        return self.domain is not None and not self.domain.in_domain

    def domain_notice(self, subject: str = "this film") -> str | None:
        """:meth:`DomainCheck.notice` for this result (naming synthetic training films when the
        model was trained on them); None when in domain or not checked."""
        if self.domain is None:
            return None
        training = (
            "the synthetic films the model was trained on"
            if self.model.trained_on_synthetic_data
            else "the films the model was trained on"
        )
        return self.domain.notice(subject, training)

    @property
    def skipped_steps(self) -> tuple[Step, ...]:
        return tuple(step for step, inspected in self.coverage if not inspected)

    # -- JSON -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "source": vars(self.source).copy(),
            "model": vars(self.model).copy(),
            "findings": [_finding_to_dict(f) for f in self.findings],
            "trajectory": [{**vars(fx), "step": fx.step.value} for fx in self.trajectory],
            "report": {
                "sections": [{"step": s.step.value, "text": s.text} for s in self.report.sections],
                "impression": self.report.impression,
            },
            "coverage": {step.value: inspected for step, inspected in self.coverage},
            "attention": None
            if self.attention is None
            else np.round(self.attention.astype(float), 4).tolist(),
            "answers": [vars(a).copy() for a in self.answers],
            "domain": None if self.domain is None else vars(self.domain).copy(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceResult:
        if data.get("schema") != SCHEMA:
            raise ResultError(f"not a {SCHEMA} document (schema: {data.get('schema')!r})")
        try:
            source = SourceImage(**data["source"])
            return cls(
                source=source,
                model=ModelInfo(**data["model"]),
                findings=tuple(_finding_from_dict(f, source) for f in data["findings"]),
                trajectory=tuple(
                    Fixation(**{**fx, "step": Step(fx["step"])}) for fx in data["trajectory"]
                ),
                report=Report(
                    sections=tuple(
                        ReportSection(Step(s["step"]), s["text"])
                        for s in data["report"]["sections"]
                    ),
                    impression=data["report"]["impression"],
                ),
                coverage=tuple((Step(k), bool(v)) for k, v in data["coverage"].items()),
                attention=None
                if data.get("attention") is None
                else np.asarray(data["attention"], dtype=np.float32),
                answers=tuple(Answer(**a) for a in data.get("answers", ())),
                domain=_domain_from_dict(data.get("domain")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ResultError):
                raise
            raise ResultError(f"malformed result document: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> InferenceResult:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultError(f"result is not JSON: {exc}") from exc
        return cls.from_dict(data)


def finding_label(finding: Finding) -> str:
    """A finding's short label, its name and probability (:func:`percent`): "Nodule 87 %",
    the same on the SR's boxes, in OHIF's measurement panel, in the GSPS and on the
    overlay PNG."""
    return f"{finding.code.meaning} {percent(finding.probability)}"


def percent(probability: float) -> str:
    """A probability in whole percent ("87 %"), but never "0 %" or "100 %" for one strictly
    between 0 and 1, which a reader takes for certainty: one decimal there, kept within
    0.1 % and 99.9 % ("99.6 %")."""
    value = 100.0 * probability
    if 0.0 < probability < 1.0 and not 0.5 <= value < 99.5:
        return f"{min(max(value, 0.1), 99.9):.1f} %"
    return f"{value:.0f} %"


def mask_to_rle(mask: npt.NDArray[np.bool_]) -> list[int]:
    """Row-major run lengths, starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, dtype=np.uint8).ravel()
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs.insert(0, 0)
    return [int(r) for r in runs]


def rle_to_mask(runs: Sequence[int], rows: int, columns: int) -> npt.NDArray[np.bool_]:
    if sum(runs) != rows * columns:
        raise ResultError(f"mask runs cover {sum(runs)} pixels, expected {rows * columns}")
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, np.asarray(runs, dtype=np.int64)).reshape(rows, columns)


def _domain_from_dict(data: dict[str, Any] | None) -> DomainCheck | None:
    if data is None:
        return None
    return DomainCheck(
        score=float(data["score"]),
        threshold=float(data["threshold"]),
        in_domain=bool(data["in_domain"]),
        method=str(data["method"]),
    )


def _finding_to_dict(finding: Finding) -> dict[str, Any]:
    return {
        "key": finding.key,
        "code": vars(finding.code).copy(),
        "probability": finding.probability,
        "present": finding.present,
        "step": finding.step.value,
        "sentence": finding.sentence,
        "box": None if finding.box is None else vars(finding.box).copy(),
        "mask_rle": None if finding.mask is None else mask_to_rle(finding.mask),
        "fixation_indices": list(finding.fixation_indices),
        "region": finding.region,
    }


def _finding_from_dict(data: dict[str, Any], source: SourceImage) -> Finding:
    mask_rle = data.get("mask_rle")
    return Finding(
        key=data["key"],
        code=Code(**data["code"]),
        probability=float(data["probability"]),
        present=bool(data["present"]),
        step=Step(data["step"]),
        sentence=data["sentence"],
        box=None if data.get("box") is None else Box(**data["box"]),
        mask=None if mask_rle is None else rle_to_mask(mask_rle, source.Rows, source.Columns),
        fixation_indices=tuple(data.get("fixation_indices", ())),
        region=data.get("region"),
    )
