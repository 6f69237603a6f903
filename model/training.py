"""Training: a gaze stage (scanpath prediction) then a multitask stage.

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
from torch.nn import functional

from model.abcdef import STEPS
from model.architecture import (
    GazeXModel,
    GazeXSettings,
    HeadOutputs,
    ModelSize,
    configure_threads,
    gaze_soft_targets,
    masked_bce,
    pad_image_tokens,
    select_device,
    soft_cross_entropy,
)
from model.batching import IGNORE, Example, ImageInput, build_example, collate, prepare_image
from model.data.sample import GazeSample
from model.tokenizer import TextCodec, train_tokenizer

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
    #: one instead of the reader's fixation (:func:`own_fixations`).
    own_gaze: bool = False
    #: Weight the step and region cross-entropies of the gaze tokens by the inverse square
    #: root of each class's frequency among the key fixations, so brief steps (E: spine and
    #: clavicles) are not out-voted by the lung zones.
    balance_gaze_labels: bool = False
    threads: int | None = None
    log_every: int = 10
    progress: bool = True


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def forward_batch(model: GazeXModel, batch: dict[str, Any], own_gaze: bool = False) -> HeadOutputs:
    """Teacher-forced forward over a collated batch.

    ``<st>`` number j+1 carries the visual feature of fixation j: the reader's (teacher
    forcing), or with ``own_gaze`` the patch the model itself points to at ``<st>`` j
    given the reader's earlier fixations (:func:`own_fixations`).
    """
    input_ids: torch.Tensor = batch["input_ids"]
    attention_mask: torch.Tensor = batch["attention_mask"]
    feats = model.image_features(batch["pixel_values"], batch["image_grid_thw"])
    embeds = model.embed_tokens(input_ids)
    image_positions = input_ids == model.image_token_id
    embeds = embeds.masked_scatter(image_positions[..., None], torch.cat(feats).to(embeds.dtype))
    img_in, _ = pad_image_tokens(feats)
    k = int(batch["num_gaze_tokens"])
    b = input_ids.shape[0]
    rows = torch.arange(b, device=input_ids.device)
    gaze_positions: torch.Tensor = batch["gaze_positions"]
    targets: torch.Tensor = batch["gaze_targets"]
    positions = model.rope_positions(input_ids, batch["image_grid_thw"], attention_mask)
    if k > 1:
        fed = targets[:, : k - 1]
        if own_gaze:
            fed = own_fixations(model, batch, embeds, positions, img_in)
        embeds = embeds + gaze_feedback(model, embeds, img_in, fed, gaze_positions[:, 1:k])
    hidden, _ = model.decoder(embeds, positions, attention_mask)
    n_per = [int(f.shape[0]) for f in feats]
    h_img, img_mask = pad_image_tokens(list(torch.split(hidden[image_positions], n_per)))
    h_end = hidden[rows, batch["gaze_end_position"]]
    d = hidden.shape[-1]
    if k > 0:
        h_st = hidden[rows[:, None], gaze_positions[:, :k]]
        gaze_logits, region_logits, step_logits, timing = model.gaze_outputs(h_st, h_img, img_mask)
    else:
        gaze_logits = hidden.new_zeros(b, 0, h_img.shape[1])
        region_logits = hidden.new_zeros(b, 0, len(model.settings.regions))
        step_logits = hidden.new_zeros(b, 0, 6)
        timing = hidden.new_zeros(b, 0, 2)
    finding_logits, mask_logits, boxes = model.finding_outputs(
        h_end, h_img, img_mask, batch["grid_hw"]
    )
    del d
    return HeadOutputs(
        gaze_logits=gaze_logits,
        region_logits=region_logits,
        step_logits=step_logits,
        timing=timing,
        finding_logits=finding_logits,
        mask_logits=mask_logits,
        boxes=boxes,
        lm_logits=model.lm_logits(hidden),
    )


def gaze_feedback(
    model: GazeXModel,
    embeds: torch.Tensor,
    img_in: torch.Tensor,
    fed: torch.Tensor,
    at: torch.Tensor,
) -> torch.Tensor:
    """What to add to ``embeds``: the visual feature of patch ``fed[:, j]`` at ``at[:, j]``."""
    rows = torch.arange(embeds.shape[0], device=embeds.device)[:, None]
    valid = (fed != IGNORE).to(embeds.dtype)[..., None]
    delta = torch.zeros_like(embeds)
    delta[rows, at] = model.gaze_feedback(img_in[rows, fed.clamp(min=0)]) * valid
    return delta


@torch.no_grad()
def own_fixations(
    model: GazeXModel,
    batch: dict[str, Any],
    embeds: torch.Tensor,
    positions: torch.Tensor,
    img_in: torch.Tensor,
) -> torch.Tensor:
    """The patch the model points to at each of the first K-1 ``<st>`` (B, K-1).

    One teacher-forced pass over the sequence up to ``<|gaze_end|>``, without gradients.
    Fed back in place of the reader's fixations, it makes the multitask stage see the
    scanpath the model will produce at inference: with the reader's own fixations fed in,
    the finding head learns to read the *reader's* scanpath (readers dwell on what is
    abnormal), which is not there at inference.
    """
    k = int(batch["num_gaze_tokens"])
    end = int(batch["gaze_end_position"].max()) + 1
    grid: list[list[int]] = batch["image_grid_thw"].tolist()
    at: torch.Tensor = batch["gaze_positions"][:, :k]
    targets: torch.Tensor = batch["gaze_targets"][:, :k]
    embeds = embeds[:, :end].detach()
    img_in = img_in.detach()
    embeds = embeds + gaze_feedback(model, embeds, img_in, targets[:, : k - 1], at[:, 1:])
    hidden, _ = model.decoder(embeds, positions[..., :end], batch["attention_mask"][:, :end])
    n_per = [int(t * h * w) // model.settings.merge_size**2 for t, h, w in grid]
    image_positions = batch["input_ids"][:, :end] == model.image_token_id
    h_img, img_mask = pad_image_tokens(list(torch.split(hidden[image_positions], n_per)))
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    logits, _, _, _ = model.gaze_outputs(hidden[rows, at[:, : k - 1]], h_img, img_mask)
    # As at inference: never the patch just fixated.
    previous = targets[:, : k - 2].clamp(min=0)
    logits[:, 1:] = logits[:, 1:].scatter(-1, previous[..., None], float("-inf"))
    chosen = logits.argmax(dim=-1)
    return chosen.masked_fill(targets[:, : k - 1] == IGNORE, IGNORE)


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - generalised IoU of (cx, cy, w, h) boxes, elementwise over the leading axes."""
    p, t = box_corners(pred), box_corners(target)
    ix0 = torch.maximum(p[..., 0], t[..., 0])
    iy0 = torch.maximum(p[..., 1], t[..., 1])
    ix1 = torch.minimum(p[..., 2], t[..., 2])
    iy1 = torch.minimum(p[..., 3], t[..., 3])
    inter = (ix1 - ix0).clamp(min=0) * (iy1 - iy0).clamp(min=0)
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_t = (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])
    union = area_p + area_t - inter + 1e-7
    iou = inter / union
    ex0 = torch.minimum(p[..., 0], t[..., 0])
    ey0 = torch.minimum(p[..., 1], t[..., 1])
    ex1 = torch.maximum(p[..., 2], t[..., 2])
    ey1 = torch.maximum(p[..., 3], t[..., 3])
    enclose = (ex1 - ex0) * (ey1 - ey0) + 1e-7
    return 1.0 - (iou - (enclose - union) / enclose)


def compute_losses(
    model: GazeXModel,
    batch: dict[str, Any],
    stage: str,
    label_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    finding_weight: float = 1.0,
    box_weight: float = 2.0,
    own_gaze: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-task losses; the ``gaze`` stage trains only the scanpath heads.

    ``finding_weight``, ``box_weight`` and ``own_gaze`` are :class:`TrainConfig`'s.

    ``label_weights`` are (region, step) class weights of the gaze tokens' cross-entropies
    (:func:`gaze_label_weights`), None for unweighted.
    """
    region_w, step_w = label_weights if label_weights is not None else (None, None)
    k = int(batch["num_gaze_tokens"])
    if stage == "gaze" and k > 0:
        # Nothing after <|gaze_end|> matters to the scanpath: drop the text (3x cheaper).
        end = int(batch["gaze_end_position"].max()) + 1
        batch = {
            **batch,
            "input_ids": batch["input_ids"][:, :end],
            "attention_mask": batch["attention_mask"][:, :end],
            "lm_labels": batch["lm_labels"][:, :end],
        }
    out = forward_batch(model, batch, own_gaze=own_gaze and stage != "gaze")
    losses: dict[str, torch.Tensor] = {}
    if k > 0:
        targets = batch["gaze_targets"][:, :k]
        valid = targets != IGNORE
        n_max = out.gaze_logits.shape[-1]
        soft = gaze_soft_targets(targets, batch["grid_hw"], n_max)
        losses["gaze"] = soft_cross_entropy(out.gaze_logits, soft, valid)
        losses["region"] = (
            0.3
            * functional.cross_entropy(
                out.region_logits.flatten(0, 1),
                batch["gaze_regions"][:, :k].flatten(),
                weight=region_w,
                ignore_index=IGNORE,
            )
            if bool((batch["gaze_regions"][:, :k] != IGNORE).any())
            else out.region_logits.sum() * 0
        )
        losses["step"] = (
            0.3
            * functional.cross_entropy(
                out.step_logits.flatten(0, 1),
                batch["gaze_steps"][:, :k].flatten(),
                weight=step_w,
                ignore_index=IGNORE,
            )
            if bool((batch["gaze_steps"][:, :k] != IGNORE).any())
            else out.step_logits.sum() * 0
        )
        timing_valid = valid[..., None].expand_as(out.timing)
        losses["timing"] = 0.05 * (
            functional.smooth_l1_loss(
                out.timing[timing_valid], batch["gaze_timing"][:, :k][timing_valid]
            )
            if bool(timing_valid.any())
            else out.timing.sum() * 0
        )
    if stage == "gaze" and k > 0:
        return losses
    losses["finding"] = masked_bce(
        out.finding_logits, batch["finding_labels"], batch["finding_known"]
    )
    if finding_weight != 1.0:
        losses["finding"] = finding_weight * losses["finding"]
    present_box = batch["box_known"] & (batch["finding_labels"] > 0.5)
    if bool(present_box.any()):
        pred = out.boxes[present_box]
        tgt = batch["boxes"][present_box]
        losses["box"] = box_weight * (functional.l1_loss(pred, tgt) + giou_loss(pred, tgt).mean())
    else:
        losses["box"] = out.boxes.sum() * 0.0
    mask_valid = batch["mask_known"][..., None] & (
        torch.arange(out.mask_logits.shape[-1], device=out.mask_logits.device)[None, None, :]
        < (batch["grid_hw"][:, 0] * batch["grid_hw"][:, 1])[:, None, None]
    )
    losses["mask"] = 0.5 * masked_bce(out.mask_logits, batch["mask_cover"], mask_valid)
    assert out.lm_logits is not None
    logits = out.lm_logits[:, :-1].flatten(0, 1)
    labels = batch["lm_labels"][:, 1:].flatten()
    losses["lm"] = functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
    return losses


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
    from model.batching import key_fixations

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
    from model.batching import report_text

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
) -> GazeXModel:
    """Train and write the checkpoint to ``out_dir`` (resuming from it when possible)."""
    if not train_samples:
        raise ValueError("no training samples")
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
    settings = model.settings
    model.to(dev)
    prepared = prepare_samples(train_samples, settings)
    total_epochs = config.gaze_epochs + config.multitask_epochs
    steps_per_epoch = math.ceil(len(prepared) / config.batch_size)
    total_steps = total_epochs * steps_per_epoch
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
    from tqdm import tqdm

    for epoch in range(start_epoch, total_epochs):
        stage = "gaze" if epoch < config.gaze_epochs else "multitask"
        model.train()
        batches = epoch_batches(
            prepared, model.codec, settings, config.batch_size, rng, config.max_vqa
        )
        sums: dict[str, float] = {}
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{total_epochs} [{stage}]",
            disable=not config.progress,
            unit="batch",
        )
        t0 = time.monotonic()
        for step, examples in enumerate(bar):
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
            bar.set_postfix(loss=f"{sums['total'] / (step + 1):.3f}")
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
            model.settings = replace(
                model.settings, thresholds=calibrate_thresholds(model, val_samples, dev)
            )
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
    model.eval()
    return model


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
    model: GazeXModel, samples: Sequence[GazeSample], device: torch.device
) -> tuple[float, ...]:
    """Per-finding thresholds maximising F1 on held-out samples (:func:`f1_threshold`)."""
    from model.inference import InferenceEngine

    engine = InferenceEngine(model, device)
    outputs = engine.run([s.image for s in samples], generate_text=False)
    probs = np.stack([o.probabilities for o in outputs])
    thresholds = []
    for i, key in enumerate(model.settings.finding_keys):
        y = np.array([bool(s.labels.get(key, False)) for s in samples])
        thresholds.append(f1_threshold(y, probs[:, i]))
    return tuple(thresholds)


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
