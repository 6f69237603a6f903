"""How often the checkpoint's domain gate flags a film, per kind of input (not a test).

The gate (``model/domain.py``) was fitted on the training films alone; this measures it on
what it never saw:

- held-out synthetic films: seeds from 100000 (``gazex data synth``'s default, disjoint from
  the shipped checkpoint's 0-2599), 256 px, 8-bit like the training PNGs: at most 1 % may be
  flagged. For information, the same generator at 512 px (square) and 640 x 576 px
  (non-square; the training films were all 256 x 256);
- real radiographs: the CR films that registry packages ship: ``pydicom-data`` (NEMA WG04's
  RG1, a chest PA, and RG3, a tibia) and pydicom's own test files (three cervical-spine CRs
  of 16 x 16 px);
- other modalities: every other image in those two packages (CT, MR, NM, US, secondary
  captures) that decodes to a 2-D frame of 32 px or more; the same image in several
  transfer syntaxes counts once per file;
- natural photos: scikit-image's bundled images (``skimage.data``) and the first 100 faces
  of its LFW subset (25 x 25 px);
- heavily transformed held-out films: inverted, rotated 90 and 180 degrees, Gaussian noise
  (sigma 0.1 of the display range), a centre crop of half the side, the top-left quarter,
  contrast cut to 30 % around the mean; for information, milder or subtler changes too.

At least 95 % of each foreign kind must be flagged. Every image goes through what
``gazex predict`` does to a film (DICOM: ``model.pixels.display_image``; others: scaled to
[0, 1] grey) and the model's image prefix (``InferenceEngine.image_features``, the features
``predict`` scores). Scores are Mahalanobis distances; the table shows the median and the
smallest (foreign kinds) or largest (synthetic films) against the threshold.

    .venv/bin/pip install pydicom-data scikit-image     # the dependency group "bench"
    .venv/bin/python benchmarks/bench_domain_gate.py [--held-out 1000] [--transformed 200]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
HELD_OUT_SEED = 100_000
#: The natural photos of ``skimage.data`` that ship inside the wheel (no download).
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


@dataclass
class Kind:
    name: str
    images: list[F32]
    #: "<=1%" for in-domain kinds, ">=95%" for foreign ones, "" for information only.
    target: str
    note: str = ""
    #: Foreign inputs show their smallest score, synthetic films their largest.
    foreign: bool = True


def film(seed: int, height: int, width: int | None = None) -> F32:
    """A held-out synthetic film, quantised to 8 bits like ``gazex data synth``'s PNGs."""
    from model.train.gazedata.synth import generate_sample

    image = generate_sample(seed, height=height, width=width or height).image
    return (np.rint(np.clip(image, 0, 1) * 255) / 255).astype(np.float32)


def grey(array: npt.NDArray[np.generic]) -> F32:
    """Any photo as a [0, 1] grey image (ITU-R BT.601 luma for colour)."""
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114])
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / max(hi - lo, 1e-9)).astype(np.float32)


def dicom_images() -> Iterator[tuple[str, str, F32]]:
    """(file name, modality, display image) of every decodable 2-D image of pydicom's test
    files and of ``pydicom-data`` when installed."""
    import pydicom
    import pydicom.data

    from model.pixels import display_image

    seen: set[str] = set()
    for path in sorted(pydicom.data.get_testdata_files(), key=lambda p: Path(p).name):
        name = Path(path).name
        if name in seen:
            continue
        seen.add(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
                if "PixelData" not in ds or int(ds.get("Rows", 0)) < 1:
                    continue
                image = display_image(ds)
            except Exception:  # noqa: BLE001, S112 - a test file made to be broken
                continue
        yield name, str(ds.get("Modality", "") or "none"), image


TRANSFORMS: dict[str, tuple[Callable[[F32, np.random.Generator], F32], str]] = {
    "inverted": (lambda x, _: 1.0 - x, ">=95%"),
    "rotated 90 degrees": (lambda x, _: np.rot90(x).copy(), ">=95%"),
    "rotated 180 degrees": (lambda x, _: np.rot90(x, 2).copy(), ">=95%"),
    "noise sigma 0.1": (lambda x, r: np.clip(x + r.normal(0, 0.1, x.shape), 0, 1), ">=95%"),
    "centre crop, half the side": (
        lambda x, _: x[
            x.shape[0] // 4 : 3 * x.shape[0] // 4, x.shape[1] // 4 : 3 * x.shape[1] // 4
        ],
        ">=95%",
    ),
    "top-left quarter": (lambda x, _: x[: x.shape[0] // 2, : x.shape[1] // 2], ">=95%"),
    "contrast 30 % around the mean": (lambda x, _: 0.5 + 0.3 * (x - x.mean()), ">=95%"),
    "noise sigma 0.05": (lambda x, r: np.clip(x + r.normal(0, 0.05, x.shape), 0, 1), ""),
    "gamma 2": (lambda x, _: x**2, ""),
    "blur sigma 3 px": (lambda x, _: _blur(x, 3.0), ""),
    "top 60 % (lower chest cut off)": (lambda x, _: x[: int(0.6 * x.shape[0])], ""),
    "flipped left-right": (lambda x, _: x[:, ::-1].copy(), ""),
}


def _blur(x: F32, sigma: float) -> F32:
    from scipy.ndimage import gaussian_filter

    return np.asarray(gaussian_filter(x, sigma), dtype=np.float32)


def kinds(held_out: int, transformed: int) -> list[Kind]:
    out = [
        Kind(
            f"held-out synthetic films, 256 px (seeds {HELD_OUT_SEED}+)",
            [film(HELD_OUT_SEED + i, 256) for i in range(held_out)],
            "<=1%",
            foreign=False,
        ),
        Kind(
            "held-out synthetic films, 512 px",
            [film(HELD_OUT_SEED + 10_000 + i, 512) for i in range(60)],
            "",
            foreign=False,
        ),
        Kind(
            "held-out synthetic films, 640 x 576 px",
            [film(HELD_OUT_SEED + 20_000 + i, 640, 576) for i in range(60)],
            "",
            "non-square: the training films were all square",
            foreign=False,
        ),
    ]
    radiographs: list[F32] = []
    modalities: dict[str, list[F32]] = {}
    names: list[str] = []
    for name, modality, image in dicom_images():
        if min(image.shape) < 32 and modality not in ("CR", "DX"):
            continue
        if modality in ("CR", "DX"):
            radiographs.append(image)
            names.append(name)
        elif modality not in ("SEG", "RTDOSE"):  # label maps and dose grids are no images
            label = {"OT": "OT/SC", "SC": "OT/SC", "none": "no Modality"}.get(modality, modality)
            modalities.setdefault(label, []).append(image)
    if not any(n.startswith("RG1") for n in names):
        print("note: pydicom-data is not installed: only pydicom's 16 px CRs are tested")
    distinct = sorted({n.split("_")[0] for n in names})
    out.append(
        Kind(
            "real radiographs (CR)",
            radiographs,
            ">=95%",
            f"{len(distinct)} distinct films: {', '.join(distinct)}; RG1 and RG3 each in four "
            "transfer syntaxes, two of them lossy",
        )
    )
    for modality, images in sorted(modalities.items()):
        out.append(Kind(f"other modality: {modality}", images, ">=95%"))
    try:
        import skimage.data
    except ImportError:
        print("note: scikit-image is not installed: no natural photos")
    else:
        photos = []
        for name in PHOTOS:
            image = getattr(skimage.data, name)()
            photos.append(grey(image))
        out.append(Kind("natural photos (skimage.data)", photos, ">=95%"))
        faces = np.load(Path(skimage.data.__file__).parent / "lfw_subset.npy")
        out.append(Kind("faces (LFW subset, 25 px)", [grey(f) for f in faces[:100]], ">=95%"))
    base = [film(HELD_OUT_SEED + 30_000 + i, 256) for i in range(transformed)]
    rng = np.random.default_rng(0)
    for name, (transform, target) in TRANSFORMS.items():
        images = [np.asarray(np.clip(transform(x, rng), 0, 1), dtype=np.float32) for x in base]
        out.append(Kind(f"transformed film: {name}", images, target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="default: the shipped checkpoint")
    parser.add_argument("--held-out", type=int, default=1000, help="held-out films at 256 px")
    parser.add_argument("--transformed", type=int, default=200, help="films per transform")
    args = parser.parse_args()
    from pydicom import config as pydicom_config

    logging.basicConfig(level=logging.WARNING)
    pydicom_config.logger.setLevel(logging.CRITICAL)  # broken test files say so at length

    import torch

    from model.imaging import prepare_image
    from model.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.ckpt, device="cpu")
    gate = predictor.gate
    if gate is None:
        raise SystemExit(f"{predictor.checkpoint} has no domain gate: run gazex calibrate-domain")
    spec = predictor.model.settings.patch_spec
    t0 = time.perf_counter()
    table = kinds(args.held_out, args.transformed)
    print(
        f"checkpoint {predictor.checkpoint.name} (sha256 {predictor.info.checkpoint_sha256[:12]}), "
        f"gate {gate.method} on {gate.features}, {gate.films} training films, threshold "
        f"{gate.threshold:.2f}; torch {torch.__version__}, device cpu"
    )
    header = (
        f"{'kind of input':48}{'n':>6}{'flagged':>9}{'%':>8}{'median':>9}{'min/max':>9}"
        f"{'target':>8}  met"
    )
    print(header)
    print("-" * len(header))
    missed = []
    for kind in table:
        if not kind.images:
            continue
        prepared = [prepare_image(im, spec) for im in kind.images]
        scores = gate.distances(predictor.engine.image_features(prepared))
        flagged = int((scores > gate.threshold).sum())
        share = 100.0 * flagged / len(scores)
        extreme = float(scores.min() if kind.foreign else scores.max())
        if kind.target == "<=1%":
            met = "yes" if share <= 1.0 else "NO"
        elif kind.target == ">=95%":
            met = "yes" if share >= 95.0 else "NO"
        else:
            met = "-"
        if met == "NO":
            missed.append(kind.name)
        print(
            f"{kind.name[:48]:48}{len(scores):6d}{flagged:9d}{share:8.1f}"
            f"{float(np.median(scores)):9.1f}{extreme:9.1f}{kind.target or 'info':>8}  {met}"
        )
        if kind.note:
            print(f"    ({kind.note})")
    print(f"\n{time.perf_counter() - t0:.0f} s; targets missed: {', '.join(missed) or 'none'}")


if __name__ == "__main__":
    main()
