"""What the components that run decoder layers on a shorter sequence share: LVTC (`vtc.lvtc`) and the in-decoder
pruning methods (`vtc._install_llm_prune`).

Both hook the language model's forward and its decoder layers: they read the 2-D padding mask and the KV cache the
language model was called with, replace a layer's hidden states (its first argument, positional or by name), and keep
shorter KV caches in the shortened layers, which needs a cache whose layers grow independently (a `DynamicCache`).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import UnsupportedModelError

__all__ = ["ShortenedLayerSwap", "appended_mask", "cache_length", "check_attention_mask", "check_cache", "check_cache_layers",
           "hidden_argument", "shortened_layer_arguments", "static_cache_hint", "with_hidden_argument"]


def static_cache_hint(component: str) -> str:
    """The way out when `component` meets a cache or masks it cannot shorten."""
    return (f"{component} keeps shorter KV caches in the compressed layers, which needs a DynamicCache (the default of "
            "`generate`); do not pass a static cache or `cache_implementation=\"static\"`.")


def cache_length(cache: Any, layer: int = 0) -> int:
    """The tokens `cache` holds in decoder layer `layer` (0 without a cache)."""
    return 0 if cache is None else int(cache.get_seq_length(layer))


def check_cache(cache: Any, component: str) -> None:
    """Raise `UnsupportedModelError` for a cache whose layers cannot hold different lengths (a static cache)."""
    if cache is not None and getattr(cache, "is_compileable", False):
        raise UnsupportedModelError(f"{component} does not support {type(cache).__name__}. "
                                    f"{static_cache_hint(component)}")


def check_attention_mask(mask: Any, component: str) -> None:
    """Raise `UnsupportedModelError` unless the language model got a 2-D padding mask or none."""
    if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2):
        return
    if isinstance(mask, dict):  # generate pre-builds per-layer-type masks for static caches only
        raise UnsupportedModelError(f"{component} got pre-built attention masks. {static_cache_hint(component)}")
    raise UnsupportedModelError(
        f"{component} needs a 2-D padding mask (batch, sequence) or None, got {type(mask).__name__} of shape "
        f"{tuple(getattr(mask, 'shape', ()))}: a custom 4-D mask cannot be compressed. Pass the 2-D attention_mask "
        "the processor returns."
    )


def check_cache_layers(cache: Any, prompt_length: int | None, shortened: dict[int, int], kind: str,
                       component: str) -> int:
    """How many tokens a decode step's KV cache holds after the prompt of the shortened prefill that filled it.

    Args:
        cache: the cache, layer 0 full length.
        prompt_length: the prompt the prefill cached in full length, `None` where no shortened prefill filled the
            cache (then every layer must hold the full sequence).
        shortened: per shortened layer, the prompt length it cached.
        kind: what the prefill did to the sequence ("compressed", "pruned"), for the messages.
        component: the component, for the messages.

    Raises:
        UnsupportedModelError: a shortened layer does not hold its prompt length plus the appended tokens (a cache cut
            into the prompt or edited), or a cache no shortened prefill filled holds layers of different lengths.
    """
    full = cache_length(cache)
    if prompt_length is None:
        for layer in shortened:
            held = cache_length(cache, layer)
            if held != full:
                raise UnsupportedModelError(
                    f"this KV cache holds {full} tokens in layer 0 but {held} in layer {layer}, and no {kind} prefill "
                    "of vtc filled it (it was copied without its attributes, or filled by another tool). Run the "
                    "prefill again (e.g. call generate with the prompt)."
                )
        return 0
    appended = full - prompt_length
    for layer, length in shortened.items():
        held = cache_length(cache, layer)
        if appended < 0 or held != length + appended:
            raise UnsupportedModelError(
                f"the KV cache no longer matches the {kind} prefill (layer 0 holds {full} tokens, layer {layer} holds "
                f"{held}; expected {prompt_length} + n and {length} + n). Cropping or editing the cache (assisted or "
                f"speculative decoding) is not supported with {component}."
            )
    return appended


def appended_mask(mask: torch.Tensor | None, prompt_length: int, appended: int,
                  new_tokens: int) -> torch.Tensor | None:
    """The 2-D mask columns of the tokens after the prompt (`appended` cached ones and `new_tokens` arriving), or
    `None` for no mask.

    Raises:
        UnsupportedModelError: the mask does not cover the whole sequence.
    """
    if mask is None:
        return None
    after = mask[:, prompt_length:]
    if after.shape[1] != appended + new_tokens:
        raise UnsupportedModelError(
            f"attention_mask has {mask.shape[1]} columns but the cache holds {prompt_length + appended} tokens and "
            f"{new_tokens} arrive: pass the mask of the whole sequence (prompt and generated tokens)."
        )
    return after


def hidden_argument(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer was called with."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden_argument(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """A decoder layer's call arguments with `hidden` as its hidden states."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def shortened_layer_arguments(kwargs: dict, attention_mask: Any,
                              position_embeddings: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    """A shortened layer's keyword arguments: the mask built for its length, no `position_ids` (the kept positions
    have gaps, which flash attention would read as packed sequences) and, in a prefill, the rotary embeddings of its
    tokens (`None` keeps the layer's own: a decode step's tokens keep their positions)."""
    swapped = {**kwargs, "attention_mask": attention_mask, "position_ids": None}
    if position_embeddings is not None:
        swapped["position_embeddings"] = position_embeddings
    return swapped


class ShortenedLayerSwap:
    """The forward pre-hook of the shortened layers after the first one (which builds their arguments): a controller
    with a `_step` (its thread's state of the forward in progress, with `active`, `prefill`, `attention_mask` and
    `position_embeddings`) swaps in that mask and those rotary embeddings."""

    _step: Any

    def swap(self, _module, args, kwargs):
        step = self._step
        if step is None or not step.active:
            return None
        return args, self._swapped(kwargs, step)

    @staticmethod
    def _swapped(kwargs: dict, step: Any) -> dict:
        return shortened_layer_arguments(kwargs, step.attention_mask,
                                         step.position_embeddings if step.prefill else None)
