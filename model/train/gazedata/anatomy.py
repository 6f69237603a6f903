"""Procedural chest anatomy for synthetic PA/AP radiographs.

The thorax is described by a handful of parameters (:class:`Anatomy`) in *field* units: a
square field of side ``min(H, W)`` centred on the image, with ``u`` running left to right and
``v`` top to bottom in ``[0, 1]``. The patient's right is on the image left (radiological
convention), so "right hemidiaphragm" sits at ``u < midline`` and is higher (smaller ``v``).

:func:`render_anatomy` turns the parameters into a *density* map (arbitrary units, more is
whiter once exposed) plus the lung masks and Chest ImaGenome region boxes the readers and
the finding catalogue build on. Nothing here draws random numbers except
:func:`sample_anatomy`, so rendering the same :class:`Anatomy` twice gives identical arrays.

Over 400 lines on purpose: the parameters, the shapes derived from them and the renderer
that composes them (:func:`render_anatomy` alone is some 175 lines) are one procedural model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from model.abcdef import REGIONS

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Anatomy:
    """Parameters of one synthetic chest, in field units (see module docstring)."""

    view: str
    female: bool
    midline: float
    tilt: float  # radians, patient rotation / positioning
    apex: float  # v of the lung apices
    half_width: float  # u half-width of the thoracic cage (inner ribs)
    right_dome: float  # v of the right hemidiaphragm apex (image left)
    left_dome: float
    heart_width: float  # transverse cardiac diameter, u units
    heart_height: float
    carina: float  # v of the carina
    rib_spacing: float
    exposure: float  # < 1 underexposed (whiter), > 1 overexposed (darker)
    noise: float
    vessel_seed: int
    noise_seed: int

    @property
    def thoracic_width(self) -> float:
        return 2.0 * self.half_width

    @property
    def ctr(self) -> float:
        """Cardiothoracic ratio of this anatomy without findings."""
        return self.heart_width / self.thoracic_width

    def dome(self, side: str) -> float:
        return self.right_dome if side == "right" else self.left_dome


def sample_anatomy(rng: np.random.Generator, view: str = "PA") -> Anatomy:
    """Draw a plausible chest: size, rotation, inspiration, exposure and noise vary."""
    ap = view == "AP"
    inspiration = rng.uniform(-0.04, 0.04) + (0.03 if ap else 0.0)  # AP films: shallower
    half_width = rng.uniform(0.34, 0.40)
    right_dome = 0.66 + inspiration + rng.uniform(-0.02, 0.02)
    left_dome = right_dome + rng.uniform(0.015, 0.04)
    heart_width = rng.uniform(0.40, 0.47) * 2 * half_width * (1.08 if ap else 1.0)
    return Anatomy(
        view=view,
        female=bool(rng.random() < 0.5),
        midline=0.5 + rng.uniform(-0.015, 0.015),
        tilt=math.radians(rng.uniform(-3.0, 3.0)),
        apex=rng.uniform(0.09, 0.13),
        half_width=half_width,
        right_dome=right_dome,
        left_dome=left_dome,
        heart_width=heart_width,
        heart_height=rng.uniform(0.22, 0.27),
        carina=rng.uniform(0.30, 0.34),
        rib_spacing=rng.uniform(0.055, 0.062),
        exposure=rng.uniform(0.85, 1.15),
        noise=rng.uniform(0.006, 0.016),
        vessel_seed=int(rng.integers(0, 2**31 - 1)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


@dataclass(frozen=True)
class Grid:
    """Field coordinates of every pixel of an H x W image, with the patient tilt applied."""

    height: int
    width: int
    u: F32
    v: F32
    #: pixels per field unit
    scale: float
    #: pixel offset of the field origin (x0, y0)
    origin: tuple[float, float]

    @classmethod
    def build(cls, height: int, width: int, tilt: float = 0.0, midline: float = 0.5) -> Grid:
        side = float(min(height, width))
        x0 = (width - side) / 2.0
        y0 = (height - side) / 2.0
        xs = (np.arange(width, dtype=np.float32) + 0.5 - x0) / side
        ys = (np.arange(height, dtype=np.float32) + 0.5 - y0) / side
        uu, vv = np.meshgrid(xs, ys)
        if tilt:
            c, s = math.cos(tilt), math.sin(tilt)
            du, dv = uu - midline, vv - 0.5
            uu = (c * du - s * dv + midline).astype(np.float32)
            vv = (s * du + c * dv + 0.5).astype(np.float32)
        return cls(height, width, uu.astype(np.float32), vv.astype(np.float32), side, (x0, y0))

    def to_pixels(
        self, u: float, v: float, tilt: float = 0.0, midline: float = 0.5
    ) -> tuple[float, float]:
        """Field point -> image pixel SCOORD (inverse of the tilt used in :meth:`build`)."""
        if tilt:
            c, s = math.cos(tilt), math.sin(tilt)
            du, dv = u - midline, v - 0.5
            u, v = c * du + s * dv + midline, -s * du + c * dv + 0.5
        return (u * self.scale + self.origin[0], v * self.scale + self.origin[1])


def ramp(x: npt.NDArray[np.floating[Any]] | float, width: float) -> F32:
    """0 for x <= -width/2, 1 for x >= width/2, linear between: a soft step."""
    out: F32 = np.clip(np.asarray(x, dtype=np.float32) / width + 0.5, 0.0, 1.0).astype(np.float32)
    return out


def superellipse(
    g: Grid, cu: float, cv: float, a: float, b: float, p: float = 2.0, edge: float = 0.004
) -> F32:
    """Soft mask of ``|du/a|^p + |dv/b|^p <= 1``, with an edge about ``edge`` field units wide."""
    f = np.abs((g.u - cu) / a) ** p + np.abs((g.v - cv) / b) ** p
    # distance-like quantity near the border: (1 - f) * min(a, b) / p
    return ramp((1.0 - f) * (min(a, b) / p), edge)


def rotated_ellipse(
    g: Grid, cu: float, cv: float, a: float, b: float, angle: float, edge: float = 0.003
) -> F32:
    c, s = math.cos(angle), math.sin(angle)
    du, dv = g.u - cu, g.v - cv
    x = (c * du + s * dv) / a
    y = (-s * du + c * dv) / b
    f = x * x + y * y
    return ramp((1.0 - f) * (min(a, b) / 2.0), edge)


def dome_v(an: Anatomy, side: str, u: npt.NDArray[np.floating[Any]] | float) -> F32:
    """v of the hemidiaphragm under field column u (a parabola, deepest laterally)."""
    sign = -1.0 if side == "right" else 1.0
    centre = an.midline + sign * an.half_width * 0.45
    t = (np.asarray(u, dtype=np.float32) - centre) / (an.half_width * 0.62)
    out: F32 = (an.dome(side) + 0.085 * t * t).astype(np.float32)
    return out


def heart_geometry(
    an: Anatomy, width: float | None = None
) -> tuple[float, float, float, float, float]:
    """(centre u, centre v, semi-axis a, semi-axis b, angle) of the main cardiac ellipse."""
    w = an.heart_width if width is None else width
    # about a third of the heart lies right of the midline (image left)
    cu = an.midline + w * 0.16
    cv = an.left_dome - an.heart_height * 0.30
    return cu, cv, w * 0.50, an.heart_height * 0.52, math.radians(-22.0)


def heart_mask(g: Grid, an: Anatomy, width: float | None = None, edge: float = 0.003) -> F32:
    """Cardiac silhouette: left ventricle/main body plus the right atrial convexity."""
    w = an.heart_width if width is None else width
    cu, cv, a, b, ang = heart_geometry(an, width)
    body = rotated_ellipse(g, cu, cv, a, b, ang, edge)
    ra = rotated_ellipse(g, cu - w * 0.30, cv + b * 0.3, w * 0.24, b * 1.05, 0.0, edge)
    return np.maximum(body, ra)


def lung_masks(g: Grid, an: Anatomy) -> tuple[F32, F32]:
    """Soft masks of the right (image left) and left lung, without the heart carved out."""
    out = []
    for side, sign in (("right", -1.0), ("left", 1.0)):
        cu = an.midline + sign * an.half_width * 0.52
        a = an.half_width * 0.50
        cv = an.apex + 0.40
        shape = superellipse(g, cu, cv, a, 0.40, p=2.6, edge=0.006)
        below = ramp(dome_v(an, side, g.u) - g.v, 0.006)
        # mediastinum: narrow at the top, wider at the hila
        med = an.midline + sign * (0.04 + 0.04 * np.clip((g.v - an.apex) / 0.32, 0.0, 1.0))
        medial = ramp(sign * (g.u - med), 0.006)
        out.append(shape * below * medial)
    return out[0], out[1]


def _polyline(points: list[tuple[float, float]], step: float) -> npt.NDArray[np.float64]:
    """Dense points along a smoothed (Chaikin corner-cutting) polyline."""
    pts = np.asarray(points, dtype=np.float64)
    for _ in range(3):
        if len(pts) < 3:
            break
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        mid = np.stack([q, r], axis=1).reshape(-1, 2)
        pts = np.concatenate([pts[:1], mid[1:-1], pts[-1:]])
    seg = np.diff(pts, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    out = [pts[:1]]
    for p0, d, n in zip(pts[:-1], seg, lengths, strict=True):
        k = max(1, math.ceil(n / step))
        t = (np.arange(1, k + 1) / k)[:, None]
        out.append(p0 + t * d)
    return np.concatenate(out, axis=0)


def splat(
    g: Grid, pts_uv: npt.NDArray[np.float64], weights: npt.NDArray[np.float64] | float = 1.0
) -> F32:
    """Accumulate points (field units, already tilted frame) into an H x W image."""
    img = np.zeros((g.height, g.width), dtype=np.float32)
    # invert the grid mapping approximately via nearest pixel of the un-tilted frame
    x = pts_uv[:, 0] * g.scale + g.origin[0]
    y = pts_uv[:, 1] * g.scale + g.origin[1]
    xi = np.floor(x).astype(np.int64)
    yi = np.floor(y).astype(np.int64)
    ok = (xi >= 0) & (xi < g.width) & (yi >= 0) & (yi < g.height)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), x.shape)
    flat = np.bincount(yi[ok] * g.width + xi[ok], weights=w[ok], minlength=g.height * g.width)
    img += flat.reshape(g.height, g.width).astype(np.float32)
    return img


def draw_curve(
    g: Grid, points: list[tuple[float, float]], width_px: float, tilt: float, midline: float
) -> F32:
    """A smooth line of roughly ``width_px`` pixels through field points, peak value ~1."""
    pts = _polyline(points, step=0.35 / g.scale)
    if tilt:  # points are in the patient frame: rotate them into image pixels
        c, s = math.cos(tilt), math.sin(tilt)
        du, dv = pts[:, 0] - midline, pts[:, 1] - 0.5
        pts = np.stack([c * du + s * dv + midline, -s * du + c * dv + 0.5], axis=1)
    img = splat(g, pts)
    sigma = max(0.5, width_px / 2.5)
    img = ndimage.gaussian_filter(img, sigma, truncate=3.0)
    peak = (1.0 / 0.35) / (math.sqrt(2.0 * math.pi) * sigma)  # centre value of a straight line
    out: F32 = np.clip(img / peak, 0.0, 1.5).astype(np.float32)
    return out


def vessel_tree(g: Grid, an: Anatomy, rng: np.random.Generator) -> F32:
    """Branching pulmonary vessels radiating from both hila, tapering and fading outward.

    Each generation of branches is drawn at once (vectorised): a branch is a gently bending
    arc; its end spawns two thinner, shorter children until the fifth generation.
    """
    pts_all: list[npt.NDArray[np.float64]] = []
    wts_all: list[npt.NDArray[np.float64]] = []
    for sign in (-1.0, 1.0):
        fan = np.linspace(-75, 85, 12)
        angs0 = np.radians(fan + rng.uniform(-8, 8, fan.size))
        u0 = an.midline + sign * (0.08 + rng.uniform(0.0, 0.035, fan.size))
        v0 = an.carina + 0.08 + 0.08 * (fan / 85.0) + rng.uniform(-0.015, 0.015, fan.size)
        length = rng.uniform(0.04, 0.08, fan.size)
        ang = angs0
        for gen in range(5):
            n = u0.size
            k = max(2, int(float(length.mean()) * g.scale / 0.6))
            t = np.linspace(0.0, 1.0, k)[None, :]
            bend = rng.uniform(-0.35, 0.35, n)[:, None]
            angs = ang[:, None] + bend * t
            step = (length / k)[:, None]
            uu = u0[:, None] + np.cumsum(sign * np.cos(angs) * step, axis=1)
            vv = v0[:, None] + np.cumsum(np.sin(angs) * step, axis=1)
            pts_all.append(np.stack([uu.ravel(), vv.ravel()], axis=1))
            wts_all.append(np.full(uu.size, 1.3 / (1.0 + 0.9 * gen)))
            end_u, end_v, end_a = uu[:, -1], vv[:, -1], angs[:, -1]
            u0 = np.concatenate([end_u, end_u])
            v0 = np.concatenate([end_v, end_v])
            ang = np.concatenate([end_a - 0.5, end_a + 0.35]) + rng.uniform(-0.2, 0.2, 2 * n)
            length = np.concatenate([length, length]) * rng.uniform(0.62, 0.8, 2 * n)
    p = np.concatenate(pts_all)
    w = np.concatenate(wts_all)
    if an.tilt:
        c, s = math.cos(an.tilt), math.sin(an.tilt)
        du2, dv2 = p[:, 0] - an.midline, p[:, 1] - 0.5
        p = np.stack([c * du2 + s * dv2 + an.midline, -s * du2 + c * dv2 + 0.5], axis=1)
    dots = splat(g, p, w)
    sigma = max(0.8, g.scale / 330.0)
    fine = ndimage.gaussian_filter(dots, sigma, truncate=3.0) * (
        0.6 * math.sqrt(2.0 * math.pi) * sigma
    )
    coarse_sigma = 2.5 * sigma
    coarse = ndimage.gaussian_filter(dots, coarse_sigma, truncate=2.0) * (
        0.6 * math.sqrt(2.0 * math.pi) * coarse_sigma
    )
    out: F32 = (0.6 * fine + 0.45 * coarse).astype(np.float32)
    return out


@dataclass(frozen=True)
class AnatomyLayers:
    """The rendered pieces of one chest, all H x W float32."""

    density: F32  # full anatomy density, edge-enhanced
    lung_right: F32
    lung_left: F32
    heart: F32
    lung_air: F32  # air column thickness removed inside the lungs (for findings that fill it)
    vessels: F32
    regions: dict[str, tuple[float, float, float, float]]  # pixel SCOORD boxes


def _bone_band(v: F32, centre_v: F32, half: float, valid: F32) -> F32:
    d = np.abs(v - centre_v) / half
    inside = np.clip(1.0 - d, 0.0, 1.0)
    cortex = np.exp(-((d - 0.85) ** 2) / 0.02)
    out: F32 = ((0.55 * np.sqrt(inside) + 0.45 * cortex * (d < 1.15)) * valid).astype(np.float32)
    return out


def _add_bone(
    out: F32,
    g: Grid,
    rows_v: tuple[F32, F32],
    d: F32,
    valid: F32,
    centre: Callable[[npt.NDArray[np.floating]], npt.NDArray[np.floating]],
    half: float,
    amp: float,
    d_range: tuple[float, float],
) -> None:
    """Add one bone band (rib, clavicle) to ``out``, computing only the rows it can touch."""
    cs = centre(np.linspace(d_range[0], d_range[1], 48))
    lo, hi = float(cs.min()) - 1.3 * half, float(cs.max()) + 1.3 * half
    rows = np.flatnonzero((rows_v[1] >= lo) & (rows_v[0] <= hi))
    if rows.size == 0:
        return
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cv = centre(d[r0:r1]).astype(np.float32)
    out[r0:r1] += amp * _bone_band(g.v[r0:r1], cv, half, valid[r0:r1])


def render_anatomy(g: Grid, an: Anatomy) -> AnatomyLayers:
    """Render the base chest (no findings) on grid ``g``."""
    u, v = g.u, g.v
    m = an.midline
    du = u - m
    # --- body outline: neck, shoulders, torso
    shoulder = an.apex + 0.02
    # neck widening along the trapezius slope into rounded shoulders (smoothstep)
    t = np.clip((v - (shoulder - 0.16)) / 0.17, 0.0, 1.0)
    body_hw = np.where(
        v < shoulder + 0.01,
        0.1 + 0.38 * t * t * (3.0 - 2.0 * t),
        0.48 + 0.03 * np.clip((v - shoulder) / 0.4, 0.0, 1.0),
    ).astype(np.float32)
    body = ramp(body_hw - np.abs(du), 0.01)
    thickness = np.sqrt(np.clip(1.0 - (du / 0.52) ** 2, 0.0, 1.0)).astype(np.float32)
    dens = body * (0.22 + 0.70 * thickness**1.5)
    # arms / axillary soft tissue at the extreme sides
    dens += 0.12 * body * ramp(np.abs(du) - 0.44, 0.05)

    lr, ll = lung_masks(g, an)
    heart = heart_mask(g, an)
    # --- lungs: remove an air column, thickest mid-lung
    air = np.zeros_like(u)
    for side, sign, lm in (("right", -1.0, lr), ("left", 1.0, ll)):
        cu = m + sign * an.half_width * 0.5
        lat = np.clip(1.0 - ((u - cu) / (an.half_width * 0.62)) ** 2, 0.0, 1.0)
        dome = dome_v(an, side, u)
        vert = (
            np.clip((dome - v) / 0.08, 0.0, 1.0) ** 0.6
            * np.clip((v - an.apex) / 0.09, 0.0, 1.0) ** 0.5
        )
        air += lm * (0.35 + 0.65 * np.sqrt(lat)) * (0.45 + 0.55 * vert)
    lungs = np.clip(lr + ll, 0.0, 1.0)
    # mediastinal contours that bulge into the lungs: aortic knob, pulmonary trunk, SVC
    knob = superellipse(g, m + 0.05, an.apex + 0.175, 0.042, 0.032, 2.0, 0.004)
    knob = np.maximum(knob, superellipse(g, m + 0.055, an.carina + 0.06, 0.032, 0.04, 2.0, 0.004))
    svc = superellipse(g, m - 0.045, an.apex + 0.21, 0.022, 0.12, 2.0, 0.004)
    medi = np.maximum(knob, svc)
    # the heart border is crisp but the heart is thinner at its edges (lung in front/behind)
    core = heart_mask(g, an, edge=0.05)
    cut = np.maximum(heart * (0.5 + 0.5 * core), medi * 0.9)
    lung_air = (0.56 * air * (1.0 - cut)).astype(np.float32)
    dens -= lung_air

    # --- hila: lobulated densities
    hila = np.zeros_like(u)
    for sign in (-1.0, 1.0):
        hila += superellipse(g, m + sign * 0.095, an.carina + 0.075, 0.035, 0.06, 2.0, 0.02)
    dens += 0.22 * hila * lungs

    # --- vessels
    rng = np.random.default_rng(an.vessel_seed)
    vessels = vessel_tree(g, an, rng)
    hil_dist = np.minimum(
        np.hypot(u - (m - 0.09), v - (an.carina + 0.08)),
        np.hypot(u - (m + 0.09), v - (an.carina + 0.08)),
    )
    fade = np.exp(-((hil_dist / 0.26) ** 2)).astype(np.float32)
    vessels = (vessels * fade * lungs * (1.0 - heart)).astype(np.float32)
    # fine parenchymal texture
    tex = ndimage.gaussian_filter(
        rng.standard_normal((g.height, g.width)).astype(np.float32), 1.2, truncate=2.0
    )
    dens += 0.13 * vessels + 0.025 * tex * lungs

    # --- trachea and main bronchi (air inside the mediastinum)
    tr_u = m + 0.004 * np.sin((v - an.apex) * 8.0)
    trachea = ramp(0.017 - np.abs(u - tr_u), 0.006) * ramp(an.carina - v, 0.01)
    bronchi = np.zeros_like(u)
    for sign, steep in ((-1.0, 1.6), (1.0, 0.9)):
        t = sign * (u - m)
        centre = an.carina + t * steep
        bronchi += ramp(0.012 - np.abs(v - centre), 0.005) * ramp(t, 0.004) * ramp(0.06 - t, 0.01)
    dens -= 0.30 * np.clip(trachea + bronchi, 0.0, 1.0) * (1.0 - lungs)

    # --- spine: vertebral bodies with endplates and pedicles
    spine_w = 0.034 + 0.01 * np.clip(v, 0.0, 1.0)
    spine = ramp(spine_w - np.abs(du), 0.006)
    level = (v - an.apex + 0.03) / 0.045
    endplate = np.exp(-((level - np.round(level)) ** 2) / 0.01)
    ped = np.exp(
        -(((np.abs(du) - spine_w * 0.7) / 0.007) ** 2)
        - ((level - np.round(level) - 0.0) ** 2) / 0.08
    )
    low = 1.0 - 0.6 * ramp(v - an.left_dome, 0.1)
    dens += (spine * (0.09 - 0.025 * endplate) + 0.04 * ped * spine) * low

    # --- ribs: posterior arcs (bright, near-horizontal) and anterior arcs (faint, oblique)
    ribs = np.zeros_like(u)
    rows_v = (v.min(axis=1), v.max(axis=1))
    lw = an.half_width * 1.02
    rib_rng = np.random.default_rng(an.vessel_seed + 1)  # per-rib variation, any resolution
    for sign in (-1.0, 1.0):
        d = sign * du
        dn = d / lw
        below = ramp(an.dome("right" if sign < 0 else "left") + 0.10 - v, 0.08)
        valid_post = ramp(d - 0.03, 0.012) * ramp(1.08 - dn, 0.05) * below
        valid_ant = ramp(d - 0.10, 0.04) * ramp(1.0 - dn, 0.05) * below
        for i in range(11):
            y0 = an.apex - 0.04 + i * an.rib_spacing + float(rib_rng.uniform(-0.005, 0.005))
            k = 1.0 - i / 12.0
            wobble = float(rib_rng.uniform(0.9, 1.1))
            b1, b2 = (0.16 + 0.16 * k) * wobble, (0.75 + 1.1 * k) * wobble

            def post(x: Any, y0: float = y0, b1: float = b1, b2: float = b2) -> Any:
                return y0 - b1 * x + b2 * x * x

            _add_bone(
                ribs,
                g,
                rows_v,
                d,
                valid_post,
                post,
                (0.0115 + 0.002 * i / 10) * float(rib_rng.uniform(0.9, 1.12)),
                (0.09 + 0.03 * k) * float(rib_rng.uniform(0.85, 1.1)),
                (0.02, lw * 1.1),
            )
            ya = an.apex + 0.035 + i * an.rib_spacing * 1.1

            def ant(x: Any, ya: float = ya) -> Any:
                return ya + 0.50 * (lw - x) - 0.35 * (lw - x) ** 2

            _add_bone(ribs, g, rows_v, d, valid_ant, ant, 0.012, 0.045, (0.08, lw * 1.02))
    # ribs are hard to see through the mediastinum and heart
    behind_mediastinum = ramp(0.14 - np.abs(du), 0.05) * (1.0 - lungs)
    dens += ribs * body * (1.0 - 0.7 * behind_mediastinum)

    # --- clavicles and scapulae
    for sign in (-1.0, 1.0):
        d = sign * du
        valid = ramp(d - 0.035, 0.008) * ramp(0.33 - d, 0.02)

        ap = an.view == "AP"  # AP: clavicles higher and flatter, scapulae over the lungs

        def clav(x: Any, top: float = 0.03 if ap else 0.05) -> Any:
            t = np.clip((x - 0.035) / 0.28, 0.0, 1.0)
            return an.apex + top - top * t + 0.018 * np.sin(t * math.pi * 1.6)

        _add_bone(dens, g, rows_v, d, valid, clav, 0.013, 0.20, (0.02, 0.35))
        su = m + sign * (0.33 if ap else 0.40)
        scap = rotated_ellipse(g, su, an.apex + 0.19, 0.075, 0.16, sign * 0.25, 0.02)
        dens += (0.09 if ap else 0.07) * scap * body

    # --- gastric bubble under the left hemidiaphragm
    gd = dome_v(an, "left", m + 0.17)
    bubble = superellipse(g, m + 0.16, float(gd) + 0.035, 0.045, 0.022, 2.2, 0.006) * ramp(
        float(gd) + 0.04 - v, 0.004
    )
    dens -= 0.22 * bubble * (1.0 - lungs)

    # --- breast shadows
    if an.female:
        for sign in (-1.0, 1.0):
            br = superellipse(g, m + sign * 0.26, an.right_dome - 0.02, 0.2, 0.12, 2.0, 0.05)
            dens += 0.09 * br * ramp(v - (an.right_dome - 0.12), 0.08)

    # --- CR-style edge enhancement of the anatomy (not of findings: they stay local)
    k = max(3, round(g.scale / 110.0 * 1.7) * 2 + 1)
    blur = ndimage.uniform_filter(ndimage.uniform_filter(dens, k), k)
    dens = dens + 0.35 * (dens - blur)

    regions = region_boxes(g, an, lr, ll, heart)
    return AnatomyLayers(
        density=dens.astype(np.float32),
        lung_right=lr,
        lung_left=ll,
        heart=heart,
        lung_air=lung_air,
        vessels=vessels,
        regions=regions,
    )


def _mask_box(mask: B) -> tuple[float, float, float, float] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def region_boxes(
    g: Grid, an: Anatomy, lr: F32, ll: F32, heart: F32
) -> dict[str, tuple[float, float, float, float]]:
    """Pixel boxes of every Chest ImaGenome region (model.abcdef.REGIONS)."""
    out: dict[str, tuple[float, float, float, float]] = {}

    def fbox(u0: float, v0: float, u1: float, v1: float) -> tuple[float, float, float, float]:
        corners = [g.to_pixels(a, b, an.tilt, an.midline) for a in (u0, u1) for b in (v0, v1)]
        xs = [c[0] for c in corners]
        ys = [c[1] for c in corners]
        x0 = max(0.0, math.floor(min(xs)))
        y0 = max(0.0, math.floor(min(ys)))
        x1 = min(float(g.width), math.ceil(max(xs)))
        y1 = min(float(g.height), math.ceil(max(ys)))
        return (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))

    m = an.midline
    clav_v = an.apex + 0.05
    hil_top = an.carina + 0.02
    hil_bot = an.carina + 0.14
    for side, lm in (("right", lr), ("left", ll)):
        box = _mask_box(lm > 0.5)
        if box is None:
            continue
        out[f"{side} lung"] = box
        x0, y0, x1, y1 = box

        # convert zone limits (field v) to pixel rows via the untilted mapping
        def row(vv: float) -> float:
            return vv * g.scale + g.origin[1]

        cuts = [y0, min(row(clav_v), y1), min(row(hil_top), y1), min(row(hil_bot), y1), y1]
        names = ["apical zone", "upper lung zone", "mid lung zone", "lower lung zone"]
        for name, a, b in zip(names, cuts[:-1], cuts[1:], strict=True):
            out[f"{side} {name}"] = (
                x0,
                float(math.floor(a)),
                x1,
                float(max(math.ceil(b), math.floor(a) + 1)),
            )
        sign = -1.0 if side == "right" else 1.0
        hu = m + sign * 0.095
        out[f"{side} hilar structures"] = fbox(hu - 0.045, an.carina, hu + 0.045, an.carina + 0.15)
        dome = an.dome(side)
        lat = m + sign * an.half_width * 0.98
        out[f"{side} hemidiaphragm"] = fbox(
            min(m + sign * 0.03, lat), dome - 0.02, max(m + sign * 0.03, lat), dome + 0.09
        )
        out[f"{side} costophrenic angle"] = fbox(
            min(lat, lat - sign * 0.09), dome + 0.03, max(lat, lat - sign * 0.09), dome + 0.12
        )
        out[f"{side} clavicle"] = fbox(
            min(m + sign * 0.03, m + sign * 0.33),
            an.apex - 0.02,
            max(m + sign * 0.03, m + sign * 0.33),
            an.apex + 0.08,
        )
    hb = _mask_box(heart > 0.5)
    if hb is not None:
        out["cardiac silhouette"] = hb
    out["trachea"] = fbox(m - 0.025, 0.0, m + 0.025, an.carina)
    out["carina"] = fbox(m - 0.03, an.carina - 0.025, m + 0.03, an.carina + 0.025)
    out["upper mediastinum"] = fbox(m - 0.07, an.apex, m + 0.07, an.carina + 0.02)
    out["mediastinum"] = fbox(m - 0.08, an.apex, m + 0.09, an.left_dome)
    out["aortic arch"] = fbox(m + 0.025, an.apex + 0.13, m + 0.105, an.apex + 0.21)
    out["svc"] = fbox(m - 0.075, an.apex + 0.08, m - 0.025, an.carina + 0.08)
    cu, _cv, a, b, _ = heart_geometry(an)
    rb = cu - a * 0.9
    out["cavoatrial junction"] = fbox(rb - 0.02, an.carina + 0.07, rb + 0.05, an.carina + 0.12)
    out["right atrium"] = fbox(rb - 0.02, an.carina + 0.1, rb + 0.09, an.right_dome)
    out["spine"] = fbox(m - 0.04, 0.0, m + 0.04, 1.0)
    out["abdomen"] = fbox(
        m - an.half_width, an.left_dome + 0.02, m + an.half_width, an.left_dome + 0.2
    )
    missing = set(REGIONS) - set(out)
    if missing:  # pragma: no cover - every region is defined above
        raise ValueError(f"anatomy lacks regions {sorted(missing)}")
    return {k: out[k] for k in REGIONS}
