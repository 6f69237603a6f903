"""``gazex train``, ``gazex eval``, ``gazex calibrate-domain`` and ``gazex
calibrate-probabilities`` (registered through :mod:`model.cli`).

Registration is cheap: torch, transformers and the data stack are imported inside the
command functions only.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.train.progress import add_progress_argument

if TYPE_CHECKING:
    from model.architecture import GazeXSettings
    from model.finetune import LoraOptions
    from model.train.gazedata.sample import GazeSample
    from model.train.loop import TrainConfig

logger = logging.getLogger(__name__)

FORMATS = ("synthetic", "reflacx", "egd", "mimic-eye")
SIZES = ("small", "tiny")
# The same as model.architecture's GAZE_MODES and FINDING_POOLS (a test keeps them equal),
# spelled out here so that registering the commands imports no torch.
GAZE_MODE_CHOICES = ("ordered", "shuffled", "random", "none")
FINDING_POOL_CHOICES = ("attention", "attention+global")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add these subcommands to the ``gazex`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train the gaze-guided model (gaze stage, then multitask stage)",
        description="Train on a dataset folder; writes a resumable checkpoint to --out "
        "(re-running the same command resumes).",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        type=Path,
        action="append",
        metavar="DIR",
        help="dataset folder, read into memory; repeat to train on several (e.g. a REFLACX "
        "and an EGD layout)",
    )
    source.add_argument(
        "--shards",
        type=Path,
        action="append",
        metavar="DIR",
        help="shard folder written by `gazex data shard`, streamed epoch by epoch (never "
        "held in memory); repeat to mix several; needs --calibration-data",
    )
    train.add_argument("--format", choices=FORMATS, default="synthetic")
    train.add_argument(
        "--calibration-data",
        type=Path,
        action="append",
        metavar="DIR",
        help="with --shards: readings held out of the shards that set the finding thresholds "
        "and the probability calibration (a dataset folder in --format, or a shard folder)",
    )
    train.add_argument(
        "--probe-readings",
        type=int,
        default=512,
        metavar="N",
        help="with --shards: the first N readings build the tokenizer, the gaze label weights "
        "and the domain gate (default 512; held in memory at the model's input size)",
    )
    train.add_argument(
        "--loader-workers",
        type=int,
        default=2,
        metavar="N",
        help="with --shards: data-loader worker processes per training process (default 2)",
    )
    train.add_argument("--out", required=True, type=Path, metavar="DIR")
    train.add_argument("--backbone", type=Path, metavar="DIR", help="local Qwen2.5-VL folder")
    train.add_argument("--epochs", type=int, default=9, help="multitask epochs (default 9)")
    train.add_argument("--gaze-epochs", type=int, default=1, help="gaze-stage epochs (default 1)")
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=1.5e-3)
    train.add_argument("--gaze-mode", choices=GAZE_MODE_CHOICES, default="ordered")
    train.add_argument("--gaze-tokens", type=int, default=12, help="K, the number of <st>")
    train.add_argument("--max-pixels", type=int, default=224 * 224)
    add_recipe_arguments(train)
    train.add_argument("--max-samples", type=int, help="use at most this many per folder")
    train.add_argument(
        "--exclude-reader", action="append", default=[], metavar="ID", help="hold a reader out"
    )
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    add_progress_argument(train)
    add_distributed_arguments(train)
    add_finetune_arguments(train)
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (and the gaze ablations) on held-out data",
        description="Prints a metrics table and writes metrics.json, roc.png and "
        "trajectory overlays to --out. With --ablation, trains ordered, shuffled, random "
        "and no-gaze models with the same budget on --train-data and compares them. "
        "Warns (stderr, and training_overlap in the JSON) when test films are among the "
        "checkpoint's training films.",
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
    add_recipe_arguments(ev, for_ablation=True)
    ev.add_argument(
        "--ablation-modes",
        default="ordered,shuffled,random,none",
        help="comma-separated gaze modes to train and compare (default all four)",
    )
    add_progress_argument(ev)
    ev.set_defaults(func=run_eval)

    cal = subparsers.add_parser(
        "calibrate-domain",
        help="fit a checkpoint's domain gate on its training films (no retraining)",
        description="Fit the domain gate (is a film like the training films? model/domain.py) "
        "of an existing checkpoint on the films it was trained on, and write it into the "
        "checkpoint folder (domain_gate.safetensors, named in gazex.json); the weights are "
        "not touched. Give the --data, --format, --exclude-reader and --max-samples the "
        "checkpoint was trained with: the films read must be the ones its gazex.json "
        "records. `gazex train` fits the gate itself.",
    )
    _add_calibration_arguments(cal)
    cal.set_defaults(func=run_calibrate_domain)

    prob = subparsers.add_parser(
        "calibrate-probabilities",
        help="fit a checkpoint's probability calibration on its threshold readings",
        description="Fit a temperature per finding (model/calibration.py) on the training "
        "readings the checkpoint held out of training to tune its thresholds (every tenth "
        "reading of the training films), and write it into the checkpoint folder "
        "(probability_calibration.json, named in gazex.json); weights and thresholds are "
        "not touched. Give the --data, --format, --exclude-reader and --max-samples the "
        "checkpoint was trained with. `gazex train` fits the calibration itself.",
    )
    _add_calibration_arguments(prob)
    prob.set_defaults(func=run_calibrate_probabilities)


def _add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint and the training films it was trained on, as the calibrate commands
    read them (the films must be the ones its gazex.json records)."""
    parser.add_argument("--ckpt", type=Path, metavar="DIR", help="default: the shipped checkpoint")
    parser.add_argument("--data", required=True, type=Path, action="append", metavar="DIR")
    parser.add_argument("--format", choices=FORMATS, default="synthetic")
    parser.add_argument("--max-samples", type=int, help="use at most this many per folder")
    parser.add_argument(
        "--exclude-reader", action="append", default=[], metavar="ID", help="hold a reader out"
    )
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int, help="CPU threads (default 1)")
    add_progress_argument(parser)


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """How ``gazex train`` runs under ``torchrun`` (:mod:`model.train.distributed`)."""
    parser.add_argument(
        "--strategy",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="under torchrun: ddp replicates the model on every process, fsdp shards it "
        "(for a backbone that does not fit one GPU; needs more than one process). "
        "--batch-size is the global batch, split evenly over the processes",
    )
    parser.add_argument(
        "--stop-after-epoch",
        type=int,
        metavar="N",
        help="stop once epoch N (counted over both stages) is written, as if interrupted; "
        "the same command without it resumes (to fit a run into time-limited jobs)",
    )


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """LoRA / QLoRA of a ``--backbone`` (:mod:`model.finetune`)."""
    parser.add_argument(
        "--lora-rank",
        type=int,
        metavar="R",
        help="adapt the --backbone with rank-R LoRA adapters and freeze its weights",
    )
    parser.add_argument("--lora-alpha", type=int, help="LoRA scaling alpha (default 32)")
    parser.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0.05)")
    parser.add_argument(
        "--qlora", action="store_true", help="load the frozen base in 4-bit NF4 (CUDA only)"
    )
    parser.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="keep the backbone's activations instead of recomputing them (LoRA)",
    )


def lora_options(args: argparse.Namespace) -> LoraOptions | None:
    """``gazex train``'s LoRA options, None without ``--lora-rank``; ValueError naming the
    option at fault."""
    extras = {
        "--lora-alpha": args.lora_alpha is not None,
        "--lora-dropout": args.lora_dropout is not None,
        "--qlora": args.qlora,
        "--no-gradient-checkpointing": not args.gradient_checkpointing,
    }
    if args.lora_rank is None:
        given = [flag for flag, on in extras.items() if on]
        if given:
            raise ValueError(f"{given[0]} configures LoRA: give --lora-rank R too")
        return None
    if args.lora_rank < 1:
        raise ValueError(f"--lora-rank {args.lora_rank}: the rank must be at least 1")
    if args.backbone is None:
        raise ValueError("--lora-rank adapts a pretrained backbone: give --backbone DIR too")
    from model.finetune import LoraOptions

    chosen: dict[str, Any] = {"rank": args.lora_rank}
    if args.lora_alpha is not None:
        chosen["alpha"] = args.lora_alpha
    if args.lora_dropout is not None:
        chosen["dropout"] = args.lora_dropout
    return LoraOptions(
        **chosen,
        quantize_4bit=args.qlora,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def add_recipe_arguments(parser: argparse.ArgumentParser, for_ablation: bool = False) -> None:
    """Options of how a model is built and trained, shared by ``gazex train`` and the
    ablation models of ``gazex eval --ablation``; the defaults are the shipped recipe
    (``model/MODEL_CARD.md``)."""
    prefix = "ablation models: " if for_ablation else ""
    parser.add_argument("--size", choices=SIZES, default="small", help=f"{prefix}backbone size")
    parser.add_argument(
        "--conv-branch",
        type=int,
        nargs="*",
        default=[16, 32, 64],
        metavar="C",
        help=f"{prefix}widths of the vision encoder's convolutional branch "
        "(default 16 32 64; none given: a plain ViT)",
    )
    parser.add_argument(
        "--mask-decoder",
        type=int,
        default=32,
        metavar="W",
        help=f"{prefix}width of the finding masks' pixel decoder on the convolutional "
        "branch's 4 px cells (default 32; 0: one mask logit per 28 px token)",
    )
    parser.add_argument(
        "--finding-pool",
        choices=FINDING_POOL_CHOICES,
        default="attention+global",
        help=f"{prefix}finding head pooling (attention+global adds the image tokens' "
        "channel-wise maximum and mean)",
    )
    for flag, what in (
        ("--detail-channel", "fine detail (film minus blur) as the second input channel"),
        ("--own-gaze", "multitask stage: feed back the model's own fixations, not the reader's"),
        ("--balance-gaze-labels", "weight the gaze step/region losses by 1/sqrt(frequency)"),
    ):
        parser.add_argument(
            flag, action=argparse.BooleanOptionalAction, default=True, help=prefix + what
        )
    parser.add_argument(
        "--finding-weight", type=float, default=3.0, help=f"{prefix}finding loss weight (default 3)"
    )
    parser.add_argument(
        "--box-weight", type=float, default=0.5, help=f"{prefix}box loss weight (default 0.5)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads (default 1)")


def recipe(args: argparse.Namespace, **fixed: Any) -> tuple[GazeXSettings, TrainConfig]:
    """Settings and training configuration from :func:`add_recipe_arguments`' options
    plus ``fixed`` (the gaze mode, epochs and whatever else the command fixes itself)."""
    from model.architecture import TINY, GazeXSettings, ModelSize
    from model.train.loop import TrainConfig

    setting_names = {f.name for f in dataclasses.fields(GazeXSettings)}
    settings = GazeXSettings(
        conv_branch=tuple(args.conv_branch),
        mask_decoder=args.mask_decoder if args.conv_branch else 0,
        detail_channel=args.detail_channel,
        finding_pool=args.finding_pool,
        **{k: v for k, v in fixed.items() if k in setting_names},
    )
    config = TrainConfig(
        size=TINY if args.size == "tiny" else ModelSize(),
        own_gaze=args.own_gaze,
        balance_gaze_labels=args.balance_gaze_labels,
        finding_weight=args.finding_weight,
        box_weight=args.box_weight,
        seed=args.seed,
        threads=args.threads,
        **{k: v for k, v in fixed.items() if k not in setting_names},
    )
    return settings, config


def run_train(args: argparse.Namespace) -> int:
    """``gazex train``, alone or as one of the processes ``torchrun`` started."""
    from model.train.datasets import load_split
    from model.train.distributed import check_batch_size, from_environment, process_group
    from model.train.loop import train

    finetune = lora_options(args)
    launched = from_environment()
    check_batch_size(args.batch_size, launched[0] if launched is not None else 1)
    if args.stop_after_epoch is not None and args.stop_after_epoch < 1:
        raise ValueError(f"--stop-after-epoch {args.stop_after_epoch}: give an epoch >= 1")
    if args.shards:
        train_samples, val_samples = _streamed_probe(args)
    else:
        samples = load_split(
            args.data, args.format, "train", args.max_samples, exclude_readers=args.exclude_reader
        )
        train_samples, val_samples = split_validation(samples)
    settings, config = recipe(
        args,
        gaze_mode=args.gaze_mode,
        gaze_epochs=args.gaze_epochs,
        multitask_epochs=args.epochs,
        num_gaze_tokens=args.gaze_tokens,
        max_pixels=args.max_pixels,
        batch_size=args.batch_size,
        lr=args.lr,
        progress=args.progress,
    )
    with process_group(args.device, args.strategy) as (dist, device):
        root = logging.getLogger()
        if not dist.is_main and not root.isEnabledFor(logging.DEBUG):
            root.setLevel(logging.WARNING)  # one log: rank 0's (all ranks' with -v)
        stream = None
        if args.shards:
            from model.train.shards import ShardedSamples

            stream = ShardedSamples(
                args.shards,
                seed=args.seed,
                rank=dist.rank,
                world=dist.world_size,
                workers=args.loader_workers,
            )
            logger.info(
                "training on %d readings streamed from %d shard(s), %d per process each "
                "epoch (%d held out for thresholds)",
                len(stream),
                len(stream.shards),
                stream.per_rank,
                len(val_samples),
            )
        else:
            logger.info(
                "training on %d samples (%d held out for thresholds)",
                len(train_samples),
                len(val_samples),
            )
        train(
            train_samples,
            args.out,
            settings,
            config,
            val_samples=val_samples,
            backbone=args.backbone,
            device=device,
            distributed=dist,
            finetune=finetune,
            stop_after_epoch=args.stop_after_epoch,
            stream=stream,
        )
    if dist.is_main:
        print(f"checkpoint written to {args.out}")
    return 0


def _streamed_probe(args: argparse.Namespace) -> tuple[list[GazeSample], list[GazeSample]]:
    """``--shards``: the probe (the first ``--probe-readings`` readings in shard order) and
    the threshold readings (``--calibration-data``), the only readings held in memory."""
    from itertools import islice

    from model.train.datasets import load_split
    from model.train.shards import MANIFEST_NAME, ShardedSamples

    if args.max_samples is not None or args.exclude_reader:
        raise ValueError(
            "--max-samples and --exclude-reader select readings of --data; with --shards, "
            "choose the readings when sharding (gazex data shard)"
        )
    if not args.calibration_data:
        raise ValueError(
            "--shards needs --calibration-data DIR: readings held out of the shards that set "
            "the finding thresholds and the probability calibration"
        )
    if args.probe_readings < 1:
        raise ValueError(f"--probe-readings {args.probe_readings}: give at least 1")
    if args.loader_workers < 0:
        raise ValueError(f"--loader-workers {args.loader_workers}: give 0 or more")
    everything = ShardedSamples(args.shards, seed=args.seed, workers=0, shuffle=False)
    probe = list(islice(everything.ordered(), args.probe_readings))
    held: list[GazeSample] = []
    for folder in args.calibration_data:
        if (folder / MANIFEST_NAME).is_file():
            held.extend(ShardedSamples(folder, seed=args.seed, workers=0).ordered())
        else:
            held.extend(load_split([folder], args.format, "calibration"))
    return probe, held


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
    from model.calibration import load_calibration
    from model.predictor import default_checkpoint
    from model.train.datasets import load_split
    from model.train.evaluate import evaluate, format_per_finding, format_table
    from model.train.progress import Progress
    from model.train.provenance import training_overlap, training_record

    device = select_device(args.device)
    configure_threads(device, args.threads)
    test = load_split(args.data, args.format, "test", args.max_samples, readers=args.reader)
    columns = {}
    if not args.ablation:
        ckpt = args.ckpt or default_checkpoint()
        model = GazeXModel.load(ckpt, device=device)
        calibration = load_calibration(
            ckpt, model.settings.probability_calibration, model.settings.finding_keys
        )
        warn_overlap(training_overlap(model.settings.training_data, test).warning)
        with Progress(len(test), "film", args.progress, prefix="eval ") as progress:
            metrics = evaluate(model, test, args.out, device, progress, calibration)
        print(format_table({ckpt.name: metrics}))
        print()
        print(format_per_finding(metrics))
        print(f"\nwritten to {args.out}")
        return 0
    if args.train_data is None:
        raise ValueError("--ablation needs --train-data DIR (the data the four models train on)")
    from model.train.loop import train, work_units

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
    warn_overlap(training_overlap(training_record(samples), test).warning)
    recipes = {
        mode: recipe(
            args,
            gaze_mode=mode,
            gaze_epochs=args.ablation_gaze_epochs,
            multitask_epochs=args.ablation_epochs,
        )
        for mode in modes
    }
    total = sum(
        work_units(len(train_samples), len(val_samples), config) + len(test)
        for _, config in recipes.values()
    )
    with Progress(total, "step", args.progress) as progress:
        for number, (mode, (settings, config)) in enumerate(recipes.items(), start=1):
            progress.prefix = f"ablation {number}/{len(modes)} {mode}: "
            out = args.out / f"ablation-{mode}"
            logger.info("ablation %s: training", mode)
            model = train(
                train_samples,
                out / "checkpoint",
                settings,
                config,
                val_samples=val_samples,
                device=device,
                progress=progress,
            )
            progress.stage("eval")
            calibration = load_calibration(
                out / "checkpoint",
                model.settings.probability_calibration,
                model.settings.finding_keys,
            )
            columns[mode] = evaluate(model, test, out, device, progress, calibration)
            progress.bar.write(f"[{mode}] macro AUROC {columns[mode]['macro_auroc']:.3f}")
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


def run_calibrate_domain(args: argparse.Namespace) -> int:
    from model.architecture import GazeXModel, configure_threads, select_device
    from model.domain import GATE_FILE
    from model.predictor import checkpoint_sha256, default_checkpoint
    from model.train.loop import calibrate_domain_gate, prepare_samples, write_domain_gate
    from model.train.progress import Progress
    from model.train.provenance import training_record

    ckpt: Path = args.ckpt or default_checkpoint()
    device = select_device(args.device)
    configure_threads(device, args.threads)
    model = GazeXModel.load(ckpt, device=device)
    samples = training_samples(args, ckpt, model.settings.training_data, "gate")
    found = training_record(samples)
    prepared = prepare_samples(samples, model.settings)
    with Progress(len(prepared), "film", args.progress, prefix="domain gate ") as progress:
        gate = calibrate_domain_gate(model, prepared, device, on_batch=progress.update)
    if gate is None:
        raise ValueError(f"too few training films ({found['films']}) to fit a domain gate")
    write_domain_gate(ckpt, gate)
    print(
        f"domain gate fitted on {gate.films} training films ({gate.dims} features, "
        f"{gate.method}, shrinkage {gate.shrinkage:.4f}): threshold {gate.threshold:.2f} = "
        f"{gate.quantile:.1%} quantile of the films' held-out distances (median "
        f"{gate.median_distance:.2f}, max {gate.max_distance:.2f})"
    )
    print(f"written to {ckpt / GATE_FILE}; checkpoint sha256 now {checkpoint_sha256(ckpt)}")
    return 0


def training_samples(
    args: argparse.Namespace, ckpt: Path, recorded: dict[str, Any], what: str
) -> list[GazeSample]:
    """The training readings the options name, refused when they are not the films the
    checkpoint records (a warning when it records none)."""
    from model.train.datasets import load_split
    from model.train.provenance import training_record

    samples = load_split(
        args.data, args.format, "train", args.max_samples, exclude_readers=args.exclude_reader
    )
    found = training_record(samples)
    if not recorded:
        print(
            f"warning: {ckpt} records no training films, so these {found['films']} films "
            f"cannot be checked against them; the {what} describes whatever films were given",
            file=sys.stderr,
            flush=True,
        )
    elif found != recorded:
        raise ValueError(
            f"the films read are not {ckpt.name}'s training films: they record {found}, "
            f"the checkpoint {recorded}; give the --data, --format, --exclude-reader and "
            "--max-samples it was trained with"
        )
    return samples


def run_calibrate_probabilities(args: argparse.Namespace) -> int:
    from model.architecture import GazeXModel, configure_threads, select_device
    from model.calibration import CALIBRATION_FILE, fit_calibration
    from model.predictor import checkpoint_sha256, default_checkpoint
    from model.train.loop import (
        held_out_probabilities,
        thresholds_from,
        write_probability_calibration,
    )
    from model.train.progress import Progress

    ckpt: Path = args.ckpt or default_checkpoint()
    device = select_device(args.device)
    configure_threads(device, args.threads)
    model = GazeXModel.load(ckpt, device=device)
    samples = training_samples(args, ckpt, model.settings.training_data, "calibration")
    _, held_out = split_validation(samples)
    if not held_out:
        raise ValueError(f"too few training readings ({len(samples)}) to hold any out")
    with Progress(len(held_out), "film", args.progress, prefix="calibration ") as progress:
        probs, labels = held_out_probabilities(model, held_out, device, on_batch=progress.update)
    keys = model.settings.finding_keys
    if model.settings.thresholds and thresholds_from(probs, labels) != model.settings.thresholds:
        print(
            f"warning: the thresholds these {len(held_out)} readings give differ from "
            f"{ckpt.name}'s: they may not be the readings it held out",
            file=sys.stderr,
            flush=True,
        )
    calibration = fit_calibration(keys, probs, labels)
    write_probability_calibration(ckpt, calibration)
    print(
        f"probability calibration fitted on {calibration.films} held-out training readings "
        f"({calibration.method}):"
    )
    print(f"{'finding':26}{'T':>7}{'ECE before':>12}{'ECE after':>11}{'pos':>5}")
    for i, key in enumerate(keys):
        print(
            f"{key:26}{calibration.temperatures[i]:>7.3f}{calibration.ece_before[i]:>12.4f}"
            f"{calibration.ece_after[i]:>11.4f}{int(labels[:, i].sum()):>5}"
        )
    print(f"written to {ckpt / CALIBRATION_FILE}; checkpoint sha256 now {checkpoint_sha256(ckpt)}")
    return 0


def warn_overlap(warning: str | None) -> None:
    """The one stderr line of :func:`model.train.provenance.training_overlap`, if any."""
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
