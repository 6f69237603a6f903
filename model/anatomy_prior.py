"""The anatomy prior of the gaze decoding: a region atlas and the ABCDEF step schedule.

The gaze tokens learn where a reader looks next, but nothing in their training makes the
model's own scanpath a complete review in ABCDEF order (issue 16, item 3). The prior imposes
the protocol at inference and leaves the rest learned:

- the **schedule** gives each of the K ``<st>`` positions an ABCDEF step, in protocol order,
  every step at least one token, the number per step from the training readings' key
  fixations (the targets the gaze tokens learn from, ``model.train.batching.key_fixations``);
- the **atlas** holds, on a ``size x size`` grid of cells in normalised film coordinates
  (u = x / Columns, v = y / Rows), how often each Chest ImaGenome region is the one a point
  at the cell's centre lies in (the smallest anatomical box containing it, the rule that
  labels the readers' fixations), over the training films' anatomy.

At each ``<st>`` the pointer's softmax is restricted to the image tokens holding a cell of its
step (the cell's most frequent region is one of the step's, with at least
:data:`MIN_CONFIDENCE` of the films; step F: a region where lines and tubes end), and the
model's own pointer logits choose among them (where to look within the step is learned), the
dwell head how long. The fixation's point is the centre of that token's most confident cell
of the step, and its region label that cell's region, so the label names where the point
lies up to the atlas' accuracy. The same atlas names where a finding's box lies
(:meth:`AnatomyPrior.box_region`), so the report's location words follow the drawing.

Fitted without touching the weights (``gazex calibrate-anatomy``; ``gazex train`` calls
:func:`model.train.anatomy_prior.fit_anatomy_prior` at its end) and stored in
``gazex.json`` (``anatomy_prior``); an empty one leaves the decoding unconstrained, as
before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from model.abcdef import DEVICE_CHECK_REGIONS, REGION_STEP, STEPS, Step
from model.consistency import SIDE_KEYS, ZONE_KEYS, side_of
from model.geometry import PatchGrid

if TYPE_CHECKING:
    from model.architecture import GazeXSettings

logger = logging.getLogger(__name__)

#: Version of the JSON layout in ``gazex.json``'s ``anatomy_prior``.
PRIOR_FORMAT = 1
#: Atlas cells per side (a 256 px film: 4 px a cell; a token of the 8 x 8 grid holds 8 x 8;
#: the trachea is 2-3 cells wide).
ATLAS_SIZE = 64
#: A cell belongs to a step when its most frequent region is one of the step's in at least
#: this share of the training films (else the step falls back to the most confident cells).
MIN_CONFIDENCE = 0.9
#: Lung zones: the region words of a nodule, mass or consolidation ("in the left upper lung
#: zone"), from where the finding's box lies.
LUNG_ZONES: tuple[str, ...] = tuple(
    f"{side} {zone}"
    for side in ("right", "left")
    for zone in ("apical zone", "upper lung zone", "mid lung zone", "lower lung zone")
)

F32 = npt.NDArray[np.float32]
Box = tuple[float, float, float, float]


def step_regions(step: Step) -> frozenset[str]:
    """Regions whose points a fixation of ``step`` may take: the step's own regions; for F
    (foreign material) the regions where lines and tubes end and are checked on every film."""
    if step is Step.FOREIGN_MATERIAL:
        return DEVICE_CHECK_REGIONS
    return frozenset(r for r, s in REGION_STEP.items() if s is step)


def smallest_region(
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    boxes: Mapping[str, Box],
    regions: Sequence[str],
) -> npt.NDArray[np.int64]:
    """Index into ``regions`` of the smallest box containing each point (inclusive edges,
    as ``locate_points``), -1 where none does."""
    out = np.full(xs.shape, -1, dtype=np.int64)
    best = np.full(xs.shape, np.inf)
    for name, (x0, y0, x1, y1) in boxes.items():
        if name not in regions:
            continue
        area = (x1 - x0) * (y1 - y0)
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1) & (area < best)
        out[inside] = regions.index(name)
        best[inside] = area
    return out


def allocate_schedule(shares: Mapping[Step, float], k: int) -> tuple[Step, ...]:
    """K steps in protocol order, each step at least one token (when K >= 6), the rest given
    one at a time to the step furthest below its share of K."""
    total = sum(max(v, 0.0) for v in shares.values())
    weights = {s: (max(shares.get(s, 0.0), 0.0) / total if total > 0 else 1 / 6) for s in STEPS}
    if k < len(STEPS):
        kept = sorted(STEPS, key=lambda s: -weights[s])[:k]
        return tuple(s for s in STEPS if s in kept)
    counts = dict.fromkeys(STEPS, 1)
    for _ in range(k - len(STEPS)):
        step = max(STEPS, key=lambda s: (weights[s] * k - counts[s], -STEPS.index(s)))
        counts[step] += 1
    return tuple(s for s in STEPS for _ in range(counts[s]))


@dataclass(frozen=True)
class TokenPlan:
    """The decoding plan of one token grid: per step, which tokens the pointer may take, and
    for each such token the point (fractions of the film) and region index it labels."""

    #: (6, N) bool: token n holds a cell of step s.
    allowed: npt.NDArray[np.bool_]
    #: (6, N, 2) the point (u, v) of token n for step s (its most confident cell's centre).
    points: F32
    #: (6, N) region index (into the prior's regions) of that cell, -1 where not allowed.
    regions: npt.NDArray[np.int64]


@dataclass(frozen=True)
class AnatomyPrior:
    """A fitted region atlas and step schedule (see the module docstring)."""

    regions: tuple[str, ...]
    #: (size, size, len(regions)) share of the training films whose region at the cell's
    #: centre is each region (rows: v, columns: u); a cell's shares sum to at most 1.
    atlas: F32
    schedule: tuple[Step, ...]
    films: int
    min_confidence: float = MIN_CONFIDENCE

    @property
    def size(self) -> int:
        return int(self.atlas.shape[0])

    # -- JSON -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Sparse and compact: one string per atlas row, its cells separated by ``;``, each
        cell's regions of at least 1 % as ``index:percent`` separated by ``,``."""
        percent = np.rint(self.atlas * 100).astype(np.int64)
        rows = []
        for row in percent:
            rows.append(
                ";".join(",".join(f"{i}:{cell[i]}" for i in np.flatnonzero(cell)) for cell in row)
            )
        return {
            "format": PRIOR_FORMAT,
            "films": self.films,
            "size": self.size,
            "min_confidence": self.min_confidence,
            "schedule": "".join(s.value for s in self.schedule),
            "regions": list(self.regions),
            "atlas": rows,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AnatomyPrior:
        """The prior :meth:`to_json` wrote; ``ValueError`` when it is not one."""
        if data.get("format") != PRIOR_FORMAT:
            raise ValueError(f"anatomy prior format {data.get('format')!r} is not {PRIOR_FORMAT}")
        size = int(data["size"])
        regions = tuple(str(r) for r in data["regions"])
        rows = list(data["atlas"])
        atlas = np.zeros((size, size, len(regions)), dtype=np.float32)
        if len(rows) != size:
            raise ValueError(f"anatomy prior has {len(rows)} atlas rows, not {size}")
        for r, text in enumerate(rows):
            cells = str(text).split(";")
            if len(cells) != size:
                raise ValueError(f"anatomy prior row {r} has {len(cells)} cells, not {size}")
            for c, cell in enumerate(cells):
                for pair in filter(None, cell.split(",")):
                    index, percent = pair.split(":")
                    atlas[r, c, int(index)] = float(percent) / 100.0
        schedule = tuple(Step(c) for c in str(data["schedule"]))
        if not schedule:
            raise ValueError("anatomy prior has an empty step schedule")
        return cls(
            regions=regions,
            atlas=atlas,
            schedule=schedule,
            films=int(data.get("films", 0)),
            min_confidence=float(data.get("min_confidence", MIN_CONFIDENCE)),
        )

    # -- lookups ----------------------------------------------------------------------

    def cell_of(self, u: float, v: float) -> tuple[int, int]:
        """(row, column) of the cell holding normalised point (u, v); clamped."""
        size = self.size
        return (
            min(max(math.floor(v * size), 0), size - 1),
            min(max(math.floor(u * size), 0), size - 1),
        )

    def region_at(self, u: float, v: float) -> str | None:
        """The most frequent region at (u, v), None where most films have none there."""
        row, col = self.cell_of(u, v)
        shares = self.atlas[row, col]
        if float(shares.max()) <= 1.0 - float(shares.sum()):
            return None
        return self.regions[int(shares.argmax())]

    def box_region(
        self, box: Box, columns: int, rows: int, among: Iterable[str] = ()
    ) -> str | None:
        """Where a box (SCOORD pixels of a ``columns`` x ``rows`` film) lies: the region with
        the largest summed share over the atlas cells whose centres the box covers (the
        cell of its centre when it covers none), among ``among`` when given; when no cell
        has any of those, the one nearest the box's centre whose most frequent region is."""
        names = list(among) or list(self.regions)
        index = [self.regions.index(n) for n in names if n in self.regions]
        if not index:
            return None
        size = self.size
        x0, y0, x1, y1 = box
        centres = (np.arange(size) + 0.5) / size
        cols = np.flatnonzero((centres * columns >= x0) & (centres * columns <= x1))
        rws = np.flatnonzero((centres * rows >= y0) & (centres * rows <= y1))
        cu, cv = (x0 + x1) / 2 / columns, (y0 + y1) / 2 / rows
        if cols.size == 0 or rws.size == 0:
            r, c = self.cell_of(cu, cv)
            rws, cols = np.array([r]), np.array([c])
        mass = self.atlas[np.ix_(rws, cols, np.asarray(index, dtype=np.int64))].sum(axis=(0, 1))
        if float(mass.max()) > 0:
            return self.regions[index[int(mass.argmax())]]
        labels = self.atlas.argmax(axis=2)
        has = np.isin(labels, index) & (self.atlas.max(axis=2) > 0)
        if not has.any():
            return None
        rr, cc = np.nonzero(has)
        d = ((cc + 0.5) / size - cu) ** 2 + ((rr + 0.5) / size - cv) ** 2
        j = int(d.argmin())
        return self.regions[int(labels[rr[j], cc[j]])]

    def plan(self, grid: PatchGrid) -> TokenPlan:
        """Which tokens of ``grid`` each step may take, and the point and region each labels.

        A token holds the atlas cells whose centres lie in it (the cell of its centre when it
        holds none). A cell belongs to a step when its most frequent region is one of
        :func:`step_regions` with at least ``min_confidence`` of the films; a step with no
        such cell anywhere takes the cells of its regions at the highest share found.
        """
        size = self.size
        gh, gw = grid.grid_h, grid.grid_w
        n = gh * gw
        centres = (np.arange(size) + 0.5) / size
        cell_row_token = np.minimum(np.floor(centres * gh).astype(np.int64), gh - 1)
        cell_col_token = np.minimum(np.floor(centres * gw).astype(np.int64), gw - 1)
        token_of_cell = cell_row_token[:, None] * gw + cell_col_token[None, :]  # (size, size)
        labels = self.atlas.argmax(axis=2)
        confidence = self.atlas.max(axis=2)
        members = [np.argwhere(token_of_cell == t) for t in range(n)]
        for t in range(n):
            if members[t].size == 0:
                r, c = divmod(t, gw)
                cell = self.cell_of((c + 0.5) / gw, (r + 0.5) / gh)
                members[t] = np.array([cell])
        allowed = np.zeros((len(STEPS), n), dtype=bool)
        points = np.zeros((len(STEPS), n, 2), dtype=np.float32)
        regions = np.full((len(STEPS), n), -1, dtype=np.int64)
        for s, step in enumerate(STEPS):
            own = [i for i, name in enumerate(self.regions) if name in step_regions(step)]
            of_step = np.isin(labels, own) & (confidence > 0)
            if not of_step.any():
                continue
            floor = min(self.min_confidence, float(confidence[of_step].max()))
            ok = of_step & (confidence >= floor - 1e-6)
            for t in range(n):
                cells = [tuple(m) for m in members[t] if ok[m[0], m[1]]]
                if not cells:
                    continue
                r, c = divmod(t, gw)
                tu, tv = (c + 0.5) / gw, (r + 0.5) / gh

                def rank(
                    cell: tuple[int, int], tu: float = tu, tv: float = tv
                ) -> tuple[float, float]:
                    cu, cv = (cell[1] + 0.5) / size, (cell[0] + 0.5) / size
                    return (-float(confidence[cell]), (cu - tu) ** 2 + (cv - tv) ** 2)

                best = min(cells, key=rank)
                allowed[s, t] = True
                points[s, t] = ((best[1] + 0.5) / size, (best[0] + 0.5) / size)
                regions[s, t] = int(labels[best])
        return TokenPlan(allowed, points, regions)


_CACHE: dict[int, tuple[Mapping[str, Any], AnatomyPrior]] = {}


def cached_prior(settings: GazeXSettings) -> AnatomyPrior | None:
    """:func:`load_prior`, parsed once per settings object (the atlas is a few thousand
    cells; ``build_result`` asks for it on every film)."""
    data = settings.anatomy_prior
    if not data:
        return None
    hit = _CACHE.get(id(data))
    if hit is not None and hit[0] is data:
        return hit[1]
    prior = load_prior(settings)
    if prior is not None:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[id(data)] = (data, prior)
    return prior


def box_regions(
    settings: GazeXSettings,
    grid: PatchGrid,
    boxes: npt.NDArray[np.float32],
    decisions: Mapping[str, bool],
) -> dict[str, str]:
    """Finding key -> the region where its box lies (``boxes``: (F, 4) the finding head's
    cx, cy, w, h fractions), for each present finding, by the checkpoint's atlas
    (:meth:`AnatomyPrior.box_region`): a lung zone for a nodule, mass or consolidation, a
    sided region for an effusion, pneumothorax or atelectasis, any region for the others.
    Empty without an anatomy prior (the report's location words are then the model's)."""
    prior = cached_prior(settings)
    if prior is None:
        return {}
    sided = [r for r in prior.regions if side_of(r)]
    out: dict[str, str] = {}
    for i, key in enumerate(settings.finding_keys):
        if not decisions.get(key, False):
            continue
        among: Sequence[str] = LUNG_ZONES if key in ZONE_KEYS else sided if key in SIDE_KEYS else ()
        box = grid.denormalise_box(*(float(v) for v in boxes[i]))
        region = None
        if not among:  # a heart, a line: the region at the box's centre
            x0, y0, x1, y1 = box
            region = prior.region_at((x0 + x1) / 2 / grid.Columns, (y0 + y1) / 2 / grid.Rows)
        region = region or prior.box_region(box, grid.Columns, grid.Rows, among)
        if region is not None:
            out[key] = region
    return out


def load_prior(settings: GazeXSettings) -> AnatomyPrior | None:
    """The checkpoint's anatomy prior, None when it has none (unconstrained decoding)."""
    data = settings.anatomy_prior
    if not data:
        return None
    prior = AnatomyPrior.from_json(data)
    unknown = set(prior.regions) - set(settings.regions)
    if unknown:
        raise ValueError(f"anatomy prior names regions the checkpoint lacks: {sorted(unknown)}")
    return prior
