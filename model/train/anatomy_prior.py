"""Fitting the anatomy prior of the gaze decoding (:mod:`model.anatomy_prior`) on training
readings: the region atlas from the films' anatomical boxes, the ABCDEF schedule from the
readings' key fixations. Training code: serving reads the fitted prior only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from model.abcdef import REGION_STEP, STEPS, Step
from model.anatomy_prior import (
    ATLAS_SIZE,
    F32,
    AnatomyPrior,
    allocate_schedule,
    smallest_region,
)
from model.architecture import SETTINGS_FILE, GazeXSettings
from model.geometry import PatchGrid, smart_size
from model.train.batching import IGNORE, key_fixations
from model.train.gazedata.sample import GazeSample
from model.train.provenance import film_id

logger = logging.getLogger(__name__)


def fit_atlas(
    samples: Iterable[GazeSample], regions: Sequence[str], size: int = ATLAS_SIZE
) -> tuple[F32, int]:
    """(atlas, films): the share of films whose region at each cell centre is each region
    (smallest containing anatomical box), over the distinct films with anatomy."""
    counts = np.zeros((size, size, len(regions)), dtype=np.float64)
    seen: set[str] = set()
    centres = (np.arange(size) + 0.5) / size
    for s in samples:
        if not s.anatomy:
            continue
        key = film_id(s)
        if key in seen:
            continue
        seen.add(key)
        xs = np.broadcast_to(centres[None, :] * s.width, (size, size))
        ys = np.broadcast_to(centres[:, None] * s.height, (size, size))
        boxes = {b.key: (b.x0, b.y0, b.x1, b.y1) for b in s.anatomy}
        index = smallest_region(np.asarray(xs), np.asarray(ys), boxes, regions)
        rr, cc = np.nonzero(index >= 0)
        np.add.at(counts, (rr, cc, index[rr, cc]), 1.0)
    films = len(seen)
    atlas = (counts / max(films, 1)).astype(np.float32)
    return atlas, films


def step_shares(samples: Iterable[GazeSample], settings: GazeXSettings) -> dict[Step, float]:
    """Share of each ABCDEF step among the training readings' key fixations (the K gaze
    targets, ``model.train.batching.key_fixations``)."""
    spec = settings.patch_spec
    factor = spec.patch_size * spec.merge_size
    counts = dict.fromkeys(STEPS, 0.0)
    k = settings.num_gaze_tokens or 12
    for s in samples:
        height, width = smart_size(s.height, s.width, factor, spec.min_pixels, spec.max_pixels)
        grid = PatchGrid(s.height, s.width, height // factor, width // factor)
        for kf in key_fixations(s.fixations, grid, k, settings.regions):
            if kf.step != IGNORE:
                counts[STEPS[kf.step]] += 1.0
    return counts


def fit_anatomy_prior(
    samples: Sequence[GazeSample], settings: GazeXSettings, size: int = ATLAS_SIZE
) -> dict[str, Any]:
    """The ``anatomy_prior`` of ``gazex.json`` fitted on training readings: the region atlas
    from the films' anatomical boxes and the step schedule from the readings' key fixations.
    An empty dict (unconstrained decoding) when no film has anatomy or no key fixation a
    step, and for a gaze mode other than ``"ordered"``: the ablation's shuffled, random and
    no-gaze models must keep what they learned, or the ablation measures the prior.
    ``dataclasses.replace(settings, anatomy_prior=fit_anatomy_prior(samples, settings))``
    and save (after the thresholds are tuned, or tune them with the prior in place)."""
    if settings.gaze_mode != "ordered" or settings.num_gaze_tokens <= 0:
        logger.info("gaze mode %s: no anatomy prior fitted", settings.gaze_mode)
        return {}
    regions = tuple(r for r in settings.regions if r in REGION_STEP)
    atlas, films = fit_atlas(samples, regions, size)
    shares = step_shares(samples, settings)
    if films == 0 or sum(shares.values()) == 0:
        logger.warning("no anatomy or no labelled key fixations: no anatomy prior fitted")
        return {}
    schedule = allocate_schedule(shares, settings.num_gaze_tokens)
    prior = AnatomyPrior(regions, atlas, schedule, films)
    logger.info(
        "anatomy prior: %d films, atlas %d x %d, schedule %s (key fixation shares %s)",
        films,
        size,
        size,
        "".join(s.value for s in schedule),
        {s.value: round(v / max(sum(shares.values()), 1.0), 3) for s, v in shares.items()},
    )
    return prior.to_json()


def write_anatomy_prior(directory: Path, prior: Mapping[str, Any]) -> None:
    """Put ``prior`` (:func:`fit_anatomy_prior`'s dict) in the ``gazex.json`` of the
    checkpoint in ``directory``; the weights are not rewritten."""
    path = directory / SETTINGS_FILE
    settings = GazeXSettings.from_json(path.read_text())
    path.write_text(replace(settings, anatomy_prior=dict(prior)).to_json())
