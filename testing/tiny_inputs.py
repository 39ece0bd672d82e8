"""Deterministic inputs for the tiny zoo: noise images, and batches that go straight into ``model(**inputs)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from .tiny import check_tiny_family, image_placeholder

__all__ = ["ablation_image_sizes", "default_image_sizes", "tiny_batch", "tiny_images"]


def tiny_images(sizes: Sequence[tuple[int, int]], *, seed: int = 0) -> list[Image.Image]:
    """Deterministic RGB noise images of the given ``(width, height)`` sizes."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for width, height in sizes:
        pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8)
        images.append(Image.fromarray(pixels.numpy()))  # (H, W, 3) uint8 -> RGB
    return images


# Default (width, height) of the images in tiny_batch. For batch 2 the second image differs wherever the family can
# give it a different number of visual tokens.
_DEFAULT_SIZES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "internvl": ((32, 32), (64, 32)),  # 1 tile | 2x1 tiles + thumbnail = 3 tiles
    "llava": ((48, 40), (40, 48)),  # always one 32 px crop
    "llava_next": ((64, 40), (32, 64)),  # pinpoint 64x64 | 32x64 (height 64, width 32)
    "llava_onevision": ((64, 40), (32, 64)),
    "qwen2_vl": ((32, 32), (56, 40)),  # 8x8 | 10x14 patches
    "qwen2_5_vl": ((32, 32), (56, 40)),
    "qwen3_vl": ((32, 32), (56, 40)),
}


def default_image_sizes(model_type: str, batch: int = 1) -> list[tuple[int, int]]:
    """The ``(width, height)`` image sizes that :func:`tiny_batch` uses by default for ``batch`` samples."""
    check_tiny_family(model_type)
    defaults = _DEFAULT_SIZES[model_type]
    return [defaults[i % len(defaults)] for i in range(batch)]


# Sizes that the tiny families tile differently, after the two defaults: what `vtc ablate` feeds, one per sample, so
# that resolution-dependent compression (RVTC) shows in the per-image token counts.
_MORE_ABLATION_SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "internvl": ((57, 43), (40, 12)),  # 2x2 tiles + thumbnail | 3x1 + thumbnail; fewer under the edge and area rules
    "llava": (),
    "llava_next": ((24, 20),),  # pinpoint 32x64: 2 crops + base; 1 crop under the edge rule
    "llava_onevision": ((24, 20),),
    "qwen2_vl": ((96, 72),),  # shrunk to the processor's 64x64-pixel maximum
    "qwen2_5_vl": ((96, 72),),
    "qwen3_vl": ((96, 72),),
}


def ablation_image_sizes(model_type: str) -> list[tuple[int, int]]:
    """The ``(width, height)`` images of the tiny ``vtc ablate`` default: the two defaults of :func:`tiny_batch`, then
    sizes that the family tiles differently."""
    check_tiny_family(model_type)
    return [*_DEFAULT_SIZES[model_type], *_MORE_ABLATION_SIZES[model_type]]


_DEFAULT_PROMPTS = ("w3 w7 {image} describe the image .", "what is in this picture ? w11 w12 w13 {image} w5 w8 w9 .")


def tiny_batch(
    model_type: str,
    processor: ProcessorMixin,
    *,
    batch: int = 1,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    prompt: str | Sequence[str] | None = None,
) -> BatchFeature:
    """Run ``processor`` on ``batch`` prompts with one image each, returning PyTorch tensors (left-padded).

    Args:
        model_type: the family, which decides the placeholder written into the prompt.
        processor: from :func:`~vtc.testing.tiny.build_tiny_processor` (or a patched one).
        batch: the number of samples. The default prompts of batch 2 have different lengths, so the shorter
            sample is left-padded. Its default images have different sizes where the family can give them
            different visual-token counts (all but LLaVA-1.5).
        image_sizes: ``(width, height)`` of each sample's image. Defaults per family.
        prompt: one prompt for every sample, or one per sample. ``{image}`` marks where the image goes. Without it,
            the image comes first.

    The result can be passed as ``model(**inputs)`` and ``model.generate(**inputs, ...)``.
    """
    check_tiny_family(model_type)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if image_sizes is None:
        image_sizes = default_image_sizes(model_type, batch)
    if len(image_sizes) != batch:
        raise ValueError(f"got {len(image_sizes)} image sizes for a batch of {batch}")
    if prompt is None:
        prompts = [_DEFAULT_PROMPTS[i % len(_DEFAULT_PROMPTS)] for i in range(batch)]
    elif isinstance(prompt, str):
        prompts = [prompt] * batch
    else:
        prompts = list(prompt)
        if len(prompts) != batch:
            raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
    placeholder = image_placeholder(model_type)
    texts = [p.replace("{image}", placeholder) if "{image}" in p else f"{placeholder} {p}" for p in prompts]
    return processor(images=tiny_images(image_sizes), text=texts, return_tensors="pt", padding=True)
