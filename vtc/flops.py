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

A pruning baseline (`vtc.PruneConfig`) also does work of its own: `prune_flops` counts it per image (per tile where
the model sees tiles) before the language model, `llm_prune_flops` per prompt for the methods inside the decoder
(whose saving is the shorter layer lengths `prefill_flops` counts), to be added next to the prefill FLOPs.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import PruneConfig
from .errors import ConfigError
from .prune import visionzip_counts

__all__ = ["FlopsBreakdown", "decoder_dims", "llm_prune_flops", "prefill_flops", "prune_flops", "pruning_flops",
           "uniform_layer_lens"]

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


def prune_flops(method: str, native_tokens: int, kept_tokens: int, width: int, *, tower_tokens: int | None = None,
                attention_width: int | None = None, head_width: int | None = None, queries: int = 1) -> int:
    """The FLOPs a pruning method spends on one item of `native_tokens` tokens of `width` features, keeping
    `kept_tokens` (a multiply-add counts as 2, a comparison or a lone add as 1):

        downsample, random   0   (downsample's saving, a smaller image in the vision tower, is not counted here)
        pool                 n * d                        (each input feature added into its window once)
        divprune             2 * n^2 * d  +  2 * k * n    (the cosine-similarity matrix; per pick, the running
                                                           minimum and the argmax over n distances)
        visionzip            2 * q * t * a  +  2 * m * c * e  (the attention each token receives: the [CLS]
                                                           row, q = 1, or every query's, q = t, on a tower without
                                                           one; each merged token's key against the targets' keys)

    with `n = native_tokens`, `k = kept_tokens`, `d = width` (the projector's output width), `t = tower_tokens`
    (default `n`), `a = attention_width` (all heads, default `d`), `e = head_width` (the head-averaged key,
    default `a`), `q = queries`, and VisionZip's `c` contextual tokens and `m = n - k` merged tokens
    (`vtc.prune.visionzip_counts`).
    The contextual tokens' pass through the projector is left out, as every other token's is.

    Raises:
        ConfigError: on an unknown method, or a count that is not an int >= 1 (`kept_tokens <= native_tokens`).
    """
    if method in PruneConfig.IN_LLM_METHODS:
        raise ConfigError("method", method, "a method before the language model",
                          hint="The in-decoder methods spend their work per prompt: vtc.flops.llm_prune_flops.")
    if method not in PruneConfig.METHODS:
        raise ConfigError("method", method, "one of " + ", ".join(map(repr, PruneConfig.METHODS)))
    n, d = _positive_int("native_tokens", native_tokens), _positive_int("width", width)
    k = _positive_int("kept_tokens", kept_tokens)
    if k > n:
        raise ConfigError("kept_tokens", kept_tokens, f"at most native_tokens={n}")
    if method == "pool":
        return n * d
    if method == "divprune":
        return 2 * n * n * d + 2 * k * n
    if method == "visionzip":
        t = n if tower_tokens is None else _positive_int("tower_tokens", tower_tokens)
        a = d if attention_width is None else _positive_int("attention_width", attention_width)
        e = a if head_width is None else _positive_int("head_width", head_width)
        q = _positive_int("queries", queries)
        return 2 * q * t * a + 2 * (n - k) * visionzip_counts(k, n)[1] * e
    return 0


#: DART's pivots per item (4 image and 4 text tokens), each compared with the item's tokens.
_DART_PIVOTS = 8


def llm_prune_flops(method: str, text_config: Any, sequence_tokens: int, item_tokens: Sequence[int], *,
                    stages: int = 1) -> int:
    """The FLOPs an in-decoder pruning method spends on one prompt of `t = sequence_tokens` tokens whose images (tiles
    where the model sees tiles) bring `item_tokens` tokens each, with the decoder's width `d`, `a = h * d_h` (every
    query head) and `e = h_kv * d_h` (every key head), to add to `prefill_flops` of the pruned layer lengths:

        fastv   2 * t * a                                     (the last prompt token's attention row: one query
                                                               against the layer's t keys, which the layer computed)
        dart    t * e  +  2 * p * sum(n) * d                  (the keys' L1 norms; each of an item's p = 8 pivots'
                                                               cosine similarity with its n tokens)
        pdrop   s * (2 * t * d * e  +  2 * d * a  +  2 * t * a)   (per stage: the stage layer's keys of the t tokens
                                                               and the last token's query, then its attention row;
                                                               t after the first stage is fewer: an upper bound)

    Raises:
        ConfigError: on a method that is not in the decoder, or a count that is not an int >= 1.
    """
    if method not in PruneConfig.IN_LLM_METHODS:
        raise ConfigError("method", method, "one of " + ", ".join(map(repr, PruneConfig.IN_LLM_METHODS)),
                          hint="The methods before the language model: vtc.flops.prune_flops.")
    dims = decoder_dims(text_config)
    d, a = dims["hidden_size"], dims["num_attention_heads"] * dims["head_dim"]
    e = dims["num_key_value_heads"] * dims["head_dim"]
    t = _positive_int("sequence_tokens", sequence_tokens)
    n = sum(_positive_int("item_tokens", tokens) for tokens in item_tokens)
    if method == "fastv":
        return 2 * t * a
    if method == "dart":
        return t * e + 2 * _DART_PIVOTS * n * d
    return _positive_int("stages", stages) * (2 * t * d * e + 2 * d * a + 2 * t * a)


def pruning_flops(adapter: Any, config: PruneConfig, layout: Sequence[Sequence[Any]],
                  sequence_lengths: Sequence[int] | None = None,
                  items: Sequence[Sequence[tuple[int, int]]] | None = None,
                  image_inputs: Mapping[str, Any] | None = None) -> list[int]:
    """Per sample of a prefill's visual layout (`last_stats()["visual_layout"]`), the FLOPs `config`'s method spent
    before the language model (`prune_flops` for each of its images, or tiles where the model sees tiles).

    Args:
        adapter: the compressed model's adapter (`vtc.registry.get_adapter`).
        config: the model's `PruneConfig`.
        layout: per sample, its visual spans.
        sequence_lengths: per sample, its prompt's tokens, for the in-decoder methods (whose work grows with the
            prompt; `llm_prune_flops`); without them, the end of the sample's last visual span (a lower bound).
        items: per sample, each image's (tile's) `(native, kept)` token counts (`last_stats()["pruned_items"]`),
            for the methods before the language model; without them, one item per visual span, of the kept length,
            from the adapter's native token grid (right where every item has that grid).
        image_inputs: the prefill's image inputs, for VisionZip on a family whose images are several tower rows
            packed with tokens of no patch (`adapter.visionzip_item_shapes`: per image its tower tokens, queries per
            row and grid cells); without them, each item counts as one tower row of its own tokens.
    """
    if config.in_llm:
        stages = len(config.resolve_stage_layers(decoder_dims(adapter.text_config)["num_hidden_layers"]))
        lengths = sequence_lengths or [max((span.end for span in spans), default=0) for spans in layout]
        return [llm_prune_flops(config.method, adapter.text_config, length, [span.length for span in spans],
                                stages=stages) if spans else 0 for spans, length in zip(layout, lengths)]
    if items is None:
        h, w = adapter.reference_token_grid
        items = [[(max(h * w, span.length), span.length) for span in spans] for spans in layout]
    width = adapter.text_config.hidden_size
    shapes = None
    if config.method == "visionzip" and image_inputs is not None:
        per_image = adapter.visionzip_item_shapes(image_inputs)
        # one per item; not where `generate` repeated the rows (then each item counts as one tower row)
        if per_image is not None and len(per_image) == sum(map(len, items)):
            shapes = iter(per_image)

    def item_flops(native: int, kept: int) -> int:
        if config.method != "visionzip":
            return prune_flops(config.method, native, kept, width)
        taps = adapter.feature_layer_attention()
        if shapes is not None:
            tower, queries, native = next(shapes)
            kept = min(kept, native)
        else:
            rows, cols = adapter.projector_window
            tower = native * rows * cols + int(adapter.vision_has_cls)
            queries = 1 if adapter.vision_has_cls else tower
        return prune_flops("visionzip", native, kept, width, tower_tokens=tower,
                           attention_width=adapter.vision_feature_dim,
                           head_width=adapter.vision_feature_dim // taps.num_heads, queries=queries)

    return [sum(item_flops(native, kept) for native, kept in sample) for sample in items]
