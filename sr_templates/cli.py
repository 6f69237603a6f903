"""``gazex`` subcommands contributed by ``sr_templates`` (see dicom_node.cli).

    gazex render --result RESULT.json --source IMAGE.dcm --out DIR [--revision N]

writes every result object of a saved result (the ``gazex.result/1`` JSON) as DICOM Part 10
files, for admins and viewer checks. Heavy imports stay inside the command.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from sr_templates.enum import ObjectKindValues

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this package's subcommands to the ``gazex`` parser."""
    parser = subparsers.add_parser(
        "render",
        help="write the SR, SEG, attention map and GSPS objects of a saved result",
        description="Build the DICOM result objects (findings SR, trajectory SR, SEG, "
        "attention map, GSPS) from a saved result JSON and its source image, and write "
        "them to a folder. Research use only.",
    )
    parser.add_argument("--result", required=True, type=Path, metavar="RESULT.json")
    parser.add_argument("--source", required=True, type=Path, metavar="IMAGE.dcm")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")
    parser.add_argument("--revision", type=int, default=1, help="analysis revision (default: 1)")
    parser.set_defaults(func=render)


def render(args: argparse.Namespace) -> int:
    import pydicom

    from model.result import InferenceResult
    from sr_templates.build import build_all

    if not getattr(args, "verbose", False):
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every module copy
    result = InferenceResult.from_json(Path(args.result).read_text(encoding="utf-8"))
    source = pydicom.dcmread(args.source)
    objects = build_all(result, source, revision=args.revision)
    for path in write_objects(objects, Path(args.out)):
        print(path)
    return 0


def write_objects(objects: Mapping[ObjectKindValues, Dataset], out: Path) -> list[Path]:
    """Write each object as ``<series number>-<kind>-r<revision>.dcm`` in ``out``, through a
    temporary file and a rename so a reader never sees half a file."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, ds in objects.items():
        path = out / f"{kind.file_stem}-r{ds.InstanceNumber}.dcm"
        partial = path.with_suffix(".dcm.partial")
        ds.save_as(partial, enforce_file_format=True)
        partial.replace(path)
        logger.debug("wrote %s (%s)", path, ds.SOPInstanceUID)
        paths.append(path)
    return paths
