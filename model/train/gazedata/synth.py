"""Synthetic chest radiograph studies, in memory, seeded and deterministic.

Quick start (what the model code trains on)::

    from model.train.gazedata.synth import generate_sample, generate_samples

    sample = generate_sample(seed=7, size=256)            # one GazeSample
    sample = generate_sample(7, size=512, reader="R3-comparer", view="AP")
    for s in generate_samples(1000, seed=0, size=256):    # a stream of samples
        ...

``generate_sample(seed, size=256, reader=None, view=None, height=None, width=None)`` returns
a :class:`~model.train.gazedata.sample.GazeSample`: a float32 image in [0, 1] (MONOCHROME2
sense), the reader's fixations (integer pixels, integer ms, with region and ABCDEF step),
dictated sentences, finding labels, boxes and masks, an ABCDEF report and VQA pairs. The
same arguments always give the same sample, bit for bit. ``reader`` is a reader id from
:data:`model.train.gazedata.simulated_readers.READERS` (default: picked by the seed);
``view`` is "PA" or "AP" (default: picked by the seed, about a third AP);
``height``/``width`` override ``size`` for non-square images (e.g. 2500 x 2048 for DICOM
pipeline tests).

Lower level: :func:`sample_case` draws a :class:`CaseSpec` (anatomy + findings) and
:func:`render_case` renders it; rendering a spec with some findings removed changes pixels
only inside the removed findings' boxes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from model.findings import FINDING_KEYS
from model.train.gazedata.anatomy import Anatomy, Grid, render_anatomy, sample_anatomy
from model.train.gazedata.pathology import FindingSpec, render_finding, sample_findings
from model.train.gazedata.reports import build_report, build_vqa
from model.train.gazedata.sample import GazeSample, LabeledBox
from model.train.gazedata.simulated_readers import READERS, READERS_BY_ID, ReaderStyle, read_case
from model.train.provenance import film_id, synthetic_seed

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CaseSpec:
    """Everything that defines one synthetic image: anatomy and findings."""

    seed: int
    anatomy: Anatomy
    findings: tuple[FindingSpec, ...]

    @property
    def view(self) -> str:
        return self.anatomy.view


@dataclass(frozen=True)
class RenderedCase:
    image: F32
    boxes: tuple[LabeledBox, ...]
    masks: dict[str, npt.NDArray[np.bool_]]
    regions: dict[str, tuple[float, float, float, float]]
    #: the findings that were actually drawn (a finding with no visible pixels is dropped)
    findings: tuple[FindingSpec, ...]


def _streams(seed: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def sample_case(seed: int, view: str | None = None) -> CaseSpec:
    """Draw the anatomy and findings of case ``seed``."""
    anat_rng, find_rng, _, _ = _streams(seed)
    if view is None:
        view = "AP" if anat_rng.random() < 0.35 else "PA"
    if view not in ("PA", "AP"):
        raise ValueError(f"synthetic view must be PA or AP, got {view!r}")
    an = sample_anatomy(anat_rng, view)
    return CaseSpec(seed, an, sample_findings(find_rng, an))


def expose(density: F32, an: Anatomy) -> F32:
    """Density -> display value in [0, 1] (MONOCHROME2: dense is white)."""
    img = (1.0 - np.exp(-1.6 * np.clip(density, 0.0, None) / an.exposure) - 0.13) / 0.74
    out: F32 = np.clip(img, 0.0, 1.0).astype(np.float32)
    return out


def _box_of(support: npt.NDArray[np.bool_]) -> tuple[float, float, float, float] | None:
    rows = np.flatnonzero(support.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(support.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _up2_axis(a: F32, axis: int) -> F32:
    """Double one axis with linear interpolation at pixel centres (edges replicated)."""
    prev = np.concatenate(
        [np.take(a, [0], axis=axis), np.take(a, range(a.shape[axis] - 1), axis=axis)], axis=axis
    )
    nxt = np.concatenate(
        [np.take(a, range(1, a.shape[axis]), axis=axis), np.take(a, [-1], axis=axis)], axis=axis
    )
    even = 0.75 * a + 0.25 * prev
    odd = 0.75 * a + 0.25 * nxt
    out: F32 = (
        np.stack([even, odd], axis=axis + 1)
        .reshape(*a.shape[:axis], 2 * a.shape[axis], *a.shape[axis + 1 :])
        .astype(np.float32)
    )
    return out


def _upsample(arr: F32, height: int, width: int, factor: int) -> F32:
    """Bilinear x2 upsampling cropped to ``height`` x ``width`` (identity for factor 1)."""
    if factor == 1:
        return arr
    out = _up2_axis(_up2_axis(arr, 0), 1)
    return out[:height, :width]


def _upsample_mask(
    mask: npt.NDArray[np.bool_], height: int, width: int, factor: int
) -> npt.NDArray[np.bool_]:
    if factor == 1:
        return mask
    return np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)[:height, :width]


def render_case(spec: CaseSpec, height: int, width: int) -> RenderedCase:
    """Render a case at ``height`` x ``width`` pixels.

    Images of 512 px and more are drawn at half resolution and upsampled (bilinear) before
    exposure and detector noise, which are always full resolution. Finding boxes and masks
    are computed after upsampling, so they bound the changed pixels exactly.
    """
    if height < 32 or width < 32:
        raise ValueError(f"image must be at least 32 x 32 pixels, got {height} x {width}")
    an = spec.anatomy
    factor = 2 if min(height, width) >= 512 else 1
    wh, ww = -(-height // factor), -(-width // factor)
    g = Grid.build(wh, ww, an.tilt, an.midline)
    base = render_anatomy(g, an)
    density = _upsample(base.density, height, width, factor)
    boxes: list[LabeledBox] = []
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    drawn: list[FindingSpec] = []
    for f in spec.findings:
        delta, mask = render_finding(g, an, base, f)
        small_support = (np.abs(delta) > 1e-4) | mask
        delta = _upsample(
            np.where(small_support, delta, 0.0).astype(np.float32), height, width, factor
        )
        mask = _upsample_mask(mask, height, width, factor)
        support = (delta != 0.0) | mask
        if f.side == "bilateral":  # one box per side, split at the midline
            mid = round(g.to_pixels(an.midline, 0.5)[0] * factor)
            halves = [support.copy(), support.copy()]
            halves[0][:, mid:] = False
            halves[1][:, :mid] = False
            found = [b for b in (_box_of(h) for h in halves) if b is not None]
        else:
            one = _box_of(support)
            found = [one] if one is not None else []
        if not found:
            logger.debug("finding %s of case %d has no visible pixels; dropped", f.key, spec.seed)
            continue
        density += delta
        boxes.extend(LabeledBox(f.key, *b) for b in found)
        masks[f.key] = mask
        drawn.append(f)
    img = expose(density, an)
    # detector noise (same draws whatever the findings) and a slight heel effect
    noise_rng = np.random.default_rng(an.noise_seed)
    noise = noise_rng.standard_normal((height, width)).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, 0.6) * 1.8
    heel = np.linspace(-0.02, 0.02, width, dtype=np.float32)[None, :]
    img = img + an.noise * noise * (0.5 + 0.8 * img) + heel * (img > 0.02)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    sx = sy = float(factor)
    regions = {
        name: (
            float(np.floor(x0 * sx)),
            float(np.floor(y0 * sy)),
            float(min(width, np.ceil(x1 * sx))),
            float(min(height, np.ceil(y1 * sy))),
        )
        for name, (x0, y0, x1, y1) in base.regions.items()
    }
    return RenderedCase(img, tuple(boxes), masks, regions, tuple(drawn))


def _pick_reader(reader: str | ReaderStyle | None, rng: np.random.Generator) -> ReaderStyle:
    if reader is None:
        return READERS[int(rng.integers(0, len(READERS)))]
    if isinstance(reader, ReaderStyle):
        return reader
    try:
        return READERS_BY_ID[reader]
    except KeyError:
        raise ValueError(f"unknown reader {reader!r}; known: {sorted(READERS_BY_ID)}") from None


def pixels_per_degree(height: int, width: int) -> float:
    """Image pixels per degree of visual angle when the image fills ~40 degrees."""
    return float(max(1, round(min(height, width) / 40.0)))


def generate_sample(
    seed: int,
    size: int = 256,
    reader: str | ReaderStyle | None = None,
    view: str | None = None,
    height: int | None = None,
    width: int | None = None,
) -> GazeSample:
    """One synthetic study read by one simulated radiologist (see module docstring)."""
    h = height or size
    w = width or size
    spec = sample_case(seed, view)
    _, _, reader_rng, read_rng = _streams(seed)
    style = _pick_reader(reader, reader_rng)
    case = render_case(spec, h, w)
    report = build_report(case.findings, spec.anatomy)
    ppd = pixels_per_degree(h, w)
    reading = read_case(style, read_rng, case.regions, case.boxes, report, (h, w), ppd)
    first = next((f.region for f in reading.fixations if f.region), None)
    present = {b.key for b in case.boxes}
    return GazeSample(
        sample_id=f"synth-{seed:06d}",
        image=case.image,
        view=spec.view,
        reader_id=style.reader_id,
        pixels_per_degree=ppd,
        fixations=reading.fixations,
        sentences=reading.sentences,
        labels={k: k in present for k in FINDING_KEYS},
        boxes=case.boxes,
        masks=case.masks,
        report=report.to_report(),
        vqa=build_vqa(case.findings, first),
        meta={
            "dataset": "synthetic",
            "seed": str(seed),
            "missed": ",".join(sorted(reading.missed)),
            "female": str(spec.anatomy.female),
        },
        anatomy=tuple(LabeledBox(name, *box) for name, box in case.regions.items()),
    )


def generate_samples(
    n: int, seed: int = 0, size: int = 256, reader: str | ReaderStyle | None = None
) -> Iterator[GazeSample]:
    """``n`` samples with seeds ``seed, seed + 1, ...``."""
    for i in range(n):
        yield generate_sample(seed + i, size=size, reader=reader)


def generator_masks(sample: GazeSample) -> Mapping[str, npt.NDArray[np.bool_]] | None:
    """The synthetic generator's pixel mask of each finding the film shows, or None.

    A sample generated in memory carries them. A film that ``gazex data synth`` wrote (id
    ``synth-<seed>``) is re-rendered from its seed at its size: the dataset layouts have no
    place for masks, and the case (anatomy, findings, masks) depends on the seed and size
    only, not on the reader, so the masks come back bit for bit without a new file format
    or regenerating the datasets already on disk. The re-rendered boxes must contain the
    film's own; if they do not (the generator changed since the film was written), None.
    A real film has none.
    """
    if sample.masks is not None:
        return sample.masks
    seed = synthetic_seed(film_id(sample))
    if seed is None:
        return None
    case = render_case(sample_case(seed), sample.height, sample.width)
    rendered = {(b.key, b.x0, b.y0, b.x1, b.y1) for b in case.boxes}
    if not {(b.key, b.x0, b.y0, b.x1, b.y1) for b in sample.boxes} <= rendered:
        logger.warning(
            "%s: the generator no longer draws this film's boxes; its masks are not used",
            sample.sample_id,
        )
        return None
    return case.masks


def with_generator_masks(samples: Sequence[GazeSample]) -> list[GazeSample]:
    """``samples`` with the generator's pixel masks attached where it can redraw them (the
    mask decoder's targets on synthetic films; real films keep their boxes as targets)."""
    return [s if s.masks is not None else replace(s, masks=generator_masks(s)) for s in samples]
