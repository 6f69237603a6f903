"""``gazex`` subcommands (registered through model.cli): ``train``, ``eval``, ``predict``.

Registration is cheap: torch, transformers and the data stack are imported inside the
command functions only.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.data.sample import GazeSample

logger = logging.getLogger(__name__)

FORMATS = ("synthetic", "reflacx", "egd", "mimic-eye")
SIZES = ("small", "tiny")
GAZE_MODE_CHOICES = ("ordered", "shuffled", "random", "none")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add these subcommands to the ``gazex`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train the gaze-guided model (gaze stage, then multitask stage)",
        description="Train on a dataset folder; writes a resumable checkpoint to --out "
        "(re-running the same command resumes).",
    )
    train.add_argument(
        "--data",
        required=True,
        type=Path,
        action="append",
        metavar="DIR",
        help="dataset folder; repeat to train on several (e.g. a REFLACX and an EGD layout)",
    )
    train.add_argument("--format", choices=FORMATS, default="synthetic")
    train.add_argument("--out", required=True, type=Path, metavar="DIR")
    train.add_argument("--backbone", type=Path, metavar="DIR", help="local Qwen2.5-VL folder")
    train.add_argument("--epochs", type=int, default=6, help="multitask epochs (default 6)")
    train.add_argument("--gaze-epochs", type=int, default=2, help="gaze-stage epochs")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1.5e-3)
    train.add_argument(
        "--finding-weight", type=float, default=1.0, help="weight of the finding loss (default 1)"
    )
    train.add_argument(
        "--balance-gaze-labels",
        action="store_true",
        help="weight the gaze tokens' step/region losses by 1/sqrt(class frequency)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--size", choices=SIZES, default="small")
    train.add_argument("--gaze-mode", choices=GAZE_MODE_CHOICES, default="ordered")
    train.add_argument("--gaze-tokens", type=int, default=12, help="K, the number of <st>")
    train.add_argument("--max-pixels", type=int, default=224 * 224)
    train.add_argument(
        "--finding-pool",
        choices=("attention", "attention+max"),
        default="attention",
        help="finding head pooling (attention+max adds per-token evidence, smooth max)",
    )
    train.add_argument(
        "--detail-channel",
        action="store_true",
        help="fine detail (film minus blur) as the second input channel",
    )
    train.add_argument("--max-samples", type=int, help="use at most this many per folder")
    train.add_argument(
        "--exclude-reader", action="append", default=[], metavar="ID", help="hold a reader out"
    )
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    train.add_argument("--threads", type=int, help="CPU threads (default 1: cores are shared)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (and the gaze ablations) on held-out data",
        description="Prints a metrics table and writes metrics.json, roc.png and "
        "trajectory overlays to --out. With --ablation, trains ordered, shuffled, random "
        "and no-gaze models with the same budget on --train-data and compares them.",
    )
    ev.add_argument("--ckpt", type=Path, metavar="DIR", help="default: the shipped checkpoint")
    ev.add_argument("--data", required=True, type=Path, action="append", metavar="DIR")
    ev.add_argument("--format", choices=FORMATS, default="synthetic")
    ev.add_argument("--out", required=True, type=Path, metavar="DIR")
    ev.add_argument("--max-samples", type=int, help="use at most this many per folder")
    ev.add_argument("--reader", action="append", default=[], metavar="ID", help="only these")
    ev.add_argument("--device")
    ev.add_argument("--ablation", action="store_true", help="run the four gaze ablations")
    ev.add_argument(
        "--train-data", type=Path, action="append", metavar="DIR", help="training data (ablation)"
    )
    ev.add_argument("--exclude-reader", action="append", default=[], metavar="ID")
    ev.add_argument("--train-format", choices=FORMATS, default="synthetic")
    ev.add_argument("--ablation-epochs", type=int, default=4, help="multitask epochs each")
    ev.add_argument("--ablation-gaze-epochs", type=int, default=1)
    ev.add_argument("--ablation-max-samples", type=int)
    ev.add_argument("--size", choices=SIZES, default="small")
    ev.add_argument(
        "--finding-pool",
        choices=("attention", "attention+max"),
        default="attention",
        help="finding head pooling of the ablation models (as gazex train)",
    )
    ev.add_argument("--detail-channel", action="store_true", help="ablation models: as gazex train")
    ev.add_argument(
        "--balance-gaze-labels", action="store_true", help="ablation models: as gazex train"
    )
    ev.add_argument(
        "--ablation-modes",
        default="ordered,shuffled,random,none",
        help="comma-separated gaze modes to train and compare (default all four)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=run_eval)

    pr = subparsers.add_parser(
        "predict",
        help="run the model on DICOM files and print findings, report and trajectory",
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


def _indexed(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def run_train(args: argparse.Namespace) -> int:
    from model.architecture import TINY, GazeXSettings, ModelSize
    from model.datasets import load_split
    from model.training import TrainConfig, train

    samples = load_split(
        args.data, args.format, "train", args.max_samples, exclude_readers=args.exclude_reader
    )
    train_samples, val_samples = split_validation(samples)
    settings = GazeXSettings(
        num_gaze_tokens=args.gaze_tokens,
        gaze_mode=args.gaze_mode,
        max_pixels=args.max_pixels,
        finding_pool=args.finding_pool,
        detail_channel=args.detail_channel,
    )
    config = TrainConfig(
        gaze_epochs=args.gaze_epochs,
        multitask_epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        finding_weight=args.finding_weight,
        balance_gaze_labels=args.balance_gaze_labels,
        seed=args.seed,
        size=TINY if args.size == "tiny" else ModelSize(),
        progress=not args.no_progress,
        threads=args.threads,
    )
    logger.info(
        "training on %d samples (%d held out for thresholds)", len(train_samples), len(val_samples)
    )
    train(
        train_samples,
        args.out,
        settings,
        config,
        val_samples=val_samples,
        backbone=args.backbone,
        device=args.device,
    )
    print(f"checkpoint written to {args.out}")
    return 0


def split_validation(
    samples: Sequence[GazeSample], every: int = 10
) -> tuple[list[GazeSample], list[GazeSample]]:
    """Every ``every``-th sample is held out to calibrate the finding thresholds."""
    if len(samples) < 2:
        return list(samples), []
    train = [s for i, s in enumerate(samples) if i % every != every - 1]
    held = [s for i, s in enumerate(samples) if i % every == every - 1]
    return train, held


def run_eval(args: argparse.Namespace) -> int:
    import json

    from model.architecture import GazeXModel, configure_threads, select_device
    from model.datasets import load_split
    from model.evaluate import evaluate, format_per_finding, format_table
    from model.predictor import default_checkpoint

    device = select_device(args.device)
    configure_threads(device)
    test = load_split(args.data, args.format, "test", args.max_samples, readers=args.reader)
    columns = {}
    if not args.ablation:
        ckpt = args.ckpt or default_checkpoint()
        model = GazeXModel.load(ckpt, device=device)
        metrics = evaluate(model, test, args.out, device)
        print(format_table({ckpt.name: metrics}))
        print()
        print(format_per_finding(metrics))
        print(f"\nwritten to {args.out}")
        return 0
    if args.train_data is None:
        raise ValueError("--ablation needs --train-data DIR (the data the four models train on)")
    from model.architecture import TINY, GazeXSettings, ModelSize
    from model.training import TrainConfig, train

    samples = load_split(
        args.train_data,
        args.train_format,
        "train",
        args.ablation_max_samples,
        exclude_readers=args.exclude_reader,
    )
    train_samples, val_samples = split_validation(samples)
    modes = [m.strip() for m in args.ablation_modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(GAZE_MODE_CHOICES))
    if unknown or not modes:
        raise ValueError(f"--ablation-modes: unknown gaze modes {unknown or modes}")
    for mode in modes:
        config = TrainConfig(
            gaze_epochs=args.ablation_gaze_epochs,
            multitask_epochs=args.ablation_epochs,
            seed=args.seed,
            size=TINY if args.size == "tiny" else ModelSize(),
            balance_gaze_labels=args.balance_gaze_labels,
            progress=False,
        )
        out = args.out / f"ablation-{mode}"
        logger.info("ablation %s: training", mode)
        model = train(
            train_samples,
            out / "checkpoint",
            GazeXSettings(
                gaze_mode=mode,
                finding_pool=args.finding_pool,
                detail_channel=args.detail_channel,
            ),
            config,
            val_samples=val_samples,
            device=device,
        )
        columns[mode] = evaluate(model, test, out, device)
        print(f"[{mode}] macro AUROC {columns[mode]['macro_auroc']:.3f}", flush=True)
    table = format_table(columns)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.txt").write_text(table + "\n")
    (args.out / "ablation.json").write_text(
        json.dumps(
            {m: {k: v for k, v in c.items() if k != "per_finding"} for m, c in columns.items()},
            indent=1,
            default=str,
        )
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import pydicom

    from model.overlay import overlay
    from model.pixels import display_image
    from model.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.ckpt, device=args.device)
    datasets = []
    for path in args.files:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        datasets.append(pydicom.dcmread(path))
    images = [display_image(ds) for ds in datasets]
    results = predictor.predict_images(datasets, images, args.question)
    for index, (path, result) in enumerate(zip(args.files, results, strict=True)):
        print(
            f"== {path.name}  ({result.source.Columns}x{result.source.Rows}, "
            f"model {result.model.name} {result.model.version}, trained on synthetic data)"
        )
        print("findings:")
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
