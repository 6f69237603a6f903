"""Gaze samples to training examples: key fixations, token sequences, targets, batches.

The image side (resizing, patches) is :mod:`model.imaging` and the sequence prefix
:mod:`model.prompt`, shared with inference. No torch here except in :func:`collate`; the
rest is numpy so that it can run in data workers and be tested on its own.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from model.abcdef import REGION_STEP, STEPS, Step, inspected_steps
from model.geometry import PatchGrid
from model.imaging import ImageInput, PatchSpec, patchify
from model.prompt import prefix_ids
from model.tokenizer import (
    ANSWER,
    EOS,
    GAZE,
    GAZE_END,
    PAD,
    QUESTION,
    REPORT,
    TextCodec,
)
from model.train.gazedata.sample import GazeFixation, GazeSample

logger = logging.getLogger(__name__)

IGNORE = -100


# -- scanpath targets -------------------------------------------------------------------


@dataclass(frozen=True)
class KeyFixation:
    """A fixation chosen as one of the K gaze targets."""

    patch_index: int
    region: int  # index into settings.regions, or IGNORE
    step: int  # index into STEPS, or IGNORE
    dwell_ms: float
    gap_ms: float


def key_fixations(
    fixations: Sequence[GazeFixation], grid: PatchGrid, k: int, regions: Sequence[str]
) -> list[KeyFixation]:
    """K key fixations in temporal order: the longest dwell in each of K equal time slices.

    Consecutive fixations on the same token are merged first (their dwell adds up). Slicing
    time keeps the reading order and spreads the K points over the whole ABCDEF review.
    Every ABCDEF step the reader visited keeps at least one key fixation: a step that won no
    slice (brief glances, typically the spine and clavicles of step E, or the carina and
    SVC where a normal film's lines and tubes would end, step F) takes the place of the
    shortest key fixation it can replace without uncovering another step, so the K points
    never skip a step the reader inspected (by the rule coverage is measured with).
    """
    on_image = [f for f in fixations if 0 <= f.x < grid.Columns and 0 <= f.y < grid.Rows]
    if not on_image or k <= 0:
        return []
    on_image.sort(key=lambda f: f.start_ms)
    merged: list[tuple[int, GazeFixation, float]] = []
    for f in on_image:
        index = grid.patch_index(f.x, f.y)
        if merged and merged[-1][0] == index:
            i, first, dwell = merged[-1]
            merged[-1] = (i, first, dwell + f.duration_ms)
        else:
            merged.append((index, f, f.duration_ms))
    if len(merged) <= k:
        chosen = list(range(len(merged)))
    else:
        bounds = np.linspace(0, len(merged), k + 1)
        chosen = []
        for s in range(k):
            lo = round(float(bounds[s]))
            hi = max(round(float(bounds[s + 1])), lo + 1)
            best = max(range(lo, min(hi, len(merged))), key=lambda j: merged[j][2])
            chosen.append(best)
        chosen = _cover_steps(chosen, merged)
    region_index = {name: i for i, name in enumerate(regions)}
    out: list[KeyFixation] = []
    previous_end = 0.0
    for j in chosen:
        index, f, dwell = merged[j]
        step = f.step
        if step is None and f.region is not None:
            step = REGION_STEP.get(f.region)
        out.append(
            KeyFixation(
                patch_index=index,
                region=region_index.get(f.region, IGNORE) if f.region else IGNORE,
                step=STEPS.index(step) if step is not None else IGNORE,
                dwell_ms=float(dwell),
                gap_ms=float(max(f.start_ms - previous_end, 0.0)),
            )
        )
        previous_end = f.start_ms + dwell
    return out


def _cover_steps(chosen: list[int], merged: Sequence[tuple[int, GazeFixation, float]]) -> list[int]:
    """Swap chosen indices so that every step the reader inspected is represented.

    Two things are kept, in this order: every step label of the reading (what the step
    head learns, e.g. F on a device), then every step the reading inspects by the rule
    the coverage of the model's trajectory is measured with
    (:func:`model.abcdef.inspected_steps`: also a region's default step, and F at a
    device-check region such as the carina or the SVC of a film without devices). For
    each one the chosen points miss, the longest fixation that has it replaces the
    shortest chosen one whose removal loses nothing already kept.
    """
    covers: list[frozenset[tuple[str, Step]]] = []
    for _, f, _ in merged:
        label = f.step if f.step is not None else REGION_STEP.get(f.region or "")
        items = {("inspected", s) for s in inspected_steps(f.step, f.region)}
        if label is not None:
            items.add(("label", label))
        covers.append(frozenset(items))
    wanted = [(kind, step) for kind in ("label", "inspected") for step in STEPS]
    chosen = list(dict.fromkeys(chosen))
    for item in wanted:
        if not any(item in c for c in covers) or any(item in covers[j] for j in chosen):
            continue
        candidates = [j for j, c in enumerate(covers) if item in c and j not in chosen]
        counts: dict[tuple[str, Step], int] = {}
        for j in chosen:
            for kept in covers[j]:
                counts[kept] = counts.get(kept, 0) + 1
        donors = [j for j in chosen if all(counts[kept] > 1 for kept in covers[j])]
        if not candidates or not donors:
            continue
        drop = min(donors, key=lambda j: (bool(covers[j]), merged[j][2]))
        chosen.remove(drop)
        chosen.append(max(candidates, key=lambda j: merged[j][2]))
    return sorted(chosen)


def apply_gaze_mode(
    targets: list[KeyFixation], mode: str, num_patches: int, rng: random.Random
) -> list[KeyFixation]:
    """The ablations: keep the order, shuffle it, or replace the points by random tokens."""
    if mode == "ordered" or not targets:
        return targets
    if mode == "shuffled":
        shuffled = list(targets)
        rng.shuffle(shuffled)
        return shuffled
    if mode == "random":
        return [
            KeyFixation(rng.randrange(num_patches), IGNORE, IGNORE, t.dwell_ms, t.gap_ms)
            for t in targets
        ]
    if mode == "none":
        return []
    raise ValueError(f"unknown gaze mode {mode!r}")


# -- token sequences --------------------------------------------------------------------


def report_text(sample: GazeSample) -> str:
    """The target report text, one ``Title: text`` line per step then the impression."""
    if sample.report is None:
        return ""
    lines = [f"{s.title}: {sample.report.sections.get(s, '')}".rstrip() for s in STEPS]
    lines.append(f"Impression: {sample.report.impression}")
    return "\n".join(lines)


@dataclass
class Example:
    """One training sequence and its targets (numpy / python)."""

    image: ImageInput
    input_ids: list[int]
    lm_labels: list[int]
    gaze_positions: list[int]  # K positions of <st>
    gaze_end_position: int
    gaze_targets: list[KeyFixation]  # len <= K; missing ones ignored
    finding_labels: npt.NDArray[np.float32]  # (F,)
    finding_known: npt.NDArray[np.bool_]  # (F,)
    boxes: npt.NDArray[np.float32]  # (F, 4) normalised cx, cy, w, h
    box_known: npt.NDArray[np.bool_]  # (F,)
    mask_cover: npt.NDArray[np.float32]  # (F, N)
    mask_known: npt.NDArray[np.bool_]  # (F,)
    #: The mask decoder's targets, (F, N x cells^2) over the cell grid; (F, 0) without one.
    cell_cover: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.float32)
    )


def build_example(
    sample: GazeSample,
    image: ImageInput,
    codec: TextCodec,
    *,
    num_gaze_tokens: int,
    gaze_mode: str,
    finding_keys: Sequence[str],
    regions: Sequence[str],
    rng: random.Random,
    max_vqa: int = 2,
    max_report_tokens: int = 192,
    mask_cells: int = 1,
) -> Example:
    """One reading as a training example. ``mask_cells`` > 1: the mask decoder's targets on
    the cell grid too (:meth:`PatchGrid.subdivided`)."""
    grid = image.grid
    k = 0 if gaze_mode == "none" else num_gaze_tokens
    targets = apply_gaze_mode(
        key_fixations(sample.fixations, grid, k, regions), gaze_mode, grid.num_patches, rng
    )
    ids = prefix_ids(codec, grid.num_patches)
    labels = [IGNORE] * len(ids)
    gaze_positions = list(range(len(ids), len(ids) + k))
    ids += [codec.id(GAZE)] * k + [codec.id(GAZE_END), codec.id(REPORT)]
    labels += [IGNORE] * (k + 2)
    gaze_end_position = len(ids) - 2
    report = [*codec.encode(report_text(sample))[:max_report_tokens], codec.id(EOS)]
    ids += report
    labels += report
    pairs = list(sample.vqa)
    rng.shuffle(pairs)
    for question, answer in pairs[:max_vqa]:
        q = [codec.id(QUESTION), *codec.encode(question), codec.id(ANSWER)]
        a = [*codec.encode(answer), codec.id(EOS)]
        ids += q + a
        labels += [IGNORE] * len(q) + a
    n_f = len(finding_keys)
    finding_labels = np.zeros(n_f, dtype=np.float32)
    finding_known = np.zeros(n_f, dtype=bool)
    for i, key in enumerate(finding_keys):
        if key in sample.labels:
            finding_labels[i] = float(sample.labels[key])
            finding_known[i] = True
    boxes = np.zeros((n_f, 4), dtype=np.float32)
    box_known = np.zeros(n_f, dtype=bool)
    key_index = {key: i for i, key in enumerate(finding_keys)}
    for box in sample.boxes:
        i_box = key_index.get(box.key)
        if i_box is None or box.x1 <= box.x0 or box.y1 <= box.y0 or box_known[i_box]:
            continue
        boxes[i_box] = grid.normalise_box(box.x0, box.y0, box.x1, box.y1)
        box_known[i_box] = True
    # The token masks are the finding queries' attention, which the finding head pools:
    # they learn where the box is. The mask decoder's cells learn the lesion's own pixels.
    mask_cover = mask_targets(None, grid, boxes, box_known)
    cell_cover = np.zeros((n_f, 0), dtype=np.float32)
    if mask_cells > 1:
        cell_cover = mask_targets(
            sample.masks, grid.subdivided(mask_cells), boxes, box_known, finding_keys
        )
    # Targets where the film has a box (devices have none: REFLACX draws no ellipses around
    # them); on a film whose findings are boxed, one labelled absent has an empty mask.
    mask_known = box_known.copy()
    if sample.masks is not None or box_known.any():
        mask_known |= finding_known & (finding_labels == 0)
    return Example(
        image=image,
        input_ids=ids,
        lm_labels=labels,
        gaze_positions=gaze_positions,
        gaze_end_position=gaze_end_position,
        gaze_targets=targets,
        finding_labels=finding_labels,
        finding_known=finding_known,
        boxes=boxes,
        box_known=box_known,
        mask_cover=mask_cover,
        mask_known=mask_known,
        cell_cover=cell_cover,
    )


def mask_targets(
    masks: Mapping[str, npt.NDArray[np.bool_]] | None,
    grid: PatchGrid,
    boxes: npt.NDArray[np.float32],
    box_known: npt.NDArray[np.bool_],
    finding_keys: Sequence[str] = (),
) -> npt.NDArray[np.float32]:
    """(F, cells): each boxed finding's share of each cell of ``grid`` covered by its pixel
    mask where ``masks`` has one (synthetic films), else by its box (the real datasets' weak
    target); zero for the others."""
    cover = np.zeros((len(boxes), grid.num_patches), dtype=np.float32)
    for j in np.flatnonzero(box_known).tolist():
        mask = None if masks is None else masks.get(finding_keys[j])
        if mask is not None and mask.shape == (grid.Rows, grid.Columns):
            cover[j] = grid.coverage_map(mask).ravel()
        else:
            cx, cy, w, h = (float(v) for v in boxes[j])
            cover[j] = _box_cover(grid, cx, cy, w, h)
    return cover


def _box_cover(
    grid: PatchGrid, cx: float, cy: float, w: float, h: float
) -> npt.NDArray[np.float32]:
    """Fraction of each token covered by a normalised box (separable overlap)."""
    edges_x = np.arange(grid.grid_w + 1) / grid.grid_w
    edges_y = np.arange(grid.grid_h + 1) / grid.grid_h
    ox = (
        np.clip(np.minimum(edges_x[1:], cx + w / 2) - np.maximum(edges_x[:-1], cx - w / 2), 0, None)
        * grid.grid_w
    )
    oy = (
        np.clip(np.minimum(edges_y[1:], cy + h / 2) - np.maximum(edges_y[:-1], cy - h / 2), 0, None)
        * grid.grid_h
    )
    cover: npt.NDArray[np.float32] = np.outer(oy, ox).astype(np.float32).ravel()
    return cover


def collate(
    examples: Sequence[Example], codec: TextCodec, num_gaze_tokens: int, spec: PatchSpec
) -> dict[str, Any]:
    """Right-padded tensors for a batch of examples."""
    import torch

    b = len(examples)
    length = max(len(e.input_ids) for e in examples)
    n_max = max(e.image.grid.num_patches for e in examples)
    pad = codec.id(PAD)
    input_ids = torch.full((b, length), pad, dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    lm_labels = torch.full((b, length), IGNORE, dtype=torch.long)
    k = num_gaze_tokens
    gaze_pos = torch.zeros((b, max(k, 1)), dtype=torch.long)
    gaze_idx = torch.full((b, max(k, 1)), IGNORE, dtype=torch.long)
    gaze_region = torch.full((b, max(k, 1)), IGNORE, dtype=torch.long)
    gaze_step = torch.full((b, max(k, 1)), IGNORE, dtype=torch.long)
    gaze_timing = torch.zeros((b, max(k, 1), 2), dtype=torch.float32)
    end_pos = torch.zeros(b, dtype=torch.long)
    grid_hw = torch.zeros((b, 2), dtype=torch.long)
    n_f = len(examples[0].finding_labels)
    mask_cover = torch.zeros((b, n_f, n_max), dtype=torch.float32)
    m_max = max(e.cell_cover.shape[-1] for e in examples)
    cell_cover = torch.zeros((b, n_f, m_max), dtype=torch.float32)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        attention[i, :n] = 1
        lm_labels[i, :n] = torch.tensor(e.lm_labels)
        for j, pos in enumerate(e.gaze_positions):
            gaze_pos[i, j] = pos
        for j, t in enumerate(e.gaze_targets[:k]):
            gaze_idx[i, j] = t.patch_index
            gaze_region[i, j] = t.region
            gaze_step[i, j] = t.step
            gaze_timing[i, j, 0] = float(np.log1p(t.dwell_ms))
            gaze_timing[i, j, 1] = float(np.log1p(t.gap_ms))
        end_pos[i] = e.gaze_end_position
        grid_hw[i, 0] = e.image.grid.grid_h
        grid_hw[i, 1] = e.image.grid.grid_w
        mask_cover[i, :, : e.image.grid.num_patches] = torch.from_numpy(e.mask_cover)
        cell_cover[i, :, : e.cell_cover.shape[-1]] = torch.from_numpy(e.cell_cover)
    return {
        "pixel_values": torch.from_numpy(patchify([e.image for e in examples], spec)),
        "image_grid_thw": torch.tensor([e.image.grid_thw for e in examples], dtype=torch.long),
        "input_ids": input_ids,
        "attention_mask": attention,
        "lm_labels": lm_labels,
        "gaze_positions": gaze_pos,
        "gaze_targets": gaze_idx,
        "gaze_regions": gaze_region,
        "gaze_steps": gaze_step,
        "gaze_timing": gaze_timing,
        "gaze_end_position": end_pos,
        "grid_hw": grid_hw,
        "finding_labels": torch.from_numpy(np.stack([e.finding_labels for e in examples])),
        "finding_known": torch.from_numpy(np.stack([e.finding_known for e in examples])),
        "boxes": torch.from_numpy(np.stack([e.boxes for e in examples])),
        "box_known": torch.from_numpy(np.stack([e.box_known for e in examples])),
        "mask_cover": mask_cover,
        "cell_cover": cell_cover,
        "mask_known": torch.from_numpy(np.stack([e.mask_known for e in examples])),
        "num_gaze_tokens": k,
    }
