"""The inference API the workers use: DICOM datasets in, :class:`InferenceResult` out.

>>> predictor = Predictor.from_checkpoint()          # the shipped checkpoint, loaded once
>>> result = predictor.predict(ds)                   # one pydicom Dataset -> one result
>>> results = predictor.predict([ds1, ds2])          # several, batched -> a list

Every coordinate in the result is in the analysed image's source pixels (SCOORD: column, row,
0.0 at the top-left corner of the top-left pixel); see :mod:`model.geometry` for the mapping.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np
import numpy.typing as npt
import torch
from pydicom.dataset import Dataset

from model.abcdef import REGION_STEP, STEPS, Step, inspected_steps
from model.architecture import WEIGHTS_FILE, GazeXModel, configure_threads, select_device
from model.findings import FINDINGS_BY_KEY, FindingType
from model.inference import InferenceEngine, RawOutput
from model.pixels import display_image
from model.prompt import parse_report
from model.result import (
    Answer,
    Box,
    Finding,
    Fixation,
    InferenceResult,
    ModelInfo,
    Report,
    ReportSection,
    SourceImage,
)

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default"
#: Gap assumed before the first fixation when the timing head is absent (no-gaze models).
_NOT_REPORTED = "Not described by the model."


def visited_steps(steps: Sequence[Step], regions: Sequence[str]) -> set[Step]:
    """ABCDEF steps a trajectory inspected: the steps of its fixations, the default steps of
    the regions they landed in, and F when it visited a device-check region
    (:func:`model.abcdef.inspected_steps`)."""
    visited: set[Step] = set()
    for step in steps:
        visited |= inspected_steps(step, None)
    for region in regions:
        visited |= inspected_steps(None, region)
    return visited


def default_checkpoint() -> Path:
    return DEFAULT_CHECKPOINT


def checkpoint_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    with (directory / WEIGHTS_FILE).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_image(ds: Dataset, rows: int, columns: int) -> SourceImage:
    return SourceImage(
        StudyInstanceUID=str(ds.get("StudyInstanceUID", "")),
        SeriesInstanceUID=str(ds.get("SeriesInstanceUID", "")),
        SOPInstanceUID=str(ds.get("SOPInstanceUID", "")),
        SOPClassUID=str(ds.get("SOPClassUID", "")),
        Rows=rows,
        Columns=columns,
    )


class Predictor:
    """A checkpoint loaded once; ``predict`` is thread-compatible but not re-entrant."""

    def __init__(self, model: GazeXModel, checkpoint: Path, device: torch.device) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        self.engine = InferenceEngine(model, device)
        settings = model.settings
        self.info = ModelInfo(
            name=settings.name,
            version=settings.version,
            checkpoint_sha256=checkpoint_sha256(checkpoint),
            trained_on_synthetic_data=settings.trained_on_synthetic_data,
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | None = None, device: str | torch.device | None = None
    ) -> Predictor:
        """Load a checkpoint folder (the shipped default when ``path`` is None)."""
        directory = Path(path) if path is not None else DEFAULT_CHECKPOINT
        dev = select_device(device)
        configure_threads(dev)
        model = GazeXModel.load(directory, device=dev)
        logger.info("loaded checkpoint %s on %s", directory.name, dev)
        return cls(model, directory, dev)

    @overload
    def predict(self, datasets: Dataset, questions: Sequence[str] = ()) -> InferenceResult: ...

    @overload
    def predict(
        self, datasets: Sequence[Dataset], questions: Sequence[str] = ()
    ) -> list[InferenceResult]: ...

    def predict(
        self, datasets: Dataset | Sequence[Dataset], questions: Sequence[str] = ()
    ) -> InferenceResult | list[InferenceResult]:
        """Analyse one dataset (-> a result) or several, batched (-> a list, same order)."""
        if isinstance(datasets, Dataset):
            return self.predict_images([datasets], [display_image(datasets)], questions)[0]
        items = list(datasets)
        return self.predict_images(items, [display_image(ds) for ds in items], questions)

    def predict_images(
        self,
        datasets: Sequence[Dataset],
        images: Sequence[npt.NDArray[np.float32]],
        questions: Sequence[str] = (),
    ) -> list[InferenceResult]:
        """Like :meth:`predict` with display images already decoded (``images[i]`` of ``ds[i]``)."""
        raws = self.engine.run(images, questions=questions)
        return [
            self.to_result(raw, source_image(ds, raw.grid.Rows, raw.grid.Columns), questions)
            for ds, raw in zip(datasets, raws, strict=True)
        ]

    def to_result(
        self, raw: RawOutput, source: SourceImage, questions: Sequence[str] = ()
    ) -> InferenceResult:
        return build_result(raw, source, self.model, self.info, questions)


def build_result(
    raw: RawOutput,
    source: SourceImage,
    model: GazeXModel,
    info: ModelInfo,
    questions: Sequence[str] = (),
) -> InferenceResult:
    """Map token-grid outputs to source pixels and fill the result contract."""
    settings = model.settings
    grid = raw.grid
    trajectory: list[Fixation] = []
    clock = 0.0
    for j, index in enumerate(raw.patch_indices):
        x, y = grid.patch_centre(index)
        region = (
            settings.regions[raw.regions[j]] if 0 <= raw.regions[j] < len(settings.regions) else ""
        )
        step = (
            STEPS[raw.steps[j]]
            if 0 <= raw.steps[j] < len(STEPS)
            else REGION_STEP.get(region, Step.EXTERNAL)
        )
        clock += raw.gap_ms[j]
        dwell = max(raw.dwell_ms[j], 1.0)
        trajectory.append(
            Fixation(
                x=x,
                y=y,
                start_ms=round(clock, 1),
                duration_ms=round(dwell, 1),
                region=region,
                step=step,
                patch_index=int(index),
            )
        )
        clock += dwell
    sections, impression = parse_report(raw.report)
    thresholds = settings.thresholds or (0.5,) * len(settings.finding_keys)
    findings: list[Finding] = []
    for i, key in enumerate(settings.finding_keys):
        ftype = FINDINGS_BY_KEY[key]
        probability = float(np.clip(raw.probabilities[i], 0.0, 1.0))
        present = probability >= thresholds[i]
        box: Box | None = None
        mask: npt.NDArray[np.bool_] | None = None
        support: tuple[int, ...]
        if present:
            x0, y0, x1, y1 = grid.denormalise_box(*(float(v) for v in raw.boxes[i]))
            box = Box(x0, y0, x1, y1)
            token_mask = raw.mask_probs[i] >= 0.5
            if token_mask.any():
                mask = grid.upsample(token_mask.astype(np.float32)) >= 0.5
            support = tuple(
                j
                for j, fx in enumerate(trajectory)
                if box.x0 <= fx.x <= box.x1 and box.y0 <= fx.y <= box.y1
            )
        else:
            support = tuple(j for j, fx in enumerate(trajectory) if fx.step is ftype.step)
        findings.append(
            Finding(
                key=key,
                code=ftype.code,
                probability=probability,
                present=bool(present),
                step=ftype.step,
                sentence=finding_sentence(ftype, bool(present), sections.get(ftype.step, "")),
                box=box,
                mask=mask,
                fixation_indices=support,
                region=_support_region(trajectory, support, box),
            )
        )
    report = Report(
        sections=tuple(ReportSection(s, sections.get(s) or _NOT_REPORTED) for s in STEPS),
        impression=impression or _impression(findings),
    )
    visited = visited_steps([fx.step for fx in trajectory], [fx.region for fx in trajectory])
    coverage = tuple((s, s in visited) for s in STEPS)
    attention = _attention(raw)
    answers = tuple(
        Answer(question=q, answer=a) for q, a in zip(questions, raw.answers, strict=False)
    )
    return InferenceResult(
        source=source,
        model=info,
        findings=tuple(findings),
        trajectory=tuple(trajectory),
        report=report,
        coverage=coverage,
        attention=attention,
        answers=answers,
    )


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def finding_sentence(ftype: FindingType, present: bool, section: str) -> str:
    """The report sentence that mentions the finding, else a plain statement of the result."""
    words = {ftype.display.lower(), ftype.key.replace("_", " ")}
    for sentence in _sentences(section):
        lowered = sentence.lower()
        if any(w in lowered for w in words):
            return sentence
    return f"{ftype.display} present." if present else f"No {ftype.display.lower()}."


def _support_region(
    trajectory: Sequence[Fixation], support: Sequence[int], box: Box | None
) -> str | None:
    regions = [trajectory[j].region for j in support if trajectory[j].region]
    if regions:
        return Counter(regions).most_common(1)[0][0]
    if box is not None and trajectory:
        cx, cy = box.centre
        nearest = min(trajectory, key=lambda fx: (fx.x - cx) ** 2 + (fx.y - cy) ** 2)
        return nearest.region or None
    return None


def _impression(findings: Sequence[Finding]) -> str:
    present = [f.code.meaning.lower() for f in findings if f.present]
    if not present:
        return "No abnormality detected by the model."
    return "Model findings: " + ", ".join(present) + "."


def _attention(raw: RawOutput) -> npt.NDArray[np.float32]:
    """Mean gaze distribution over the K steps (or the finding masks), scaled to [0, 1]."""
    grid = raw.grid
    values = raw.gaze_probs.mean(axis=0) if raw.gaze_probs.size else raw.mask_probs.max(axis=0)
    values = np.asarray(values, dtype=np.float32).reshape(grid.grid_h, grid.grid_w)
    peak = float(values.max())
    return np.clip(values / peak if peak > 0 else values, 0.0, 1.0).astype(np.float32)
