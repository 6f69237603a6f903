"""The training loop: a gaze stage (scanpath prediction) then a multitask stage.

Deterministic by seed on CPU (fixed thread count, seeded torch/numpy/random, ordered data).
On CUDA the forward runs under bf16 autocast. Each epoch writes a resumable checkpoint:
the model folder plus ``training_state.pt`` (optimizer, epoch, RNG states).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from model.abcdef import STEPS
from model.architecture import (
    SETTINGS_FILE,
    GazeXModel,
    GazeXSettings,
    ModelSize,
    configure_threads,
    select_device,
)
from model.calibration import CALIBRATION_FILE, ProbabilityCalibration, fit_calibration
from model.domain import GATE_FILE, MIN_FILMS, DomainGate, fit_gate
from model.imaging import ImageInput, prepare_image
from model.tokenizer import TextCodec, train_tokenizer
from model.train.batching import (
    IGNORE,
    Example,
    build_example,
    collate,
    key_fixations,
    report_text,
)
from model.train.gazedata.sample import GazeSample
from model.train.losses import compute_losses
from model.train.progress import Progress
from model.train.provenance import film_id, training_record

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    gaze_epochs: int = 2
    multitask_epochs: int = 8
    batch_size: int = 8
    lr: float = 1.5e-3
    weight_decay: float = 0.01
    seed: int = 0
    size: ModelSize = field(default_factory=ModelSize)
    vocab_size: int = 1024
    max_vqa: int = 1
    #: Weight of the finding (multi-label BCE) loss in the multitask stage.
    finding_weight: float = 1.0
    #: Weight of the box loss (L1 + GIoU) in the multitask stage.
    box_weight: float = 2.0
    #: Multitask stage: feed each ``<st>`` the patch the model itself chose at the previous
    #: one instead of the reader's fixation (:func:`model.train.losses.own_fixations`).
    own_gaze: bool = False
    #: Weight the step and region cross-entropies of the gaze tokens by the inverse square
    #: root of each class's frequency among the key fixations, so brief steps (E: spine and
    #: clavicles) are not out-voted by the lung zones.
    balance_gaze_labels: bool = False
    threads: int | None = None
    log_every: int = 10
    #: A progress bar over the whole run (all stages and epochs) on stderr; None: only when
    #: stderr is a terminal (:mod:`model.train.progress`).
    progress: bool | None = None


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# -- data -------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A sample with its resized image (computed once per run)."""

    sample: GazeSample
    image: ImageInput


def gaze_label_weights(
    prepared: Sequence[Prepared], settings: GazeXSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(region, step) class weights: 1 / sqrt(frequency) among the key fixations of the
    training readings, scaled to mean 1 over the classes that occur (absent classes 1)."""
    k = settings.effective_gaze_tokens
    regions = torch.zeros(len(settings.regions))
    steps = torch.zeros(len(STEPS))
    for p in prepared:
        for key in key_fixations(p.sample.fixations, p.image.grid, k, settings.regions):
            if key.region != IGNORE:
                regions[key.region] += 1
            if key.step != IGNORE:
                steps[key.step] += 1

    def weights(counts: torch.Tensor) -> torch.Tensor:
        seen = counts > 0
        out = torch.ones_like(counts)
        if bool(seen.any()):
            w = counts[seen].rsqrt()
            out[seen] = w / w.mean()
        return out

    return weights(regions), weights(steps)


def prepare_samples(samples: Sequence[GazeSample], settings: GazeXSettings) -> list[Prepared]:
    spec = settings.patch_spec
    return [Prepared(s, prepare_image(s.image, spec)) for s in samples]


def corpus(samples: Sequence[GazeSample]) -> Iterator[str]:
    for s in samples:
        yield report_text(s)
        for q, a in s.vqa:
            yield q
            yield a


def epoch_batches(
    prepared: Sequence[Prepared],
    codec: TextCodec,
    settings: GazeXSettings,
    batch_size: int,
    rng: random.Random,
    max_vqa: int,
    shuffle: bool = True,
) -> list[list[Example]]:
    """Examples of one epoch grouped into batches of similar sequence length."""
    order = list(range(len(prepared)))
    if shuffle:
        rng.shuffle(order)
    examples = [
        build_example(
            prepared[i].sample,
            prepared[i].image,
            codec,
            num_gaze_tokens=settings.num_gaze_tokens,
            gaze_mode=settings.gaze_mode,
            finding_keys=settings.finding_keys,
            regions=settings.regions,
            rng=rng,
            max_vqa=max_vqa,
            max_report_tokens=settings.max_report_tokens,
        )
        for i in order
    ]
    return [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]


# -- loop -------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(
    train_samples: Sequence[GazeSample],
    settings: GazeXSettings,
    config: TrainConfig,
    backbone: Path | None,
) -> GazeXModel:
    if backbone is not None:
        return GazeXModel.from_backbone(backbone, settings)
    codec = TextCodec(train_tokenizer(corpus(train_samples), vocab_size=config.vocab_size))
    return GazeXModel.from_scratch(codec, settings, config.size, seed=config.seed)


def train(
    train_samples: Sequence[GazeSample],
    out_dir: Path,
    settings: GazeXSettings,
    config: TrainConfig,
    *,
    val_samples: Sequence[GazeSample] = (),
    backbone: Path | None = None,
    device: str | torch.device | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: Progress | None = None,
) -> GazeXModel:
    """Train and write the checkpoint to ``out_dir`` (resuming from it when possible).

    The checkpoint's settings record the films it was trained on (``training_data``,
    :func:`model.train.provenance.training_record`, threshold films included), so that
    ``gazex eval`` can tell when test films overlap them. After the last epoch the finding
    thresholds and the probability calibration (:mod:`model.calibration`) are fitted on
    ``val_samples`` (held out of the gradient updates), and the domain
    gate (:mod:`model.domain`) is fitted on all those films and written beside the weights
    (:func:`calibrate_domain_gate`). ``progress`` is a bar shared with
    the caller (``gazex eval --ablation``), advanced by :func:`work_units` of this run;
    without one, ``config.progress`` decides whether the run draws its own.
    """
    if not train_samples:
        raise ValueError("no training samples")
    record = training_record([*train_samples, *val_samples])
    dev = select_device(device)
    configure_threads(dev, config.threads)
    seed_everything(config.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE
    start_epoch = 0
    state: dict[str, Any] | None = None
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        saved = dict(state.get("config") or {})
        saved.pop("multitask_epochs", None)
        if saved != _config_key(config, settings):
            logger.warning("training state in %s is for another configuration; restarting", out_dir)
            state = None
    if state is not None:
        model = GazeXModel.load(out_dir)
        start_epoch = int(state["epoch"])
        logger.info("resuming from epoch %d", start_epoch)
    else:
        model = build_model(train_samples, settings, config, backbone)
    # The gate of an earlier run in ``out_dir`` does not describe these weights: the last
    # epoch fits a new one.
    model.settings = replace(
        model.settings, training_data=record, domain_gate="", probability_calibration=""
    )
    settings = model.settings
    model.to(dev)
    prepared = prepare_samples(train_samples, settings)
    total_epochs = config.gaze_epochs + config.multitask_epochs
    steps_per_epoch = math.ceil(len(prepared) / config.batch_size)
    total_steps = total_epochs * steps_per_epoch
    own_bar = progress is None
    bar = progress or Progress(
        work_units(len(train_samples), len(val_samples), config),
        "step",
        config.progress,
        prefix="train ",
    )
    bar.skip(start_epoch * steps_per_epoch)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, warmup=min(50, total_steps // 10))
    )
    rng = random.Random(config.seed)  # noqa: S311 - data order, not security
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
    spec = settings.patch_spec
    label_weights: tuple[torch.Tensor, torch.Tensor] | None = None
    if config.balance_gaze_labels:
        region_w, step_w = gaze_label_weights(prepared, settings)
        label_weights = (region_w.to(dev), step_w.to(dev))
    history: list[dict[str, float]] = list(state["history"]) if state is not None else []
    for epoch in range(start_epoch, total_epochs):
        stage = "gaze" if epoch < config.gaze_epochs else "multitask"
        model.train()
        batches = epoch_batches(
            prepared, model.codec, settings, config.batch_size, rng, config.max_vqa
        )
        sums: dict[str, float] = {}
        bar.stage(f"epoch {epoch + 1}/{total_epochs} [{stage}]")
        t0 = time.monotonic()
        for step, examples in enumerate(batches):
            batch = to_device(
                collate(examples, model.codec, settings.effective_gaze_tokens, spec), dev
            )
            with autocast(dev):
                losses = compute_losses(
                    model,
                    batch,
                    stage,
                    label_weights,
                    finding_weight=config.finding_weight,
                    box_weight=config.box_weight,
                    own_gaze=config.own_gaze,
                )
            loss = sum(losses.values(), torch.zeros((), device=dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            sums["total"] = sums.get("total", 0.0) + float(loss.detach())
            bar.postfix(f"loss={sums['total'] / (step + 1):.3f}")
            bar.update()
        means = {name: value / max(len(batches), 1) for name, value in sums.items()}
        means["seconds"] = time.monotonic() - t0
        means["epoch"] = float(epoch + 1)
        history.append(means)
        logger.info(
            "epoch %d/%d %s: %s",
            epoch + 1,
            total_epochs,
            stage,
            " ".join(f"{k}={v:.4f}" for k, v in means.items() if k not in ("epoch",)),
        )
        if epoch + 1 == total_epochs and val_samples:
            bar.stage("calibrating thresholds and probabilities")
            probs, labels = held_out_probabilities(model, val_samples, dev, on_batch=bar.update)
            calibration = fit_calibration(model.settings.finding_keys, probs, labels)
            calibration.save(out_dir)
            model.settings = replace(
                model.settings,
                thresholds=thresholds_from(probs, labels),
                probability_calibration=CALIBRATION_FILE,
            )
        if epoch + 1 == total_epochs:
            bar.stage("fitting the domain gate")
            val_prepared = prepare_samples(val_samples, settings)
            gate = calibrate_domain_gate(
                model, [*prepared, *val_prepared], dev, on_batch=bar.update
            )
            if gate is not None:
                gate.save(out_dir)
                model.settings = replace(model.settings, domain_gate=GATE_FILE)
        model.save(out_dir)
        torch.save(
            {
                "epoch": epoch + 1,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "python_rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "config": _config_key(config, settings),
            },
            state_path,
        )
        if on_epoch is not None:
            on_epoch(epoch, means)
    if own_bar:
        bar.close()
    model.eval()
    return model


def work_units(train_count: int, val_count: int, config: TrainConfig) -> int:
    """What :func:`train` advances a progress bar by: one per training batch of every
    epoch, one per threshold film, one per film of the domain gate."""
    steps_per_epoch = math.ceil(train_count / config.batch_size)
    gate = train_count + val_count if train_count + val_count >= MIN_FILMS else 0
    return (config.gaze_epochs + config.multitask_epochs) * steps_per_epoch + val_count + gate


def _config_key(config: TrainConfig, settings: GazeXSettings) -> dict[str, Any]:
    """What must match to resume: everything but the epoch counts (so a run can be
    extended with more multitask epochs; the cosine schedule then stretches to the new end)."""
    key = asdict(config)
    key.pop("multitask_epochs", None)
    key.pop("progress", None)
    key.pop("threads", None)
    key.pop("log_every", None)
    if not key.get("own_gaze"):
        key.pop("own_gaze", None)
    if key.get("box_weight") == 2.0:
        key.pop("box_weight")
    if key.get("finding_weight") == 1.0:
        key.pop("finding_weight")  # the default: states saved before the option still resume
    if not key.get("balance_gaze_labels"):
        key.pop("balance_gaze_labels", None)
    key["gaze_mode"] = settings.gaze_mode
    if settings.finding_pool != "attention":  # defaults left out: older states still resume
        key["finding_pool"] = settings.finding_pool
    if settings.detail_channel:
        key["detail_channel"] = True
    if settings.conv_branch:
        key["conv_branch"] = list(settings.conv_branch)
    key["num_gaze_tokens"] = settings.num_gaze_tokens
    key["max_pixels"] = settings.max_pixels
    return key


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def calibrate_thresholds(
    model: GazeXModel,
    samples: Sequence[GazeSample],
    device: torch.device,
    on_batch: Callable[[int], object] | None = None,
) -> tuple[float, ...]:
    """Per-finding thresholds maximising F1 on held-out samples (:func:`f1_threshold`)."""
    return thresholds_from(*held_out_probabilities(model, samples, device, on_batch))


def held_out_probabilities(
    model: GazeXModel,
    samples: Sequence[GazeSample],
    device: torch.device,
    on_batch: Callable[[int], object] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Raw finding probabilities (n, F) of ``samples`` and their labels (n, F), in the
    order of ``model.settings.finding_keys``."""
    from model.inference import InferenceEngine

    engine = InferenceEngine(model, device)
    outputs = engine.run([s.image for s in samples], generate_text=False, on_batch=on_batch)
    probs = np.stack([o.probabilities for o in outputs]).astype(np.float64)
    labels = np.array(
        [[bool(s.labels.get(key, False)) for key in model.settings.finding_keys] for s in samples],
        dtype=bool,
    ).reshape(len(samples), len(model.settings.finding_keys))
    return probs, labels


def thresholds_from(
    probabilities: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_]
) -> tuple[float, ...]:
    """:func:`f1_threshold` of each finding (column)."""
    return tuple(
        f1_threshold(labels[:, i], probabilities[:, i]) for i in range(probabilities.shape[1])
    )


def write_probability_calibration(directory: Path, calibration: ProbabilityCalibration) -> None:
    """Add ``calibration`` to the checkpoint in ``directory`` and name it in ``gazex.json``;
    the weights are not rewritten."""
    settings = GazeXSettings.from_json((directory / SETTINGS_FILE).read_text())
    calibration.save(directory)
    settings = replace(settings, probability_calibration=CALIBRATION_FILE)
    (directory / SETTINGS_FILE).write_text(settings.to_json())


def calibrate_domain_gate(
    model: GazeXModel,
    prepared: Sequence[Prepared],
    device: torch.device,
    on_batch: Callable[[int], object] | None = None,
) -> DomainGate | None:
    """The domain gate (:mod:`model.domain`) fitted on the training films' features, each
    film once (several readings of one film share its pixels); None, with a warning, when
    fewer than :data:`model.domain.MIN_FILMS` films leave nothing to calibrate on."""
    from model.inference import InferenceEngine

    films: dict[str, ImageInput] = {}
    for p in prepared:
        films.setdefault(film_id(p.sample), p.image)
    if len(films) < MIN_FILMS:
        logger.warning(
            "domain gate not fitted: %d training films, at least %d needed; results of this "
            "checkpoint will say the domain was not checked",
            len(films),
            MIN_FILMS,
        )
        if on_batch is not None and len(prepared) >= MIN_FILMS:
            on_batch(len(prepared))  # work_units counted them (readings, not films)
        return None
    engine = InferenceEngine(model, device)
    features = engine.image_features(list(films.values()), on_batch=on_batch)
    if on_batch is not None and len(films) < len(prepared):
        on_batch(len(prepared) - len(films))
    return fit_gate(features)


def write_domain_gate(directory: Path, gate: DomainGate) -> None:
    """Add ``gate`` to the checkpoint in ``directory`` and name it in ``gazex.json``; the
    weights are not rewritten (their bytes, and so their hash, stay as they were)."""
    settings = GazeXSettings.from_json((directory / SETTINGS_FILE).read_text())
    gate.save(directory)
    settings = replace(settings, domain_gate=GATE_FILE)
    (directory / SETTINGS_FILE).write_text(settings.to_json())


def f1_threshold(labels: npt.NDArray[np.bool_], probabilities: npt.NDArray[Any]) -> float:
    """The threshold in 0.05, 0.10, ..., 0.95 with the best F1; 0.5 when undecidable.

    When several tie (a finding the held-out films separate cleanly), the middle one: the
    lowest would flag every film whose probability merely clears the negatives seen here.
    """
    if labels.all() or not labels.any():
        return 0.5
    grid = np.round(np.linspace(0.05, 0.95, 19), 3)
    f1 = np.array(
        [
            2
            * float((labels & (probabilities >= t)).sum())
            / max(float((probabilities >= t).sum() + labels.sum()), 1.0)
            for t in grid
        ]
    )
    best = grid[f1 >= f1.max() - 1e-9]
    return float(best[(len(best) - 1) // 2])
