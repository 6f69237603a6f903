"""Gaze to supervision targets: patch indices, key fixations, heatmaps, sentence clusters.

All functions take fixations in image pixel SCOORD (see :mod:`model.train.gazedata.sample`).

- :func:`patch_indices`: the patch each fixation falls in after the image is resized
  (``"stretch"``) or letterboxed (``"letterbox"``, aspect kept, centred, padded) to the
  model input and cut into a ``rows x cols`` grid. Exact for non-square images: a point
  maps through the same affine transform as the pixels, and a patch owns the half-open
  interval ``[c * pw, (c + 1) * pw)``. Fixations off the image, or on letterbox padding,
  get -1.
- :func:`key_fixations`: the K patches with the largest total dwell, ordered by first
  visit (the "Thinking with Gaze" gaze tokens).
- :func:`gaze_heatmap`: duration-weighted sum of Gaussians, sigma 1 degree of visual
  angle when the sample knows its pixels per degree, normalised to sum 1.
- :func:`sentence_clusters`: GazeX-style key frames per dictated sentence: fixations from
  ``lead_ms`` before the sentence starts to its end, merged into spatial clusters
  (centroid weighted by dwell), ordered by time.
- :func:`annotate_regions`: region (smallest containing anatomical box) and ABCDEF step for
  every fixation; a fixation on a device box is step F.
- :func:`locate_points`: the same rule for any image points (evaluation places the model's
  fixations in the test film's anatomy with it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from model.abcdef import REGION_STEP, Step
from model.findings import FINDINGS_BY_KEY
from model.train.gazedata.sample import GazeFixation, GazeSample, LabeledBox, TranscriptSentence
from model.train.gazedata.simulated_readers import region_of_point

logger = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


def _affine(
    image_hw: tuple[int, int], input_hw: tuple[int, int], mode: str
) -> tuple[Fraction, Fraction, Fraction, Fraction]:
    """Exact (scale x, scale y, offset x, offset y) from image to model-input pixels."""
    h, w = image_hw
    ih, iw = input_hw
    if h <= 0 or w <= 0 or ih <= 0 or iw <= 0:
        raise ValueError(f"sizes must be positive, got image {image_hw} and input {input_hw}")
    if mode == "stretch":
        return Fraction(iw, w), Fraction(ih, h), Fraction(0), Fraction(0)
    if mode == "letterbox":
        s = min(Fraction(iw, w), Fraction(ih, h))
        return s, s, (iw - w * s) / 2, (ih - h * s) / 2
    raise ValueError(f"resize mode must be 'stretch' or 'letterbox', got {mode!r}")


def patch_indices(
    fixations: Sequence[GazeFixation],
    image_hw: tuple[int, int],
    input_hw: tuple[int, int],
    grid: tuple[int, int],
    mode: str = "stretch",
) -> I64:
    """Row-major patch index (row * cols + col) of each fixation, -1 when off the image.

    Computed in exact rational arithmetic, so a fixation on a patch border always goes
    to the patch on its right / below, whatever the sizes.
    """
    rows, cols = grid
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be positive, got {grid}")
    ih, iw = input_hw
    sx, sy, ox, oy = _affine(image_hw, input_hw, mode)
    h, w = image_hw
    out = np.full(len(fixations), -1, dtype=np.int64)
    for i, f in enumerate(fixations):
        if not (0.0 <= f.x < w and 0.0 <= f.y < h):
            continue
        x = Fraction(f.x) * sx + ox
        y = Fraction(f.y) * sy + oy
        c = math.floor(x * cols / iw)
        r = math.floor(y * rows / ih)
        if 0 <= c < cols and 0 <= r < rows:
            out[i] = r * cols + c
    return out


@dataclass(frozen=True)
class KeyFixation:
    """One key gaze location: its patch, dwell-weighted centroid, first visit and dwell."""

    patch: int
    x: float
    y: float
    first_ms: float
    dwell_ms: float


def key_fixations(
    fixations: Sequence[GazeFixation],
    image_hw: tuple[int, int],
    input_hw: tuple[int, int],
    grid: tuple[int, int],
    k: int,
    mode: str = "stretch",
) -> tuple[KeyFixation, ...]:
    """The ``k`` patches with the largest dwell, ordered by their first visit."""
    idx = patch_indices(fixations, image_hw, input_hw, grid, mode)
    acc: dict[int, list[float]] = {}
    for f, p in zip(fixations, idx, strict=True):
        if p < 0:
            continue
        a = acc.setdefault(int(p), [0.0, 0.0, 0.0, f.start_ms])
        a[0] += f.duration_ms
        a[1] += f.x * f.duration_ms
        a[2] += f.y * f.duration_ms
        a[3] = min(a[3], f.start_ms)
    top = sorted(acc.items(), key=lambda kv: (-kv[1][0], kv[1][3]))[: max(k, 0)]
    keys = [
        KeyFixation(p, a[1] / max(a[0], 1e-9), a[2] / max(a[0], 1e-9), a[3], a[0]) for p, a in top
    ]
    return tuple(sorted(keys, key=lambda kf: kf.first_ms))


def gaze_heatmap(
    fixations: Sequence[GazeFixation],
    image_hw: tuple[int, int],
    out_hw: tuple[int, int] | None = None,
    pixels_per_degree: float | None = None,
    sigma_px: float | None = None,
) -> F32:
    """Duration-weighted Gaussian heatmap (sum 1; all zeros without on-image fixations).

    Sigma is 1 degree (``pixels_per_degree`` image pixels) when known, else ``sigma_px``,
    else 3 % of the shorter image side; it is scaled with the output size.
    """
    h, w = image_hw
    oh, ow = out_hw or image_hw
    if sigma_px is None:
        sigma_px = pixels_per_degree if pixels_per_degree else 0.03 * min(h, w)
    sx, sy = ow / w, oh / h
    pts = [(f.x * sx, f.y * sy, f.duration_ms) for f in fixations if 0 <= f.x < w and 0 <= f.y < h]
    if not pts:
        return np.zeros((oh, ow), dtype=np.float32)
    arr = np.asarray(pts, dtype=np.float64)
    xs = np.arange(ow) + 0.5
    ys = np.arange(oh) + 0.5
    gx = np.exp(-((xs[None, :] - arr[:, :1]) ** 2) / (2 * (sigma_px * sx) ** 2))
    gy = np.exp(-((ys[None, :] - arr[:, 1:2]) ** 2) / (2 * (sigma_px * sy) ** 2))
    heat = (gy * arr[:, 2:3]).T @ gx  # separable sum over fixations
    total = heat.sum()
    return (heat / total if total > 0 else heat).astype(np.float32)


@dataclass(frozen=True)
class SentenceGaze:
    """The gaze key frames that go with one dictated sentence."""

    sentence: TranscriptSentence
    fixation_indices: tuple[int, ...]
    clusters: tuple[KeyFixation, ...]  # patch = -1: clusters are spatial, not patches


def sentence_clusters(
    sample: GazeSample,
    lead_ms: float = 1500.0,
    radius_px: float | None = None,
) -> tuple[SentenceGaze, ...]:
    """Per-sentence fixation clusters ordered by time (GazeX key frames)."""
    radius = radius_px or 2.0 * (
        sample.pixels_per_degree or 0.03 * min(sample.height, sample.width)
    )
    out = []
    for s in sample.sentences:
        idx = tuple(
            i
            for i, f in enumerate(sample.fixations)
            if f.end_ms > s.start_ms - lead_ms
            and f.start_ms < s.end_ms
            and 0 <= f.x < sample.width
            and 0 <= f.y < sample.height
        )
        clusters: list[list[float]] = []  # [sum_w, sum_wx, sum_wy, first_ms]
        for i in idx:
            f = sample.fixations[i]
            for c in clusters:
                cx, cy = c[1] / c[0], c[2] / c[0]
                if math.hypot(f.x - cx, f.y - cy) <= radius:
                    c[0] += f.duration_ms
                    c[1] += f.x * f.duration_ms
                    c[2] += f.y * f.duration_ms
                    break
            else:
                clusters.append(
                    [f.duration_ms, f.x * f.duration_ms, f.y * f.duration_ms, f.start_ms]
                )
        keys = tuple(
            sorted(
                (
                    KeyFixation(-1, c[1] / max(c[0], 1e-9), c[2] / max(c[0], 1e-9), c[3], c[0])
                    for c in clusters
                ),
                key=lambda k: k.first_ms,
            )
        )
        out.append(SentenceGaze(s, idx, keys))
    return tuple(out)


def annotate_regions(
    sample: GazeSample, regions: Mapping[str, tuple[float, float, float, float]] | None = None
) -> GazeSample:
    """A copy of ``sample`` whose fixations carry region and ABCDEF step.

    Regions come from ``regions`` or the sample's anatomical boxes; a fixation inside a
    device box is step F. Fixations with no containing region keep None.
    """
    located = locate_points(sample, [(f.x, f.y) for f in sample.fixations], regions)
    out = [
        replace(f, region=region, step=step)
        for f, (region, step) in zip(sample.fixations, located, strict=True)
    ]
    return replace(sample, fixations=tuple(out))


def locate_points(
    sample: GazeSample,
    points: Sequence[tuple[float, float]],
    regions: Mapping[str, tuple[float, float, float, float]] | None = None,
) -> list[tuple[str | None, Step | None]]:
    """Region and ABCDEF step of image points (x, y) from the film's ground-truth anatomy.

    The region is the smallest anatomical box (``regions`` or ``sample.anatomy``) containing
    the point and the step its default one; a point inside a device box is step F. Points off
    the image or in no region get ``(None, None)`` (``(None, F)`` on a device). The same rule
    labels the readers' fixations for training and, in evaluation, where the model looked.
    """
    regs = (
        dict(regions)
        if regions is not None
        else {b.key: (b.x0, b.y0, b.x1, b.y1) for b in sample.anatomy}
    )
    devices: list[LabeledBox] = [b for b in sample.boxes if FINDINGS_BY_KEY[b.key].device]
    out: list[tuple[str | None, Step | None]] = []
    for x, y in points:
        on_image = 0 <= x < sample.width and 0 <= y < sample.height
        region = region_of_point(x, y, regs) if on_image else None
        step: Step | None = REGION_STEP.get(region) if region else None
        if on_image and any(b.contains(x, y) for b in devices):
            step = Step.FOREIGN_MATERIAL
        out.append((region, step))
    return out
