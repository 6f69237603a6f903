"""The teacher-forced forward pass over a collated batch and the per-task training losses."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn import functional

from model.architecture import GazeXModel, HeadOutputs, pad_image_tokens
from model.train.batching import IGNORE

logger = logging.getLogger(__name__)


def forward_batch(model: GazeXModel, batch: dict[str, Any], own_gaze: bool = False) -> HeadOutputs:
    """Teacher-forced forward over a collated batch.

    ``<st>`` number j+1 carries the visual feature of fixation j: the reader's (teacher
    forcing), or with ``own_gaze`` the patch the model itself points to at ``<st>`` j
    given the reader's earlier fixations (:func:`own_fixations`).
    """
    input_ids: torch.Tensor = batch["input_ids"]
    attention_mask: torch.Tensor = batch["attention_mask"]
    feats, maps = model.encode_images(batch["pixel_values"], batch["image_grid_thw"])
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
    cells = model.cell_masks(maps, h_end, h_img, mask_logits, batch["grid_hw"])
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
        cell_mask_logits=None if cells is None else cells[0],
        cell_valid=None if cells is None else cells[1],
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

    ``finding_weight``, ``box_weight`` and ``own_gaze`` are
    :class:`~model.train.loop.TrainConfig`'s.

    ``label_weights`` are (region, step) class weights of the gaze tokens' cross-entropies
    (:func:`model.train.loop.gaze_label_weights`), None for unweighted.
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
    if out.cell_mask_logits is not None and out.cell_valid is not None:
        losses["cell_mask"] = cell_mask_loss(
            out.cell_mask_logits, batch["cell_cover"], batch["mask_known"], out.cell_valid
        )
    assert out.lm_logits is not None
    logits = out.lm_logits[:, :-1].flatten(0, 1)
    labels = batch["lm_labels"][:, 1:].flatten()
    losses["lm"] = functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
    return losses


def gaze_soft_targets(
    indices: torch.Tensor, grid_hw: torch.Tensor, n_max: int, sigma: float = 0.7
) -> torch.Tensor:
    """Gaussian target distribution over tokens around each target patch (B, K, N_max)."""
    b, k = indices.shape
    device = indices.device
    idx = torch.arange(n_max, device=device)[None, None, :]
    gw = grid_hw[:, 1][:, None, None]
    gh = grid_hw[:, 0][:, None, None]
    r = torch.div(idx, gw, rounding_mode="floor")
    c = idx % gw
    tgt = indices.clamp(min=0)[..., None]
    tr = torch.div(tgt, gw, rounding_mode="floor")
    tc = tgt % gw
    d2 = ((r - tr) ** 2 + (c - tc) ** 2).float()
    weights = torch.exp(-d2 / (2 * sigma**2))
    weights = weights * (idx < gh * gw).float()
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-9)
    del b, k
    return weights


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy against soft targets over the last axis, averaged over ``valid``."""
    logp = torch.log_softmax(logits.masked_fill(torch.isinf(logits), -1e4), dim=-1)
    per = -(targets * logp).sum(-1)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return per[valid].mean()


def cell_mask_loss(
    logits: torch.Tensor, cover: torch.Tensor, known: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """The mask decoder's loss: per-cell BCE against the cells' coverage, plus a soft Dice
    loss on each mask that has a finding in it (a lesion covers a few per cent of the cells,
    so the BCE alone is content with a mask that misses its edge)."""
    cells = known[..., None] & valid[:, None, :]
    bce = masked_bce(logits, cover, cells)
    present = known & (cover.sum(-1) > 0)
    if not bool(present.any()):
        return bce
    prob = torch.sigmoid(logits.float()) * valid[:, None, :]
    overlap = (prob * cover).sum(-1)[present]
    total = (prob + cover).sum(-1)[present]
    dice = 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)
    return bce + dice.mean()


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return functional.binary_cross_entropy_with_logits(logits[valid], targets[valid])
