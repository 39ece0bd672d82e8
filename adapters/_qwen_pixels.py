"""Per-image pixel bounds for the Qwen-VL image processor: what RVTC (`Qwen2VLAdapter.rvtc_install`) and pruning's
`downsample` change.

The image processor resizes every image with `smart_resize`, keeping its aspect ratio, to a multiple of `patch *
merge` pixels per side (`factor`) with an area in `[min_pixels, max_pixels]`: one language token per `factor x
factor` block. `PixelBounds` narrows those bounds image by image, in the processor's `resize` and in its placeholder
count (`get_number_of_image_patches`) alike, so the two always agree.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import transformers
from packaging.version import Version
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from vtc.config import PruneConfig
from vtc.errors import ConfigError, UnsupportedModelError

__all__ = ["DownsamplePixels", "PixelBounds", "check_downsample_keep", "native_token_count", "pixel_bounded_processor"]


def native_token_count(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> int:
    """The language tokens the processor gives a `height x width` image with these bounds (before any merging)."""
    resized_height, resized_width = smart_resize(height, width, factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return (resized_height // factor) * (resized_width // factor)


class PixelBounds:
    """Patches of the image processor's `resize` and `get_number_of_image_patches` that give each image the
    `(min_pixels, max_pixels)` of `pixels` (a subclass decides them)."""

    def pixels(self, height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
        """The bounds of a `height x width` image whose processor's own bounds are `min_pixels`, `max_pixels`."""
        raise NotImplementedError

    def resize(self, original, *args, **kwargs):
        signature = inspect.signature(original)
        image_name = next(iter(signature.parameters))  # `image` (PIL backend) or `images` (torchvision backend)
        bound = signature.bind(*args, **kwargs)
        size = bound.arguments["size"]
        if getattr(size, "shortest_edge", None) and getattr(size, "longest_edge", None):
            height, width = bound.arguments[image_name].shape[-2:]  # channels-first in both backends
            min_pixels, max_pixels = self.pixels(height, width, size.shortest_edge, size.longest_edge)
            bound.arguments["size"] = SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels)
        return original(*bound.args, **bound.kwargs)

    def get_number_of_image_patches(self, original, height: int, width: int, images_kwargs: dict | None = None) -> int:
        images_kwargs = dict(images_kwargs or {})
        bounds = _pixel_bounds(images_kwargs, original.__self__.size)
        min_pixels, max_pixels = self.pixels(height, width, *bounds)
        return original(height, width, _with_pixel_bounds(images_kwargs, min_pixels, max_pixels))


class DownsamplePixels(PixelBounds):
    """`PruneConfig(method="downsample")`: each image's budget is `keep` (or that fraction of the tokens it natively
    gets); its `max_pixels` is lowered to the largest value at which `smart_resize` gives it at most `budget` tokens
    (`min_pixels` to at most that), so the image keeps its aspect ratio at the largest size within its budget. Only
    an extreme aspect ratio, which keeps one token per side, can exceed it. An image whose budget is at least its
    native tokens keeps the processor's own bounds (and so its native size)."""

    def __init__(self, config: PruneConfig, factor: int):
        self.config, self.factor = config, factor

    def pixels(self, height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
        native = native_token_count(height, width, self.factor, min_pixels, max_pixels)
        budget = self.config.kept_count(native)
        if budget >= native:
            return min_pixels, max_pixels

        def tokens(most: int) -> int:
            return native_token_count(height, width, self.factor, min(min_pixels, most), most)

        # the tokens grow with `max_pixels`: bisect for the largest bound within the budget (at least one token)
        low, high = self.factor**2, max_pixels
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if tokens(middle) <= budget else (low, middle - 1)
        return min(min_pixels, low), low


def pixel_bounded_processor(processor: Any, component: str) -> Any:
    """The image processor of `processor`, once it is known to resize with per-image pixel bounds."""
    image_processor = processor.image_processor
    if not (callable(getattr(image_processor, "resize", None))
            and callable(getattr(image_processor, "get_number_of_image_patches", None))):
        raise UnsupportedModelError(f"{component} needs the Qwen-VL image processor (`smart_resize` per image), got "
                                    f"{type(image_processor).__name__}")
    return image_processor


def check_downsample_keep(config: PruneConfig, most: int | None) -> None:
    """Raise `ConfigError` for an int `keep` above `most`, the most tokens the processor gives any image."""
    if isinstance(config.keep, int) and most is not None and config.keep > most:
        raise ConfigError("prune.keep", config.keep, f"at most {most}: the processor gives an image at most {most} "
                          "visual tokens (its max_pixels)", hint="A float keeps a fraction of each image's tokens.")


# transformers 5.25 reads an image's pixel bounds from `images_kwargs["size"]` and deprecates `min_pixels` /
# `max_pixels` there; earlier releases read only `min_pixels` / `max_pixels`.
_BOUNDS_IN_SIZE = Version(transformers.__version__) >= Version("5.25")


def _pixel_bounds(images_kwargs: Mapping[str, Any], default_size: Mapping[str, int]) -> tuple[int, int]:
    """The `(min_pixels, max_pixels)` that `images_kwargs` asks for, else the image processor's own."""
    size = images_kwargs.get("size") or default_size
    return (images_kwargs.get("min_pixels", size["shortest_edge"]),
            images_kwargs.get("max_pixels", size["longest_edge"]))


def _with_pixel_bounds(images_kwargs: dict[str, Any], min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """`images_kwargs` with its pixel bounds replaced, in the form the installed transformers reads."""
    rest = {k: v for k, v in images_kwargs.items() if k not in ("min_pixels", "max_pixels", "size")}
    if _BOUNDS_IN_SIZE:
        return {**rest, "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}
    return {**rest, "min_pixels": min_pixels, "max_pixels": max_pixels}
