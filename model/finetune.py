"""Parameter-efficient fine-tuning of a real Qwen2.5-VL backbone (LoRA / QLoRA with ``peft``).

A 3B or 7B backbone does not fit full fine-tuning on one GPU with its optimizer state; LoRA
trains low-rank adapters on the backbone's linear layers while the gaze tokens' embeddings
and every GazeX head stay fully trainable. The checkpoint then holds the adapter and the
heads, and names the base folder it needs (:meth:`model.architecture.GazeXModel.load`).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig

from model.architecture import GazeXModel, load_backbone
from model.tokenizer import ANSWER, GAZE, GAZE_END, GAZE_START, QUESTION, REPORT


@dataclass(frozen=True)
class LoraOptions:
    """How ``gazex train --backbone DIR --lora-rank R`` adapts the backbone."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    #: Load the frozen base in 4-bit NF4 (bitsandbytes, CUDA only): QLoRA.
    quantize_4bit: bool = False
    #: Recompute activations in the backward pass (the backbone's decoder layers).
    gradient_checkpointing: bool = True


logger = logging.getLogger(__name__)

#: The backbone's linear layers that get LoRA (``re.fullmatch`` on the module name; peft
#: takes a string ``target_modules`` as one regex). For Qwen2.5-VL that is, in each decoder
#: layer of the language model, the attention projections ``self_attn.{q,k,v,o}_proj`` and
#: the SwiGLU MLP ``mlp.{gate,up,down}_proj``; and in each block of the vision tower, the
#: fused ``attn.qkv``, ``attn.proj`` and its SwiGLU ``mlp.{gate,up,down}_proj``. Left out:
#: the patch embedding (a convolution), the patch merger, the embeddings and the LM head.
LORA_TARGET_MODULES = (
    r".*\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    r"|.*\.visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate|up|down)_proj)"
)

#: The tokens GazeX adds to a Qwen2.5-VL tokenizer, whose embedding rows train in full.
GAZEX_TOKENS: tuple[str, ...] = (GAZE_START, GAZE, GAZE_END, REPORT, QUESTION, ANSWER)

#: What names an adapter weight in the backbone: the LoRA matrices and the trainable rows
#: (the wrapped embedding's own ``base_layer.weight`` stays frozen).
ADAPTER_KEYS: tuple[str, ...] = ("lora_A.", "lora_B.", "trainable_tokens_delta")

BITSANDBYTES_INSTALL = ".venv/bin/pip install 'bitsandbytes>=0.45'"


class QLoRAUnavailable(ValueError):
    """4-bit quantisation was asked for where it cannot run (no CUDA or no bitsandbytes)."""


def lora_config(model: GazeXModel, options: LoraOptions) -> LoraConfig:
    """peft's LoRA config for ``model``'s backbone: the layers of :data:`LORA_TARGET_MODULES`,
    and the embedding rows of :data:`GAZEX_TOKENS` as trainable tokens (also in the LM head
    when it is not tied to the embeddings)."""
    ids = sorted({model.codec.id(token) for token in GAZEX_TOKENS})
    rows: dict[str, list[int]] = {"embed_tokens": ids}
    if not model.vlm.config.tie_word_embeddings:
        rows["lm_head"] = ids
    return LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=LORA_TARGET_MODULES,
        trainable_token_indices=rows,
        bias="none",
    )


def require_4bit() -> None:
    """Raise :class:`QLoRAUnavailable` unless CUDA and bitsandbytes are both there."""
    if not torch.cuda.is_available():
        raise QLoRAUnavailable(
            "QLoRA (4-bit) needs a CUDA GPU and bitsandbytes; none here: drop --qlora "
            "(plain LoRA runs on CPU too)"
        )
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        raise QLoRAUnavailable(
            f"QLoRA (4-bit) needs bitsandbytes (CUDA only): {BITSANDBYTES_INSTALL}"
        ) from None


def nf4_options() -> dict[str, Any]:
    """``from_pretrained`` options for a 4-bit NF4 base with bf16 compute (QLoRA).

    The vision tower and the LM head stay in bf16: small next to the decoder, and the
    patch merger's and the head's precision matter more than their size.
    """
    require_4bit()
    from transformers import BitsAndBytesConfig

    return {
        "dtype": torch.bfloat16,
        "device_map": {"": torch.cuda.current_device()},
        "quantization_config": BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=["visual", "lm_head"],
        ),
    }


def is_4bit(model: GazeXModel) -> bool:
    return bool(getattr(model.vlm, "is_loaded_in_4bit", False))


def _quantize_base(model: GazeXModel, options: LoraOptions) -> None:
    """Swap in the 4-bit base (once) and make it trainable through (peft's k-bit prep).

    An adapter already attached (a resumed run loads its base unquantized) moves over.
    """
    from peft import prepare_model_for_kbit_training

    if is_4bit(model):
        if model.adapter is None:
            prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model.vlm,
                use_gradient_checkpointing=options.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        return
    if not model.settings.base_model:
        raise QLoRAUnavailable("QLoRA needs a backbone folder: give --backbone DIR")
    from_pretrained = nf4_options()
    carried = model.detach_adapter()
    vlm = load_backbone(Path(model.settings.base_model), **from_pretrained)
    model._align_config(vlm, model.codec)
    model.vlm = vlm
    prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model.vlm,
        use_gradient_checkpointing=options.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    if carried is not None:
        config, state = carried
        model.attach_adapter(config)
        model.load_adapter_state(state)


def prepare_for_finetune(
    model: GazeXModel, options: LoraOptions, *, base_dtype: torch.dtype | None = None
) -> GazeXModel:
    """Put LoRA on ``model``'s backbone and freeze every base weight (in place; returned).

    Trainable afterwards: the LoRA matrices, every GazeX head (all of ``model`` outside
    ``model.vlm``) and the embedding rows of :data:`GAZEX_TOKENS` (peft's trainable tokens:
    a small tensor of those rows, so the optimizer never sees the 150k-row matrix and the
    base rows stay bit-for-bit). Build the optimizer over ``requires_grad`` parameters.

    ``options.quantize_4bit`` reloads the base in 4-bit NF4 from ``settings.base_model``
    unless the model was built that way (``GazeXModel.from_backbone(dir, settings,
    **nf4_options())`` avoids loading it twice). Otherwise the frozen base weights are cast
    to ``base_dtype``: bf16 by default on a CUDA machine (the training loop runs under bf16
    autocast there), left as they are on CPU; pass ``torch.float32`` to train on the CPU of
    a CUDA machine (no autocast there). Gradient checkpointing (non-reentrant, so the
    frozen embeddings need not require grad) covers the decoder layers and vision blocks.
    Calling it again on a model that already carries an adapter (a resumed LoRA run,
    ``GazeXModel.load(dir, merge=False)``) only sets the trainable flags and checkpointing.
    """
    if model.adapter_merged:
        raise ValueError(
            "this model's LoRA adapter was merged into its weights when it was loaded: load "
            "the checkpoint with GazeXModel.load(dir, merge=False) to go on training it"
        )
    if options.quantize_4bit:
        _quantize_base(model, options)
    elif base_dtype is None and torch.cuda.is_available():
        base_dtype = torch.bfloat16
    if model.adapter is None:
        model.attach_adapter(lora_config(model, options))
    for name, parameter in model.named_parameters():
        trainable = not name.startswith("vlm.") or any(key in name for key in ADAPTER_KEYS)
        parameter.requires_grad_(trainable)
        if not parameter.is_floating_point():
            continue  # 4-bit weights
        if trainable:
            parameter.data = parameter.data.float()  # fp32 master weights for AdamW
        elif base_dtype is not None and not options.quantize_4bit:
            # Parameters only: buffers such as the rotary inverse frequencies stay fp32.
            parameter.data = parameter.data.to(base_dtype)
    if options.gradient_checkpointing:
        vlm: Any = model.vlm
        # transformers 5 renamed it (the old name warns); 4.x has only the old one.
        enable = getattr(vlm, "activation_checkpointing_enable", None)
        if enable is None:
            enable = vlm.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    trainable_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "LoRA rank %d on %s: %d of %d parameters train (%.2f%%)",
        options.rank,
        model.settings.backbone,
        trainable_count,
        total,
        100.0 * trainable_count / max(total, 1),
    )
    return model
