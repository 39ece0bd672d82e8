"""Analytic prefill FLOPs of a decoder-only language model, layer by layer.

For a decoder layer that sees `n` tokens, with width `d`, `h` query heads and `h_kv` key/value heads of size `d_h`, and
a gated MLP of width `d_ff`:

    linear(n)    = 2 * n * (2 * d * h * d_h  +  2 * d * h_kv * d_h  +  3 * d * d_ff)
                          (q and o projections) (k and v projections) (gate, up, down)
    attention(n) = 2 * 2 * h * d_h * n * (n + 1) / 2          (Q K^T and A V over causal query-key pairs)

and the LM head costs `2 * t * d * vocab` for the `t` positions whose logits are computed. A multiply-add counts as 2
FLOPs. Norms, rotary embeddings, softmax, activations, residual adds and biases are ignored: they are linear in `n`
with small constants and do not change how compression compares with the baseline. The numbers are per sequence;
multiply by the batch size for a batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["FlopsBreakdown", "decoder_dims", "prefill_flops", "uniform_layer_lens"]

_REQUIRED = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "num_hidden_layers")


@dataclass(frozen=True)
class FlopsBreakdown:
    """Prefill FLOPs split by where they are spent.

    Args:
        linear: the q/k/v/o projections and the gated MLP of every decoder layer.
        attention: the score (`Q K^T`) and value (`A V`) matmuls of every decoder layer.
        lm_head: the output projection to the vocabulary.
    """

    linear: int
    attention: int
    lm_head: int

    @property
    def total(self) -> int:
        """The sum of the three parts."""
        return self.linear + self.attention + self.lm_head


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(name, value, "an int >= 1")
    return int(value)


def decoder_dims(text_config: Any) -> dict[str, int]:
    """Reads the decoder dimensions that the FLOP count needs.

    Args:
        text_config: a transformers `PretrainedConfig` (a multimodal config is reduced to its decoder's text config) or
            any object with the attributes `hidden_size`, `intermediate_size`, `num_attention_heads`, `vocab_size`,
            `num_hidden_layers` and optionally `num_key_value_heads` (default: `num_attention_heads`) and `head_dim`
            (default: `hidden_size // num_attention_heads`).

    Returns:
        A dict with those seven keys, all ints.

    Raises:
        ConfigError: naming the first missing or invalid attribute.
    """
    get_text_config = getattr(text_config, "get_text_config", None)
    if callable(get_text_config):
        text_config = get_text_config(decoder=True)
    dims = {}
    for name in _REQUIRED:
        value = getattr(text_config, name, None)
        if value is None:
            raise ConfigError(name, None, "an attribute of the text config",
                              hint=f"{type(text_config).__name__} has no {name}.")
        dims[name] = _positive_int(name, value)
    # Configs without grouped-query attention or with the conventional head size leave these unset (or None).
    kv_heads = getattr(text_config, "num_key_value_heads", None)
    dims["num_key_value_heads"] = dims["num_attention_heads"] if kv_heads is None else _positive_int(
        "num_key_value_heads", kv_heads)
    head_dim = getattr(text_config, "head_dim", None)
    dims["head_dim"] = (dims["hidden_size"] // dims["num_attention_heads"] if head_dim is None
                        else _positive_int("head_dim", head_dim))
    return dims


def prefill_flops(text_config: Any, layer_seq_lens: Sequence[int], *, lm_head_tokens: int = 1) -> FlopsBreakdown:
    """Counts the FLOPs of one prefill forward pass (formula in the module docstring).

    Args:
        text_config: the language model's config, see `decoder_dims`.
        layer_seq_lens: the number of tokens each decoder layer sees, one entry per layer (under LVTC, layers K..L-1
            see the compressed length).
        lm_head_tokens: positions whose logits are computed; `generate` computes only the last one at prefill, hence the
            default 1. Pass the sequence length for a training forward.

    Returns:
        A `FlopsBreakdown`.

    Raises:
        ConfigError: when `layer_seq_lens` does not have one entry per decoder layer, or holds a negative length.
    """
    dims = decoder_dims(text_config)
    d, heads, kv_heads, d_h = dims["hidden_size"], dims["num_attention_heads"], dims["num_key_value_heads"], dims["head_dim"]
    num_layers = dims["num_hidden_layers"]
    if len(layer_seq_lens) != num_layers:
        raise ConfigError("len(layer_seq_lens)", len(layer_seq_lens), f"num_hidden_layers={num_layers}")
    if isinstance(lm_head_tokens, bool) or not isinstance(lm_head_tokens, numbers.Integral) or lm_head_tokens < 0:
        raise ConfigError("lm_head_tokens", lm_head_tokens, "an int >= 0")
    params = 2 * d * heads * d_h + 2 * d * kv_heads * d_h + 3 * d * dims["intermediate_size"]
    linear = attention = 0
    for i, n in enumerate(layer_seq_lens):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ConfigError(f"layer_seq_lens[{i}]", n, "an int >= 0")
        n = int(n)
        linear += 2 * n * params
        # Under a causal mask query i attends to keys 0..i only, so n(n+1)/2 pairs instead of n^2; kernels that skip
        # masked blocks (flash, sdpa with is_causal) do about this much work, and counting n^2 would overstate what
        # shortening the sequence saves. Both matmuls run per query head (K/V are shared across a group, not reduced).
        attention += 2 * 2 * heads * d_h * (n * (n + 1) // 2)
    lm_head = 2 * int(lm_head_tokens) * d * dims["vocab_size"]
    return FlopsBreakdown(linear=linear, attention=attention, lm_head=lm_head)


def uniform_layer_lens(text_config: Any, seq_len: int) -> list[int]:
    """The per-layer lengths of an uncompressed model: `seq_len` for every decoder layer.

    Args:
        text_config: the language model's config, see `decoder_dims`.
        seq_len: tokens in the sequence.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 0:
        raise ConfigError("seq_len", seq_len, "an int >= 0")
    return [int(seq_len)] * decoder_dims(text_config)["num_hidden_layers"]
