"""The checks adapters run on what reaches a model: typed errors that say what the model expects and how to fix it,
before the model's own code fails with an opaque shape error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vtc.errors import InputError, PlaceholderMismatchError

__all__ = ["MAKE_INPUTS_WITH_PROCESSOR", "check_pixel_tiles", "check_placeholder_count"]

MAKE_INPUTS_WITH_PROCESSOR = ("Make the inputs with the model's processor (the one passed to vtc.compress), "
                              "return_tensors='pt'.")


def check_placeholder_count(placeholders: int, visual_tokens: int) -> None:
    """Raise `PlaceholderMismatchError` unless the prompts hold exactly as many placeholders as visual tokens."""
    if placeholders != visual_tokens:
        raise PlaceholderMismatchError(
            f"the prompts hold {placeholders} image placeholders but the images produce {visual_tokens} visual "
            "tokens. If vtc changes the token count (PVTC, RVTC or pruning before the language model), pass the "
            "model's processor to vtc.compress(model, config, processor=processor) and process the inputs with it. "
            "A chunked prefill (generate's prefill_chunk_size) splits an image's placeholders: a compressed model "
            "takes the prompt in one prefill."
        )


def check_pixel_tiles(pixel_values: Any, tile: tuple[int, int, int], leading: Sequence[Sequence[str]],
                      item: str = "tile") -> None:
    """Raise `InputError` unless `pixel_values` is a tensor `(*names, channels, height, width)` for one of the
    `leading` axis names, with `tile == (channels, height, width)`, holding at least one item.

    Run before the vision tower, whose own errors (a convolution's channel count, a reshape to the patch grid) would
    not say what the model expects.

    Args:
        pixel_values: the pixel values that reached `get_image_features`.
        tile: `(channels, height, width)` of one input of the vision tower.
        leading: the accepted leading axes by name, e.g. `(("images", "crops"), ("crops",))`.
        item: what one input of the vision tower is called ("tile", "crop", ...).
    """
    channels, height, width = tile
    shapes = " or ".join(f"({', '.join(names)}, {channels}, {height}, {width})" for names in leading)
    expected = (f"pixel_values of shape {shapes}: this model's vision {item} is {height}x{width} pixels with "
                f"{channels} channels")
    if not isinstance(pixel_values, torch.Tensor):
        raise InputError(f"expected {expected}; got a {type(pixel_values).__name__}. {MAKE_INPUTS_WITH_PROCESSOR}")
    shape = tuple(pixel_values.shape)
    if pixel_values.dim() not in {len(names) + 3 for names in leading} or shape[-3:] != tuple(tile):
        raise InputError(f"expected {expected}; got shape {shape}. {MAKE_INPUTS_WITH_PROCESSOR}")
    if pixel_values.numel() == 0:
        raise InputError(f"pixel_values of shape {shape} hold no {item}: pass pixel_values=None with a prompt that "
                         f"has no image. {MAKE_INPUTS_WITH_PROCESSOR}")
