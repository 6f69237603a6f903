"""Simulated radiologists: ABCDEF scanpaths with time-aligned dictation.

Each :class:`ReaderStyle` walks the ABCDEF review over the Chest ImaGenome regions of a
case (:data:`model.abcdef.REGION_STEP`), fixating each region a few times with log-normal
durations and Gaussian scatter, with saccade times from the main sequence, refixations,
longer dwell on abnormal regions, an occasional glance off the image and a tunable miss
rate (a region skipped entirely; a finding whose regions were all skipped is not
dictated). The report sentences of each step are dictated while the reader is on that
step; if the dictation outlasts the looking, the reader keeps refixating the step's
regions until the sentence is finished, so sentences and fixations stay aligned in time.

The five readers (documented in ``docs/DATA.md``):

- ``R1-systematic``: strict A-B-C-D-E-F, right lung then left lung, low miss rate.
- ``R2-devices-first``: lines and tubes first when any are present, then A-E.
- ``R3-comparer``: left/right comparison zone by zone (right apex, left apex, ...).
- ``R4-gestalt``: a first glance at the most conspicuous abnormality, then a quick
  ABCDEF with short fixations and a higher miss rate.
- ``R5-trainee``: long fixations, many refixations, wide scatter, returns to every
  abnormal region before the impression.

Coordinates are integer pixels and times integer milliseconds, the precision of the
REFLACX files, so synthetic samples survive a write/load round trip exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.abcdef import REGION_STEP, STEPS, Step
from model.findings import FINDINGS_BY_KEY
from model.train.gazedata.reports import StructuredReport
from model.train.gazedata.sample import GazeFixation, LabeledBox, TranscriptSentence

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ReaderStyle:
    """How one simulated radiologist looks and dictates."""

    reader_id: str
    description: str
    devices_first: bool = False
    compare_sides: bool = False
    gestalt_first: bool = False
    revisit_abnormal: bool = False
    fixations_per_region: float = 2.0
    duration_median_ms: float = 260.0
    duration_sigma: float = 0.45
    scatter: float = 0.3  # fraction of the region half-size
    refixation_rate: float = 0.12
    miss_rate: float = 0.04
    abnormal_dwell: float = 2.5
    off_image_rate: float = 0.01
    words_per_second: float = 2.6
    dictation_lag_ms: float = 350.0


READERS: tuple[ReaderStyle, ...] = (
    ReaderStyle(
        "R1-systematic",
        "Strict ABCDEF order, right lung before left, few misses.",
        miss_rate=0.02,
    ),
    ReaderStyle(
        "R2-devices-first",
        "Checks lines and tubes first when any are present, then ABCDE.",
        devices_first=True,
        duration_median_ms=240.0,
    ),
    ReaderStyle(
        "R3-comparer",
        "Compares left and right zone by zone.",
        compare_sides=True,
        fixations_per_region=1.6,
        refixation_rate=0.2,
    ),
    ReaderStyle(
        "R4-gestalt",
        "Glances at the most conspicuous abnormality first, then a fast ABCDEF.",
        gestalt_first=True,
        fixations_per_region=1.3,
        duration_median_ms=200.0,
        duration_sigma=0.4,
        miss_rate=0.12,
        words_per_second=3.2,
        off_image_rate=0.02,
    ),
    ReaderStyle(
        "R5-trainee",
        "Long fixations, many refixations, wide scatter; "
        "revisits abnormalities before the impression.",
        revisit_abnormal=True,
        fixations_per_region=2.6,
        duration_median_ms=330.0,
        duration_sigma=0.5,
        scatter=0.45,
        refixation_rate=0.3,
        miss_rate=0.06,
        abnormal_dwell=3.0,
        words_per_second=2.1,
        dictation_lag_ms=600.0,
    ),
)

READERS_BY_ID: dict[str, ReaderStyle] = {r.reader_id: r for r in READERS}

#: Regions visited per step, in a default (right-before-left) order.
_STEP_REGIONS: dict[Step, tuple[str, ...]] = {
    Step.AIRWAYS: ("trachea", "carina"),
    Step.BREATHING: (
        "right apical zone",
        "right upper lung zone",
        "right mid lung zone",
        "right lower lung zone",
        "left apical zone",
        "left upper lung zone",
        "left mid lung zone",
        "left lower lung zone",
    ),
    Step.CIRCULATION: (
        "cardiac silhouette",
        "upper mediastinum",
        "aortic arch",
        "right hilar structures",
        "left hilar structures",
    ),
    Step.DIAPHRAGM: (
        "right hemidiaphragm",
        "right costophrenic angle",
        "left hemidiaphragm",
        "left costophrenic angle",
        "abdomen",
    ),
    Step.EXTERNAL: ("spine", "right clavicle", "left clavicle"),
    Step.FOREIGN_MATERIAL: ("trachea", "svc"),
}

_COMPARE_B = (
    "right apical zone",
    "left apical zone",
    "right upper lung zone",
    "left upper lung zone",
    "right mid lung zone",
    "left mid lung zone",
    "right lower lung zone",
    "left lower lung zone",
)

#: Where a reader looks for each device (the tip region last).
_DEVICE_REGIONS: dict[str, tuple[str, ...]] = {
    "endotracheal_tube": ("trachea", "carina"),
    "central_venous_catheter": ("svc", "cavoatrial junction"),
    "nasogastric_tube": ("mediastinum", "abdomen"),
    "pacemaker": ("left upper lung zone", "right atrium"),
}


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / max(area, 1e-6)


def region_of_point(x: float, y: float, regions: Mapping[str, Box]) -> str | None:
    """The smallest region box containing the point, or None."""
    best: tuple[float, str] | None = None
    for name, (x0, y0, x1, y1) in regions.items():
        if x0 <= x <= x1 and y0 <= y <= y1:
            area = (x1 - x0) * (y1 - y0)
            if best is None or area < best[0]:
                best = (area, name)
    return None if best is None else best[1]


@dataclass(frozen=True)
class Reading:
    """A simulated reading: fixations, dictated sentences and the findings dictated."""

    fixations: tuple[GazeFixation, ...]
    sentences: tuple[TranscriptSentence, ...]
    missed: frozenset[str]


def read_case(
    style: ReaderStyle,
    rng: np.random.Generator,
    regions: Mapping[str, Box],
    boxes: Sequence[LabeledBox],
    report: StructuredReport,
    image_size: tuple[int, int],
    pixels_per_degree: float,
) -> Reading:
    """Simulate one reading of a case by ``style``."""
    height, width = image_size
    present = {b.key for b in boxes}
    devices = [k for k in present if FINDINGS_BY_KEY[k].device]
    abnormal: dict[str, list[LabeledBox]] = {}
    for b in boxes:
        if FINDINGS_BY_KEY[b.key].device:
            continue
        for name, rb in regions.items():
            if _overlap(rb, (b.x0, b.y0, b.x1, b.y1)) > 0.25:
                abnormal.setdefault(name, []).append(b)

    order = list(STEPS)
    if style.devices_first and devices:
        order = [Step.FOREIGN_MATERIAL, *[s for s in STEPS if s != Step.FOREIGN_MATERIAL]]

    fixations: list[GazeFixation] = []
    sentences: list[TranscriptSentence] = []
    t = 0.0
    last: tuple[float, float] = (width / 2.0, height / 2.0)
    visited: set[str] = set()
    skipped: set[str] = set()

    def add(x: float, y: float, region: str | None, step: Step | None, dwell: float) -> None:
        nonlocal t, last
        amp_deg = math.hypot(x - last[0], y - last[1]) / pixels_per_degree
        t += 20.0 + 2.2 * amp_deg + rng.uniform(0, 10)  # saccade (main sequence)
        dur = (
            style.duration_median_ms
            * math.exp(style.duration_sigma * rng.standard_normal())
            * dwell
        )
        dur = float(min(max(round(dur), 60), 3000))
        fixations.append(
            GazeFixation(float(round(x)), float(round(y)), float(round(t)), dur, region, step)
        )
        t += dur
        last = (x, y)
        if rng.random() < style.off_image_rate:  # glance at the dictation window
            ox = (
                float(-round(rng.uniform(20, 120)))
                if rng.random() < 0.5
                else float(width + round(rng.uniform(20, 120)))
            )
            oy = float(round(rng.uniform(0, height)))
            t += 40.0
            od = float(round(rng.uniform(150, 500)))
            fixations.append(GazeFixation(ox, oy, float(round(t)), od, None, None))
            t += od

    def look(region: str, step: Step, target: LabeledBox | None = None) -> None:
        rb = regions[region]
        if target is not None:
            cx, cy = target.center
            hx, hy = (target.x1 - target.x0) / 2.0, (target.y1 - target.y0) / 2.0
        else:
            cx, cy = (rb[0] + rb[2]) / 2.0, (rb[1] + rb[3]) / 2.0
            hx, hy = (rb[2] - rb[0]) / 2.0, (rb[3] - rb[1]) / 2.0
        sx = max(style.scatter * hx, 0.3 * pixels_per_degree)
        sy = max(style.scatter * hy, 0.3 * pixels_per_degree)
        x = float(np.clip(cx + sx * rng.standard_normal(), 0, width - 1))
        y = float(np.clip(cy + sy * rng.standard_normal(), 0, height - 1))
        add(x, y, region, step, style.abnormal_dwell**0.5 if target is not None else 1.0)

    def visit(region: str, step: Step) -> None:
        if region not in regions:
            return
        if step != Step.FOREIGN_MATERIAL and rng.random() < style.miss_rate:
            skipped.add(region)
            return
        visited.add(region)
        targets = abnormal.get(region, [])
        n = 1 + int(rng.poisson(max(style.fixations_per_region - 1.0, 0.0)))
        if targets:
            n = math.ceil(n * style.abnormal_dwell)
        for i in range(n):
            look(region, step, targets[i % len(targets)] if targets and i % 2 == 0 else None)
        if rng.random() < style.refixation_rate and fixations:
            look(region, step)

    def step_regions(step: Step) -> list[str]:
        if step == Step.BREATHING and style.compare_sides:
            return list(_COMPARE_B)
        if step == Step.FOREIGN_MATERIAL and devices:
            return [r for k in sorted(devices) for r in _DEVICE_REGIONS[k]]
        return list(_STEP_REGIONS[step])

    if style.gestalt_first and boxes:
        add(
            width / 2.0,
            height / 2.0,
            region_of_point(width / 2.0, height / 2.0, regions),
            None,
            1.0,
        )
        biggest = max(boxes, key=lambda b: (b.x1 - b.x0) * (b.y1 - b.y0))
        cx, cy = biggest.center
        add(cx, cy, region_of_point(cx, cy, regions), FINDINGS_BY_KEY[biggest.key].step, 1.5)

    dictation_free = 0.0
    for step in order:
        step_start = t
        regs = step_regions(step)
        for region in regs:
            visit(region, step)
        # dictate this step's sentences, skipping findings whose regions were all missed
        for s in report.by_step(step):
            if s.positive and _missed(s.key, abnormal, visited):
                continue
            start = max(step_start + style.dictation_lag_ms, dictation_free)
            dur = 1000.0 * max(1, len(s.text.split())) / style.words_per_second
            start_ms, end_ms = float(round(start)), float(round(start + dur))
            sentences.append(TranscriptSentence(s.text, start_ms, end_ms))
            dictation_free = end_ms + 150.0
        # keep looking while still talking about this step (never at a skipped region)
        pool = [r for r in regs if r in visited]
        while t < dictation_free - 150.0:
            if pool:
                look(pool[int(rng.integers(0, len(pool)))], step)
            else:
                add(width / 2.0, height / 2.0, None, None, 1.0)

    # impression: revisit the abnormalities (trainee) or glance at the largest one
    final_regions = [r for r in abnormal if r in visited]
    if not style.revisit_abnormal:
        final_regions = final_regions[:1]
    imp_start = max(t + style.dictation_lag_ms, dictation_free)
    for region in final_regions:
        look(region, REGION_STEP.get(region, Step.BREATHING), abnormal[region][0])
    text = report.impression
    dur = 1000.0 * max(1, len(text.split())) / style.words_per_second
    sentences.append(
        TranscriptSentence(text, float(round(imp_start)), float(round(imp_start + dur)))
    )
    while t < imp_start + dur - 100.0:
        if final_regions:
            r = final_regions[int(rng.integers(0, len(final_regions)))]
            look(r, REGION_STEP.get(r, Step.BREATHING), abnormal[r][0])
        elif "cardiac silhouette" in visited:
            look("cardiac silhouette", Step.CIRCULATION)
        else:
            add(width / 2.0, height / 2.0, None, None, 1.0)
    missed = frozenset(k for k in abnormal_keys(abnormal) if _missed(k, abnormal, visited))
    return Reading(tuple(fixations), tuple(sentences), missed)


def abnormal_keys(abnormal: Mapping[str, list[LabeledBox]]) -> set[str]:
    return {b.key for bs in abnormal.values() for b in bs}


def _missed(key: str | None, abnormal: Mapping[str, list[LabeledBox]], visited: set[str]) -> bool:
    regs = [r for r, bs in abnormal.items() if any(b.key == key for b in bs)]
    return bool(regs) and not any(r in visited for r in regs)
