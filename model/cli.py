"""``gazex predict`` (the serving path) and the wiring of ``model``'s other subcommands.

``train``/``eval`` live in :mod:`model.train.cli`, ``data`` in :mod:`model.train.gazedata.cli`.
Registration is cheap: torch and the training stack are imported inside the commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from model.result import InferenceResult


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``data``, ``train``, ``eval``, ``predict`` and ``calibrate-anatomy`` to the
    ``gazex`` parser."""
    from model.train import cli as train_cli
    from model.train.gazedata import cli as data_cli
    from model.train.shards import register_data_command

    register_data_command(data_cli.register(subparsers))  # gazex data shard
    train_cli.register(subparsers)
    pr = subparsers.add_parser(
        "predict",
        help="run the model on DICOM files and print findings, report and trajectory",
        description="Run the model on CR/DX films (DICOM) and print, per film, the findings "
        "with their probabilities and boxes, the ABCDEF draft report, the inspection "
        "trajectory and the steps not inspected; optionally the result JSON and an overlay "
        "PNG. The files are checked before the model loads. A film unlike the training films "
        "(the checkpoint's domain gate) is announced first, OUT OF DOMAIN, and its findings "
        "are not to be trusted. Research use only: the shipped model is trained on synthetic "
        "data.",
    )
    pr.add_argument("files", nargs="+", type=Path, metavar="FILE.dcm")
    pr.add_argument("--ckpt", type=Path, metavar="DIR", help="default: the shipped checkpoint")
    pr.add_argument("--question", action="append", default=[], metavar="TEXT")
    pr.add_argument(
        "--json",
        type=Path,
        metavar="OUT",
        help="result JSON (one file: OUT; several: OUT with the file index appended)",
    )
    pr.add_argument("--png", type=Path, metavar="OUT", help="overlay PNG (same naming)")
    pr.add_argument("--device")
    pr.set_defaults(func=run_predict)

    anatomy = subparsers.add_parser(
        "calibrate-anatomy",
        help="fit a checkpoint's anatomy prior (ABCDEF gaze schedule, region atlas)",
        description="Fit the anatomy prior of the gaze decoding (model/anatomy_prior.py: "
        "the ABCDEF step of each gaze token, from the training readings' key fixations, and "
        "a region atlas from the training films' anatomical boxes) of an existing checkpoint "
        "and write it into its gazex.json; the weights are not touched. Give the checkpoint's "
        "training --data, --format and --exclude-reader (a subset of its training films, "
        "e.g. --max-samples 500, is enough for the atlas; other films are warned about). "
        "`gazex train` fits the prior itself.",
    )
    train_cli._add_calibration_arguments(anatomy)
    anatomy.set_defaults(func=run_calibrate_anatomy)


def _indexed(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def _read_radiograph(path: Path) -> Dataset:
    """The data set of ``path``; ValueError or FileNotFoundError naming the file and what is
    wrong with it, before any model is loaded."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from model.pixels import check_radiograph

    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the DICOM files in it (e.g. {path}/*.dcm)")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ValueError(f"{path} is not a DICOM file") from None
    try:
        check_radiograph(ds)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return ds


def domain_line(result: InferenceResult) -> str:
    """One line: the domain gate's verdict on the film, or that it was not checked."""
    check = result.domain
    if check is None:
        return "domain: not checked (the checkpoint has no domain gate)"
    if check.in_domain:
        return (
            f"domain: like the training films (score {check.score:.1f} <= threshold "
            f"{check.threshold:.1f}, {check.method})"
        )
    return (
        f"domain: OUT (score {check.score:.1f} > threshold {check.threshold:.1f}, {check.method})"
    )


def run_calibrate_anatomy(args: argparse.Namespace) -> int:
    from model.anatomy_prior import AnatomyPrior
    from model.architecture import SETTINGS_FILE, GazeXSettings
    from model.predictor import checkpoint_sha256, default_checkpoint
    from model.train.anatomy_prior import fit_anatomy_prior, write_anatomy_prior
    from model.train.datasets import load_split
    from model.train.provenance import training_overlap

    ckpt: Path = args.ckpt or default_checkpoint()
    settings = GazeXSettings.from_json((ckpt / SETTINGS_FILE).read_text())
    samples = load_split(
        args.data, args.format, "train", args.max_samples, exclude_readers=args.exclude_reader
    )
    overlap = training_overlap(settings.training_data, samples)
    if overlap.recorded and overlap.evaluated > overlap.films:
        print(
            f"warning: {overlap.evaluated - overlap.films} of these {overlap.evaluated} films "
            f"are not among {ckpt.name}'s recorded training films; the prior describes the "
            "films given",
            file=sys.stderr,
            flush=True,
        )
    fitted = fit_anatomy_prior(samples, settings)
    if not fitted:
        raise ValueError(
            f"no anatomy prior from these {len(samples)} readings: their films carry no "
            "anatomical boxes or their fixations no ABCDEF step"
        )
    write_anatomy_prior(ckpt, fitted)
    prior = AnatomyPrior.from_json(fitted)
    schedule = "".join(s.value for s in prior.schedule)
    print(
        f"anatomy prior fitted on {prior.films} training films ({len(samples)} readings): "
        f"atlas {prior.size} x {prior.size} cells, gaze schedule {schedule}"
    )
    print(f"written to {ckpt / SETTINGS_FILE}; checkpoint sha256 now {checkpoint_sha256(ckpt)}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from model.overlay import overlay
    from model.pixels import display_image
    from model.predictor import Predictor

    datasets = [_read_radiograph(path) for path in args.files]
    images = []
    for path, ds in zip(args.files, datasets, strict=True):
        try:
            images.append(display_image(ds))
        except (ValueError, NotImplementedError, RuntimeError) as exc:
            raise ValueError(f"{path}: the pixel data cannot be decoded: {exc}") from None
    predictor = Predictor.from_checkpoint(args.ckpt, device=args.device)
    results = predictor.predict_images(datasets, images, args.question)
    for index, (path, result) in enumerate(zip(args.files, results, strict=True)):
        notice = result.domain_notice(path.name)
        if notice is not None:
            print(notice)
        print(
            f"== {path.name}  ({result.source.Columns}x{result.source.Rows}, "
            f"model {result.model.name} {result.model.version}, trained on synthetic data)"
        )
        print(domain_line(result))
        print("findings (not to be trusted: out of domain):" if notice else "findings:")
        for f in sorted(result.findings, key=lambda f: -f.probability):
            box = (
                ""
                if f.box is None
                else (f"  box ({f.box.x0:.0f},{f.box.y0:.0f})-({f.box.x1:.0f},{f.box.y1:.0f})")
            )
            mark = "+" if f.present else " "
            print(f"  {mark} {f.code.meaning:26} {f.probability:6.3f}{box}")
        print("report:")
        for section in result.report.sections:
            print(f"  {section.step.title}: {section.text}")
        print(f"  Impression: {result.report.impression}")
        print("trajectory:")
        for n, fx in enumerate(result.trajectory, start=1):
            print(
                f"  {n:2d}. ({fx.x:7.1f}, {fx.y:7.1f}) {fx.start_ms:7.0f} ms "
                f"+{fx.duration_ms:4.0f} ms  {fx.step.value} {fx.region}"
            )
        skipped = ", ".join(s.title for s in result.skipped_steps) or "none"
        print(f"not inspected: {skipped}")
        for answer in result.answers:
            print(f"Q: {answer.question}\nA: {answer.answer}")
        if args.json is not None:
            _indexed(args.json, index, len(results)).write_text(result.to_json())
        if args.png is not None:
            overlay(images[index], result).save(_indexed(args.png, index, len(results)))
    return 0
