"""The training loop: a gaze stage (scanpath prediction) then a multitask stage.

Deterministic by seed on CPU (fixed thread count, seeded torch/numpy/random, ordered data).
On CUDA the forward runs under bf16 autocast. Each epoch writes a resumable checkpoint:
the model folder plus ``training_state.pt`` (optimizer, epoch, RNG states). Under
``torchrun`` the same loop runs on every process (:mod:`model.train.distributed`): each
takes its slice of every global batch, and rank 0 writes the checkpoint.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

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
from model.train.distributed import (
    Distributed,
    LossModule,
    barrier,
    check_batch_size,
    ddp,
    full_states,
    fully_shard_losses,
    global_steps,
    load_full_optimizer_state,
    local_slice,
    parameter_digest,
    spread,
    sum_over_ranks,
)
from model.train.gazedata.sample import GazeSample
from model.train.gazedata.synth import with_generator_masks
from model.train.progress import Progress
from model.train.provenance import film_id, training_record

if TYPE_CHECKING:
    from model.finetune import LoraOptions
    from model.train.shards import ShardedSamples

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


class LocalBatch(NamedTuple):
    """This rank's examples of one step and the size of the global batch they come from."""

    examples: list[Example]
    global_size: int


def example_of(
    sample: GazeSample,
    image: ImageInput,
    codec: TextCodec,
    settings: GazeXSettings,
    rng: random.Random,
    max_vqa: int,
) -> Example:
    """One training example of a reading, as the checkpoint's settings shape it."""
    return build_example(
        sample,
        image,
        codec,
        num_gaze_tokens=settings.num_gaze_tokens,
        gaze_mode=settings.gaze_mode,
        finding_keys=settings.finding_keys,
        regions=settings.regions,
        rng=rng,
        max_vqa=max_vqa,
        max_report_tokens=settings.max_report_tokens,
        mask_cells=settings.mask_cells,
    )


def local_batches(
    prepared: Sequence[Prepared],
    codec: TextCodec,
    settings: GazeXSettings,
    batch_size: int,
    rng: random.Random,
    max_vqa: int,
    shuffle: bool = True,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[LocalBatch]:
    """This rank's batch of each step of one epoch: the one place the loop gets data from.

    Every rank shuffles the same order with the same ``rng``, cuts it into global batches
    of ``batch_size`` and builds every example of each (building draws from ``rng`` too,
    so all ranks must, to stay in step), then keeps its own :func:`local_slice`. A last
    global batch smaller than the world is dropped (:func:`global_steps`). A streamed
    run (``--shards``) uses :func:`streamed_batches` instead.
    """
    order = list(range(len(prepared)))
    if shuffle:
        rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        examples = [
            example_of(prepared[i].sample, prepared[i].image, codec, settings, rng, max_vqa)
            for i in order[start : start + batch_size]
        ]
        if len(examples) >= world_size:
            yield LocalBatch(local_slice(examples, rank, world_size), len(examples))


def streamed_batches(
    samples: Iterable[GazeSample],
    codec: TextCodec,
    settings: GazeXSettings,
    batch_size: int,
    rng: random.Random,
    max_vqa: int,
    *,
    world_size: int = 1,
) -> Iterator[LocalBatch]:
    """:func:`local_batches` for a streamed source (``gazex train --shards``): ``samples``
    is already this rank's part of the epoch (:meth:`model.train.shards.ShardedSamples.epoch`,
    the same count on every rank), cut into local batches of ``batch_size // world_size``;
    each film is resized as it arrives and dropped after its step."""
    spec = settings.patch_spec
    local = batch_size // world_size
    chunk: list[GazeSample] = []

    def batch() -> LocalBatch:
        films = with_generator_masks(chunk) if settings.mask_decoder else chunk
        examples = [
            example_of(s, prepare_image(s.image, spec), codec, settings, rng, max_vqa)
            for s in films
        ]
        return LocalBatch(examples, len(examples) * world_size)

    for sample in samples:
        chunk.append(sample)
        if len(chunk) == local:
            yield batch()
            chunk = []
    if chunk:
        yield batch()


def prepare_probe(samples: Sequence[GazeSample], settings: GazeXSettings) -> list[Prepared]:
    """The probe readings of a streamed run (the tokenizer's corpus, the gaze label weights,
    the anatomy prior and the domain gate's films), prepared, each keeping only its resized
    film: a real film is tens of MB of float32, and nothing of the probe reads its pixels
    again. The full-size film is replaced by a zero-strided view of its shape (no memory),
    so the reading's size, which fixations and anatomical boxes are scaled by, stays."""
    return [
        Prepared(
            replace(
                p.sample,
                image=np.broadcast_to(np.float32(0.0), p.sample.image.shape),
                masks=None,
            ),
            p.image,
        )
        for p in prepare_samples(samples, settings)
    ]


def epoch_batches(
    prepared: Sequence[Prepared],
    codec: TextCodec,
    settings: GazeXSettings,
    batch_size: int,
    rng: random.Random,
    max_vqa: int,
    shuffle: bool = True,
) -> list[list[Example]]:
    """Examples of one epoch in batches of ``batch_size`` (one process's
    :func:`local_batches`)."""
    return [
        b.examples
        for b in local_batches(prepared, codec, settings, batch_size, rng, max_vqa, shuffle)
    ]


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
    distributed: Distributed | None = None,
    finetune: LoraOptions | None = None,
    stop_after_epoch: int | None = None,
    stream: ShardedSamples | None = None,
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

    ``distributed`` is this process's place in a ``torchrun`` launch (its process group
    already joined, :func:`model.train.distributed.process_group`); ``config.batch_size``
    is then the global batch. ``finetune`` adapts a ``backbone`` with LoRA
    (:func:`model.finetune.prepare_for_finetune`); only the parameters left trainable are
    optimised. ``stop_after_epoch`` ends the run once that epoch (counted from the start
    of the whole run) is written, as if interrupted: the same call without it resumes.
    Under FSDP, rank 0 returns the whole model (on the CPU), the other ranks their shards.

    ``stream`` trains on sharded data streamed epoch by epoch (this rank's part,
    :class:`model.train.shards.ShardedSamples`), never held in memory; ``train_samples``
    is then a probe of it (:func:`prepare_probe`) that builds the tokenizer, the gaze label
    weights and the domain gate, and the training record lists every film of the shards.
    """
    if not train_samples:
        raise ValueError("no training samples")
    dist = distributed or Distributed()
    check_batch_size(config.batch_size, dist.world_size)
    trained_on = stream.film_readings() if stream is not None else train_samples
    record = training_record([*trained_on, *val_samples])
    dev = select_device(device)
    configure_threads(dev, config.threads)
    seed_everything(config.seed)
    sharded = dist.strategy == "fsdp"  # Distributed refuses fsdp in a single process
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_FILE
    start_epoch = 0
    state: dict[str, Any] | None = None
    # Every rank reads the same state: same epoch, optimizer, and RNG states below.
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        saved = dict(state.get("config") or {})
        saved.pop("multitask_epochs", None)
        if saved != _config_key(config, settings, finetune):
            logger.warning("training state in %s is for another configuration; restarting", out_dir)
            state = None
        elif (state.get("strategy") == "fsdp") != sharded:
            raise ValueError(
                f"the training state in {out_dir} was written with --strategy "
                f"{state.get('strategy', 'ddp')}; resume it with the same strategy"
            )
    first, last = spread(int(state["epoch"]) if state is not None else 0, dist, dev)
    if first != last:
        raise ValueError(
            f"the processes found different training states in {out_dir} (epochs {first} "
            f"to {last}): --out must be one folder that every machine shares"
        )
    if state is not None:
        # A LoRA run resumes its adapter unmerged, to train on.
        model = GazeXModel.load(out_dir, merge=finetune is None)
        start_epoch = int(state["epoch"])
        logger.info("resuming from epoch %d", start_epoch)
    else:
        model = build_model(train_samples, settings, config, backbone)
    if finetune is not None:
        from model.finetune import prepare_for_finetune

        base_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        model = prepare_for_finetune(model, finetune, base_dtype=base_dtype)
    # The gate (and calibration, prior) of an earlier run in ``out_dir`` does not describe
    # these weights: the last epoch fits new ones.
    model.settings = replace(
        model.settings,
        training_data=record,
        domain_gate="",
        probability_calibration="",
        anatomy_prior={},
    )
    settings = model.settings
    losses_module = LossModule(
        model,
        finding_weight=config.finding_weight,
        box_weight=config.box_weight,
        own_gaze=config.own_gaze,
    )
    # FSDP shards the model's parameters in place: rank 0 keeps a whole copy (on the CPU)
    # to load the gathered weights into, save, and calibrate with.
    shadow = copy.deepcopy(model) if sharded and dist.is_main else None
    model.to(dev)
    if stream is not None:
        prepared = prepare_probe(train_samples, settings)
        train_count = stream.per_rank * dist.world_size
    else:
        with_masks = with_generator_masks(train_samples) if settings.mask_decoder else train_samples
        prepared = prepare_samples(with_masks, settings)
        train_count = len(prepared)
    total_epochs = config.gaze_epochs + config.multitask_epochs
    steps_per_epoch = global_steps(train_count, config.batch_size, dist.world_size)
    total_steps = total_epochs * steps_per_epoch
    own_bar = progress is None
    bar = progress or Progress(
        work_units(
            train_count, len(val_samples), config, dist.world_size, gate_films=len(prepared)
        ),
        "step",
        config.progress if dist.is_main else False,
        prefix="train ",
    )
    bar.skip(start_epoch * steps_per_epoch)
    k = settings.effective_gaze_tokens
    wrapped: torch.nn.Module = fully_shard_losses(losses_module) if sharded else losses_module
    wrapped_for = ""  # the stage the DDP wrapper was made for
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, warmup=min(50, total_steps // 10))
    )
    rng = random.Random(config.seed)  # noqa: S311 - data order, not security
    if state is not None:
        if sharded:
            load_full_optimizer_state(wrapped, optimizer, state["optimizer"])
        else:
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
    end_epoch = total_epochs if stop_after_epoch is None else min(stop_after_epoch, total_epochs)
    for epoch in range(start_epoch, end_epoch):
        stage = "gaze" if epoch < config.gaze_epochs else "multitask"
        if not sharded and stage != wrapped_for:
            # DDP must be told when a trainable parameter gets no gradient in a step, or
            # it waits for it forever. The gaze stage computes the finding heads' outputs
            # (finding, box, mask) but has no loss on them (compute_losses returns the
            # gaze losses only; the LM head is tied to the embeddings, which are used),
            # and with fewer than two gaze tokens (gaze mode "none") the pointer, region,
            # step and timing heads and the fixation feedback get none in any stage. The
            # multitask stage with K >= 2 uses every parameter (test_model_distributed
            # checks), so it gets a wrapper of its own without the extra search of the
            # graph at each step; the gaze stage's goes first, with its gradient hooks.
            wrapped = losses_module
            if dist.active:
                gc.collect()
            wrapped = ddp(losses_module, dist, dev, find_unused=stage == "gaze" or k < 2)
            wrapped_for = stage
        model.train()
        sums: dict[str, float] = {}
        bar.stage(f"epoch {epoch + 1}/{total_epochs} [{stage}]")
        t0 = time.monotonic()
        steps = 0
        batches = (
            streamed_batches(
                stream.epoch(epoch),
                model.codec,
                settings,
                config.batch_size,
                rng,
                config.max_vqa,
                world_size=dist.world_size,
            )
            if stream is not None
            else local_batches(
                prepared,
                model.codec,
                settings,
                config.batch_size,
                rng,
                config.max_vqa,
                rank=dist.rank,
                world_size=dist.world_size,
            )
        )
        for step, local in enumerate(batches):
            batch = to_device(
                collate(local.examples, model.codec, settings.effective_gaze_tokens, spec), dev
            )
            with autocast(dev):
                losses = wrapped(batch, stage, label_weights)
            loss = sum(losses.values(), torch.zeros((), device=dev))
            # DDP and FSDP average the ranks' gradients; weighted by each rank's share of
            # the global batch, that average is the whole batch's mean (shares differ only
            # in an epoch's last, uneven batch; in one process the share is 1).
            share = len(local.examples) / local.global_size
            scale = share * dist.world_size
            optimizer.zero_grad(set_to_none=True)
            (loss * scale if scale != 1.0 else loss).backward()
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.grad is not None], 1.0
            )
            optimizer.step()
            scheduler.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * share
            sums["total"] = sums.get("total", 0.0) + float(loss.detach()) * share
            bar.postfix(f"loss={sums['total'] * dist.world_size / (step + 1):.3f}")
            bar.update()
            steps += 1
        # Each rank's share-weighted sum; added over the ranks, the global batches' means.
        sums = sum_over_ranks(sums, dist, dev)
        means = {name: value / max(steps, 1) for name, value in sums.items()}
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
        model_state: dict[str, Any] | None = None
        optimizer_state: dict[str, Any]
        if sharded:  # a collective: every rank gathers, rank 0 receives
            model_state, optimizer_state = full_states(wrapped, optimizer)
        else:
            optimizer_state = optimizer.state_dict()
        if dist.is_main:
            whole = model
            if shadow is not None and model_state is not None:
                shadow.load_state_dict(model_state)
                shadow.settings = model.settings
                whole = shadow
            if epoch + 1 == total_epochs:
                whole.to(dev)
                whole.settings = _calibrate(whole, prepared, val_samples, out_dir, dev, bar)
                model.settings = whole.settings
            whole.save(out_dir)
            torch.save(
                {
                    "epoch": epoch + 1,
                    "optimizer": optimizer_state,
                    "scheduler": scheduler.state_dict(),
                    "python_rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "config": _config_key(config, settings, finetune),
                    **({"strategy": "fsdp"} if sharded else {}),
                },
                state_path,
            )
            if shadow is not None:
                shadow.cpu()
            logger.debug("rank %d wrote the checkpoint of epoch %d", dist.rank, epoch + 1)
        barrier(dist)
        if not dist.is_main and epoch + 1 == total_epochs:
            model.settings = GazeXSettings.from_json((out_dir / SETTINGS_FILE).read_text())
        if on_epoch is not None:
            on_epoch(epoch, means)
    if dist.active and logger.isEnabledFor(logging.DEBUG):  # the same on every rank
        logger.debug(
            "rank %d of %d: parameters sha256 %s",
            dist.rank,
            dist.world_size,
            parameter_digest(model),
        )
    if own_bar:
        bar.close()
    model.eval()
    return shadow if shadow is not None else model


def _calibrate(
    model: GazeXModel,
    prepared: Sequence[Prepared],
    val_samples: Sequence[GazeSample],
    out_dir: Path,
    dev: torch.device,
    bar: Progress,
) -> GazeXSettings:
    """After the last epoch: the anatomy prior fitted on the training readings, the
    thresholds and probability calibration on ``val_samples`` and the domain gate on all
    the films, written to ``out_dir``; the settings that name them."""
    # The ABCDEF schedule and region atlas of the gaze decoding (model.anatomy_prior), from
    # the training readings; first, so that the thresholds are tuned on what inference does.
    from model.train.anatomy_prior import fit_anatomy_prior

    prior = fit_anatomy_prior([p.sample for p in prepared], model.settings)
    model.settings = replace(model.settings, anatomy_prior=prior)
    settings = model.settings
    # The inference engine reads the decoder's weights directly: a LoRA adapter must be
    # merged into them for it to see the trained model (a no-op without an adapter).
    with model.merged_adapter():
        return _fit_calibration_and_gate(model, settings, prepared, val_samples, out_dir, dev, bar)


def _fit_calibration_and_gate(
    model: GazeXModel,
    settings: GazeXSettings,
    prepared: Sequence[Prepared],
    val_samples: Sequence[GazeSample],
    out_dir: Path,
    dev: torch.device,
    bar: Progress,
) -> GazeXSettings:
    if val_samples:
        bar.stage("calibrating thresholds and probabilities")
        probs, labels = held_out_probabilities(model, val_samples, dev, on_batch=bar.update)
        calibration = fit_calibration(settings.finding_keys, probs, labels)
        calibration.save(out_dir)
        settings = replace(
            settings,
            thresholds=thresholds_from(probs, labels),
            probability_calibration=CALIBRATION_FILE,
        )
    bar.stage("fitting the domain gate")
    val_prepared = prepare_samples(val_samples, settings)
    gate = calibrate_domain_gate(model, [*prepared, *val_prepared], dev, on_batch=bar.update)
    if gate is not None:
        gate.save(out_dir)
        settings = replace(settings, domain_gate=GATE_FILE)
    return settings


def work_units(
    train_count: int,
    val_count: int,
    config: TrainConfig,
    world_size: int = 1,
    *,
    gate_films: int | None = None,
) -> int:
    """What :func:`train` advances a progress bar by: one per training batch of every
    epoch (global batches, :func:`model.train.distributed.global_steps`), one per threshold
    film, one per film of the domain gate (``gate_films`` training films: all of them, or
    a streamed run's probe)."""
    steps_per_epoch = global_steps(train_count, config.batch_size, world_size)
    films = (train_count if gate_films is None else gate_films) + val_count
    gate = films if films >= MIN_FILMS else 0
    return (config.gaze_epochs + config.multitask_epochs) * steps_per_epoch + val_count + gate


def _config_key(
    config: TrainConfig, settings: GazeXSettings, finetune: LoraOptions | None = None
) -> dict[str, Any]:
    """What must match to resume: everything but the epoch counts (so a run can be
    extended with more multitask epochs; the cosine schedule then stretches to the new end)."""
    key = asdict(config)
    if finetune is not None:  # left out without LoRA: older states still resume
        key["finetune"] = asdict(finetune)
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
    if settings.mask_decoder:
        key["mask_decoder"] = settings.mask_decoder
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
