"""The transformers contracts that vtc's core reads, each in one place.

Every supported transformers release (`vtc.adapters.base.Adapter.min_transformers` up to, not including,
`max_transformers`) passes these the same way; where a release renamed one, the names of every supported release are
read here, so that the next release that moves a seam fails one canary test (`tests/vtc/test_seams.py`) instead of
every component.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from transformers import masking_utils
from transformers.utils import ModelOutput

__all__ = [
    "CACHE_ARGUMENTS",
    "TOWER_OUTPUT_FLAGS",
    "cache_argument",
    "causal_mask",
    "hidden_states_request",
    "output_cache",
    "output_without",
    "returns_tuple",
]

#: The names a forward takes its KV cache under, newest first: transformers 5.24 renamed `past_key_values` to `cache`
#: (models and decoder layers still accept the old name, deprecated).
CACHE_ARGUMENTS = ("cache", "past_key_values")


def cache_argument(arguments: Mapping[str, Any]) -> Any:
    """The KV cache among a forward's arguments by name (`None` when it was given none)."""
    for name in CACHE_ARGUMENTS:
        cache = arguments.get(name)
        if cache is not None:
            return cache
    return None


def output_cache(output: Any) -> Any:
    """The KV cache a model's forward returned (its output's `cache`, `past_key_values` before 5.24)."""
    for name in CACHE_ARGUMENTS:
        if name in output.keys():
            return output[name]
    return None


@functools.cache
def _mask_cache_argument() -> str:
    parameters = inspect.signature(masking_utils.create_causal_mask).parameters
    return next(name for name in CACHE_ARGUMENTS if name in parameters)


def causal_mask(*, config: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any,
                layer_idx: int, allow_is_causal_skip: bool) -> Any:
    """transformers' own mask for a decoder layer (`create_causal_mask`), built for the length of `inputs_embeds`,
    with `position_ids=None`."""
    return masking_utils.create_causal_mask(
        config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=None,
        layer_idx=layer_idx, allow_is_causal_skip=allow_is_causal_skip, **{_mask_cache_argument(): cache},
    )


# ------------------------------------------------------------------------------------------ get_image_features
#: The output flags a model's `get_image_features` (and `get_video_features`) hands on to its vision tower.
TOWER_OUTPUT_FLAGS = ("output_hidden_states", "output_attentions")


def hidden_states_request(requested: Any, selected_layers: int | list[int]) -> Any:
    """The `output_hidden_states` a model that selects vision layers (`vision_feature_layer`) gives its tower: the
    caller's request, else only the selected layers (transformers' `select_hidden_states`; the tower then returns a
    `hidden_states` tuple with only those entries set)."""
    return requested if requested else selected_layers


def returns_tuple(module: Any, return_dict: bool | None) -> bool:
    """Whether a method under transformers' `can_return_tuple` returns a tuple: `return_dict=False` passed, or none
    passed and the module's config says `return_dict=False`."""
    if return_dict is None:
        return_dict = getattr(getattr(module, "config", None), "return_dict", True)
    return not return_dict


def output_without(output: ModelOutput, name: str) -> ModelOutput:
    """`output` without its field `name` (a `ModelOutput` cannot delete a key), the other fields in their order (the
    order of `to_tuple()`)."""
    trimmed = type(output)()
    for key, value in output.items():
        if key != name:
            trimmed[key] = value
    return trimmed
