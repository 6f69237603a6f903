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
from model.calibration import (
    ECE_BINS,
    ProbabilityCalibration,
    expected_calibration_error,
    reliability_bins,
)
from model.inference import InferenceEngine, RawOutput
from model.overlay import PALETTE, load_font, overlay
from model.predictor import build_result, output_mask, visited_steps
from model.result import Box, ModelInfo, SourceImage
from model.train.batching import key_fixations, report_text
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.supervision import locate_points
from model.train.gazedata.synth import generator_masks
from model.train.metrics import (
    auroc,
    bleu4,
    box_iou,
    box_pixels,
    cider,
    clinical_efficacy_f1,
    collapse,
    f1_score,
    mask_iou,
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
    ("mean_ece_raw", "Mean ECE, raw probabilities", "{:.4f}"),
    ("mean_ece_calibrated", "Mean ECE, calibrated", "{:.4f}"),
    ("grounding_mean_iou", "Grounding mean IoU", "{:.3f}"),
    ("grounding_acc_iou50", "Grounding Acc@IoU0.5", "{:.3f}"),
    ("pointing_game", "Pointing game hit rate", "{:.3f}"),
    ("mask_mean_iou", "Mask IoU, model's masks", "{:.3f}"),
    ("masks_scored", "Model's masks scored", "{:.0f}"),
    ("mask_box_iou", "Mask IoU, box used (no mask)", "{:.3f}"),
    ("mask_boxes_scored", "Boxes used for lack of a mask", "{:.0f}"),
    ("mask_seg_iou", "Mask IoU, what the SEG carries", "{:.3f}"),
    ("mask_in_box", "Mask pixels inside their box", "{:.1%}"),
    ("coverage_normal_full", "ABCDEF coverage 100% (normal films)", "{:.1%}"),
    ("coverage_mean", "ABCDEF steps visited (mean)", "{:.1%}"),
    ("order_kendall_tau", "Order agreement (Kendall tau)", "{:.3f}"),
    ("order_films", "Films with a defined order", "{:.0f}"),
    ("step_label_matches_anatomy", "Step label = anatomy step", "{:.1%}"),
    ("region_label_matches_anatomy", "Region label = anatomy region", "{:.1%}"),
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

    Each fixation's point (source pixels: its token centre, or where the anatomy prior put
    it within the token, :meth:`RawOutput.fixation_points`) is placed in the ground-truth anatomical
    boxes by the rule that labels the readers' fixations (:func:`locate_points`); None where
    it lands in no region or the film has no anatomy. Order agreement uses these steps, not
    the model's step head, so it is defined for every gaze variant (the ablation's model
    trained on shuffled gaze gave all its fixations one step label).
    """
    return [step for _, step in locate_points(sample, output.fixation_points())]


def looked_at_regions(sample: GazeSample, output: RawOutput) -> list[str | None]:
    """The anatomical region (ground truth) where each predicted fixation's point lies, by
    the same rule as :func:`looked_at_steps` (smallest containing box; None in none)."""
    return [region for region, _ in locate_points(sample, output.fixation_points())]


def mask_metrics(
    samples: Sequence[GazeSample],
    outputs: Sequence[RawOutput],
    keys: Sequence[str],
    thresholds: Sequence[float],
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Masks the predictor delivers against the generator's pixel masks.

    Scored: each finding with a box on the film (the findings grounding is scored on) that
    the film shows and the finding head calls present. The predicted mask is
    :func:`model.predictor.output_mask` of the model's finest mask probabilities inside
    its predicted box; where it has none, the SEG carries the box's pixels, scored apart
    (``mask_box_iou``) and together (``mask_seg_iou``). ``mask_in_box``: the share of the
    model's mask pixels inside their finding's box. Per finding (devices too, which have no
    box in the layouts and are not in the overall numbers): ``mask_iou`` and ``masks``.
    """
    model_ious: list[float] = []
    box_ious: list[float] = []
    by_key: dict[str, list[float]] = {key: [] for key in keys}
    inside = total = 0
    unscored_films = 0
    for s, o in zip(samples, outputs, strict=True):
        present = [
            i
            for i, key in enumerate(keys)
            if s.labels.get(key, False) and o.probabilities[i] >= thresholds[i]
        ]
        if not present:
            continue
        truth = generator_masks(s)
        if truth is None:
            unscored_films += 1
            continue
        boxed = {b.key for b in s.boxes}
        for i in present:
            key = keys[i]
            target = truth.get(key)
            if target is None or not target.any():
                continue
            box = Box(*o.grid.denormalise_box(*(float(v) for v in o.boxes[i])))
            region = box_pixels((box.x0, box.y0, box.x1, box.y1), s.height, s.width)
            mask = output_mask(o, i, box)
            if mask is None:
                iou = mask_iou(region, target)
            else:
                iou = mask_iou(mask, target)
                inside += int((mask & region).sum())
                total += int(mask.sum())
            by_key[key].append(iou)
            if key in boxed:
                (box_ious if mask is None else model_ious).append(iou)
    overall = {
        "mask_mean_iou": _nanmean(model_ious),
        "masks_scored": len(model_ious),
        "mask_box_iou": _nanmean(box_ious),
        "mask_boxes_scored": len(box_ious),
        "mask_seg_iou": _nanmean(model_ious + box_ious),
        "mask_in_box": inside / total if total else float("nan"),
        "mask_films_without_truth": unscored_films,
    }
    per_key = {key: {"mask_iou": _nanmean(v), "masks": float(len(v))} for key, v in by_key.items()}
    return overall, per_key


def compute_metrics(
    model: GazeXModel,
    samples: Sequence[GazeSample],
    outputs: Sequence[RawOutput],
    calibration: ProbabilityCalibration | None = None,
) -> dict[str, Any]:
    """All metrics of the issue for one model on ``samples`` (outputs in the same order).

    Expected calibration error (:data:`model.calibration.ECE_BINS` equal-width bins) per
    finding of the raw probabilities and, with ``calibration``, of the calibrated ones (NaN
    without). F1 uses the raw probabilities against the thresholds tuned on them (the same
    decisions as the calibrated ones against the mapped thresholds)."""
    settings = model.settings
    keys = settings.finding_keys
    thresholds = settings.thresholds or (0.5,) * len(keys)
    probs = np.stack([o.probabilities for o in outputs])
    calibrated = calibration.calibrate(probs) if calibration is not None else None
    per_finding: dict[str, dict[str, float]] = {}
    for i, key in enumerate(keys):
        y = np.array([bool(s.labels.get(key, False)) for s in samples])
        per_finding[key] = {
            "auroc": auroc(y, probs[:, i]),
            "f1": f1_score(y, probs[:, i] >= thresholds[i]),
            "positives": float(y.sum()),
            "ece_raw": expected_calibration_error(y, probs[:, i]),
            "ece_calibrated": float("nan")
            if calibrated is None
            else expected_calibration_error(y, calibrated[:, i]),
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
    masks, masks_per_key = mask_metrics(samples, outputs, keys, thresholds)
    for key, values in masks_per_key.items():
        per_finding[key].update(values)
    coverage_full: list[bool] = []
    coverage_fraction: list[float] = []
    taus: list[float] = []
    step_labels: list[float] = []
    region_labels: list[float] = []
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
        region_labels.extend(
            float(0 <= label < len(settings.regions) and settings.regions[label] == region)
            for label, region in zip(o.regions, looked_at_regions(s, o), strict=True)
            if region is not None
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
        "mean_ece_raw": _nanmean([v["ece_raw"] for v in per_finding.values()]),
        "mean_ece_calibrated": _nanmean([v["ece_calibrated"] for v in per_finding.values()]),
        "ece_bins": ECE_BINS,
        "grounding_mean_iou": _nanmean(ious),
        "grounding_acc_iou50": _nanmean([float(v >= 0.5) for v in ious]),
        "pointing_game": _nanmean([float(h) for h in hits]),
        "grounded_boxes": len(ious),
        **masks,
        "coverage_normal_full": _nanmean([float(c) for c in coverage_full]),
        "normal_films": len(coverage_full),
        "coverage_mean": _nanmean(coverage_fraction),
        "order_kendall_tau": _nanmean(taus),
        "order_films": sum(not math.isnan(t) for t in taus),
        "step_label_matches_anatomy": _nanmean(step_labels),
        "region_label_matches_anatomy": _nanmean(region_labels),
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
    """One line per finding: AUROC, F1, positives, ECE raw and calibrated, and the mask IoU
    of what the SEG carries with the number of masks it averages."""
    lines = [
        f"{'finding':26}{'AUROC':>8}{'F1':>8}{'pos':>6}{'ECE raw':>9}{'ECE cal':>9}"
        f"{'mask IoU':>10}{'masks':>7}"
    ]
    for key, v in metrics["per_finding"].items():
        auc = "n/a" if math.isnan(v["auroc"]) else f"{v['auroc']:.3f}"
        eces = "".join(
            ("n/a" if math.isnan(v.get(k, math.nan)) else f"{v[k]:.4f}").rjust(9)
            for k in ("ece_raw", "ece_calibrated")
        )
        iou = v.get("mask_iou", math.nan)
        masks = "n/a" if math.isnan(iou) else f"{iou:.3f}"
        lines.append(
            f"{key:26}{auc:>8}{v['f1']:>8.3f}{int(v['positives']):>6}{eces}"
            f"{masks:>10}{int(v.get('masks', 0)):>7}"
        )
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


RAW_COLOUR = (150, 150, 150)
CALIBRATED_COLOUR = (31, 119, 180)


def reliability_plot(
    curves: Mapping[str, tuple[npt.NDArray[np.bool_], npt.NDArray[Any], npt.NDArray[Any] | None]],
    path: Path,
    *,
    bins: int = ECE_BINS,
    note: str = "",
    panel: int = 250,
    columns: int = 4,
) -> None:
    """Reliability diagrams, one panel per finding: fraction positive against mean predicted
    probability in ``bins`` equal-width bins (marker area by count), raw probabilities in
    grey and calibrated ones in blue, the diagonal dashed, the ECE of each in the title.

    ``curves``: finding -> (labels, raw probabilities, calibrated probabilities or None)."""
    names = list(curves)
    rows = max(1, math.ceil(len(names) / columns))
    head, foot = 64, 44
    width, height = columns * panel, head + rows * panel + foot
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    title_font, font, small = load_font(16, bold=True), load_font(12), load_font(10)
    draw.text(
        (12, 8),
        f"Reliability diagrams per finding ({bins} equal-width bins)",
        fill="black",
        font=title_font,
    )
    legend_y = 36
    for i, (label, colour) in enumerate(
        (
            ("raw probabilities", RAW_COLOUR),
            ("calibrated (temperature per finding)", CALIBRATED_COLOUR),
        )
    ):
        x = 12 + i * 200
        draw.ellipse((x, legend_y + 2, x + 10, legend_y + 12), fill=colour)
        draw.text((x + 16, legend_y), label, fill="black", font=font)
    x = 12 + 2 * 200 + 60
    draw.line((x, legend_y + 7, x + 24, legend_y + 7), fill=(190, 190, 190), width=1)
    draw.text((x + 30, legend_y), "perfect calibration", fill="black", font=font)
    left, right, top, bottom = 44, 12, 52, 40
    span_x, span_y = panel - left - right, panel - top - bottom
    for n, name in enumerate(names):
        ox, oy = (n % columns) * panel, head + (n // columns) * panel
        x0, y0 = ox + left, oy + top
        x1, y1 = x0 + span_x, y0 + span_y

        def px(p: float, q: float, x0: float = x0, y1: float = y1) -> tuple[float, float]:
            return (x0 + p * span_x, y1 - q * span_y)

        draw.rectangle((x0, y0, x1, y1), outline="black")
        for t in (0.0, 0.5, 1.0):
            tx, _ = px(t, 0)
            _, ty = px(0, t)
            draw.line((tx, y1, tx, y1 + 4), fill="black")
            draw.line((x0 - 4, ty, x0, ty), fill="black")
            draw.text((tx - 8, y1 + 5), f"{t:g}", fill="black", font=small)
            draw.text((x0 - 22, ty - 6), f"{t:g}", fill="black", font=small)
        for k in range(0, 21):  # dashed diagonal
            if k % 2 == 0:
                draw.line(
                    [px(k / 20, k / 20), px((k + 1) / 20, (k + 1) / 20)], fill=(190, 190, 190)
                )
        labels, raw, calibrated = curves[name]
        total = max(len(labels), 1)
        subtitle = f"ECE raw {expected_calibration_error(labels, raw, bins):.3f}"
        series = [(raw, RAW_COLOUR)]
        if calibrated is not None:
            subtitle += f", calibrated {expected_calibration_error(labels, calibrated, bins):.3f}"
            series.append((calibrated, CALIBRATED_COLOUR))
        draw.text((ox + 8, oy + 4), name.replace("_", " "), fill="black", font=title_font)
        draw.text((ox + 8, oy + 24), subtitle, fill="black", font=font)
        for probabilities, colour in series:
            points = reliability_bins(labels, probabilities, bins)
            xy = [px(p, q) for p, q, _ in points]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=1)
            for (cx, cy), (_, _, count) in zip(xy, points, strict=True):
                r = 2.0 + 7.0 * math.sqrt(count / total)
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=2)
        draw.text(
            (x0 + span_x / 2 - 62, y1 + 18), "mean predicted probability", fill="black", font=small
        )
        draw.text((ox + 2, y0 - 14), "fraction positive", fill="black", font=small)
    draw.text(
        (12, height - foot + 8),
        "Research use only: synthetic films, not for clinical use. " + note,
        fill=(160, 0, 0),
        font=font,
    )
    canvas.save(path)


def write_outputs(
    model: GazeXModel,
    samples: Sequence[GazeSample],
    outputs: Sequence[RawOutput],
    metrics: dict[str, Any],
    out_dir: Path,
    cases: int = 3,
    calibration: ProbabilityCalibration | None = None,
) -> None:
    """metrics.json, roc.png, reliability.png and trajectory overlays for the first
    ``cases`` samples."""
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
    calibrated = calibration.calibrate(probs) if calibration is not None else None
    reliability_plot(
        {
            key: (
                np.array([bool(s.labels.get(key, False)) for s in samples]),
                probs[:, i],
                None if calibrated is None else calibrated[:, i],
            )
            for i, key in enumerate(model.settings.finding_keys)
        },
        out_dir / "reliability.png",
        note=f"{len(samples)} films; marker area: films in the bin; lines join non-empty bins.",
    )
    info = ModelInfo(model.settings.name, model.settings.version, "", True)
    for s, o in list(zip(samples, outputs, strict=True))[:cases]:
        source = SourceImage(
            "1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.1.1", s.height, s.width
        )
        result = build_result(o, source, model, info, calibration=calibration)
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
    calibration: ProbabilityCalibration | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``samples`` (written to ``out_dir`` when given), with
    ``training_overlap``: how many of the films the checkpoint trained on, and the warning.
    ``calibration``: the checkpoint's probability calibration (ECE after it, reliability
    diagram, calibrated probabilities in the overlays).

    ``progress`` advances by one per film.
    """
    outputs = run_model(model, samples, device, progress)
    metrics = compute_metrics(model, samples, outputs, calibration)
    metrics["training_overlap"] = training_overlap(model.settings.training_data, samples).to_json()
    if out_dir is not None:
        write_outputs(model, samples, outputs, metrics, out_dir, calibration=calibration)
    return metrics
