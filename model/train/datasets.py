"""Reading training and test samples from a dataset folder for ``gazex train`` / ``gazex eval``.

``--format reflacx``, ``egd`` and ``mimic-eye`` read the real datasets' layouts with the
loaders in :mod:`model.train.gazedata`; ``--format synthetic`` reads a folder written by
``gazex data synth`` (any of the three layouts, detected from its files). Fixations without
a region or ABCDEF step get them from the sample's anatomical boxes
(:func:`model.train.gazedata.supervision.annotate_regions`).

MIMIC-Eye holds the same image as a REFLACX reading (finding ellipses) and an EGD-CXR
reading (anatomical boxes); the loader attaches the anatomy to the REFLACX reading, so the
first reading of an image by a reader is kept and a second one of the same image by the
same reader (same fixations) is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

from model.train.gazedata.sample import GazeSample

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset folder that cannot be read in the requested format."""


def detect_layout(root: Path) -> str:
    """``mimic-eye``, ``reflacx`` or ``egd``, from the files at ``root``."""
    if any(p.is_dir() for p in root.glob("patient_*")):
        return "mimic-eye"
    if (root / "main_data").is_dir() or any(root.glob("metadata_phase_*.csv")):
        return "reflacx"
    if (root / "master_sheet.csv").is_file() or (root / "fixations.csv").is_file():
        return "egd"
    raise DatasetError(
        f"{root}: neither a MIMIC-Eye (patient_*), a REFLACX (main_data/metadata_phase_N.csv) "
        "nor an EGD-CXR (master_sheet.csv, fixations.csv) folder"
    )


def iter_samples(root: Path, fmt: str) -> Iterator[GazeSample]:
    """Samples of the folder in file order, regions annotated where missing."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    layout = detect_layout(root) if fmt == "synthetic" else fmt
    if layout == "reflacx":
        from model.train.gazedata.reflacx import load_reflacx

        samples: Iterable[GazeSample] = load_reflacx(root)
    elif layout == "egd":
        from model.train.gazedata.egd import load_egd

        samples = load_egd(root)
    elif layout == "mimic-eye":
        from model.train.gazedata.mimic_eye import load_mimic_eye

        samples = load_mimic_eye(root)
    else:
        raise DatasetError(f"unknown dataset format {fmt!r}")
    from model.train.gazedata.supervision import annotate_regions

    seen: set[tuple[str, str]] = set()
    for sample in samples:
        image_id = sample.meta.get("dicom_id")
        if image_id:
            if (image_id, sample.reader_id) in seen:
                continue
            seen.add((image_id, sample.reader_id))
        needs_regions = any(f.region is None for f in sample.fixations)
        if needs_regions and sample.anatomy:
            sample = annotate_regions(sample)
        yield sample


def load_split(
    roots: Path | Sequence[Path],
    fmt: str,
    split: str,
    max_samples: int | None = None,
    *,
    readers: Collection[str] = (),
    exclude_readers: Collection[str] = (),
) -> list[GazeSample]:
    """Samples of one or several folders, optionally only / not from some readers.

    Several folders are read in turn (e.g. a REFLACX-layout folder, which carries finding
    boxes, and an EGD-layout one, which carries anatomy and so fixation regions); each
    sample supervises what it has. ``max_samples`` caps each folder. Train and test data
    live in separate folders (another seed), and readers can be held out by id.
    """
    folders = [roots] if isinstance(roots, Path) else list(roots)
    out: list[GazeSample] = []
    for root in folders:
        count = 0
        for sample in iter_samples(root, fmt):
            if readers and sample.reader_id not in readers:
                continue
            if sample.reader_id in exclude_readers:
                continue
            out.append(sample)
            count += 1
            if max_samples is not None and count >= max_samples:
                break
        logger.info("%s: %d samples from %s (%s)", split, count, root.name, fmt)
    if not out:
        raise DatasetError(f"no {split} samples found in {', '.join(str(r) for r in folders)}")
    return out
