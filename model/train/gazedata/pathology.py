"""The synthetic finding catalogue: what each finding looks like and where it goes.

Every finding key of :data:`model.findings.FINDING_KEYS` has a renderer that adds a *density
delta* to the base anatomy (:mod:`model.train.gazedata.anatomy`) and returns the
ground-truth mask; the box is the bounding box of everything the finding changed, so a
finding is visible inside its box and has no effect outside it (the tests check both).

- cardiomegaly: enlarged cardiac silhouette, cardiothoracic ratio 0.55-0.68
- pleural_effusion: fluid filling the costophrenic angle with a meniscus rising laterally
- pneumothorax: visceral pleural line, no lung markings beyond it
- consolidation: lobulated air-space opacity with air bronchograms
- pulmonary_edema: bilateral perihilar haze and Kerley B lines at the bases
- atelectasis: plate-like (discoid) band at a lung base
- nodule (< 3 cm) and mass (>= 3 cm, lobulated)
- endotracheal_tube, central_venous_catheter, nasogastric_tube, pacemaker (with leads)

Over 400 lines on purpose: one renderer per finding, all drawn on the same anatomy helpers;
the catalogue reads best as one list.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from model.findings import FINDING_KEYS
from model.train.gazedata.anatomy import (
    Anatomy,
    AnatomyLayers,
    Grid,
    dome_v,
    draw_curve,
    heart_geometry,
    heart_mask,
    lung_masks,
    ramp,
    render_anatomy,
    superellipse,
)

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
B = npt.NDArray[np.bool_]

#: Physical size of the square field (see model.train.gazedata.anatomy), centimetres.
FIELD_CM = 36.0

SEVERITIES = ("mild", "moderate", "severe")
SIZES = ("small", "moderate", "large")
ZONES = ("upper", "mid", "lower")


@dataclass(frozen=True)
class FindingSpec:
    """One finding to draw: key, side, zone, position (field units), size and severity."""

    key: str
    side: str | None = None  # "right" / "left" / "bilateral" / None
    zone: str | None = None  # "upper" / "mid" / "lower"
    u: float = 0.0
    v: float = 0.0
    size: float = 0.0  # field units (radius, depth, ...) or CTR for cardiomegaly
    grade: str = "moderate"  # severity or size word used by reports
    seed: int = 0
    #: device detail (e.g. ETT tip distance above the carina in cm; CVC route)
    detail: str = ""

    def __post_init__(self) -> None:
        if self.key not in FINDING_KEYS:
            raise ValueError(f"unknown finding key {self.key!r}")

    @property
    def region(self) -> str | None:
        """Chest ImaGenome region name for localized lung findings."""
        if self.side in ("right", "left") and self.zone in ZONES:
            return f"{self.side} {self.zone} lung zone"
        return None

    @property
    def size_cm(self) -> float:
        return 2.0 * self.size * FIELD_CM


def _point_grid(u: float, v: float) -> Grid:
    a = np.array([[u]], dtype=np.float32)
    b = np.array([[v]], dtype=np.float32)
    return Grid(1, 1, a, b, 1.0, (0.0, 0.0))


def _inside_lung(an: Anatomy, u: float, v: float, side: str) -> bool:
    pg = _point_grid(u, v)
    lr, ll = lung_masks(pg, an)
    lung = lr if side == "right" else ll
    return bool(lung[0, 0] > 0.95 and heart_mask(pg, an)[0, 0] < 0.05)


def _zone_span(an: Anatomy, zone: str, side: str) -> tuple[float, float]:
    if zone == "upper":
        return an.apex + 0.07, an.carina + 0.02
    if zone == "mid":
        return an.carina + 0.03, an.carina + 0.14
    return an.carina + 0.15, an.dome(side) - 0.05


def _place(
    rng: np.random.Generator, an: Anatomy, side: str, zone: str, margin: float
) -> tuple[float, float] | None:
    sign = -1.0 if side == "right" else 1.0
    v0, v1 = _zone_span(an, zone, side)
    for _ in range(40):
        v = rng.uniform(v0 + margin * 0.5, max(v0 + margin * 0.5 + 1e-3, v1 - margin * 0.5))
        u = an.midline + sign * rng.uniform(0.1 + margin * 0.5, an.half_width * 0.9 - margin)
        ok = all(
            _inside_lung(an, u + du, v + dv, side)
            for du, dv in ((0.0, 0.0), (margin, 0.0), (-margin, 0.0), (0.0, margin), (0.0, -margin))
        )
        if ok:
            return u, v
    return None


def sample_findings(rng: np.random.Generator, an: Anatomy) -> tuple[FindingSpec, ...]:
    """Draw the findings of one case; about a quarter of cases are normal."""
    out: list[FindingSpec] = []
    if rng.random() < 0.25:
        return ()
    icu = an.view == "AP"
    p = {
        "cardiomegaly": 0.25,
        "pleural_effusion": 0.25,
        "pneumothorax": 0.12,
        "consolidation": 0.22,
        "pulmonary_edema": 0.15,
        "atelectasis": 0.2,
        "nodule": 0.15,
        "mass": 0.08,
        "endotracheal_tube": 0.45 if icu else 0.03,
        "central_venous_catheter": 0.45 if icu else 0.08,
        "nasogastric_tube": 0.35 if icu else 0.03,
        "pacemaker": 0.12,
    }
    for key in FINDING_KEYS:
        if rng.random() >= p[key]:
            continue
        spec = sample_finding(rng, an, key)
        if spec is not None:
            out.append(spec)
    if not out:  # the case was meant to be abnormal: force one lung finding
        spec = sample_finding(rng, an, "nodule")
        if spec is not None:
            out.append(spec)
    return tuple(out)


def sample_finding(rng: np.random.Generator, an: Anatomy, key: str) -> FindingSpec | None:
    """Draw one finding of kind ``key`` for this anatomy (None if it cannot be placed)."""
    seed = int(rng.integers(0, 2**31 - 1))
    side = "right" if rng.random() < 0.5 else "left"
    gi = int(rng.integers(0, 3))
    if key == "cardiomegaly":
        ctr = (0.56, 0.61, 0.67)[gi] + rng.uniform(-0.015, 0.015)
        return FindingSpec(key, None, None, 0.0, 0.0, ctr, SEVERITIES[gi], seed)
    if key == "pleural_effusion":
        if rng.random() < 0.25:
            side = "bilateral"
        return FindingSpec(key, side, "lower", 0.0, 0.0, (0.05, 0.12, 0.2)[gi], SIZES[gi], seed)
    if key == "pneumothorax":
        return FindingSpec(key, side, "upper", 0.0, 0.0, (0.025, 0.05, 0.09)[gi], SIZES[gi], seed)
    if key == "pulmonary_edema":
        return FindingSpec(
            key, "bilateral", None, 0.0, 0.0, (0.6, 0.85, 1.1)[gi], SEVERITIES[gi], seed
        )
    if key in ("consolidation", "atelectasis", "nodule", "mass"):
        zone = "lower" if key == "atelectasis" else ZONES[int(rng.integers(0, 3))]
        if key == "consolidation" or key == "atelectasis":
            size = (0.06, 0.08, 0.1)[gi]
        elif key == "nodule":
            size = rng.uniform(0.01, 0.03)  # radius; diameter < 3 cm
            gi = 0 if size < 0.016 else 1
        else:
            size = rng.uniform(0.045, 0.065)
            gi = 1 if size < 0.055 else 2
        spot = _place(rng, an, side, zone, size * 1.3)
        if spot is None:
            return None
        grade = (SIZES if key in ("nodule", "mass") else SEVERITIES)[gi]
        return FindingSpec(key, side, zone, spot[0], spot[1], size, grade, seed)
    if key == "endotracheal_tube":
        cm = float(rng.choice([1.0, 3.0, 4.0, 5.0, 6.0, 8.0], p=[0.1, 0.2, 0.25, 0.25, 0.1, 0.1]))
        return FindingSpec(key, None, None, 0.0, 0.0, cm, "", seed, detail=f"{cm:.0f}")
    if key == "central_venous_catheter":
        route = str(rng.choice(["right internal jugular", "left subclavian", "right subclavian"]))
        tip = str(rng.choice(["cavoatrial junction", "svc", "right atrium"], p=[0.5, 0.35, 0.15]))
        side = "left" if route.startswith("left") else "right"
        return FindingSpec(key, side, None, 0.0, 0.0, 0.0, tip, seed, detail=route)
    if key == "nasogastric_tube":
        tip = "stomach" if rng.random() < 0.85 else "distal esophagus"
        return FindingSpec(key, None, None, 0.0, 0.0, 0.0, tip, seed, detail=tip)
    if key == "pacemaker":
        leads = int(rng.integers(1, 3))
        side = "left" if rng.random() < 0.85 else "right"
        return FindingSpec(key, side, None, 0.0, 0.0, float(leads), "", seed, detail=str(leads))
    raise ValueError(f"no sampler for {key!r}")  # pragma: no cover


def _sphere(g: Grid, u: float, v: float, r: float) -> F32:
    d2 = ((g.u - u) ** 2 + (g.v - v) ** 2) / (r * r)
    return np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)).astype(np.float32)


def render_finding(g: Grid, an: Anatomy, base: AnatomyLayers, spec: FindingSpec) -> tuple[F32, B]:
    """Density delta and ground-truth mask of one finding on grid ``g``."""
    rng = np.random.default_rng(spec.seed)
    lungs = np.clip(base.lung_right + base.lung_left, 0.0, 1.0)
    m = an.midline
    px = g.scale
    key = spec.key
    if key == "cardiomegaly":
        # re-render the chest with the larger heart: borders, edge enhancement and the lung
        # markings it now hides all change together, only around the heart
        big_an = dataclasses.replace(an, heart_width=spec.size * an.thoracic_width)
        big = render_anatomy(g, big_an)
        delta = big.density - base.density
        return delta.astype(np.float32), big.heart > 0.5
    if key == "pleural_effusion":
        delta = np.zeros_like(g.u)
        mask = np.zeros(g.u.shape, dtype=bool)
        for side in ("right", "left") if spec.side == "bilateral" else (spec.side or "right",):
            sign = -1.0 if side == "right" else 1.0
            lung = base.lung_right if side == "right" else base.lung_left
            lat = np.clip(sign * (g.u - m) / an.half_width, 0.0, 1.0)
            level = float(dome_v(an, side, m + sign * an.half_width)) - 0.02 - spec.size
            top = level + 0.35 * spec.size * (1.0 - lat) ** 2 - 0.07 * lat**2
            fluid = ramp(g.v - top, 0.02) * lung
            depth = np.clip((g.v - top) / 0.08, 0.0, 1.0)
            delta += fluid * (base.lung_air * (0.35 + 0.6 * depth) + 0.12 * base.vessels + 0.04)
            mask |= fluid > 0.5
        return delta.astype(np.float32), mask
    if key == "pneumothorax":
        side = spec.side or "right"
        sign = -1.0 if side == "right" else 1.0
        lung = base.lung_right if side == "right" else base.lung_left
        inside = lung > 0.5
        dist = ndimage.distance_transform_edt(inside).astype(np.float32) / px
        # the pleural space is deepest at the apex and tapers to nothing at the lateral
        # mid-lung and towards the mediastinum, so the pleural line meets the chest wall
        taper = np.clip((an.carina + 0.3 - g.v) / 0.25, 0.0, 1.0) * np.clip(
            (sign * (g.u - m) - 0.04) / 0.12, 0.0, 1.0
        )
        depth = spec.size * np.sqrt(taper)
        zone = inside & (taper > 0)
        space = ramp(depth - dist, 0.004) * zone
        line = np.exp(-(((dist - depth) * px / 1.1) ** 2)) * zone * (depth > 0.004)
        delta = -space * (0.13 * base.vessels + 0.03 * lung + 0.07) + 0.16 * line * (1.0 - space)
        return delta.astype(np.float32), (space > 0.5)
    if key == "consolidation":
        r = spec.size
        noise = rng.standard_normal((24, 24)).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, 1.8)
        noise /= max(1e-6, float(np.abs(noise).max()))
        nu = np.clip(((g.u - spec.u) / (2.6 * r) + 0.5) * 23, 0, 23)
        nv = np.clip(((g.v - spec.v) / (2.6 * r) + 0.5) * 23, 0, 23)
        tex = ndimage.map_coordinates(noise, [nv.ravel(), nu.ravel()], order=1).reshape(g.u.shape)
        ell = 1.0 - (((g.u - spec.u) / (1.15 * r)) ** 2 + ((g.v - spec.v) / r) ** 2)
        field = ell + 0.6 * tex
        lung = base.lung_right if spec.side == "right" else base.lung_left
        blob = ramp(field, 0.9) * lung * (ell > -1.2)
        sign = -1.0 if spec.side == "right" else 1.0
        pts = []
        for k in range(3):
            a = math.radians(rng.uniform(-40, 40) + 90 * k / 3)
            pts.append(
                [
                    (spec.u - sign * r * 0.8, spec.v + r * (k - 1) * 0.3),
                    (spec.u, spec.v + r * 0.2 * (k - 1)),
                    (spec.u + sign * r * math.cos(a) * 0.8, spec.v + r * math.sin(a) * 0.6),
                ]
            )
        bronch = sum(draw_curve(g, p, max(1.0, 0.005 * px), an.tilt, an.midline) for p in pts)
        bronch = np.clip(bronch, 0.0, 1.0) * ramp(blob - 0.7, 0.2)
        delta = (
            blob * (base.lung_air * 0.7 + 0.1 * base.vessels + 0.04) - 0.45 * bronch * base.lung_air
        )
        return delta.astype(np.float32), blob > 0.4
    if key == "pulmonary_edema":
        amp = spec.size
        haze = np.zeros_like(g.u)
        for sign in (-1.0, 1.0):
            d = np.hypot((g.u - (m + sign * 0.1)) / 1.2, g.v - (an.carina + 0.09))
            haze += np.exp(-((d / 0.13) ** 2))
        haze = np.clip(haze, 0.0, 1.0) * lungs
        kerley = np.zeros_like(g.u)
        for side, sign in (("right", -1.0), ("left", 1.0)):
            lat_u = m + sign * an.half_width * 0.95
            dome = an.dome(side)
            for j in range(5):
                vv = dome - 0.025 - j * 0.018 + rng.uniform(-0.004, 0.004)
                kerley += draw_curve(
                    g,
                    [(lat_u, vv), (lat_u - sign * 0.035, vv + 0.002)],
                    max(1.0, 0.003 * px),
                    an.tilt,
                    m,
                )
        kerley = np.clip(kerley, 0.0, 1.0) * lungs * ramp(lungs - 0.9, 0.1)
        delta = amp * (0.4 * haze * base.lung_air + 0.08 * kerley)
        mask = (haze > 0.25) | (kerley > 0.2)
        return delta.astype(np.float32), mask
    if key == "atelectasis":
        sign = -1.0 if spec.side == "right" else 1.0
        half = spec.size * 0.7
        ang = math.radians(rng.uniform(-15, 15))
        p0 = (spec.u - half * math.cos(ang), spec.v - sign * half * math.sin(ang))
        p1 = (spec.u + half * math.cos(ang), spec.v + sign * half * math.sin(ang))
        mid = ((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2 + 0.01)  # slightly bowed plate
        band = draw_curve(g, [p0, mid, p1], max(2.0, spec.size * 0.12 * px), an.tilt, m)
        lung = base.lung_right if spec.side == "right" else base.lung_left
        band = np.clip(band, 0.0, 1.0) * lung
        delta = band * (base.lung_air * 0.5 + 0.03)
        return delta.astype(np.float32), band > 0.3
    if key in ("nodule", "mass"):
        if key == "nodule":
            s = _sphere(g, spec.u, spec.v, spec.size)
        else:
            s = _sphere(g, spec.u, spec.v, spec.size * 0.8)
            for k in range(3):
                a = 2 * math.pi * k / 3 + rng.uniform(0, 1)
                s = np.maximum(
                    s,
                    _sphere(
                        g,
                        spec.u + 0.35 * spec.size * math.cos(a),
                        spec.v + 0.35 * spec.size * math.sin(a),
                        spec.size * 0.6,
                    ),
                )
        lung = base.lung_right if spec.side == "right" else base.lung_left
        body = s * np.clip(lung * 1.2, 0.0, 1.0)
        delta = body * (0.32 if key == "nodule" else 0.38)
        return delta.astype(np.float32), body > 0.05
    return _render_device(g, an, base, spec)


def _device_path(an: Anatomy, spec: FindingSpec) -> list[list[tuple[float, float]]]:
    m = an.midline
    cm = 1.0 / FIELD_CM
    if spec.key == "endotracheal_tube":
        tip = an.carina - float(spec.detail or "4") * cm
        return [[(m + 0.002, -0.05), (m + 0.003, an.apex), (m, tip)]]
    if spec.key == "central_venous_catheter":
        cu, cv, a, b, _ = heart_geometry(an)
        tip_v = {"svc": an.carina + 0.02, "cavoatrial junction": an.carina + 0.085}.get(
            spec.grade, an.carina + 0.13
        )
        svc_u = m - 0.042
        if spec.detail == "right internal jugular":
            return [
                [(m - 0.07, -0.05), (m - 0.065, an.apex), (svc_u, an.apex + 0.12), (svc_u, tip_v)]
            ]
        sign = 1.0 if spec.detail.startswith("left") else -1.0
        start = (m + sign * 0.34, an.apex + 0.075)
        return [
            [
                start,
                (m + sign * 0.2, an.apex + 0.06),
                (m + sign * 0.06, an.apex + 0.1),
                (svc_u, an.apex + 0.15),
                (svc_u, tip_v),
            ]
        ]
    if spec.key == "nasogastric_tube":
        gd = float(dome_v(an, "left", m + 0.16))
        pts = [(m + 0.008, -0.05), (m + 0.01, an.carina), (m + 0.03, an.left_dome - 0.02)]
        if spec.grade == "stomach":
            pts += [(m + 0.09, gd + 0.05), (m + 0.17, gd + 0.07), (m + 0.2, gd + 0.03)]
        return [pts]
    if spec.key == "pacemaker":
        sign = 1.0 if spec.side == "left" else -1.0
        gen = (m + sign * 0.22, an.apex + 0.11)
        cu, cv, a, b, _ = heart_geometry(an)
        svc_u = m - 0.04
        ra = (cu - a * 0.65, cv - b * 0.2)
        rv = (cu + a * 0.35, cv + b * 0.55)
        leads = [
            [
                gen,
                (m + sign * 0.1, an.apex + 0.09),
                (svc_u, an.apex + 0.16),
                (svc_u, an.carina + 0.1),
                ra,
            ]
        ]
        if spec.size >= 2:
            leads.append(
                [
                    gen,
                    (m + sign * 0.12, an.apex + 0.1),
                    (svc_u + 0.005, an.apex + 0.17),
                    (svc_u, an.carina + 0.12),
                    (cu - a * 0.3, cv + b * 0.3),
                    rv,
                ]
            )
        return leads
    raise ValueError(f"{spec.key!r} is not a device")  # pragma: no cover


def _render_device(g: Grid, an: Anatomy, base: AnatomyLayers, spec: FindingSpec) -> tuple[F32, B]:
    px = g.scale
    m = an.midline
    img = np.zeros_like(g.u)
    for path in _device_path(an, spec):
        if spec.key == "endotracheal_tube":
            wall = max(1.2, 0.0025 * px)
            off = 0.0055
            for s in (-off, off):
                img += 0.6 * draw_curve(g, [(u + s, v) for u, v in path], wall, an.tilt, m)
            img += 0.1 * draw_curve(g, path, max(2.0, 2 * off * px), an.tilt, m)
        elif spec.key == "nasogastric_tube":  # one radiopaque stripe
            img += 0.55 * draw_curve(g, path, max(1.0, 0.002 * px), an.tilt, m)
        else:
            img += 0.7 * draw_curve(g, path, max(1.0, 0.0025 * px), an.tilt, m)
    if spec.key == "pacemaker":
        sign = 1.0 if spec.side == "left" else -1.0
        gu, gv = m + sign * 0.22, an.apex + 0.11
        can = superellipse(g, gu, gv, 0.04, 0.03, 4.0, 0.003)
        img = np.maximum(img, 1.3 * can)
    img = np.clip(img, 0.0, 1.5).astype(np.float32)
    mask = img > 0.08
    # anything below the mask threshold still changes pixels: keep it inside the box
    return img, mask
