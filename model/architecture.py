"""The gaze-guided VLM: a Qwen2.5-VL backbone with gaze tokens and task heads.

Sequence layout (one image)::

    <|vision_start|> <|image_pad|> x N <|vision_end|> <|gaze_start|> <st> x K <|gaze_end|>
    <|report|> report text <|im_end|> [<|question|> question <|answer|> answer <|im_end|>]...

* Gaze head ("Thinking with Gaze"): at the k-th ``<st>`` a pointer over the N image tokens
  predicts the patch index of the k-th key fixation (plus its region, ABCDEF step and timing).
  The input embedding of ``<st>`` number k+1 carries the visual feature of fixation k
  (teacher forced in training, the model's own choice at inference), so the gaze tokens form
  an autoregressive scanpath.
* Finding and grounding heads read ``<|gaze_end|>`` (which has attended over the image and the
  whole scanpath) and one learned query per finding over the image tokens: multi-label
  logits, a mask logit per image token, and a box regressed around the query's attention
  centroid. Regression rather than coordinate text: at this scale a few hundred thousand
  parameters learn a box from a pooled feature in minutes, while coordinate text needs the
  LM to learn digit arithmetic first.
* The LM head generates the report and VQA answers *after* the gaze tokens, so the text is
  conditioned on where the model looked.

Over 400 lines on purpose: the settings, the convolutional branch and :class:`GazeXModel`'s
heads define one checkpoint format together; split, a change to one would hide the others.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from model.abcdef import REGIONS, STEPS
from model.findings import FINDING_KEYS
from model.imaging import PatchSpec
from model.tokenizer import (
    GAZE,
    GAZE_END,
    IMAGE_PAD,
    PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    TextCodec,
)

logger = logging.getLogger(__name__)

SETTINGS_FILE = "gazex.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_CONFIG_FILE = "backbone_config.json"
GAZE_MODES: tuple[str, ...] = ("ordered", "shuffled", "random", "none")
FINDING_POOLS: tuple[str, ...] = ("attention", "attention+global")
#: A LoRA checkpoint: peft's adapter config beside the weights (heads plus adapter only).
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_NAME = "default"
#: Where a LoRA checkpoint's base Qwen2.5-VL folder is when ``load`` is not told.
BASE_MODEL_ENV = "GAZEX_BASE_MODEL"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded."""


@dataclass(frozen=True)
class ModelSize:
    """Backbone dimensions for a model built from scratch."""

    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    vision_hidden: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 256


TINY = ModelSize(
    text_hidden=64,
    text_layers=2,
    text_heads=2,
    text_kv_heads=1,
    text_intermediate=128,
    vision_hidden=32,
    vision_depth=1,
    vision_heads=1,
    vision_intermediate=64,
)


@dataclass(frozen=True)
class GazeXSettings:
    """Everything besides the weights that a checkpoint needs (saved as ``gazex.json``)."""

    num_gaze_tokens: int = 12
    gaze_mode: str = "ordered"
    min_pixels: int = 56 * 56
    max_pixels: int = 224 * 224
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    finding_keys: tuple[str, ...] = FINDING_KEYS
    regions: tuple[str, ...] = REGIONS
    max_report_tokens: int = 192
    max_answer_tokens: int = 24
    backbone: str = "scratch"
    #: The Qwen2.5-VL folder a backbone run started from (absolute path when trained) and
    #: the sha256 of its ``config.json``; a LoRA checkpoint (``adapter_config.json`` beside
    #: the weights) needs that base to load. Empty for models built from scratch.
    base_model: str = ""
    base_model_config_sha256: str = ""
    name: str = "gazex-qwen2.5-vl"
    version: str = "0.1.0"
    trained_on_synthetic_data: bool = True
    thresholds: tuple[float, ...] = field(default_factory=tuple)
    #: Finding head pooling: ``"attention"`` (one attention-pooled feature per finding) or
    #: ``"attention+global"``, which adds a logit per finding from the channel-wise maximum
    #: and mean of the image tokens (evidence anywhere in the film: a line, a nodule).
    finding_pool: str = "attention"
    #: Second input channel: ``False`` repeats the film in all three channels; ``True`` puts
    #: the film's fine detail (film minus its Gaussian blur, sigma 2 px at model input) in
    #: the second one, so thin lines and small nodules stand out to the patch embedding.
    detail_channel: bool = False
    #: Widths of the convolutional branch of the vision encoder (:class:`ConvBranch`), whose
    #: features are added to the visual tokens; empty for the plain ViT.
    conv_branch: tuple[int, ...] = ()
    #: Width of the pixel decoder of the finding masks (:class:`MaskDecoder`): each finding's
    #: mask is predicted on the convolutional branch's last feature map (4 px cells at model
    #: input) instead of one logit per 28 px token; 0 keeps the token masks only. Needs the
    #: convolutional branch.
    mask_decoder: int = 0
    #: The films the checkpoint was trained on, as ``gazex train`` records them (film and
    #: reading counts, synthetic seed ranges, a hash set of other film ids:
    #: ``model.train.provenance``); ``gazex eval`` warns when test films overlap them.
    #: Empty for checkpoints older than the record.
    training_data: dict[str, Any] = field(default_factory=dict)
    #: The domain gate's file in the checkpoint folder (``model.domain``: is a film like the
    #: training films?), written by ``gazex train`` and ``gazex calibrate-domain``; empty when
    #: the checkpoint has none (its results then say "not checked").
    domain_gate: str = ""
    #: The probability calibration's file in the checkpoint folder (``model.calibration``:
    #: a temperature per finding, fitted on the threshold readings), written by ``gazex
    #: train`` and ``gazex calibrate-probabilities``; empty: raw probabilities are reported.
    probability_calibration: str = ""
    #: The anatomy prior of the gaze decoding (``model.anatomy_prior``: a region atlas in
    #: normalised film coordinates and the ABCDEF step schedule of the K gaze tokens), fitted
    #: on the training films by ``gazex train`` and ``gazex calibrate-anatomy``; empty: the
    #: pointer is unconstrained and the region and step heads label the fixations.
    anatomy_prior: dict[str, Any] = field(default_factory=dict)
    #: Mean gap (ms) between key fixations and mean dwell, for timing fall-backs.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gaze_mode not in GAZE_MODES:
            raise ValueError(f"gaze mode must be one of {GAZE_MODES}, got {self.gaze_mode!r}")
        if self.finding_pool not in FINDING_POOLS:
            raise ValueError(
                f"finding pool must be one of {FINDING_POOLS}, got {self.finding_pool!r}"
            )
        if self.mask_decoder and not self.conv_branch:
            raise ValueError("the mask decoder needs the convolutional branch (conv_branch)")

    @property
    def patch_spec(self) -> PatchSpec:
        return PatchSpec(
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            temporal_patch_size=self.temporal_patch_size,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            image_mean=self.image_mean,
            image_std=self.image_std,
            detail_channel=self.detail_channel,
        )

    @property
    def mask_cells(self) -> int:
        """Mask cells along each side of a token: the convolutional branch's feature-map
        cells per token window with the mask decoder (:class:`MaskDecoder`), else 1."""
        if not self.mask_decoder:
            return 1
        cells: int = self.patch_size * self.merge_size // 2 ** (len(self.conv_branch) - 1)
        return cells

    @property
    def effective_gaze_tokens(self) -> int:
        return 0 if self.gaze_mode == "none" else self.num_gaze_tokens

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> GazeXSettings:
        data = json.loads(text)
        for key in (
            "image_mean",
            "image_std",
            "finding_keys",
            "regions",
            "thresholds",
            "conv_branch",
        ):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def config_sha256(directory: Path) -> str:
    """sha256 of a Qwen2.5-VL folder's ``config.json``: which base a LoRA checkpoint needs."""
    return hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()


def load_backbone(directory: Path, **from_pretrained: Any) -> Qwen2_5_VLForConditionalGeneration:
    """The Qwen2.5-VL weights of a local folder (offline; float32 unless told otherwise)."""
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory} is not a Qwen2.5-VL model folder (no config.json)")
    options: dict[str, Any] = {"dtype": torch.float32, **from_pretrained}
    vlm: Qwen2_5_VLForConditionalGeneration = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(directory), local_files_only=True, **options
    )
    return vlm


def base_folder(directory: Path, settings: GazeXSettings, base: Path | None = None) -> Path:
    """The base Qwen2.5-VL folder of LoRA checkpoint ``directory``, checked against its hash.

    ``base``, else ``$GAZEX_BASE_MODEL``, else the recorded folder when it still exists.
    """
    wanted = f"the {settings.backbone!r} folder it was trained on"
    hint = f"pass base=DIR (or set {BASE_MODEL_ENV}=DIR) to {wanted}"
    env = os.environ.get(BASE_MODEL_ENV, "")
    recorded = Path(settings.base_model) if settings.base_model else None
    if base is None and env:
        base = Path(env)
    if base is None and recorded is not None and recorded.is_dir():
        base = recorded
    if base is None:
        raise CheckpointError(
            f"LoRA checkpoint {directory} needs its base model "
            f"({f'{recorded} is gone' if recorded else 'none recorded'}): {hint}"
        )
    if not (base / "config.json").is_file():
        raise CheckpointError(
            f"base model {base} of LoRA checkpoint {directory} has no config.json: {hint}"
        )
    if config_sha256(base) != settings.base_model_config_sha256:
        raise CheckpointError(
            f"base model {base} is not the one LoRA checkpoint {directory} was trained on "
            f"(its config.json differs): {hint}"
        )
    return base


def scratch_config(size: ModelSize, codec: TextCodec, settings: GazeXSettings) -> Qwen2_5_VLConfig:
    """A small Qwen2.5-VL config whose special token ids match ``codec``."""
    head_dim = size.text_hidden // size.text_heads
    half = head_dim // 2
    # mrope sections (temporal, height, width) must sum to head_dim / 2.
    t = half - 2 * (3 * half // 8)
    sections = [t, 3 * half // 8, 3 * half // 8]
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": codec.vocab_size,
            "hidden_size": size.text_hidden,
            "intermediate_size": size.text_intermediate,
            "num_hidden_layers": size.text_layers,
            "num_attention_heads": size.text_heads,
            "num_key_value_heads": size.text_kv_heads,
            "max_position_embeddings": 2048,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": sections,
            },
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": codec.id(PAD),
        },
        vision_config={
            "depth": size.vision_depth,
            "hidden_size": size.vision_hidden,
            "intermediate_size": size.vision_intermediate,
            "num_heads": size.vision_heads,
            "out_hidden_size": size.text_hidden,
            "patch_size": settings.patch_size,
            "spatial_merge_size": settings.merge_size,
            "temporal_patch_size": settings.temporal_patch_size,
            "window_size": settings.patch_size * settings.merge_size * 4,
            "fullatt_block_indexes": list(range(size.vision_depth)),
        },
        image_token_id=codec.id(IMAGE_PAD),
        video_token_id=codec.id(VIDEO_PAD),
        vision_start_token_id=codec.id(VISION_START),
        vision_end_token_id=codec.id(VISION_END),
        tie_word_embeddings=True,
    )


class ConvBranch(nn.Module):
    """A small CNN over the whole film whose features are added to the visual tokens.

    A ViT this small, trained on a few thousand films, memorises them before it learns to
    find a 1-2 px line or a few-pixel nodule anywhere in the image; convolutions have that
    translation-equivariant, local prior built in (the hybrid design of the original ViT
    paper). Each stage is a 3x3 convolution and GELU; the first stages halve the resolution
    with a 2x2 max pool, the last is max- and mean-pooled over each LM token's window (the
    merged patch: ``patch_size * merge_size`` px), and a linear layer maps that to the token
    width. The output layer starts at zero, so a pretrained backbone's tokens are unchanged
    at the first step. Reads the film from the packed patches, so it needs no other input.
    """

    def __init__(
        self,
        widths: tuple[int, ...],
        out_dim: int,
        *,
        patch_size: int,
        merge_size: int,
        temporal_patch_size: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        window = patch_size * merge_size
        halvings = len(widths) - 1
        if not widths or window % (2**halvings):
            raise ValueError(
                f"conv branch widths {widths}: {halvings} halvings do not divide the "
                f"{window} px token window"
            )
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.in_channels = in_channels
        self.window = window // 2**halvings
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.GELU(),
            ]
            if i < halvings:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(2 * previous, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def films(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Each image's first frame (C, H, W), unpacked from Qwen2.5-VL's patch layout."""
        p, m, c = self.patch_size, self.merge_size, self.in_channels
        rows = pixel_values.view(-1, c, self.temporal_patch_size, p, p)[:, :, 0]
        out = []
        start = 0
        for t, gh, gw in grid_thw.tolist():
            n = t * gh * gw
            x = rows[start : start + gh * gw].reshape(gh // m, gw // m, m, m, c, p, p)
            out.append(x.permute(4, 0, 2, 5, 1, 3, 6).reshape(c, gh * p, gw * p))
            start += n
        return out

    def forward(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image its tokens (N_i, out_dim), in the visual tokens' row-major order, and
        its last feature map (C, cells x grid_h, cells x grid_w), :attr:`cells` per token."""
        dtype = self.out.weight.dtype
        out = []
        maps: list[torch.Tensor] = []
        films = self.films(pixel_values.to(dtype), grid_thw)
        same = all(f.shape == films[0].shape for f in films)
        groups = [torch.stack(films)] if same else [f[None] for f in films]
        for x in groups:
            f = self.features(x)
            pooled = torch.cat(
                [
                    functional.max_pool2d(f, self.window),
                    functional.avg_pool2d(f, self.window),
                ],
                dim=1,
            )
            tokens = self.out(pooled.flatten(2).transpose(1, 2))  # (B, N, out_dim)
            out.extend(tokens.unbind(0))
            maps.extend(f.unbind(0))
        return out, maps

    @property
    def cells(self) -> int:
        """Feature-map cells along each side of one token's window."""
        return int(self.window)

    @property
    def map_width(self) -> int:
        return self.out.in_features // 2


class MaskDecoder(nn.Module):
    """Finding masks at the convolutional branch's resolution (4 px cells at model input).

    A token's 28 px window is too coarse for a nodule or the meniscus of an effusion. Each
    cell gets an embedding from the branch's last feature map plus its token's final hidden
    state (which has seen the whole film and the scanpath), refined by a 3x3 convolution;
    a finding's mask logit is its query's dot product with the cell embedding (as in
    MaskFormer), added to the token mask logit interpolated to the cell, so the decoder
    refines the token masks rather than replacing them.

    It reads its inputs without training them (stop-gradient): the convolutional branch is
    what finds the thin lines of tubes and catheters, and a segmentation loss pulling at the
    same 64 channels cost the finding head its devices (central line AUROC 0.99 -> 0.90 on
    1000 held-out films when it was trained through).
    """

    def __init__(self, map_width: int, hidden_size: int, width: int, cells: int) -> None:
        super().__init__()
        self.cells = cells
        self.width = width
        self.from_map = nn.Conv2d(map_width, width, 1)
        self.from_tokens = nn.Linear(hidden_size, width)
        self.refine = nn.Sequential(
            nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, width, 1)
        )
        self.query = nn.Linear(hidden_size, width)

    def forward(
        self,
        maps: list[torch.Tensor],
        h_img: torch.Tensor,
        queries: torch.Tensor,
        token_logits: torch.Tensor,
        grid_hw: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell logits (B, F, M_max), row-major over each image's cell grid, and their
        validity (B, M_max)."""
        out = []
        h_img, queries, token_logits = h_img.detach(), queries.detach(), token_logits.detach()
        for b, (gh, gw) in enumerate(grid_hw.tolist()):
            n = gh * gw
            size = (gh * self.cells, gw * self.cells)
            tokens = self.from_tokens(h_img[b, :n]).T.reshape(1, self.width, gh, gw)
            cells = self.from_map(maps[b][None].detach().to(tokens.dtype)) + functional.interpolate(
                tokens, size=size, mode="nearest"
            )
            cells = self.refine(cells)[0].flatten(1)  # (width, M)
            prior = functional.interpolate(
                token_logits[b, :, :n].reshape(1, -1, gh, gw),
                size=size,
                mode="bilinear",
                align_corners=False,
            )[0].flatten(1)
            q = self.query(queries[b])  # (F, width)
            out.append(q @ cells / math.sqrt(self.width) + prior)
        m_max = max(o.shape[-1] for o in out)
        logits = out[0].new_zeros(len(out), out[0].shape[0], m_max)
        valid = torch.zeros(len(out), m_max, dtype=torch.bool, device=logits.device)
        for b, o in enumerate(out):
            logits[b, :, : o.shape[-1]] = o
            valid[b, : o.shape[-1]] = True
        return logits, valid


@dataclass
class HeadOutputs:
    """Per-batch outputs of the heads (logits, not probabilities)."""

    gaze_logits: torch.Tensor  # (B, K, N) pointer over image tokens, -inf on padding
    region_logits: torch.Tensor  # (B, K, R)
    step_logits: torch.Tensor  # (B, K, 6)
    timing: torch.Tensor  # (B, K, 2): log1p(dwell ms), log1p(gap ms)
    finding_logits: torch.Tensor  # (B, F)
    mask_logits: torch.Tensor  # (B, F, N)
    boxes: torch.Tensor  # (B, F, 4) cx, cy, w, h as image fractions
    lm_logits: torch.Tensor | None = None
    #: The mask decoder's cell logits (B, F, M) and validity (B, M), when it has one.
    cell_mask_logits: torch.Tensor | None = None
    cell_valid: torch.Tensor | None = None


class GazeXModel(nn.Module):
    """Qwen2.5-VL backbone plus the gaze, finding, grounding and LM heads."""

    def __init__(
        self,
        vlm: Qwen2_5_VLForConditionalGeneration,
        codec: TextCodec,
        settings: GazeXSettings,
    ) -> None:
        super().__init__()
        self.vlm = vlm
        self.codec = codec
        self.settings = settings
        text_config: Any = vlm.config.text_config
        d = int(text_config.hidden_size)
        n_findings = len(settings.finding_keys)
        self.hidden_size = d
        self.gaze_query = nn.Linear(d, d)
        self.gaze_key = nn.Linear(d, d)
        self.gaze_feedback = nn.Linear(d, d)
        self.region_head = nn.Linear(d, len(settings.regions))
        self.step_head = nn.Linear(d, len(STEPS))
        self.timing_head = nn.Linear(d, 2)
        self.finding_queries = nn.Parameter(torch.randn(n_findings, d) * 0.02)
        self.finding_key = nn.Linear(d, d)
        self.finding_cls = nn.Parameter(torch.zeros(n_findings, 2 * d))
        self.finding_bias = nn.Parameter(torch.zeros(n_findings))
        self.box_mlp = nn.Sequential(nn.Linear(2 * d + 2, d), nn.GELU(), nn.Linear(d, 4))
        self.finding_norm = nn.LayerNorm(2 * d)
        nn.init.normal_(self.finding_cls, std=0.02)
        self.conv_branch: ConvBranch | None = None
        if settings.conv_branch:
            vision: Any = vlm.config.vision_config
            self.conv_branch = ConvBranch(
                settings.conv_branch,
                d,
                patch_size=settings.patch_size,
                merge_size=settings.merge_size,
                temporal_patch_size=settings.temporal_patch_size,
                in_channels=int(vision.in_channels),
            )
        self.mask_decoder: MaskDecoder | None = None
        if settings.mask_decoder and self.conv_branch is not None:
            self.mask_decoder = MaskDecoder(
                self.conv_branch.map_width, d, settings.mask_decoder, self.conv_branch.cells
            )
        self.finding_global: nn.Sequential | None = None
        if settings.finding_pool == "attention+global":
            self.finding_global = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, n_findings))
        self.image_token_id = codec.id(IMAGE_PAD)
        self.gaze_token_id = codec.id(GAZE)
        self.gaze_end_id = codec.id(GAZE_END)
        #: True once a LoRA adapter was folded into the weights (:meth:`merge_adapter`).
        self.adapter_merged = False

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_scratch(
        cls, codec: TextCodec, settings: GazeXSettings, size: ModelSize, seed: int = 0
    ) -> GazeXModel:
        torch.manual_seed(seed)
        config = scratch_config(size, codec, settings)
        vlm = Qwen2_5_VLForConditionalGeneration(config)
        return cls(vlm, codec, settings)

    @classmethod
    def from_backbone(
        cls, directory: Path, settings: GazeXSettings, **from_pretrained: Any
    ) -> GazeXModel:
        """Real Qwen2.5-VL weights from a local folder (offline), with gaze tokens added.

        The folder's own ``tokenizer.json`` (Hugging Face format) gets GazeX's special
        tokens; the embeddings grow when their ids do not fit (a real Qwen2.5-VL matrix has
        spare rows, so they usually fit). The settings record the folder and the sha256 of
        its ``config.json``: a LoRA checkpoint needs both to load again. ``from_pretrained``
        goes to transformers (``dtype``, ``quantization_config``, ``device_map``: QLoRA).
        """
        vlm = load_backbone(directory, **from_pretrained)
        codec = TextCodec.load(directory)
        vision: Any = vlm.config.vision_config
        settings = replace(
            settings,
            backbone=directory.name,
            base_model=str(directory.resolve()),
            base_model_config_sha256=config_sha256(directory),
            patch_size=int(vision.patch_size),
            merge_size=int(vision.spatial_merge_size),
            temporal_patch_size=int(vision.temporal_patch_size),
        )
        cls._align_config(vlm, codec)
        return cls(vlm, codec, settings)

    @staticmethod
    def _align_config(vlm: Qwen2_5_VLForConditionalGeneration, codec: TextCodec) -> None:
        config = vlm.config
        config.image_token_id = codec.id(IMAGE_PAD)
        config.video_token_id = codec.id(VIDEO_PAD)
        config.vision_start_token_id = codec.id(VISION_START)
        config.vision_end_token_id = codec.id(VISION_END)
        embeddings: Any = vlm.get_input_embeddings()
        if codec.vocab_size > int(embeddings.weight.shape[0]):
            vlm.resize_token_embeddings(codec.vocab_size)

    # -- LoRA adapter (peft, imported only when one is used) ---------------------------

    @property
    def adapter(self) -> Any:
        """peft's ``LoraModel`` around ``self.vlm`` while a LoRA adapter is attached, else None.

        Kept out of the module tree (the adapter's layers already live inside ``self.vlm``),
        so ``state_dict`` and ``parameters`` list each weight once.
        """
        return self.__dict__.get("_lora")

    def attach_adapter(self, config: Any) -> None:
        """Inject the LoRA layers of ``config`` (a ``peft.LoraConfig``) into the backbone."""
        from peft import LoraModel

        if self.adapter is not None:
            raise ValueError("the backbone already carries a LoRA adapter")
        self.__dict__["_lora"] = LoraModel(self.vlm, config, ADAPTER_NAME)

    def merge_adapter(self) -> None:
        """Fold the adapter into the backbone's weights and drop the LoRA layers.

        Inference reads the decoder's weights directly (:class:`model.decoding.DecoderWeights`),
        so an unmerged adapter would be ignored there; merged, it is also faster. A merged
        model saves as a full checkpoint.
        """
        tuner = self.adapter
        if tuner is None:
            return
        self.vlm = tuner.merge_and_unload()
        del self.__dict__["_lora"]
        self.adapter_merged = True

    @contextmanager
    def merged_adapter(self) -> Iterator[None]:
        """Within: the backbone reads as if the adapter were merged, and stays trainable after.

        For code that reads the decoder's weights directly (the inference engine: the
        training loop's calibration and domain gate) while the adapter keeps training: each
        LoRA layer's base ``weight`` holds base + B A and the layer skips its own update;
        the embedding and LM head wrapped for the trainable token rows are plain modules
        holding those rows. The trained base weights are set aside, not modified, and put
        back on exit, so they stay bit-for-bit; the merged copies cost the adapted layers'
        size again meanwhile.
        """
        tuner = self.adapter
        if tuner is None:
            yield
            return
        if getattr(self.vlm, "is_loaded_in_4bit", False):
            raise ValueError("a 4-bit (QLoRA) base cannot be read merged: load the checkpoint")
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import TrainableTokensWrapper

        swapped: list[tuple[Any, nn.Module, nn.Parameter]] = []
        unwrapped: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            with torch.no_grad():
                for name, module in list(self.vlm.named_modules()):
                    if isinstance(module, TrainableTokensWrapper):
                        plain: Any = copy.copy(module.original_module)
                        plain._parameters = dict(plain._parameters)
                        plain.weight = nn.Parameter(module.weight.detach(), requires_grad=False)
                        parent_name, _, child = name.rpartition(".")
                        parent = self.vlm.get_submodule(parent_name)
                        setattr(parent, child, plain)
                        unwrapped.append((parent, child, module))
                    elif isinstance(module, LoraLayer) and not module.merged:
                        layer: Any = module
                        base: Any = layer.get_base_layer()
                        weight = base.weight
                        delta = layer.get_delta_weight(ADAPTER_NAME).to(weight.dtype)
                        base.weight = nn.Parameter(weight + delta, requires_grad=False)
                        layer.merged_adapters.append(ADAPTER_NAME)
                        swapped.append((layer, base, weight))
            yield
        finally:
            for layer, base, weight in swapped:
                base.weight = weight
                layer.merged_adapters.remove(ADAPTER_NAME)
            for parent, child, wrapper in unwrapped:
                setattr(parent, child, wrapper)

    def detach_adapter(self) -> tuple[Any, dict[str, torch.Tensor]] | None:
        """Take the adapter off unmerged: its peft config and ``vlm.``-keyed weights (for
        :meth:`load_adapter_state` on another copy of the base), or None without one."""
        tuner = self.adapter
        if tuner is None:
            return None
        config = tuner.peft_config[ADAPTER_NAME]
        state = {k: v for k, v in self.adapter_state().items() if k.startswith("vlm.")}
        self.vlm = tuner.unload()
        del self.__dict__["_lora"]
        return config, state

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """The adapter's weights from a ``vlm.``-keyed state (the heads' keys are ignored)."""
        from peft import set_peft_model_state_dict

        adapter = {k.removeprefix("vlm."): v for k, v in state.items() if k.startswith("vlm.")}
        set_peft_model_state_dict(self.vlm, adapter, adapter_name=ADAPTER_NAME)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What a LoRA checkpoint stores: every head, and the adapter under ``vlm.``."""
        from peft import get_peft_model_state_dict

        state = {k: v for k, v in self.state_dict().items() if not k.startswith("vlm.")}
        adapter = get_peft_model_state_dict(
            self.vlm, adapter_name=ADAPTER_NAME, save_embedding_layers=False
        )
        state.update({f"vlm.{k}": v for k, v in adapter.items()})
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    # -- checkpoints ----------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Weights (safetensors), backbone config, tokenizer and settings.

        With a LoRA adapter attached the weights file holds the heads and the adapter only
        (LoRA matrices and the rows of the tokens GazeX added) and ``adapter_config.json``
        says how to apply it: the base weights stay in the folder ``settings.base_model``
        names, identified by ``settings.base_model_config_sha256``.
        """
        directory.mkdir(parents=True, exist_ok=True)
        tuner = self.adapter
        if tuner is None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            if self.vlm.config.tie_word_embeddings:
                state.pop("vlm.lm_head.weight", None)
            (directory / ADAPTER_CONFIG_FILE).unlink(missing_ok=True)
        else:
            state = self.adapter_state()
            tuner.peft_config[ADAPTER_NAME].save_pretrained(str(directory))
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        (directory / BACKBONE_CONFIG_FILE).write_text(self.vlm.config.to_json_string())
        (directory / SETTINGS_FILE).write_text(self.settings.to_json())
        self.codec.save(directory)

    @classmethod
    def load(
        cls,
        directory: Path,
        device: torch.device | None = None,
        base: Path | None = None,
        *,
        merge: bool = True,
    ) -> GazeXModel:
        """A checkpoint folder; a LoRA checkpoint also reads its base Qwen2.5-VL folder.

        The base is ``base``, else ``$GAZEX_BASE_MODEL``, else the folder recorded in the
        settings when it still exists; its ``config.json`` must hash to the recorded sha256.
        ``merge`` folds the adapter into the base weights (what inference needs); pass False
        to keep training it.
        """
        for name in (WEIGHTS_FILE, BACKBONE_CONFIG_FILE, SETTINGS_FILE):
            if not (directory / name).is_file():
                raise CheckpointError(f"checkpoint {directory} lacks {name}")
        settings = GazeXSettings.from_json((directory / SETTINGS_FILE).read_text())
        codec = TextCodec.load(directory)
        if (directory / ADAPTER_CONFIG_FILE).is_file():
            model = cls._load_adapter_checkpoint(directory, settings, codec, base, merge)
        else:
            model = cls._load_full_checkpoint(directory, settings, codec)
        if device is not None:
            model.to(device)
        return model

    @classmethod
    def _load_full_checkpoint(
        cls, directory: Path, settings: GazeXSettings, codec: TextCodec
    ) -> GazeXModel:
        config_dict = json.loads((directory / BACKBONE_CONFIG_FILE).read_text())
        config = Qwen2_5_VLConfig(**config_dict)
        vlm = Qwen2_5_VLForConditionalGeneration(config)
        model = cls(vlm, codec, settings)
        state = load_file(str(directory / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "vlm.lm_head.weight"]
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {directory} does not match the model: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        if config.tie_word_embeddings:
            model.vlm.tie_weights()
        return model

    @classmethod
    def _load_adapter_checkpoint(
        cls,
        directory: Path,
        settings: GazeXSettings,
        codec: TextCodec,
        base: Path | None,
        merge: bool,
    ) -> GazeXModel:
        from peft import LoraConfig

        base_dir = base_folder(directory, settings, base)
        vlm = load_backbone(base_dir)
        cls._align_config(vlm, codec)
        model = cls(vlm, codec, settings)
        model.attach_adapter(LoraConfig.from_pretrained(str(directory)))
        state = load_file(str(directory / WEIGHTS_FILE))
        # Exactly the keys that saving this freshly attached adapter would write.
        expected = model.adapter_state().keys()
        missing = sorted(expected - state.keys())
        unexpected = sorted(state.keys() - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"LoRA checkpoint {directory} does not match its base {base_dir}: missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}"
            )
        model.load_adapter_state(state)
        heads = {k: v for k, v in state.items() if not k.startswith("vlm.")}
        model.load_state_dict(heads, strict=False)  # the keys were checked above
        if merge:
            model.merge_adapter()
        return model

    # -- pieces -----------------------------------------------------------------------

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings: torch.Tensor = self.vlm.get_input_embeddings()(input_ids)
        return embeddings

    def input_embeddings(self) -> torch.Tensor:
        """The token embedding matrix (vocab, d), shared with the LM head when tied."""
        embeddings: Any = self.vlm.get_input_embeddings()
        weight: torch.Tensor = embeddings.weight
        return weight

    def image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        """Visual tokens (merged patches) per image, each (N_i, d)."""
        return self.encode_images(pixel_values, image_grid_thw)[0]

    def encode_images(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Visual tokens per image (N_i, d) and the convolutional branch's feature maps
        (empty without the branch), which the mask decoder reads."""
        out = self.vlm.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        feats = list(out.pooler_output)
        maps: list[torch.Tensor] = []
        if self.conv_branch is not None:
            extra, maps = self.conv_branch(pixel_values, image_grid_thw)
            feats = [f + e.to(f.dtype) for f, e in zip(feats, extra, strict=True)]
        return feats, maps

    def cell_masks(
        self,
        maps: list[torch.Tensor],
        h_end: torch.Tensor,
        h_img: torch.Tensor,
        mask_logits: torch.Tensor,
        grid_hw: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The mask decoder's cell logits and validity (:class:`MaskDecoder`), or None."""
        if self.mask_decoder is None or not maps:
            return None
        logits, valid = self.mask_decoder(
            maps, h_img, self.finding_query_states(h_end), mask_logits, grid_hw
        )
        return logits, valid

    def finding_query_states(self, h_end: torch.Tensor) -> torch.Tensor:
        """(B, F, d): each finding's learned query on the ``<|gaze_end|>`` state."""
        return self.finding_queries[None] + h_end[:, None, :]

    def rope_positions(
        self,
        input_ids: torch.Tensor,
        image_grid_thw: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        mm_token_type_ids = (input_ids == self.image_token_id).int()
        positions, _ = self.vlm.model.get_rope_index(
            input_ids,
            mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            attention_mask=attention_mask,
        )
        result: torch.Tensor = positions
        return result

    def decoder(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        out = self.vlm.model.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        return out.last_hidden_state, out.past_key_values

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.vlm.lm_head(hidden)
        return logits

    def gaze_outputs(
        self,
        h_st: torch.Tensor,
        h_img: torch.Tensor,
        img_mask: torch.Tensor,
        keys: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pointer logits (B, K, N), region, step and timing at the ``<st>`` states.

        ``keys`` is ``gaze_key(h_img)`` when the caller already has it (token-by-token
        inference computes it once per image, not once per ``<st>``).
        """
        q = self.gaze_query(h_st)
        k = self.gaze_key(h_img) if keys is None else keys
        logits = torch.einsum("bkd,bnd->bkn", q, k) / math.sqrt(self.hidden_size)
        logits = logits.masked_fill(~img_mask[:, None, :], float("-inf"))
        return logits, self.region_head(h_st), self.step_head(h_st), self.timing_head(h_st)

    def finding_outputs(
        self,
        h_end: torch.Tensor,
        h_img: torch.Tensor,
        img_mask: torch.Tensor,
        grid_hw: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Finding logits (B, F), mask logits (B, F, N) and boxes (B, F, 4)."""
        keys = self.finding_key(h_img)  # (B, N, d)
        queries = self.finding_query_states(h_end)
        mask_logits = torch.einsum("bfd,bnd->bfn", queries, keys) / math.sqrt(self.hidden_size)
        masked = mask_logits.masked_fill(~img_mask[:, None, :], float("-inf"))
        attn = torch.softmax(masked, dim=-1)
        pooled = torch.einsum("bfn,bnd->bfd", attn, h_img)
        features = self.finding_norm(
            torch.cat([h_end[:, None, :].expand_as(pooled), pooled], dim=-1)
        )
        finding_logits = (features * self.finding_cls[None]).sum(-1) + self.finding_bias
        if self.finding_global is not None:
            # Channel-wise maximum and mean over the image tokens: "is this feature anywhere
            # in the film", whatever the finding queries attend to.
            valid = img_mask[..., None]
            peak = h_img.masked_fill(~valid, float("-inf")).amax(dim=1)
            mean = (h_img * valid).sum(1) / valid.sum(1).clamp(min=1).to(h_img.dtype)
            finding_logits = finding_logits + self.finding_global(torch.cat([peak, mean], -1))
        # Attention centroid in image fractions: token (r, c) centre is ((c+.5)/gw, (r+.5)/gh).
        n = h_img.shape[1]
        idx = torch.arange(n, device=h_img.device)[None, :]
        gw = grid_hw[:, 1:2]
        gh = grid_hw[:, 0:1]
        cx_tok = ((idx % gw).float() + 0.5) / gw.float()
        cy_tok = (torch.div(idx, gw, rounding_mode="floor").float() + 0.5) / gh.float()
        centroid = torch.stack(
            [
                torch.einsum("bfn,bn->bf", attn, cx_tok),
                torch.einsum("bfn,bn->bf", attn, cy_tok),
            ],
            dim=-1,
        )
        raw = self.box_mlp(torch.cat([features, centroid], dim=-1))
        centre = (centroid + 0.25 * torch.tanh(raw[..., :2])).clamp(0.0, 1.0)
        size = torch.sigmoid(raw[..., 2:])
        boxes = torch.cat([centre, size], dim=-1)
        return finding_logits, mask_logits, boxes


def pad_image_tokens(
    features: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-image token tensors (N_i, d) into (B, N_max, d) with a validity mask."""
    n_max = max(int(f.shape[0]) for f in features)
    d = int(features[0].shape[-1])
    out = features[0].new_zeros(len(features), n_max, d)
    mask = torch.zeros(len(features), n_max, dtype=torch.bool, device=features[0].device)
    for i, f in enumerate(features):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out, mask


def select_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present unless told otherwise; CPU here."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads(device: torch.device, threads: int | None = None) -> None:
    """Intra-op CPU threads: ``threads`` when given, else one.

    This model's matrices are small; with the cores shared (the node, workers, other jobs)
    OpenMP threads mostly wait on each other: measured here, one thread ran a training step
    2.5x faster than two. Pass more on a dedicated machine.
    """
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads or 1))
