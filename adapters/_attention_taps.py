"""Where an attention layer computes its queries and keys: a vision encoder's layer (what VisionZip's attention row
and key metric are read from) and a decoder layer (what FastV's, PyramidDrop's and DART's rules read), during the
model's own forward: no second run of a layer, no switch to eager attention."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vtc.errors import ConfigError

__all__ = ["AttentionTaps", "DecoderAttention", "decoder_attention", "feature_layer_taps", "rotate_half_rotary"]


@dataclass(frozen=True)
class AttentionTaps:
    """The modules whose outputs are one attention layer's queries and keys (`(b, t, h * d_h)` each), as its
    attention uses them, with its head count and the scale on `Q K^T`."""

    query: nn.Module
    key: nn.Module
    num_heads: int
    scale: float


def feature_layer_taps(tower: nn.Module, selected: Any) -> AttentionTaps:
    """The taps of the layer whose output is `hidden_states[selected]` of `tower` (`config.vision_feature_layer`).

    The layer is found in the encoder (`encoder.layers[i].self_attn` or `encoder.layer[i].attention`, under
    `vision_model` where the tower wraps one); its query and key norms are tapped where the attention has them (an
    `nn.Identity` where they are off), else its `q_proj` and `k_proj`.

    Raises:
        ConfigError: `selected` names several layers, or the embeddings (`hidden_states[0]`, which no attention made).
    """
    encoder = getattr(tower, "encoder", None) or tower.vision_model.encoder
    layers = getattr(encoder, "layers", None) or encoder.layer
    index = selected + len(layers) + 1 if isinstance(selected, int) and selected < 0 else selected
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= len(layers):
        raise ConfigError("prune.method", "visionzip", "a method other than visionzip for this model",
                          hint=f"VisionZip reads the attention of the one vision layer the model takes its features "
                               f"from; vision_feature_layer={selected!r} is not such a layer.")
    attention = getattr(layers[index - 1], "self_attn", None) or layers[index - 1].attention
    query = getattr(attention, "q_norm", None) or attention.q_proj
    key = getattr(attention, "k_norm", None) or attention.k_proj
    return AttentionTaps(query, key, attention.num_heads, attention.scale)


def rotate_half_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings as transformers' `apply_rotary_pos_emb` applies them in every supported family's language
    model (the rotate-half form): `x` `(b, s, heads, head_dim)`, `cos` and `sin` `(b | 1, s, head_dim)`."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass(frozen=True)
class DecoderAttention:
    """One decoder layer's attention, as the in-decoder pruning rules read it.

    Args:
        input_norm: the layer's norm before its attention (what its attention's input is made with).
        query / key: the projections whose outputs `(b, s, heads * head_dim)` are the queries and keys.
        query_norm / key_norm: the per-head norms applied to them before the rotary embedding, or `None`.
        num_heads / num_key_value_heads / head_dim: the attention's shape (grouped-query heads share a key).
        scale: the factor on `Q K^T`.
        rotary: applies the rotary embedding to `(b, s, heads, head_dim)` given the layer's `(cos, sin)`.
    """

    input_norm: nn.Module
    query: nn.Module
    key: nn.Module
    query_norm: nn.Module | None
    key_norm: nn.Module | None
    num_heads: int
    num_key_value_heads: int
    head_dim: int
    scale: float
    rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = rotate_half_rotary


def decoder_attention(layer: nn.Module, text_config: Any) -> DecoderAttention:
    """The attention of a transformers decoder layer with `input_layernorm` and `self_attn` (`q_proj`, `k_proj`,
    optional `q_norm` / `k_norm`, `head_dim`, `scaling`), the layout of every supported family's language model."""
    attention = layer.self_attn
    heads = text_config.num_attention_heads
    return DecoderAttention(
        input_norm=layer.input_layernorm, query=attention.q_proj, key=attention.k_proj,
        query_norm=getattr(attention, "q_norm", None), key_norm=getattr(attention, "k_norm", None),
        num_heads=heads, num_key_value_heads=getattr(text_config, "num_key_value_heads", None) or heads,
        head_dim=attention.head_dim, scale=attention.scaling,
    )
