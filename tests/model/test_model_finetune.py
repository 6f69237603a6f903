"""LoRA fine-tuning of a Qwen2.5-VL backbone folder (model.finetune) on a tiny random one."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

from model.architecture import (
    ADAPTER_CONFIG_FILE,
    BASE_MODEL_ENV,
    SETTINGS_FILE,
    TINY,
    WEIGHTS_FILE,
    CheckpointError,
    GazeXModel,
    GazeXSettings,
    HeadOutputs,
    config_sha256,
    load_backbone,
    scratch_config,
)
from model.finetune import GAZEX_TOKENS, LoraOptions, QLoRAUnavailable, prepare_for_finetune
from model.tokenizer import (
    EOS,
    IMAGE_PAD,
    PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    TextCodec,
    train_tokenizer,
)
from model.train.batching import collate
from model.train.gazedata.sample import GazeSample
from model.train.loop import corpus, epoch_batches, prepare_samples
from model.train.losses import compute_losses, forward_batch

SETTINGS = GazeXSettings(num_gaze_tokens=6, max_pixels=112 * 112, max_report_tokens=24)
OPTIONS = LoraOptions(rank=4, alpha=8, dropout=0.0, gradient_checkpointing=True)
STEPS = 8


def _save_backbone(
    folder: Path, samples: list[GazeSample], text_layers: int, tied: bool = True
) -> TextCodec:
    """A random Qwen2.5-VL folder as Hugging Face writes one, with a HF-format
    tokenizer.json that knows the Qwen vision markers but none of GazeX's tokens."""
    qwen_only = (PAD, EOS, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
    codec = TextCodec(train_tokenizer(corpus(samples), 300, special_tokens=qwen_only))
    torch.manual_seed(1)
    config = scratch_config(replace(TINY, text_layers=text_layers), codec, SETTINGS)
    config.tie_word_embeddings = tied
    config.text_config.tie_word_embeddings = tied
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    codec.save(folder)
    return codec


@dataclass
class Run:
    """A LoRA run on the tiny backbone, shared by the tests of this module."""

    backbone: Path
    vocab_before: int
    model: GazeXModel
    batch: dict[str, torch.Tensor]
    losses: list[float]
    frozen_before: dict[str, torch.Tensor]
    trainable_before: dict[str, torch.Tensor]
    checkpoint: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_samples: list[GazeSample]) -> Run:
    """Build from the backbone folder, prepare for LoRA, take a few optimizer steps, save."""
    root = tmp_path_factory.mktemp("lora")
    backbone = root / "qwen-tiny"
    foreign = _save_backbone(backbone, tiny_samples[:4], text_layers=TINY.text_layers)
    model = GazeXModel.from_backbone(backbone, SETTINGS)
    settings = model.settings
    torch.manual_seed(0)
    prepare_for_finetune(model, OPTIONS)
    prepared = prepare_samples(tiny_samples[:8], settings)
    examples = epoch_batches(prepared, model.codec, settings, 8, random.Random(0), 1, False)[0]
    batch = collate(examples, model.codec, settings.num_gaze_tokens, settings.patch_spec)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.01
    )
    model.train()
    losses = []
    for _ in range(STEPS):
        total = sum(compute_losses(model, batch, "multitask").values(), torch.zeros(()))
        optimizer.zero_grad()
        total.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(total.detach()))
    model.eval()
    checkpoint = root / "ckpt"
    model.save(checkpoint)
    return Run(backbone, foreign.vocab_size, model, batch, losses, frozen, trainable, checkpoint)


def _outputs(model: GazeXModel, batch: dict[str, torch.Tensor]) -> HeadOutputs:
    model.eval()
    with torch.no_grad():
        return forward_batch(model, batch)


def _assert_same_outputs(a: HeadOutputs, b: HeadOutputs, atol: float) -> None:
    for name in ("gaze_logits", "finding_logits", "mask_logits", "boxes", "lm_logits"):
        x, y = getattr(a, name), getattr(b, name)
        finite = torch.isfinite(x)
        assert torch.equal(finite, torch.isfinite(y)), name
        assert torch.allclose(x[finite], y[finite], atol=atol, rtol=1e-4), (
            name,
            float((x[finite] - y[finite]).abs().max()),
        )


def _one_line_error(error: pytest.ExceptionInfo[CheckpointError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_backbone_tokenizer_gets_gazex_tokens_and_rows(run: Run) -> None:
    """A HF-format tokenizer.json without GazeX's tokens gets them appended, the embedding
    matrix grows to hold them, and the settings record the base folder and its hash."""
    model = run.model
    for token in GAZEX_TOKENS:
        assert model.codec.id(token) >= run.vocab_before
    rows = model.vlm.get_input_embeddings().weight.shape[0]
    assert rows == model.codec.vocab_size > run.vocab_before
    assert model.settings.backbone == "qwen-tiny"
    assert model.settings.base_model == str(run.backbone.resolve())
    assert model.settings.base_model_config_sha256 == config_sha256(run.backbone)
    assert model.vlm.model.language_model.gradient_checkpointing


def test_lora_run_trains_adapter_and_heads_only(run: Run) -> None:
    """A few LoRA steps lower the loss; every base weight stays bit-for-bit, while the
    LoRA matrices, the heads and the new tokens' embedding rows all move."""
    assert run.losses[-1] < run.losses[0], run.losses
    params = dict(run.model.named_parameters())
    for name, before in run.frozen_before.items():
        assert name.startswith("vlm."), name
        assert torch.equal(params[name], before), name
    kinds = {"lora_A": False, "lora_B": False, "trainable_tokens_delta": False, "head": False}
    for name, before in run.trainable_before.items():
        kind = next((k for k in kinds if k in name), "head")
        assert kind != "head" or not name.startswith("vlm."), name
        kinds[kind] |= not torch.equal(params[name], before)
    assert all(kinds.values()), kinds
    share = sum(p.numel() for p in run.trainable_before.values()) / sum(
        p.numel() for p in params.values()
    )
    assert share < 0.6
    # Against the folder itself: every base tensor (the embedding's old rows too) as saved.
    in_memory = {
        k.replace(".base_layer", "").replace(".token_adapter", ""): v
        for k, v in run.model.vlm.state_dict().items()
    }
    for name, saved in load_backbone(run.backbone).state_dict().items():
        assert torch.equal(in_memory[name][: saved.shape[0]], saved), name


def test_bf16_base_keeps_trainable_weights_and_rope_in_fp32(run: Run) -> None:
    """The GPU recipe's bf16 base: frozen weights are cast, while the adapter, the new rows,
    the heads (AdamW's master weights) and the rotary frequencies stay fp32."""
    model = GazeXModel.from_backbone(run.backbone, SETTINGS)
    prepare_for_finetune(model, OPTIONS, base_dtype=torch.bfloat16)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert (frozen, trainable) == ({torch.bfloat16}, {torch.float32})
    rope = [b for name, b in model.named_buffers() if name.endswith("inv_freq")]
    assert rope
    assert all(b.dtype == torch.float32 for b in rope)


def test_adapter_checkpoint_is_small_and_reloads_the_same(run: Run) -> None:
    """The checkpoint holds the heads and the adapter, not the base weights; loaded onto
    the base folder it gives the in-memory model's outputs, merged or not."""
    ckpt = run.checkpoint
    assert (ckpt / ADAPTER_CONFIG_FILE).is_file()
    keys = load_file(str(ckpt / WEIGHTS_FILE)).keys()
    vlm_keys = [k for k in keys if k.startswith("vlm.")]
    assert vlm_keys
    assert all("lora_" in k or "token_adapter" in k for k in vlm_keys), vlm_keys[:5]
    base_size = sum(p.stat().st_size for p in run.backbone.glob("*.safetensors"))
    assert (ckpt / WEIGHTS_FILE).stat().st_size < base_size
    expected = _outputs(run.model, run.batch)
    unmerged = GazeXModel.load(ckpt, base=run.backbone, merge=False)
    assert unmerged.adapter is not None
    _assert_same_outputs(_outputs(unmerged, run.batch), expected, atol=1e-5)
    merged = GazeXModel.load(ckpt, base=run.backbone)
    assert merged.adapter is None
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    _assert_same_outputs(_outputs(merged, run.batch), expected, atol=1e-4)
    # Resuming needs the unmerged adapter: a merged one would silently restart from zero.
    with pytest.raises(ValueError, match="merge=False"):
        prepare_for_finetune(merged, OPTIONS)
    resumed = prepare_for_finetune(unmerged, OPTIONS)
    assert {n for n, p in resumed.named_parameters() if p.requires_grad} == set(
        run.trainable_before
    )


def test_merged_adapter_view_serves_the_inference_engine(
    run: Run, tiny_samples: list[GazeSample]
) -> None:
    """Inside merged_adapter() the inference engine (which reads decoder weights directly)
    sees the adapter, as a merged load does; on exit every weight is back bit-for-bit."""
    from model.inference import InferenceEngine, RawOutput

    def same(a: list[RawOutput], b: list[RawOutput]) -> bool:
        return all(
            x.patch_indices == y.patch_indices
            and x.report == y.report
            and np.allclose(x.probabilities, y.probabilities, atol=1e-4)
            for x, y in zip(a, b, strict=True)
        )

    state = {k: v.clone() for k, v in run.model.state_dict().items()}
    before = _outputs(run.model, run.batch)
    images = [tiny_samples[0].image]
    cpu = torch.device("cpu")
    merged = GazeXModel.load(run.checkpoint, base=run.backbone)
    reference = InferenceEngine(merged, cpu).run(images)
    with run.model.merged_adapter():
        inside = InferenceEngine(run.model, cpu).run(images)
    assert same(inside, reference)
    after = run.model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    _assert_same_outputs(_outputs(run.model, run.batch), before, atol=0.0)


def test_untied_lm_head_trains_its_own_new_rows(
    run: Run, tiny_samples: list[GazeSample], tmp_path: Path
) -> None:
    """With the LM head not tied to the embeddings (as in Qwen2.5-VL-7B) the head's rows of
    the new tokens train too, are saved, and come back merged and unmerged."""
    backbone = tmp_path / "qwen-untied"
    _save_backbone(backbone, tiny_samples[:4], text_layers=TINY.text_layers, tied=False)
    model = prepare_for_finetune(GazeXModel.from_backbone(backbone, SETTINGS), OPTIONS)
    rows = [n for n, p in model.named_parameters() if p.requires_grad and "tokens_delta" in n]
    assert [n.split(".")[1] for n in rows] == ["model", "lm_head"], rows
    with torch.no_grad():  # stands in for training: move every trainable weight
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    expected = _outputs(model, run.batch)
    model.save(tmp_path / "ckpt")
    for merge in (False, True):
        loaded = GazeXModel.load(tmp_path / "ckpt", base=backbone, merge=merge)
        _assert_same_outputs(_outputs(loaded, run.batch), expected, atol=1e-4)


def test_adapter_checkpoint_without_its_base_is_a_one_line_error(
    run: Run,
    tiny_samples: list[GazeSample],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing base folder, or one whose config.json differs, is a one-line
    CheckpointError that names the checkpoint and says what to pass."""
    monkeypatch.delenv(BASE_MODEL_ENV, raising=False)
    moved = tmp_path / "moved"
    shutil.copytree(run.checkpoint, moved)
    settings = json.loads((moved / SETTINGS_FILE).read_text())
    settings["base_model"] = str(tmp_path / "gone")
    (moved / SETTINGS_FILE).write_text(json.dumps(settings))
    with pytest.raises(CheckpointError) as missing:
        GazeXModel.load(moved)
    message = _one_line_error(missing)
    assert str(moved) in message
    assert BASE_MODEL_ENV in message
    assert "base=" in message
    other = tmp_path / "qwen-other"
    _save_backbone(other, tiny_samples[:4], text_layers=TINY.text_layers + 1)
    with pytest.raises(CheckpointError) as mismatch:
        GazeXModel.load(run.checkpoint, base=other)
    message = _one_line_error(mismatch)
    assert str(other) in message
    assert "differs" in message
    monkeypatch.setenv(BASE_MODEL_ENV, str(other))
    with pytest.raises(CheckpointError):
        GazeXModel.load(run.checkpoint)


def test_predictor_loads_adapter_checkpoint_through_the_env(
    run: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dicom_factory: Callable[..., Dataset],
) -> None:
    """Predictor.from_checkpoint on a LoRA checkpoint finds the base via GAZEX_BASE_MODEL
    (the recorded folder gone) and predicts a synthetic film."""
    from model.predictor import Predictor
    from model.result import InferenceResult

    moved = tmp_path / "moved"
    shutil.copytree(run.checkpoint, moved)
    settings = json.loads((moved / SETTINGS_FILE).read_text())
    settings["base_model"] = str(tmp_path / "gone")
    (moved / SETTINGS_FILE).write_text(json.dumps(settings))
    monkeypatch.setenv(BASE_MODEL_ENV, str(run.backbone))
    predictor = Predictor.from_checkpoint(moved, device="cpu")
    assert predictor.model.adapter is None  # merged for the inference engine
    ds = dicom_factory()
    result = predictor.predict(ds)
    assert isinstance(result, InferenceResult)
    assert result.source.SOPInstanceUID == ds.SOPInstanceUID
    assert len(result.model.checkpoint_sha256) == 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_qlora_without_cuda_is_a_one_line_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """QLoRA on a CPU-only machine, or without bitsandbytes, fails at once with one line
    saying it needs CUDA, and the install command when bitsandbytes is missing."""
    with pytest.raises(QLoRAUnavailable) as no_cuda:
        prepare_for_finetune(run.model, replace(OPTIONS, quantize_4bit=True))
    assert "\n" not in str(no_cuda.value)
    assert "CUDA" in str(no_cuda.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    with pytest.raises(QLoRAUnavailable) as no_bnb:
        prepare_for_finetune(run.model, replace(OPTIONS, quantize_4bit=True))
    assert "\n" not in str(no_bnb.value)
    assert "pip install" in str(no_bnb.value)
    assert "bitsandbytes" in str(no_bnb.value)


def test_training_loop_fine_tunes_resumes_and_calibrates_the_adapted_model(
    run: Run, tiny_samples: list[GazeSample], tmp_path: Path
) -> None:
    """`train(..., backbone=, finetune=)` as `gazex train --backbone DIR --lora-rank R` runs
    it: interrupted after the gaze epoch, it resumes its adapter (unmerged, still
    training); the thresholds' probability calibration is fitted on the adapted model (the
    adapter merged for the inference engine), so refitting it on the saved checkpoint,
    merged at load, gives the same temperatures."""
    from model.calibration import fit_calibration
    from model.train.loop import TrainConfig, held_out_probabilities, train

    config = TrainConfig(gaze_epochs=1, multitask_epochs=1, batch_size=4, progress=False)
    out = tmp_path / "ckpt"
    kwargs = {
        "val_samples": tiny_samples[12:],
        "backbone": run.backbone,
        "device": "cpu",
        "finetune": OPTIONS,
    }
    train(tiny_samples[:8], out, SETTINGS, config, stop_after_epoch=1, **kwargs)  # type: ignore[arg-type]
    assert not (out / "probability_calibration.json").exists()
    train(tiny_samples[:8], out, SETTINGS, config, **kwargs)  # type: ignore[arg-type]
    saved = json.loads((out / "probability_calibration.json").read_text())
    merged = GazeXModel.load(out, base=run.backbone)
    assert merged.adapter is None
    probs, labels = held_out_probabilities(merged, tiny_samples[12:], torch.device("cpu"))
    refit = json.loads(fit_calibration(merged.settings.finding_keys, probs, labels).to_json())
    for key, fitted in saved["findings"].items():
        assert refit["findings"][key] == pytest.approx(fitted, rel=1e-4), key
