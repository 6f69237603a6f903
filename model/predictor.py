"""The inference API the workers use: DICOM datasets in, :class:`InferenceResult` out.

>>> predictor = Predictor.from_checkpoint()          # the shipped checkpoint, loaded once
>>> result = predictor.predict(ds)                   # one pydicom Dataset -> one result
>>> results = predictor.predict([ds1, ds2])          # several, batched -> a list

Every coordinate in the result is in the analysed image's source pixels (SCOORD: column, row,
0.0 at the top-left corner of the top-left pixel); see :mod:`model.geometry` for the mapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
from model.architecture import (
    SETTINGS_FILE,
    WEIGHTS_FILE,
    GazeXModel,
    configure_threads,
    select_device,
)
from model.calibration import ProbabilityCalibration, load_calibration
from model.consistency import agree_report, claims, decided_answer, own_sentences, sentences
from model.domain import DomainGate, load_gate
from model.findings import FINDINGS_BY_KEY, FindingType
from model.geometry import PatchGrid
from model.inference import InferenceEngine, RawOutput
from model.pixels import display_image
from model.prompt import parse_report
from model.result import (
    Answer,
    Box,
    DomainCheck,
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
#: Token-mask probability at or above which a source pixel of a present finding's box is in
#: its mask, for checkpoints without the mask decoder. Chosen on the 3 Dec checkpoint's 205
#: threshold readings (training films held out of the gradient updates): the best mean IoU
#: against the generator's pixel masks of 0, 0.1, 0.2, 0.25, ..., 0.4 and 0.5 (0.376; 0.5
#: gave 0.301): token masks learn from boxes, so their probabilities are box coverage and
#: 0.5 cuts the lesion's edge off.
MASK_THRESHOLD = 0.25
#: The same for the mask decoder's cell probabilities (``GazeXSettings.mask_decoder``),
#: trained as each cell's share of the lesion: 0.5, the usual cut (0.3-0.5 within 0.011 of
#: each other on the shipped checkpoint's threshold readings; model card, "Masks").
CELL_MASK_THRESHOLD = 0.5
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


def nvml_available() -> bool:
    """Whether nvidia-ml-py (``pynvml``) is installed, without importing it."""
    import importlib.util

    return importlib.util.find_spec("pynvml") is not None


def default_checkpoint() -> Path:
    return DEFAULT_CHECKPOINT


def checkpoint_sha256(directory: Path) -> str:
    """The checkpoint's identity: sha256 of the weights (``model.safetensors``) followed by
    the domain gate file (:mod:`model.domain`) and then the probability calibration file
    (:mod:`model.calibration`) that ``gazex.json`` names, each when it names one. Without
    either it is the weights' own sha256; ``gazex.json`` itself is not covered."""
    files = [directory / WEIGHTS_FILE]
    settings = directory / SETTINGS_FILE
    named = json.loads(settings.read_text()) if settings.is_file() else {}
    for key in ("domain_gate", "probability_calibration"):
        if named.get(key, ""):
            files.append(directory / named[key])
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as fh:
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


class _FP32Engine(InferenceEngine):
    """The inference engine without bf16 autocast on CUDA (to compare the two)."""

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, enabled=False)


class Predictor:
    """A checkpoint loaded once; ``predict`` is thread-compatible but not re-entrant.

    On CUDA the model runs under bf16 autocast (``bf16=False``: float32, to measure the
    difference); on CPU always in float32."""

    def __init__(
        self,
        model: GazeXModel,
        checkpoint: Path,
        device: torch.device,
        *,
        bf16: bool = True,
        max_batch: int = 8,
    ) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        engine = InferenceEngine if bf16 else _FP32Engine
        self.engine = engine(model, device, max_batch=max_batch)
        #: The dtype the model computes in: "bfloat16" (CUDA autocast) or "float32".
        self.dtype = "bfloat16" if bf16 and device.type == "cuda" else "float32"
        settings = model.settings
        #: The checkpoint's domain gate (:mod:`model.domain`); None: results say "not checked".
        self.gate: DomainGate | None = load_gate(checkpoint, settings.domain_gate)
        #: Temperatures per finding (:mod:`model.calibration`); None: raw probabilities.
        self.calibration: ProbabilityCalibration | None = load_calibration(
            checkpoint, settings.probability_calibration, settings.finding_keys
        )
        self.info = ModelInfo(
            name=settings.name,
            version=settings.version,
            checkpoint_sha256=checkpoint_sha256(checkpoint),
            trained_on_synthetic_data=settings.trained_on_synthetic_data,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: str | torch.device | None = None,
        *,
        bf16: bool = True,
        max_batch: int = 8,
        base: Path | None = None,
    ) -> Predictor:
        """Load a checkpoint folder (the shipped default when ``path`` is None) on
        ``device`` (default: CUDA when present). ``max_batch``: films per forward pass when
        ``predict`` is given several (more are run in chunks of that size). ``base``: the
        local Qwen2.5-VL folder a LoRA checkpoint was fine-tuned from (default:
        ``$GAZEX_BASE_MODEL``, else the folder its gazex.json records)."""
        directory = Path(path) if path is not None else DEFAULT_CHECKPOINT
        dev = select_device(device)
        configure_threads(dev)
        model = GazeXModel.load(directory, device=dev, base=base)
        predictor = cls(model, directory, dev, bf16=bf16, max_batch=max_batch)
        logger.info("loaded checkpoint %s on %s (%s)", directory.name, dev, predictor.dtype)
        return predictor

    def gpu_memory(self) -> tuple[int, int, int] | None:
        """(allocated, reserved, peak allocated) CUDA bytes of this process on the model's
        device; None on CPU."""
        if self.device.type != "cuda":
            return None
        return (
            int(torch.cuda.memory_allocated(self.device)),
            int(torch.cuda.memory_reserved(self.device)),
            int(torch.cuda.max_memory_allocated(self.device)),
        )

    def gpu_utilization(self) -> float | None:
        """Fraction of the driver's last sample period the model's GPU was busy; None on
        CPU or without nvidia-ml-py (``torch.cuda.utilization`` needs its ``pynvml``)."""
        if self.device.type != "cuda" or not nvml_available():
            return None
        return float(torch.cuda.utilization(self.device)) / 100.0

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
        domain = self.check_domain(raw)
        return build_result(
            raw,
            source,
            self.model,
            self.info,
            questions,
            domain=domain,
            calibration=self.calibration,
        )

    def check_domain(self, raw: RawOutput) -> DomainCheck | None:
        """The domain gate's verdict on one film's outputs; None without a gate."""
        if self.gate is None:
            return None
        return self.gate.check(raw.image_features)


def build_result(
    raw: RawOutput,
    source: SourceImage,
    model: GazeXModel,
    info: ModelInfo,
    questions: Sequence[str] = (),
    *,
    domain: DomainCheck | None = None,
    calibration: ProbabilityCalibration | None = None,
    consistent: bool = True,
) -> InferenceResult:
    """Map token-grid outputs to source pixels and fill the result contract (``domain``: the
    domain gate's verdict, :meth:`Predictor.check_domain`). With ``calibration`` each
    finding's probability is the calibrated one; present/absent is decided on the raw
    probability against ``gazex.json``'s thresholds (tuned on raw probabilities), the same
    decision as the calibrated probability against the mapped threshold.

    One story per film (issue 16): the finding head's decisions are the result's one state.
    The report's sentences, the findings' sentences, the impression and the answers to
    presence questions are made to agree with them, and a step the trajectory did not inspect
    says so (:mod:`model.consistency`). ``consistent=False`` keeps the model's raw text, to
    measure what that changes (``benchmarks/bench_consistency.py``)."""
    settings = model.settings
    grid = raw.grid
    trajectory: list[Fixation] = []
    clock = 0.0
    for j, (index, (x, y)) in enumerate(zip(raw.patch_indices, raw.fixation_points(), strict=True)):
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
    reported = (
        raw.probabilities if calibration is None else calibration.calibrate(raw.probabilities)
    )
    decisions = {
        key: float(np.clip(raw.probabilities[i], 0.0, 1.0)) >= thresholds[i]
        for i, key in enumerate(settings.finding_keys)
    }
    visited = visited_steps([fx.step for fx in trajectory], [fx.region for fx in trajectory])
    # Imported here: the module's imports belong to another change in progress.
    from model.anatomy_prior import box_regions
    from model.consistency import locate_text, located_answer

    located = box_regions(settings, grid, raw.boxes, decisions)
    if consistent:
        sections, impression = agree_report(sections, impression, decisions, visited)
        sections = {step: locate_text(text, located) for step, text in sections.items()}
        impression = locate_text(impression, located)
    findings: list[Finding] = []
    for i, key in enumerate(settings.finding_keys):
        ftype = FINDINGS_BY_KEY[key]
        present = decisions[key]
        probability = float(np.clip(reported[i], 0.0, 1.0))
        box: Box | None = None
        mask: npt.NDArray[np.bool_] | None = None
        support: tuple[int, ...]
        if present:
            x0, y0, x1, y1 = grid.denormalise_box(*(float(v) for v in raw.boxes[i]))
            box = Box(x0, y0, x1, y1)
            mask = output_mask(raw, i, box)
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
                sentence=finding_sentence(
                    ftype, bool(present), sections.get(ftype.step, ""), agreeing=consistent
                ),
                box=box,
                mask=mask,
                fixation_indices=support,
                region=located.get(key) or _support_region(trajectory, support, box),
            )
        )
    report = Report(
        sections=tuple(ReportSection(s, sections.get(s) or _NOT_REPORTED) for s in STEPS),
        impression=impression or _impression(findings),
    )
    coverage = tuple((s, s in visited) for s in STEPS)
    attention = _attention(raw)
    answers = tuple(
        Answer(
            question=q,
            answer=(
                decided_answer(q, decisions) or located_answer(q, located) if consistent else None
            )
            or a,
        )
        for q, a in zip(questions, raw.answers, strict=False)
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
        domain=domain,
    )


def output_mask(raw: RawOutput, i: int, box: Box) -> npt.NDArray[np.bool_] | None:
    """Finding ``i``'s mask at source resolution from the finest masks the model gave (the
    mask decoder's cells, else its tokens), within ``box``: :func:`finding_mask`."""
    grid, probabilities = raw.finest_masks()
    threshold = MASK_THRESHOLD if grid == raw.grid else CELL_MASK_THRESHOLD
    return finding_mask(grid, probabilities[i], box, threshold)


def finding_mask(
    grid: PatchGrid,
    probabilities: npt.NDArray[np.floating],
    box: Box,
    threshold: float = MASK_THRESHOLD,
) -> npt.NDArray[np.bool_] | None:
    """A present finding's mask at source resolution, within its box.

    The token-grid mask probabilities are interpolated bilinearly between token centres to
    the centres of the source pixels the box overlaps, and thresholded; nothing outside the
    box is kept, so the mask agrees with the box. ``None`` when no pixel of the box reaches
    the threshold: the model has no shape for the finding, and the SEG then uses the box's
    pixels (an invented shape would claim more than the model said)."""
    values = np.asarray(probabilities, dtype=np.float32).reshape(grid.grid_h, grid.grid_w)
    rows, columns = grid.Rows, grid.Columns
    c0 = min(math.floor(box.x0), columns - 1)
    r0 = min(math.floor(box.y0), rows - 1)
    c1 = min(max(math.ceil(box.x1), c0 + 1), columns)
    r1 = min(max(math.ceil(box.y1), r0 + 1), rows)
    inside = _bilinear(values, (np.arange(r0, r1) + 0.5) * grid.grid_h / rows - 0.5, axis=0)
    inside = _bilinear(inside, (np.arange(c0, c1) + 0.5) * grid.grid_w / columns - 0.5, axis=1)
    if not (inside >= threshold).any():
        return None
    mask = np.zeros((rows, columns), dtype=bool)
    mask[r0:r1, c0:c1] = inside >= threshold
    return mask


def _bilinear(
    values: npt.NDArray[np.float32], at: npt.NDArray[np.float64], axis: int
) -> npt.NDArray[np.float32]:
    """Linear interpolation of ``values`` along ``axis`` at fractional indices ``at``
    (clamped to the first and last sample: constant beyond the outer token centres)."""
    last = values.shape[axis] - 1
    at = np.clip(at, 0.0, float(last))
    low = np.floor(at).astype(np.int64)
    high = np.minimum(low + 1, last)
    weight = (at - low).astype(np.float32)
    shape = [1, 1]
    shape[axis] = -1
    weight = weight.reshape(shape)
    below = np.take(values, low, axis=axis)
    above = np.take(values, high, axis=axis)
    interpolated: npt.NDArray[np.float32] = below * (1.0 - weight) + above * weight
    return interpolated


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def finding_sentence(
    ftype: FindingType, present: bool, section: str, *, agreeing: bool = True
) -> str:
    """The report sentence that asserts or negates the finding in agreement with its
    decision (:func:`model.consistency.claims`), else its own sentence ("X present.", "No
    x."). ``agreeing=False``: the first sentence naming it, whatever it says (the raw text)."""
    if agreeing:
        for sentence in sentences(section):
            if claims(sentence).findings.get(ftype.key) is present:
                return sentence
        return own_sentences([ftype.key], {ftype.key: present})[0]
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
