"""``gazex data`` subcommands: ``synth`` (write a dataset) and ``inspect`` (summarise one).

``synth`` writes a synthetic dataset in a real layout; ``inspect`` counts the findings and
readers of a dataset folder and draws its scanpaths.

Registration is cheap: numpy, scipy, pydicom and the generators are imported inside the
command functions only.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from model.train.progress import Progress, add_progress_argument
from model.train.provenance import HELD_OUT_SEED

logger = logging.getLogger(__name__)

SYNTH_FORMATS = ("reflacx", "egd", "mimic-eye")
IMAGE_FORMATS = ("dcm", "png", "jpg")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add these subcommands to the ``gazex`` parser; return the ``data`` subcommands, to
    which :func:`model.train.shards.register_data_command` adds ``shard`` (registered from
    :mod:`model.cli`: this package must not import ``model.train.shards`` or
    ``model.train.datasets``, which import it)."""
    data = subparsers.add_parser(
        "data",
        help="synthetic gaze datasets and dataset inspection",
        description="Write synthetic chest radiograph studies with simulated radiologist "
        "scanpaths in the REFLACX / EGD-CXR layouts, or inspect a dataset folder.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="write N synthetic studies in the REFLACX, EGD-CXR or MIMIC-Eye layout",
        description="Generate seeded synthetic studies (image, scanpath, dictation, "
        "labels, boxes) and write them in a real dataset's file layout.",
    )
    synth.add_argument("--out", required=True, type=Path, metavar="DIR")
    synth.add_argument("--n", required=True, type=int, metavar="N", help="number of studies")
    synth.add_argument("--format", choices=SYNTH_FORMATS, default="reflacx")
    synth.add_argument(
        "--seed",
        type=int,
        default=HELD_OUT_SEED,
        help=f"first seed (studies use seed..seed+N-1; default {HELD_OUT_SEED}, outside the "
        "shipped checkpoint's training seeds 0-2599, so the films are held out for `gazex "
        "eval`; give training data its own range, e.g. --seed 0)",
    )
    synth.add_argument(
        "--size", type=int, default=512, metavar="PX", help="image side (default 512)"
    )
    synth.add_argument("--image-format", choices=IMAGE_FORMATS, default="png")
    synth.add_argument(
        "--reader", default=None, help="force one simulated reader (default: by seed)"
    )
    synth.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    add_progress_argument(synth)
    synth.set_defaults(func=run_synth)

    inspect = sub.add_parser(
        "inspect",
        help="print counts per finding and reader; draw scanpaths",
        description="Load a REFLACX, EGD-CXR or MIMIC-Eye folder (real or synthetic), print "
        "counts per finding and per reader, and optionally draw every scanpath.",
    )
    inspect.add_argument("dir", type=Path, metavar="DIR")
    inspect.add_argument(
        "--png", type=Path, metavar="OUTDIR", help="write one scanpath PNG per sample"
    )
    inspect.add_argument("--format", choices=("auto", *SYNTH_FORMATS), default="auto")
    inspect.add_argument("--images-root", type=Path, metavar="DIR", help="MIMIC-CXR images")
    inspect.add_argument("--limit", type=int, default=None, help="stop after N samples")
    inspect.set_defaults(func=run_inspect)
    return sub


# ----------------------------------------------------------------------------- synth


def _synth_one(job: tuple[int, int, int, str, str, str | None]) -> Any:
    """Worker: generate one study, write its own files, return its shared-table rows."""
    from model.train.gazedata import egd, reflacx
    from model.train.gazedata.synth import generate_sample

    index, seed, size, fmt, ext, reader = job
    sample = generate_sample(seed, size=size, reader=reader)
    root = Path(fmt.split("|", 1)[1])
    kind = fmt.split("|", 1)[0]
    if kind == "reflacx":
        return reflacx.write_case(sample, root, ext)
    if kind == "egd":
        egd.write_study(sample, root, ext)
        return egd.study_rows(sample, index, ext)
    from model.train.gazedata.mimic_eye import write_mimic_eye

    write_mimic_eye([sample], root, ext)
    return None


def run_synth(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from model.train.gazedata import egd, reflacx
    from model.train.gazedata.simulated_readers import READERS_BY_ID

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if not 64 <= args.size <= 4096:
        raise ValueError(f"--size must be 64..4096 pixels, got {args.size}")
    if args.reader is not None and args.reader not in READERS_BY_ID:
        raise ValueError(f"unknown --reader {args.reader!r}; known: {sorted(READERS_BY_ID)}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ext = "." + args.image_format
    jobs = [
        (i, args.seed + i, args.size, f"{args.format}|{out}", ext, args.reader)
        for i in range(args.n)
    ]
    results: list[Any] = []
    with Progress(args.n, "study", args.progress, prefix="synth") as bar:
        if args.workers <= 1:
            for job in jobs:
                results.append(_synth_one(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=args.workers) as pool:
                chunk = max(1, min(8, args.n // (4 * args.workers)))
                for r in pool.map(_synth_one, jobs, chunksize=chunk):
                    results.append(r)
                    bar.update()
    if args.format == "reflacx":
        path = reflacx.write_metadata(results, out)
        print(f"wrote {args.n} REFLACX-layout studies to {out} ({path.name})")
    elif args.format == "egd":
        egd.write_tables(results, out)
        print(f"wrote {args.n} EGD-CXR-layout studies to {out}")
    else:
        print(f"wrote {args.n} MIMIC-Eye-layout patients to {out}")
    return 0


# ----------------------------------------------------------------------------- inspect


def detect_format(root: Path) -> str:
    """reflacx / egd / mimic-eye, from the files present."""
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    if any(root.glob("main_data/metadata_phase_*.csv")) or any(root.glob("metadata_phase_*.csv")):
        return "reflacx"
    if (root / "fixations.csv").is_file() and any(root.glob("master_sheet*.csv")):
        return "egd"
    if any(root.glob("patient_*")):
        return "mimic-eye"
    raise ValueError(f"{root}: not a REFLACX, EGD-CXR or MIMIC-Eye folder")


def run_inspect(args: argparse.Namespace) -> int:
    from collections import Counter
    from itertools import islice

    from model.findings import FINDING_KEYS
    from model.train.gazedata import egd, reflacx
    from model.train.gazedata.drawing import draw_scanpath
    from model.train.gazedata.mimic_eye import load_mimic_eye

    root: Path = args.dir
    fmt = detect_format(root) if args.format == "auto" else args.format
    draw = args.png is not None  # REFLACX counts need no pixels; drawing does
    if fmt == "reflacx":
        samples = reflacx.load_reflacx(root, images_root=args.images_root, load_images=draw)
    elif fmt == "egd":  # EGD needs each image's size to map screen gaze to pixels
        samples = egd.load_egd(root, images_root=args.images_root)
    else:
        samples = load_mimic_eye(root, load_images=draw)
    findings: Counter[str] = Counter()
    readers: Counter[str] = Counter()
    n = fixations = off = sentences = normal = 0
    if args.png is not None:
        args.png.mkdir(parents=True, exist_ok=True)
    for s in islice(samples, args.limit):
        n += 1
        readers[s.reader_id] += 1
        findings.update(k for k, v in s.labels.items() if v)
        normal += not any(s.labels.values())
        fixations += len(s.fixations)
        off += len(s.fixations) - len(s.on_image_fixations())
        sentences += len(s.sentences)
        if args.png is not None:
            draw_scanpath(s).save(args.png / f"{s.sample_id}.png")
    print(
        f"{root}: {fmt}, {n} samples, {fixations} fixations ({off} off the image), "
        f"{sentences} sentences"
    )
    print("finding                    positive")
    for key in FINDING_KEYS:
        print(f"  {key:<24} {findings[key]:>8}")
    print(f"  {'(no finding)':<24} {normal:>8}")
    print("reader                     samples")
    for reader, count in sorted(readers.items()):
        print(f"  {reader:<24} {count:>8}")
    if args.png is not None:
        print(f"scanpaths drawn in {args.png}")
    return 0
