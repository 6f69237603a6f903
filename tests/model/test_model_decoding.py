"""The lean KV decoder computes what the Hugging Face Qwen2.5-VL text decoder computes."""

from __future__ import annotations

from typing import Any

import torch

from model.architecture import GazeXModel
from model.decoding import DecoderWeights, KVDecoder
from model.predictor import DEFAULT_CHECKPOINT


def _hf_incremental(
    model: GazeXModel, chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """Reference: the Hugging Face decoder with a DynamicCache and a 2-D padding mask."""
    cache: Any = None
    attention = torch.zeros(chunks[0][0].shape[0], 0, dtype=torch.long)
    outs = []
    for embeds, positions, live in chunks:
        attention = torch.cat([attention, live.long()], dim=1)
        hidden, cache = model.decoder(
            embeds,
            positions[None].expand(3, -1, -1),
            attention_mask=attention,
            past_key_values=cache,
            use_cache=True,
        )
        outs.append(hidden)
    return outs


@torch.inference_mode()
def test_kv_decoder_matches_the_hugging_face_decoder_with_masked_tokens() -> None:
    """Prefix, a left-padded prompt and single steps with a finished row: same hidden states."""
    model = GazeXModel.load(DEFAULT_CHECKPOINT).eval()
    generator = torch.Generator().manual_seed(0)
    d = model.hidden_size

    def embeds(length: int) -> torch.Tensor:
        return torch.randn(2, length, d, generator=generator)

    prefix_live = torch.ones(2, 10, dtype=torch.bool)
    prompt_live = torch.tensor([[False, True, True], [True, True, True]])
    step_live = torch.tensor([[True], [False]])
    chunks = [
        (embeds(10), torch.arange(10).expand(2, 10), prefix_live),
        (embeds(3), torch.tensor([[10, 10, 11], [10, 11, 12]]), prompt_live),
        (embeds(1), torch.tensor([[12], [13]]), torch.ones(2, 1, dtype=torch.bool)),
        (embeds(1), torch.tensor([[13], [14]]), step_live),
        (embeds(1), torch.tensor([[14], [14]]), step_live),
    ]
    reference = _hf_incremental(model, chunks)

    weights = DecoderWeights(model.vlm.model.language_model)
    state = KVDecoder(weights, batch=2, capacity=4, device=torch.device("cpu"))  # grows
    for (x, positions, live), expected in zip(chunks, reference, strict=True):
        cos, sin = weights.text_rope(positions)
        hidden = state.forward(x, cos, sin, live)
        keep = live  # outputs at masked positions are never used
        assert torch.allclose(hidden[keep], expected[keep], atol=1e-5, rtol=1e-5)

    three_d = torch.stack([torch.arange(6), torch.arange(6) // 2, torch.arange(6) % 2])
    three_d = three_d[:, None].expand(3, 2, 6)
    cos, sin = weights.mrope(three_d)
    rotary = model.vlm.model.language_model.rotary_emb
    ref_cos, ref_sin = rotary(embeds(6), three_d)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_constrained_pointer_takes_the_best_unvisited_token_of_its_step() -> None:
    """The pointer's logits are masked to the step's tokens not yet fixated; when a row has
    fixated them all it may return to one other than the previous fixation; a step with no
    token in the plan only excludes the previous fixation."""
    import numpy as np

    from model.anatomy_prior import TokenPlan
    from model.inference import _constrain

    allowed = np.zeros((6, 4), dtype=bool)
    allowed[0, [1, 2]] = True
    plan = TokenPlan(
        allowed, np.zeros((6, 4, 2), dtype=np.float32), np.zeros((6, 4), dtype=np.int64)
    )
    logits = torch.tensor([[9.0, 1.0, 2.0, 8.0], [9.0, 1.0, 2.0, 8.0]])
    visited = torch.tensor([[False, False, True, False], [False, True, True, False]])
    previous = torch.tensor([2, 2])
    out = _constrain(logits.clone(), plan, 0, visited, previous)
    assert out.argmax(dim=-1).tolist() == [1, 1]  # row 0: 2 visited; row 1: back to 1, not 2
    assert torch.isinf(out[:, [0, 3]]).all()
    free = _constrain(logits.clone(), plan, 1, visited, previous)
    assert free.argmax(dim=-1).tolist() == [0, 0] and torch.isinf(free[:, 2]).all()
