"""Evaluation metrics: classification, grounding, trajectory, report text and VQA.

Pure numpy (MultiMatch through ``multimatch-gaze``); each function documents its definition
so that the numbers in the model card can be recomputed by hand.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from model.findings import FINDING_TYPES

# -- classification ---------------------------------------------------------------------


def auroc(
    labels: Sequence[bool] | npt.NDArray[np.bool_],
    scores: Sequence[float] | npt.NDArray[np.floating],
) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN if one class."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(
    labels: npt.NDArray[np.bool_], scores: npt.NDArray[np.floating]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(false positive rate, true positive rate) at every distinct threshold."""
    y = np.asarray(labels, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    tp = np.concatenate([[0], np.cumsum(y[order])])
    fp = np.concatenate([[0], np.cumsum(~y[order])])
    return fp / max(int((~y).sum()), 1), tp / max(int(y.sum()), 1)


def f1_score(
    labels: Sequence[bool] | npt.NDArray[np.bool_],
    predicted: Sequence[bool] | npt.NDArray[np.bool_],
) -> float:
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    tp = float((y & p).sum())
    denominator = float(y.sum() + p.sum())
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


# -- grounding --------------------------------------------------------------------------

BoxT = tuple[float, float, float, float]


def box_iou(a: BoxT, b: BoxT) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return 0.0 if union <= 0 else inter / union


def mask_iou(predicted: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    """Intersection over union of two pixel masks of one shape; NaN when both are empty."""
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} and {truth.shape}")
    a = np.asarray(predicted, dtype=bool)
    b = np.asarray(truth, dtype=bool)
    union = int((a | b).sum())
    return float("nan") if union == 0 else int((a & b).sum()) / union


def box_pixels(box: BoxT, rows: int, columns: int) -> npt.NDArray[np.bool_]:
    """The pixels a box (x0, y0, x1, y1 in source pixels) overlaps, never none: what the SEG
    carries for a finding without a mask (``sr_templates.content.box_mask``)."""
    mask = np.zeros((rows, columns), dtype=bool)
    c0 = min(max(math.floor(box[0]), 0), columns - 1)
    r0 = min(max(math.floor(box[1]), 0), rows - 1)
    c1 = min(max(math.ceil(box[2]), c0 + 1), columns)
    r1 = min(max(math.ceil(box[3]), r0 + 1), rows)
    mask[r0:r1, c0:c1] = True
    return mask


def pointing_hit(point: tuple[float, float], box: BoxT, tolerance: float = 0.0) -> bool:
    """Pointing game: the model's peak lies inside the box (grown by ``tolerance`` px)."""
    x, y = point
    return (
        box[0] - tolerance <= x <= box[2] + tolerance
        and box[1] - tolerance <= y <= box[3] + tolerance
    )


# -- trajectory -------------------------------------------------------------------------


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two sequences; NaN when either is constant."""
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = np.sign(x[i] - x[j])
            dy = np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return float("nan") if denominator == 0 else (concordant - discordant) / denominator


def order_agreement(step_indices: Sequence[int]) -> float:
    """Kendall tau-b between visiting time and canonical ABCDEF position of each fixation.

    ``step_indices`` are the positions in ``STEPS`` of the fixations in visiting order;
    NaN when fewer than two or all on one step (the order is then undefined).
    """
    if len(step_indices) < 2:
        return float("nan")
    return kendall_tau(list(range(len(step_indices))), list(step_indices))


def collapse(sequence: Iterable[str]) -> list[str]:
    """Drop consecutive repeats (a region sequence as a reader would describe it)."""
    out: list[str] = []
    for item in sequence:
        if not out or out[-1] != item:
            out.append(item)
    return out


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two sequences of labels."""
    previous = list(range(len(b) + 1))
    for i, item_a in enumerate(a, start=1):
        current = [i]
        for j, item_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (item_a != item_b))
            )
        previous = current
    return previous[-1]


def normalised_edit_distance(a: Sequence[str], b: Sequence[str]) -> float:
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else edit_distance(a, b) / longest


def multimatch(
    scanpath_a: Sequence[tuple[float, float, float]],
    scanpath_b: Sequence[tuple[float, float, float]],
    screen: tuple[float, float],
) -> tuple[float, float, float, float, float] | None:
    """MultiMatch (vector, direction, length, position, duration) similarities in [0, 1].

    Scanpaths are (x, y, duration_s) triples; None when either has fewer than 3 fixations
    (MultiMatch needs at least two saccades).
    """
    if len(scanpath_a) < 3 or len(scanpath_b) < 3:
        return None
    import multimatch_gaze as mm

    dtype = [("start_x", "f8"), ("start_y", "f8"), ("duration", "f8")]
    a = np.array([tuple(p) for p in scanpath_a], dtype=dtype)
    b = np.array([tuple(p) for p in scanpath_b], dtype=dtype)
    with np.errstate(all="ignore"):
        scores = mm.docomparison(a, b, screensize=[screen[0], screen[1]])
    values = tuple(float(v) for v in scores)
    if any(math.isnan(v) for v in values):
        return None
    return (values[0], values[1], values[2], values[3], values[4])


# -- report text ------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu4(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus BLEU-4 (uniform weights, brevity penalty, one reference per hypothesis)."""
    matches = [0] * 4
    totals = [0] * 4
    ref_len = hyp_len = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = tokens(ref), tokens(hyp)
        ref_len += len(r)
        hyp_len += len(h)
        for n in range(1, 5):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4.0
    brevity = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def rouge_l(references: Sequence[str], hypotheses: Sequence[str], beta: float = 1.2) -> float:
    """Mean ROUGE-L F-score (longest common subsequence), beta = 1.2 as in coco-caption."""
    scores = []
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = tokens(ref), tokens(hyp)
        if not r or not h:
            scores.append(0.0)
            continue
        table = [[0] * (len(h) + 1) for _ in range(len(r) + 1)]
        for i, word_r in enumerate(r, start=1):
            for j, word_h in enumerate(h, start=1):
                table[i][j] = (
                    table[i - 1][j - 1] + 1
                    if word_r == word_h
                    else max(table[i - 1][j], table[i][j - 1])
                )
        lcs = table[-1][-1]
        if lcs == 0:
            scores.append(0.0)
            continue
        precision, recall = lcs / len(h), lcs / len(r)
        scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    return float(np.mean(scores)) if scores else 0.0


def cider(references: Sequence[str], hypotheses: Sequence[str], n: int = 4) -> float:
    """CIDEr (TF-IDF weighted n-gram cosine, n = 1..4, x10), document frequency from refs."""
    refs = [tokens(r) for r in references]
    hyps = [tokens(h) for h in hypotheses]
    count = len(refs)
    if count == 0:
        return 0.0
    document_frequency: list[Counter[tuple[str, ...]]] = []
    for k in range(1, n + 1):
        df: Counter[tuple[str, ...]] = Counter()
        for r in refs:
            df.update(set(_ngrams(r, k)))
        document_frequency.append(df)
    total = 0.0
    for r, h in zip(refs, hyps, strict=True):
        score = 0.0
        for k in range(1, n + 1):
            df = document_frequency[k - 1]

            def vector(
                words: Sequence[str], k: int = k, df: Counter[tuple[str, ...]] = df
            ) -> dict[tuple[str, ...], float]:
                grams = _ngrams(words, k)
                length = max(sum(grams.values()), 1)
                return {
                    g: (c / length) * math.log(max(1.0, count) / max(1.0, df[g]))
                    for g, c in grams.items()
                }

            vr, vh = vector(r), vector(h)
            dot = sum(v * vr.get(g, 0.0) for g, v in vh.items())
            norm = math.sqrt(sum(v * v for v in vr.values())) * math.sqrt(
                sum(v * v for v in vh.values())
            )
            score += 0.0 if norm == 0 else dot / norm
        total += 10.0 * score / n
    return total / count


#: Phrases the rule-based extractor looks for, per finding key.
FINDING_PHRASES: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "cardiomegaly",
        "enlarged cardiac",
        "cardiac enlargement",
        "heart is enlarged",
    ),
    "pleural_effusion": ("pleural effusion", "effusion"),
    "pneumothorax": ("pneumothorax",),
    "consolidation": ("consolidation",),
    "pulmonary_edema": ("pulmonary edema", "edema", "oedema"),
    "atelectasis": ("atelectasis",),
    "nodule": ("nodule",),
    "mass": ("mass",),
    "endotracheal_tube": ("endotracheal tube", "et tube"),
    "central_venous_catheter": ("central venous catheter", "central line", "cvc"),
    "nasogastric_tube": ("nasogastric tube", "feeding tube", "ng tube"),
    "pacemaker": ("pacemaker",),
}
_NEGATIONS = ("no ", "not ", "without ", "negative for ", "free of ", "absent", "no evidence of ")


def extract_findings(text: str) -> dict[str, bool]:
    """Rule-based labeller: a finding is positive when mentioned in a sentence with no
    negation cue before the mention (``no``, ``without``, ``negative for`` ...)."""
    labels = {f.key: False for f in FINDING_TYPES}
    for sentence in re.split(r"(?<=[.!?;])\s+|\n", text.lower()):
        for key, phrases in FINDING_PHRASES.items():
            for phrase in phrases:
                position = sentence.find(phrase)
                if position < 0:
                    continue
                before = " " + sentence[:position]
                if not any(cue in before for cue in _NEGATIONS):
                    labels[key] = True
    return labels


def clinical_efficacy_f1(
    reference_labels: Sequence[Mapping[str, bool]], hypotheses: Sequence[str]
) -> float:
    """Micro F1 of findings extracted from generated reports against the reference labels."""
    y: list[bool] = []
    p: list[bool] = []
    for labels, hyp in zip(reference_labels, hypotheses, strict=True):
        extracted = extract_findings(hyp)
        for key in extracted:
            y.append(bool(labels.get(key, False)))
            p.append(extracted[key])
    return f1_score(y, p)


def normalise_answer(text: str) -> str:
    return " ".join(tokens(text))


def vqa_accuracy(references: Sequence[str], answers: Sequence[str]) -> float:
    if not references:
        return float("nan")
    hits = sum(
        normalise_answer(r) == normalise_answer(a) for r, a in zip(references, answers, strict=True)
    )
    return hits / len(references)
