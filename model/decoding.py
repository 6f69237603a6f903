"""A lean KV-cached runner for the Qwen2.5-VL text decoder, for token-by-token inference.

It computes exactly what ``Qwen2_5_VLTextModel.forward`` computes (RMSNorm, q/k/v with bias,
M-RoPE, grouped-query SDPA, SwiGLU MLP, final norm) from the same weights, without the
per-call machinery that dominates a one-token step at this width (module dispatch, output
capturing, mask and rotary-table rebuilding, a growing ``DynamicCache``):

* keys and values go into one preallocated buffer per layer, grown by doubling;
* rotary cos/sin for text positions come from a table (identical values: text tokens carry
  the same position on all three M-RoPE axes); only the image prefix uses the 3-D positions;
* q/k/v and gate/up projections run as one matrix product each (concatenated weights;
  bitwise the same outputs on CPU);
* no mask is built while every cached token is live and a single token is fed, which is
  every step of a single image and of a batch whose rows are all still writing.

Training keeps using the Hugging Face modules; this class only reads their weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional


@dataclass(frozen=True)
class _Layer:
    norm_in: torch.Tensor
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    o_weight: torch.Tensor
    norm_post: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


class DecoderWeights:
    """The text decoder's weights in the layout :class:`KVDecoder` uses (built once)."""

    def __init__(self, text_model: Any) -> None:
        config = text_model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.hidden = int(config.hidden_size)
        self.head_dim = self.hidden // self.heads
        self.eps = float(config.rms_norm_eps)
        self.intermediate = int(config.intermediate_size)
        if getattr(config, "use_sliding_window", False) or config.hidden_act != "silu":
            raise ValueError("KVDecoder supports full attention with a SiLU MLP only")
        layers = []
        for layer in text_model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            layers.append(
                _Layer(
                    norm_in=layer.input_layernorm.weight.detach(),
                    qkv_weight=torch.cat(
                        [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
                    ).detach(),
                    qkv_bias=torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
                    .detach()
                    .clone(),
                    o_weight=attn.o_proj.weight.detach(),
                    norm_post=layer.post_attention_layernorm.weight.detach(),
                    gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                    down=mlp.down_proj.weight.detach(),
                )
            )
        self.layers = layers
        self.norm = text_model.norm.weight.detach()
        rotary = text_model.rotary_emb
        self.inv_freq: torch.Tensor = rotary.inv_freq.detach()
        self.scaling = float(rotary.attention_scaling)
        self.mrope_section = list(rotary.mrope_section)
        self._table_cos = torch.empty(0, self.head_dim, device=self.norm.device)
        self._table_sin = torch.empty(0, self.head_dim, device=self.norm.device)

    def text_rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, L, head_dim) for text positions (B, L)."""
        top = int(positions.max()) + 1 if positions.numel() else 0
        if top > self._table_cos.shape[0]:
            size = max(top, 2 * self._table_cos.shape[0], 512)
            pos = torch.arange(size, device=self.inv_freq.device)
            freqs = pos[:, None].float() * self.inv_freq.float()
            emb = torch.cat([freqs, freqs], dim=-1)
            self._table_cos = emb.cos() * self.scaling
            self._table_sin = emb.sin() * self.scaling
        return self._table_cos[positions], self._table_sin[positions]

    def mrope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, L, head_dim) for 3-D M-RoPE positions (3, B, L)."""
        freqs = positions[..., None].float() * self.inv_freq.float()
        cos = freqs.cos() * self.scaling
        sin = freqs.sin() * self.scaling
        return self._recompose(cos), self._recompose(sin)

    def _recompose(self, freq: torch.Tensor) -> torch.Tensor:
        parts = torch.split(freq, self.mrope_section, dim=-1)
        out = torch.cat([m[i % 3] for i, m in enumerate(parts)], dim=-1)
        return torch.cat((out, out), dim=-1)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVDecoder:
    """Incremental decoding state for a batch: a KV cache and which cached tokens are live."""

    def __init__(
        self, weights: DecoderWeights, batch: int, capacity: int, device: torch.device
    ) -> None:
        self.w = weights
        dtype = weights.norm.dtype
        shape = (batch, weights.kv_heads, max(capacity, 1), weights.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in weights.layers]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in weights.layers]
        self.live = torch.zeros(batch, max(capacity, 1), dtype=torch.bool, device=device)
        self.length = 0
        #: True while every cached token of every row is live (then no mask is needed).
        self.all_live = True

    def _reserve(self, extra: int) -> None:
        need = self.length + extra
        capacity = self.live.shape[1]
        if need <= capacity:
            return
        size = max(need, 2 * capacity)

        def grown(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty((*t.shape[:2], size, t.shape[3]))
            out[:, :, : self.length] = t[:, :, : self.length]
            return out

        self.keys = [grown(t) for t in self.keys]
        self.values = [grown(t) for t in self.values]
        live = self.live.new_zeros(self.live.shape[0], size)
        live[:, : self.length] = self.live[:, : self.length]
        self.live = live

    def forward(
        self,
        embeds: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        live: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Feed (B, L, d) embeddings with their rotary cos/sin (B, L, head_dim).

        ``live`` (B, L) False marks tokens that no later token may see (and that see only
        live earlier tokens themselves). Returns the final-norm hidden states (B, L, d).
        """
        w = self.w
        b, length, _ = embeds.shape
        self._reserve(length)
        start, end = self.length, self.length + length
        if live is None:
            self.live[:, start:end] = True
        else:
            self.live[:, start:end] = live
            self.all_live = self.all_live and bool(live.all())
        self.length = end
        mask: torch.Tensor | None = None
        causal = False
        if not self.all_live or (length > 1 and start > 0):
            query_pos = torch.arange(start, end, device=embeds.device)
            key_pos = torch.arange(end, device=embeds.device)
            allowed = key_pos[None, :] <= query_pos[:, None]  # (L, S)
            mask = (allowed[None] & self.live[:, None, :end])[:, None]  # (B, 1, L, S)
        elif length > 1:
            causal = True
        cos = cos[:, None]
        sin = sin[:, None]
        heads, kv_heads, hd = w.heads, w.kv_heads, w.head_dim
        q_width, kv_width = heads * hd, kv_heads * hd
        h = embeds
        for i, layer in enumerate(w.layers):
            residual = h
            x = _rms_norm(h, layer.norm_in, w.eps)
            qkv = functional.linear(x, layer.qkv_weight, layer.qkv_bias)
            q = qkv[..., :q_width].view(b, length, heads, hd).transpose(1, 2)
            k = qkv[..., q_width : q_width + kv_width].view(b, length, kv_heads, hd).transpose(1, 2)
            v = qkv[..., q_width + kv_width :].view(b, length, kv_heads, hd).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.keys[i][:, :, start:end] = k
            self.values[i][:, :, start:end] = v
            attn = functional.scaled_dot_product_attention(
                q,
                self.keys[i][:, :, :end],
                self.values[i][:, :, :end],
                attn_mask=mask,
                is_causal=causal,
                scale=hd**-0.5,
                enable_gqa=heads != kv_heads,
            )
            attn = attn.transpose(1, 2).reshape(b, length, q_width)
            h = residual + functional.linear(attn, layer.o_weight)
            residual = h
            x = _rms_norm(h, layer.norm_post, w.eps)
            gate_up = functional.linear(x, layer.gate_up)
            gate, up = gate_up[..., : w.intermediate], gate_up[..., w.intermediate :]
            h = residual + functional.linear(functional.silu(gate) * up, layer.down)
        return _rms_norm(h, w.norm, w.eps)
