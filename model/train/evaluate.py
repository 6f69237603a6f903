"""``gazex eval``: metrics on held-out samples, JSON + PNG plots, and the gaze ablations.

The model runs free (its own scanpath, as at inference), never teacher forced.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw

from model.abcdef import STEPS, Step
from model.architecture import GazeXModel
from model.inference import InferenceEngine, RawOutput
from model.overlay import PALETTE, overlay
from model.predictor import build_result, visited_steps
from model.result import ModelInfo, SourceImage
from model.train.batching import key_fixations, report_text
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.supervision import locate_points
from model.train.metrics import (
    auroc,
    bleu4,
    box_iou,
    cider,
    clinical_efficacy_f1,
    collapse,
    f1_score,
    multimatch,
    normalised_edit_distance,
    order_agreement,
    pointing_hit,
    roc_curve,
    rouge_l,
    vqa_accuracy,
)
from model.train.progress import Progress
from model.train.provenance import training_overlap

logger = logging.getLogger(__name__)

#: Rows of the printed tables: (key in the metrics dict, label, format).
TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("macro_auroc", "Macro AUROC", "{:.3f}"),
    ("macro_f1", "Macro F1", "{:.3f}"),
    ("grounding_mean_iou", "Grounding mean IoU", "{:.3f}"),
    ("grounding_acc_iou50", "Grounding Acc@IoU0.5", "{:.3f}"),
    ("pointing_game", "Pointing game hit rate", "{:.3f}"),
    ("coverage_normal_full", "ABCDEF coverage 100% (normal films)", "{:.1%}"),
    ("coverage_mean", "ABCDEF steps visited (mean)", "{:.1%}"),
    ("order_kendall_tau", "Order agreement (Kendall tau)", "{:.3f}"),
    ("order_films", "Films with a defined order", "{:.0f}"),
    ("step_label_matches_anatomy", "Step label = anatomy step", "{:.1%}"),
    ("region_edit_distance", "Region-sequence edit distance (norm.)", "{:.3f}"),
    ("multimatch_vector", "MultiMatch vector", "{:.3f}"),
    ("multimatch_direction", "MultiMatch direction", "{:.3f}"),
    ("multimatch_length", "MultiMatch length", "{:.3f}"),
    ("multimatch_position", "MultiMatch position", "{:.3f}"),
    ("multimatch_duration", "MultiMatch duration", "{:.3f}"),
    ("bleu4", "BLEU-4", "{:.3f}"),
    ("rouge_l", "ROUGE-L", "{:.3f}"),
    ("cider", "CIDEr", "{:.3f}"),
    ("clinical_f1", "Clinical-efficacy F1", "{:.3f}"),
    ("vqa_accuracy", "VQA accuracy", "{:.3f}"),
)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def eval_questions(sample: GazeSample, index: int, count: int = 3) -> list[tuple[str, str]]:
    """A fixed, seeded choice of ``count`` VQA pairs of a sample (all when fewer)."""
    pairs = list(sample.vqa)
    if len(pairs) <= count:
        return pairs
    chosen = sorted(random.Random(index).sample(range(len(pairs)), count))  # noqa: S311
    return [pairs[i] for i in chosen]


def run_model(
    model: GazeXModel,
    samples: Sequence[GazeSample],
    device: torch.device,
    progress: Progress | None = None,
) -> list[RawOutput]:
    engine = InferenceEngine(model, device)
    questions = [[q for q, _ in eval_questions(s, i)] for i, s in enumerate(samples)]
    return engine.run(
        [s.image for s in samples],
        questions=questions,
        on_batch=None if progress is None else progress.update,
    )


def looked_at_steps(sample: GazeSample, output: RawOutput) -> list[Step | None]:
    """The ABCDEF step of where each predicted fixation landed, from the film's anatomy.

    Each fixation's token centre (source pixels) is placed in the ground-truth anatomical
    boxes by the rule that labels the readers' fixations (:func:`locate_points`); None where
    it lands in no region or the film has no anatomy. Order agreement uses these steps, not
    the model's step head, so it is defined for every gaze variant (the ablation's model
    trained on shuffled gaze gave all its fixations one step label).
    """
    points = [output.grid.patch_centre(p) for p in output.patch_indices]
    return [step for _, step in locate_points(sample, points)]


def compute_metrics(
    model: GazeXModel, samples: Sequence[GazeSample], outputs: Sequence[RawOutput]
) -> dict[str, Any]:
    """All metrics of the issue for one model on ``samples`` (outputs in the same order)."""
    settings = model.settings
    keys = settings.finding_keys
    thresholds = settings.thresholds or (0.5,) * len(keys)
    probs = np.stack([o.probabilities for o in outputs])
    per_finding: dict[str, dict[str, float]] = {}
    for i, key in enumerate(keys):
        y = np.array([bool(s.labels.get(key, False)) for s in samples])
        per_finding[key] = {
            "auroc": auroc(y, probs[:, i]),
            "f1": f1_score(y, probs[:, i] >= thresholds[i]),
            "positives": float(y.sum()),
        }
    ious: list[float] = []
    hits: list[bool] = []
    for s, o in zip(samples, outputs, strict=True):
        for box in s.boxes:
            if box.key not in keys or not s.labels.get(box.key, False):
                continue
            if box.x1 <= box.x0 or box.y1 <= box.y0:
                continue
            i = keys.index(box.key)
            predicted = o.grid.denormalise_box(*(float(v) for v in o.boxes[i]))
            truth = (box.x0, box.y0, box.x1, box.y1)
            ious.append(box_iou(predicted, truth))
            peak = int(np.argmax(o.mask_probs[i]))
            hits.append(pointing_hit(o.grid.patch_centre(peak), truth))
    coverage_full: list[bool] = []
    coverage_fraction: list[float] = []
    taus: list[float] = []
    step_labels: list[float] = []
    edits: list[float] = []
    mm_scores: list[tuple[float, ...]] = []
    for s, o in zip(samples, outputs, strict=True):
        steps = [STEPS[j] for j in o.steps if 0 <= j < len(STEPS)]
        regions = [settings.regions[r] for r in o.regions if 0 <= r < len(settings.regions)]
        visited = visited_steps(steps, regions)
        coverage_fraction.append(len(visited) / len(STEPS))
        if not any(s.labels.values()):
            coverage_full.append(len(visited) == len(STEPS))
        looked = looked_at_steps(s, o)
        taus.append(order_agreement([STEPS.index(step) for step in looked if step is not None]))
        step_labels.extend(
            float(0 <= head < len(STEPS) and STEPS[head] is step)
            for head, step in zip(o.steps, looked, strict=True)
            if step is not None
        )
        reader = key_fixations(
            s.fixations, o.grid, settings.num_gaze_tokens or 12, settings.regions
        )
        predicted_regions = collapse(
            settings.regions[r] for r in o.regions if 0 <= r < len(settings.regions)
        )
        reader_regions = collapse(
            settings.regions[k.region] for k in reader if 0 <= k.region < len(settings.regions)
        )
        if o.patch_indices and reader_regions:
            edits.append(normalised_edit_distance(predicted_regions, reader_regions))
        predicted_path = [
            (*o.grid.patch_centre(p), max(d, 1.0) / 1000.0)
            for p, d in zip(o.patch_indices, o.dwell_ms, strict=True)
        ]
        reader_path = [(*o.grid.patch_centre(k.patch_index), k.dwell_ms / 1000.0) for k in reader]
        score = multimatch(predicted_path, reader_path, (o.grid.Columns, o.grid.Rows))
        if score is not None:
            mm_scores.append(score)
    references = [report_text(s) for s in samples]
    hypotheses = [o.report for o in outputs]
    vqa_refs: list[str] = []
    vqa_answers: list[str] = []
    for i, (s, o) in enumerate(zip(samples, outputs, strict=True)):
        for (_, answer), predicted_answer in zip(eval_questions(s, i), o.answers, strict=True):
            vqa_refs.append(answer)
            vqa_answers.append(predicted_answer)
    mm = np.array(mm_scores) if mm_scores else np.full((1, 5), np.nan)
    return {
        "samples": len(samples),
        "gaze_mode": settings.gaze_mode,
        "per_finding": per_finding,
        "macro_auroc": _nanmean([v["auroc"] for v in per_finding.values()]),
        "macro_f1": _nanmean([v["f1"] for v in per_finding.values() if v["positives"] > 0]),
        "grounding_mean_iou": _nanmean(ious),
        "grounding_acc_iou50": _nanmean([float(v >= 0.5) for v in ious]),
        "pointing_game": _nanmean([float(h) for h in hits]),
        "grounded_boxes": len(ious),
        "coverage_normal_full": _nanmean([float(c) for c in coverage_full]),
        "normal_films": len(coverage_full),
        "coverage_mean": _nanmean(coverage_fraction),
        "order_kendall_tau": _nanmean(taus),
        "order_films": sum(not math.isnan(t) for t in taus),
        "step_label_matches_anatomy": _nanmean(step_labels),
        "region_edit_distance": _nanmean(edits),
        "multimatch_vector": float(np.nanmean(mm[:, 0])),
        "multimatch_direction": float(np.nanmean(mm[:, 1])),
        "multimatch_length": float(np.nanmean(mm[:, 2])),
        "multimatch_position": float(np.nanmean(mm[:, 3])),
        "multimatch_duration": float(np.nanmean(mm[:, 4])),
        "bleu4": bleu4(references, hypotheses),
        "rouge_l": rouge_l(references, hypotheses),
        "cider": cider(references, hypotheses),
        "clinical_f1": clinical_efficacy_f1([s.labels for s in samples], hypotheses),
        "vqa_accuracy": vqa_accuracy(vqa_refs, vqa_answers),
    }


def format_table(columns: dict[str, dict[str, Any]]) -> str:
    """Metrics side by side, one column per model (or per ablation)."""
    names = list(columns)
    label_width = max(len(label) for _, label, _ in TABLE_ROWS) + 2
    col_width = max(12, *(len(n) + 2 for n in names))
    lines = ["metric".ljust(label_width) + "".join(n.rjust(col_width) for n in names)]
    lines.append("-" * len(lines[0]))
    for key, label, fmt in TABLE_ROWS:
        cells = []
        for n in names:
            value = columns[n].get(key, float("nan"))
            cells.append(
                (
                    "n/a"
                    if value is None or (isinstance(value, float) and math.isnan(value))
                    else fmt.format(value)
                ).rjust(col_width)
            )
        lines.append(label.ljust(label_width) + "".join(cells))
    return "\n".join(lines)


def format_per_finding(metrics: dict[str, Any]) -> str:
    lines = [f"{'finding':26}{'AUROC':>8}{'F1':>8}{'pos':>6}"]
    for key, v in metrics["per_finding"].items():
        auc = "n/a" if math.isnan(v["auroc"]) else f"{v['auroc']:.3f}"
        lines.append(f"{key:26}{auc:>8}{v['f1']:>8.3f}{int(v['positives']):>6}")
    return "\n".join(lines)


def roc_plot(
    curves: Mapping[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]],
    path: Path,
    size: int = 480,
) -> None:
    """ROC curves (fpr, tpr, auc) per label on one square chart with a legend."""
    margin = 40
    legend = 190
    canvas = Image.new("RGB", (size + legend, size), "white")
    draw = ImageDraw.Draw(canvas)
    span = size - 2 * margin

    def to_px(fpr: float, tpr: float) -> tuple[float, float]:
        return (margin + fpr * span, size - margin - tpr * span)

    draw.rectangle((margin, margin, size - margin, size - margin), outline="black")
    draw.line([to_px(0, 0), to_px(1, 1)], fill=(200, 200, 200))
    draw.text((size / 2 - 40, size - margin + 10), "false positive rate", fill="black")
    draw.text((4, margin - 20), "true positive rate", fill="black")
    for i, (name, (fpr, tpr, area)) in enumerate(sorted(curves.items())):
        colour = PALETTE[i % len(PALETTE)]
        if len(fpr) > 1:
            draw.line(
                [to_px(float(a), float(b)) for a, b in zip(fpr, tpr, strict=True)],
                fill=colour,
                width=2,
            )
        draw.text((size + 4, margin + 14 * i), f"{name[:18]} {area:.2f}", fill=colour)
    canvas.save(path)


def write_outputs(
    model: GazeXModel,
    samples: Sequence[GazeSample],
    outputs: Sequence[RawOutput],
    metrics: dict[str, Any],
    out_dir: Path,
    cases: int = 3,
) -> None:
    """metrics.json, roc.png and trajectory overlays for the first ``cases`` samples."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=1))
    probs = np.stack([o.probabilities for o in outputs])
    curves = {}
    for i, key in enumerate(model.settings.finding_keys):
        y = np.array([bool(s.labels.get(key, False)) for s in samples])
        if y.any() and (~y).any():
            fpr, tpr = roc_curve(y, probs[:, i])
            curves[key] = (fpr, tpr, metrics["per_finding"][key]["auroc"])
    roc_plot(curves, out_dir / "roc.png")
    info = ModelInfo(model.settings.name, model.settings.version, "", True)
    for s, o in list(zip(samples, outputs, strict=True))[:cases]:
        source = SourceImage(
            "1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.1.1", s.height, s.width
        )
        result = build_result(o, source, model, info)
        reference = [(f.x, f.y) for f in s.on_image_fixations()]
        overlay(s.image, result, reference).save(out_dir / f"trajectory_{s.sample_id}.png")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.floating | np.integer):
        return _jsonable(value.item())
    return value


def evaluate(
    model: GazeXModel,
    samples: Sequence[GazeSample],
    out_dir: Path | None,
    device: torch.device,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``samples`` (written to ``out_dir`` when given), with
    ``training_overlap``: how many of the films the checkpoint trained on, and the warning.

    ``progress`` advances by one per film.
    """
    outputs = run_model(model, samples, device, progress)
    metrics = compute_metrics(model, samples, outputs)
    metrics["training_overlap"] = training_overlap(model.settings.training_data, samples).to_json()
    if out_dir is not None:
        write_outputs(model, samples, outputs, metrics, out_dir)
    return metrics
