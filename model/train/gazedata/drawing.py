"""Pictures of samples: scanpath overlays and contact sheets of several samples.

A scanpath overlay draws the numbered fixations, saccade arrows, finding boxes and dictation
captions of one sample.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model import overlay
from model.abcdef import Step
from model.train.gazedata.sample import GazeSample

logger = logging.getLogger(__name__)

#: One colour per ABCDEF step, those of ``gazex predict --png`` (fixations with no step are
#: white).
STEP_COLOURS: dict[Step | None, tuple[int, int, int]] = {
    **{step: colour for step, colour in overlay.STEP_COLOURS.items()},
    None: (255, 255, 255),
}


def to_rgb(sample: GazeSample) -> Image.Image:
    grey = np.rint(np.clip(sample.image, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _arrow(
    d: ImageDraw.ImageDraw,
    a: tuple[float, float],
    b: tuple[float, float],
    colour: tuple[int, int, int],
    head: float,
) -> None:
    d.line([a, b], fill=colour, width=1)
    ang = math.atan2(b[1] - a[1], b[0] - a[0])
    for da in (2.6, -2.6):
        d.line(
            [b, (b[0] + head * math.cos(ang + da), b[1] + head * math.sin(ang + da))],
            fill=colour,
            width=1,
        )


def draw_scanpath(
    sample: GazeSample, max_fixations: int | None = None, boxes: bool = True
) -> Image.Image:
    """The image with finding boxes, saccade arrows and numbered fixations (radius ~ dwell)."""
    im = to_rgb(sample)
    d = ImageDraw.Draw(im)
    scale = max(sample.width, sample.height) / 512.0
    if boxes:
        for b in sample.boxes:
            d.rectangle(
                [b.x0, b.y0, b.x1 - 1, b.y1 - 1], outline=(255, 60, 60), width=max(1, round(scale))
            )
            d.text((b.x0 + 2, b.y0 + 1), b.key.replace("_", " "), fill=(255, 220, 60))
    fx = [f for f in sample.fixations if 0 <= f.x < sample.width and 0 <= f.y < sample.height]
    if max_fixations is not None:
        fx = fx[:max_fixations]
    for f0, f1 in itertools.pairwise(fx):
        _arrow(d, (f0.x, f0.y), (f1.x, f1.y), (120, 160, 255), 4 * scale)
    for i, f in enumerate(fx, start=1):
        r = (2.0 + math.sqrt(f.duration_ms) / 6.0) * scale
        colour = STEP_COLOURS.get(f.step, (255, 255, 255))
        d.ellipse([f.x - r, f.y - r, f.x + r, f.y + r], outline=colour, width=max(1, round(scale)))
        d.text((f.x + r, f.y - r), str(i), fill=colour)
    d.text((4, 4), f"{sample.sample_id}  {sample.view}  {sample.reader_id}", fill=(0, 255, 0))
    return im


def contact_sheet(
    images: Sequence[Image.Image], cols: int, tile: int, captions: Sequence[str] = ()
) -> Image.Image:
    """Tiles of ``tile`` x ``tile`` pixels, ``cols`` per row, with optional captions."""
    rows = max(1, math.ceil(len(images) / cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (0, 0, 0))
    d = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % cols) * tile, (i // cols) * tile
        sheet.paste(im.resize((tile, tile), Image.Resampling.LANCZOS), (x, y))
        if i < len(captions):
            d.text((x + 4, y + tile - 14), captions[i], fill=(255, 255, 0))
    return sheet


def _showcase_match(name: str, keys: list[str], view: str) -> bool:
    if name == "normal PA":
        return view == "PA" and not keys
    if name == "normal AP":
        return view == "AP" and not keys
    if name == "ICU: ETT + CVC + NG":
        return {"endotracheal_tube", "central_venous_catheter", "nasogastric_tube"} <= set(keys)
    return keys == [name.replace(" ", "_")]


SHOWCASE: tuple[str, ...] = (
    "normal PA",
    "normal AP",
    "ICU: ETT + CVC + NG",
    "cardiomegaly",
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "pulmonary edema",
    "atelectasis",
    "nodule",
    "mass",
    "pacemaker",
)


def pick_showcase_seeds(limit: int = 400) -> list[tuple[str, int]]:
    """(caption, seed) pairs: normal PA/AP cases, an ICU film and each finding on its own."""
    from model.train.gazedata.synth import sample_case

    found: dict[str, int] = {}
    for seed in range(limit):
        case = sample_case(seed)
        keys = [f.key for f in case.findings]
        for name in SHOWCASE:
            if name not in found and _showcase_match(name, keys, case.view):
                found[name] = seed
        if len(found) == len(SHOWCASE):
            break
    return [(name, found[name]) for name in SHOWCASE if name in found]


def write_contact_sheets(directory: Path, size: int = 512, tile: int = 384) -> tuple[Path, Path]:
    """docs figures: a contact sheet of synthetic films and one of the five readers' scanpaths."""
    from model.train.gazedata.simulated_readers import READERS
    from model.train.gazedata.synth import generate_sample

    directory.mkdir(parents=True, exist_ok=True)
    picks = pick_showcase_seeds()
    films = [to_rgb(generate_sample(seed, size=size)) for _, seed in picks]
    sheet = contact_sheet(films, cols=4, tile=tile, captions=[name for name, _ in picks])
    films_path = directory / "contact_sheet.png"
    sheet.save(films_path)
    seed = next((s for name, s in picks if name == "pleural effusion"), picks[0][1])
    paths = [draw_scanpath(generate_sample(seed, size=size, reader=r.reader_id)) for r in READERS]
    scan = contact_sheet(paths, cols=3, tile=size, captions=[r.reader_id for r in READERS])
    scan_path = directory / "scanpaths.png"
    scan.save(scan_path)
    return films_path, scan_path
