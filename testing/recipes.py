"""One recipe per supported family: a model of the family's real class and its real processor, at given sizes.

The tiny zoo (:mod:`vtc.testing.tiny`) is this table at the tiny sizes; the reference models
(:mod:`vtc.testing.reference`) are the same table at the reference sizes (``reference_recipes.json``). A recipe
records the family's classes, the named multimodal tokens its processor reads from the tokenizer, the placeholder its
chat template writes for one image, and how the config, the image processor and the processor follow from the sizes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel, ProcessorMixin

from vtc.loading import processor_without_video

from .tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "RECIPES",
    "FamilyRecipe",
    "SizeTable",
    "Sizes",
    "TextSizes",
    "VisionSizes",
    "build_model",
    "build_processor",
    "chat_template",
    "token_ids",
]


# ---------------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class TextSizes:
    """The language model's shape."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    max_positions: int
    tie_word_embeddings: bool | None = None  # None: the family's default

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class VisionSizes:
    """The vision tower's shape."""

    hidden: int
    intermediate: int
    layers: int
    heads: int


@dataclass(frozen=True)
class Sizes:
    """Everything a recipe sizes a model and its processor from. A family reads only the fields it has a use for."""

    image_size: int  # the vision tower's input (one tile or crop), in px
    patch: int  # the vision patch, in px
    text: TextSizes
    vision: VisionSizes
    vision_feature_layer: int  # the tower layer the projector reads (LLaVA family, InternVL)
    max_tiles: int  # InternVL: tiles per image; with more than one, a thumbnail tile is added
    min_pixels: int  # Qwen: the image processor resizes each image to a pixel count in [min_pixels, max_pixels]
    max_pixels: int
    spatial_merge: int  # Qwen: merged patches per side of one visual token
    temporal_patch: int  # Qwen: frames per patch (an image is repeated to fill them)
    window_size: int  # Qwen2.5-VL: window-attention windows, in px
    grid_pinpoints: tuple[tuple[int, int], ...] = ()  # LLaVA-NeXT and OneVision: anyres grids, as (height, width)
    rope_theta: float = 10000.0  # Qwen: the decoder's rotary base (see `_qwen`)

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sizes:
        data = dict(data, text=TextSizes(**data["text"]), vision=VisionSizes(**data["vision"]))
        data["grid_pinpoints"] = tuple(tuple(grid) for grid in data.get("grid_pinpoints", ()))
        return cls(**data)


@dataclass(frozen=True)
class SizeTable:
    """The sizes of a set of families: what they share, and per family what it changes."""

    shared: Sizes
    per_family: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __getitem__(self, family: str) -> Sizes:
        return dataclasses.replace(self.shared, **self.per_family.get(family, {}))

    @classmethod
    def from_json(cls, path: Path) -> SizeTable:
        """``{"shared": {Sizes fields}, "families": {family: {fields it changes}}}``; the families in file order."""
        data = json.loads(path.read_text())
        return cls(Sizes.from_dict(data["shared"]), data["families"])


# ---------------------------------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class FamilyRecipe:
    """How to build one family (``model.config.model_type``) from :class:`Sizes`.

    Classes are named, not imported: transformers resolves them when a model is built.
    """

    model_class: str
    config_class: str
    processor_class: str
    named_tokens: Mapping[str, str]  # tokenizer attribute -> token, as the released checkpoints' tokenizers have
    image_token: str  # the token the processor expands per visual feature (config.image_token_id)
    placeholder: str  # what the family's chat template writes for one image
    config: Callable[[Sizes, Mapping[str, int], int], dict]  # (sizes, named tokens' ids, vocab size) -> config kwargs
    image_processor: Callable[[Sizes], Any]
    processor_kwargs: Callable[[Sizes], dict] = lambda sizes: {}
    takes_video: bool = False  # the processor class takes a video processor: built with none (images only)


def token_ids(recipe: FamilyRecipe, specials: tuple[str, ...]) -> dict[str, int]:
    """The ids of the recipe's named tokens in a word-level vocabulary that begins with `specials`."""
    return {name: specials.index(token) for name, token in recipe.named_tokens.items()}


def build_model(recipe: FamilyRecipe, sizes: Sizes, *, ids: Mapping[str, int], vocab_size: int,
                attn_implementation: str, seed: int) -> PreTrainedModel:
    """A randomly initialised model of the recipe's class; the weights depend only on `seed` (the global RNG is
    left as it was)."""
    config = getattr(transformers, recipe.config_class)(**recipe.config(sizes, ids, vocab_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, recipe.model_class)._from_config(config, attn_implementation=attn_implementation)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = EOS_ID, PAD_ID, BOS_ID
    return model


def build_processor(recipe: FamilyRecipe, sizes: Sizes, tokenizer, *, template: str | None) -> ProcessorMixin:
    """The family's real processor class around its ``*Pil`` image processor and `tokenizer`."""
    cls = getattr(transformers, recipe.processor_class)
    kwargs = dict(image_processor=recipe.image_processor(sizes), tokenizer=tokenizer, **recipe.processor_kwargs(sizes))
    if template is not None:
        kwargs["chat_template"] = template
    return processor_without_video(cls, **kwargs) if recipe.takes_video else cls(**kwargs)


def chat_template(placeholder: str) -> str:
    """A minimal chat template: each image as `placeholder` (what the family's own template writes), then the text.

    Prompts built from messages (`vtc.tasks.build_prompt`, `vtc.bench.example_inputs`) then carry what the family
    needs around each image (Qwen's M-RoPE index looks for the vision start token).
    """
    return ("{% for message in messages %}{% for content in message['content'] %}"
            f"{{% if content['type'] == 'image' %}}{placeholder}"
            "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endfor %}")


# ---------------------------------------------------------------------------------------------------- configs
def _text(s: Sizes, vocab_size: int, **extra) -> dict:
    t = s.text
    text = dict(vocab_size=vocab_size, hidden_size=t.hidden, intermediate_size=t.intermediate,
                num_hidden_layers=t.layers, num_attention_heads=t.heads, num_key_value_heads=t.kv_heads,
                max_position_embeddings=t.max_positions, eos_token_id=EOS_ID, pad_token_id=PAD_ID, bos_token_id=BOS_ID)
    if t.tie_word_embeddings is not None:
        text["tie_word_embeddings"] = t.tie_word_embeddings
    return dict(text, **extra)


def _vision(s: Sizes, **extra) -> dict:
    v = s.vision
    return dict(hidden_size=v.hidden, intermediate_size=v.intermediate, num_hidden_layers=v.layers,
                num_attention_heads=v.heads, **extra)


def _clip_llava(s: Sizes, ids: Mapping[str, int], vocab_size: int) -> dict:
    """What LLaVA-1.5 and LLaVA-NeXT share: CLIP, a Llama decoder, one token per patch (CLS dropped)."""
    return dict(
        vision_config=_vision(s, image_size=s.image_size, patch_size=s.patch, model_type="clip_vision_model",
                              projection_dim=s.vision.hidden),
        text_config=_text(s, vocab_size, model_type="llama"),
        image_token_index=ids["image_token"],
        image_seq_length=s.patches_per_side**2,
        vision_feature_layer=s.vision_feature_layer,
        vision_feature_select_strategy="default",
    )


def _llava(s: Sizes, ids: Mapping[str, int], vocab_size: int) -> dict:
    return dict(_clip_llava(s, ids, vocab_size), projector_hidden_act="gelu")


def _llava_next(s: Sizes, ids: Mapping[str, int], vocab_size: int) -> dict:
    return dict(_clip_llava(s, ids, vocab_size), image_grid_pinpoints=_pinpoints(s))


def _llava_onevision(s: Sizes, ids: Mapping[str, int], vocab_size: int) -> dict:
    # SigLIP has no CLS token, so the select strategy is "full".
    return dict(
        vision_config=_vision(s, image_size=s.image_size, patch_size=s.patch, model_type="siglip_vision_model"),
        text_config=_text(s, vocab_size, model_type="qwen2"),
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        vision_feature_layer=s.vision_feature_layer,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=_pinpoints(s),
        vision_aspect_ratio="anyres_max_9",
    )


def _internvl_tokens_per_tile(s: Sizes) -> int:
    return (s.patches_per_side // 2) ** 2  # the CLS is dropped, then pixel shuffle 0.5 halves each side


def _internvl(s: Sizes, ids: Mapping[str, int], vocab_size: int) -> dict:
    return dict(
        vision_config=_vision(s, image_size=[s.image_size, s.image_size], patch_size=[s.patch, s.patch]),
        text_config=_text(s, vocab_size, model_type="qwen2"),
        image_token_id=ids["context_image_token"],
        image_seq_length=_internvl_tokens_per_tile(s),
        downsample_ratio=0.5,
        vision_feature_layer=s.vision_feature_layer,
        vision_feature_select_strategy="default",
    )


def _qwen(s: Sizes, ids: Mapping[str, int], vocab_size: int, vision: dict, *,
          text_extra: Mapping[str, Any] | None = None, rope_extra: Mapping[str, Any] | None = None) -> dict:
    """What the Qwen-VL families share: M-RoPE in the decoder, the vision tower's patching, the vision tokens' ids."""
    # The temporal / height / width sections of the rotary half-dimension, in the released models' 2:3:3 proportion.
    # Without interleaving (Qwen2-VL, Qwen2.5-VL) the width section holds the lowest frequencies: with a small head
    # and the base 1e4, a row of six tokens turns them by under 0.02 rad, and a decoder cannot tell the columns apart
    # (a model that must say where something is then never learns it). A small model takes a small base.
    half = s.text.head_dim // 2
    rope = dict(rope_type="default", rope_theta=s.rope_theta,
                mrope_section=[half // 4, 3 * half // 8, 3 * half // 8])
    return dict(
        vision_config=dict(vision, patch_size=s.patch, temporal_patch_size=s.temporal_patch,
                           spatial_merge_size=s.spatial_merge, in_channels=3),
        text_config=_text(s, vocab_size, **(text_extra or {}), rope_parameters=dict(rope, **(rope_extra or {}))),
        **{f"{name}_id": ids[name] for name in ("image_token", "video_token", "vision_start_token", "vision_end_token")},
    )


def _qwen2_vl(s: Sizes, ids: Mapping[str, int], vocab_size: int) -> dict:
    # Qwen2-VL's vision `hidden_size` is the merger's output width, which must equal the LLM's.
    v = s.vision
    vision = dict(depth=v.layers, embed_dim=v.hidden, num_heads=v.heads, mlp_ratio=v.intermediate // v.hidden,
                  hidden_size=s.text.hidden)
    return _qwen(s, ids, vocab_size, vision)


def _qwen_separate_out(s: Sizes, **extra) -> dict:
    """Qwen2.5-VL and Qwen3-VL name the tower width `hidden_size` and the merger's output width `out_hidden_size`."""
    v = s.vision
    return dict(depth=v.layers, hidden_size=v.hidden, intermediate_size=v.intermediate, num_heads=v.heads,
                out_hidden_size=s.text.hidden, **extra)


def _qwen2_5_vl(s: Sizes, ids: Mapping[str, int], vocab_size: int) -> dict:
    # The last block attends over the whole image, as the released models' full-attention blocks do.
    vision = _qwen_separate_out(s, window_size=s.window_size, fullatt_block_indexes=[s.vision.layers - 1])
    return _qwen(s, ids, vocab_size, vision)


def _qwen3_vl(s: Sizes, ids: Mapping[str, int], vocab_size: int) -> dict:
    # A learned position grid with one entry per patch of a tile (resampled to each image's grid); one DeepStack level.
    vision = _qwen_separate_out(s, num_position_embeddings=s.patches_per_side**2, deepstack_visual_indexes=[0])
    return _qwen(s, ids, vocab_size, vision, text_extra=dict(head_dim=s.text.head_dim),
                 rope_extra=dict(mrope_interleaved=True))


def _pinpoints(s: Sizes) -> list[list[int]]:
    return [list(grid) for grid in s.grid_pinpoints]


# ---------------------------------------------------------------------------------------------------- processors
def _square(s: Sizes) -> dict:
    return {"height": s.image_size, "width": s.image_size}


def _clip_images(s: Sizes):
    return transformers.CLIPImageProcessorPil(size={"shortest_edge": s.image_size}, crop_size=_square(s))


def _llava_next_images(s: Sizes):
    return transformers.LlavaNextImageProcessorPil(size={"shortest_edge": s.image_size}, crop_size=_square(s),
                                                   image_grid_pinpoints=_pinpoints(s))


def _onevision_images(s: Sizes):
    return transformers.LlavaOnevisionImageProcessorPil(size=_square(s), image_grid_pinpoints=_pinpoints(s))


def _internvl_images(s: Sizes):
    # Up to `max_tiles` tiles of `image_size` px, plus a thumbnail tile when there is more than one.
    return transformers.GotOcr2ImageProcessorPil(size=_square(s), crop_to_patches=s.max_tiles > 1, min_patches=1,
                                                 max_patches=s.max_tiles)


def _qwen_images(s: Sizes):
    # Images are resized to multiples of patch * merge px with a pixel count in [min_pixels, max_pixels].
    return transformers.Qwen2VLImageProcessorPil(size={"shortest_edge": s.min_pixels, "longest_edge": s.max_pixels},
                                                 patch_size=s.patch, temporal_patch_size=s.temporal_patch,
                                                 merge_size=s.spatial_merge)


def _clip_llava_processor(s: Sizes) -> dict:
    # One placeholder per patch: the processor counts the CLS (num_additional_image_tokens) and drops it ("default").
    return dict(patch_size=s.patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)


def _onevision_processor(s: Sizes) -> dict:
    return dict(num_image_tokens=s.patches_per_side**2, vision_feature_select_strategy="full",
                vision_aspect_ratio="anyres_max_9")


# ---------------------------------------------------------------------------------------------------- the table
_LLAVA_TOKENS = {"image_token": "<image>"}
_QWEN_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}


def _qwen_recipe(name: str, config: Callable[[Sizes, Mapping[str, int], int], dict]) -> FamilyRecipe:
    return FamilyRecipe(model_class=f"{name}ForConditionalGeneration", config_class=f"{name}Config",
                        processor_class=f"{name}Processor", named_tokens=_QWEN_TOKENS, image_token="<|image_pad|>",
                        placeholder="<|vision_start|><|image_pad|><|vision_end|>", config=config,
                        image_processor=_qwen_images, takes_video=True)


#: Every supported family, by ``model.config.model_type``.
RECIPES: dict[str, FamilyRecipe] = {
    "internvl": FamilyRecipe(
        model_class="InternVLForConditionalGeneration", config_class="InternVLConfig",
        processor_class="InternVLProcessor",
        named_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                      "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        # the processor writes <img> + <IMG_CONTEXT> * tokens per tile * tiles + </img> for each placeholder
        image_token="<IMG_CONTEXT>", placeholder="<IMG_CONTEXT>",
        config=_internvl, image_processor=_internvl_images,
        processor_kwargs=lambda s: dict(image_seq_length=_internvl_tokens_per_tile(s)), takes_video=True),
    "llava": FamilyRecipe(
        model_class="LlavaForConditionalGeneration", config_class="LlavaConfig", processor_class="LlavaProcessor",
        named_tokens=_LLAVA_TOKENS, image_token="<image>", placeholder="<image>",
        config=_llava, image_processor=_clip_images, processor_kwargs=_clip_llava_processor),
    "llava_next": FamilyRecipe(
        model_class="LlavaNextForConditionalGeneration", config_class="LlavaNextConfig",
        processor_class="LlavaNextProcessor", named_tokens=_LLAVA_TOKENS, image_token="<image>", placeholder="<image>",
        config=_llava_next, image_processor=_llava_next_images, processor_kwargs=_clip_llava_processor),
    "llava_onevision": FamilyRecipe(
        model_class="LlavaOnevisionForConditionalGeneration", config_class="LlavaOnevisionConfig",
        processor_class="LlavaOnevisionProcessor", named_tokens={"image_token": "<image>", "video_token": "<video>"},
        image_token="<image>", placeholder="<image>",
        config=_llava_onevision, image_processor=_onevision_images, processor_kwargs=_onevision_processor,
        takes_video=True),
    "qwen2_vl": _qwen_recipe("Qwen2VL", _qwen2_vl),
    "qwen2_5_vl": _qwen_recipe("Qwen2_5_VL", _qwen2_5_vl),
    "qwen3_vl": _qwen_recipe("Qwen3VL", _qwen3_vl),
}
