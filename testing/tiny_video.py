"""Video inputs for the tiny families whose models take videos, built without a video processor.

The tiny processors have none (it would need torchvision), so :func:`tiny_video_batch` writes what a video processor
and the processor's video-token expansion would give the model: the frames' pixels in the layout the model expects
and the video placeholders in ``input_ids``, spliced in where the prompt says ``{video}``. Its images, if any, go
through the processor as in :func:`~vtc.testing.tiny_inputs.tiny_batch`, so a patched processor expands them as it
would. Every sample holds one video of the same shape: splicing grows every row by the same number of tokens, so
the processor's left padding stays aligned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BatchFeature, ProcessorMixin

from .tiny import TINY_SIZES, check_tiny_family, image_placeholder
from .tiny_inputs import default_image_sizes, tiny_images

__all__ = ["VIDEO_FAMILIES", "tiny_video_batch"]

#: The tiny families whose model (and real processor) take videos, with `pixel_values_videos`.
VIDEO_FAMILIES: tuple[str, ...] = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")

#: A vocabulary word the prompts never use: where the video goes until its placeholders are spliced in.
_MARKER = "w199"
#: Qwen3-VL writes a timestamp before every frame group; this vocabulary word stands for it.
_TIMESTAMP = "w198"


def _qwen_video(family: str, processor: ProcessorMixin, frames: int, gen: torch.Generator):
    """`(placeholder ids, model inputs)` of one video: the frames' patches and `video_grid_thw`."""
    sizes = TINY_SIZES[family]
    side, merge, temporal = sizes.patches_per_side, sizes.spatial_merge, sizes.temporal_patch
    if frames % temporal:
        raise ValueError(f"{family} takes frames in groups of {temporal}, got {frames}")
    t = frames // temporal
    ids = processor.tokenizer.convert_tokens_to_ids
    start, end, pad = ids("<|vision_start|>"), ids("<|vision_end|>"), ids(processor.video_token)
    group = [start, *[pad] * (side * side // merge**2), end]
    # Qwen3-VL separates the frame groups by timestamps (its position index starts a grid at every group).
    placeholder = [tok for _ in range(t) for tok in (ids(_TIMESTAMP), *group)] if family == "qwen3_vl" else [
        start, *[pad] * (t * side * side // merge**2), end]
    row = 3 * temporal * sizes.patch**2  # channels x temporal patch x patch x patch values per patch
    inputs = {"pixel_values_videos": torch.randn(t * side * side, row, generator=gen),
              "video_grid_thw": torch.tensor([[t, side, side]])}
    return placeholder, inputs


def _onevision_video(family: str, processor: ProcessorMixin, frames: int, gen: torch.Generator):
    sizes = TINY_SIZES[family]
    pooled = -(-sizes.patches_per_side // 2)  # the model pools every frame's patch grid 2x (ceil), then a newline
    placeholder = [processor.tokenizer.convert_tokens_to_ids(processor.video_token)] * (frames * pooled**2 + 1)
    pixels = torch.randn(1, frames, 3, sizes.image_size, sizes.image_size, generator=gen)
    return placeholder, {"pixel_values_videos": pixels}


_VIDEOS = {"llava_onevision": _onevision_video, "qwen2_vl": _qwen_video, "qwen2_5_vl": _qwen_video,
           "qwen3_vl": _qwen_video}


def tiny_video_batch(
    model_type: str,
    processor: ProcessorMixin,
    *,
    batch: int = 1,
    frames: int = 4,
    with_image: bool = False,
    prompt: str | Sequence[str] | None = None,
    seed: int = 0,
) -> BatchFeature:
    """``batch`` prompts with one video each (and one image each when ``with_image``), as PyTorch tensors.

    Args:
        model_type: one of ``VIDEO_FAMILIES``.
        processor: from :func:`~vtc.testing.tiny.build_tiny_processor` (or a patched one).
        batch: the number of samples; every sample's video has the same shape, with its own noise.
        frames: frames per video (Qwen: a multiple of the temporal patch, 2).
        with_image: also give every sample an image of the default size (placed by ``{image}``, else first).
        prompt: one prompt for every sample, or one per sample; ``{video}`` marks where the video goes (without it,
            the video comes first).

    The result goes straight into ``model(**inputs)`` and ``model.generate(**inputs, ...)``.
    """
    check_tiny_family(model_type)
    if model_type not in VIDEO_FAMILIES:
        raise ValueError(f"{model_type} takes no videos; expected one of {', '.join(VIDEO_FAMILIES)}")
    if prompt is None or isinstance(prompt, str):
        prompts = [prompt or "describe {video} the picture ."] * batch
    else:
        prompts = list(prompt)
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for a batch of {batch}")
    texts = [p.replace("{video}", _MARKER) if "{video}" in p else f"{_MARKER} {p}" for p in prompts]
    images = None
    if with_image:
        placeholder = image_placeholder(model_type)
        texts = [t.replace("{image}", placeholder) if "{image}" in t else f"{placeholder} {t}" for t in texts]
        images = tiny_images(default_image_sizes(model_type, batch))
    encoded = processor(images=images, text=texts, return_tensors="pt", padding=True)

    gen = torch.Generator().manual_seed(seed)
    videos = [_VIDEOS[model_type](model_type, processor, frames, gen) for _ in range(batch)]
    marker = processor.tokenizer.convert_tokens_to_ids(_MARKER)
    rows = []
    for ids, (placeholder, _) in zip(encoded["input_ids"].tolist(), videos):
        at = ids.index(marker)
        rows.append(ids[:at] + placeholder + ids[at + 1:])
    input_ids = torch.tensor(rows)
    mask = (input_ids != processor.tokenizer.pad_token_id).to(encoded["attention_mask"].dtype)  # left padding only
    out = {**encoded, "input_ids": input_ids, "attention_mask": mask}
    if "mm_token_type_ids" in encoded:
        out["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(input_ids))
    for key in videos[0][1]:
        out[key] = torch.cat([inputs[key] for _, inputs in videos])
    return BatchFeature(out)
