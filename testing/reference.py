"""The reference models' recipes: per family, a tiny model of the real class and its real processor, built from
scratch (`vtc.tasks.train_reference` trains them; `vtc.tasks.reference_model` loads the trained ones).

The vocabulary is given: every word of the tasks' questions and answers (`vtc.tasks.vocabulary()`), so that this
module knows nothing of the tasks.

Each model is sized so that ONE visual token covers ONE 8-px cell of the synthetic tasks' 48 x 48 images (36 visual
tokens per image):

* LLaVA: CLIP 48 px, patch 8 -> 6 x 6 patches (+ CLS, dropped by the ``"default"`` strategy).
* Qwen2-VL: patch 4, spatial merge 2, temporal patch 2 -> 12 x 12 patches -> 6 x 6 merged tokens; the image
  processor's pixel bounds are 48 x 48 exactly, so an image keeps its size.
* Qwen2.5-VL and Qwen3-VL: as Qwen2-VL (patch 4, spatial merge 2, temporal patch 2, the same image processor);
  Qwen2.5-VL's window attention uses 16 px windows (2 x 2 merged tokens) with full attention in the last block,
  Qwen3-VL's learned position grid is 12 x 12 (one entry per patch) and it keeps one DeepStack level (block 0).
* InternVL: one 48 px tile (no tiling, no thumbnail), patch 4 -> 12 x 12 -> pixel shuffle 0.5 -> 6 x 6 tokens.

The tokenizer is word-level: every word of the tasks' questions and answers is one token, plus the special tokens the
family's processor needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vtc.errors import ConfigError
from vtc.loading import processor_without_video

from .tiny import word_level_tokenizer

__all__ = ["EOS_ID", "PAD_ID", "REFERENCE_FAMILIES", "build_reference_model", "build_reference_processor"]

#: The families with a reference recipe, in the order they were built.
REFERENCE_FAMILIES: tuple[str, ...] = ("llava", "qwen2_vl", "internvl", "qwen2_5_vl", "qwen3_vl")

IMAGE_SIZE = 48  # the synthetic tasks' images: 6 x 6 cells of 8 px

# ---------------------------------------------------------------------------------------------------- tokenizer
_BASE_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
_QWEN_SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
_FAMILY_SPECIALS: dict[str, dict[str, str]] = {
    "llava": {"image_token": "<image>"},
    "qwen2_vl": _QWEN_SPECIALS,
    "qwen2_5_vl": _QWEN_SPECIALS,
    "qwen3_vl": _QWEN_SPECIALS,
    "internvl": {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    },
}
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

# A chat template only where the family's prompt format needs more than the bare image token: Qwen writes each image
# between <|vision_start|> and <|vision_end|>, as the released checkpoints' template does.
_QWEN_TEMPLATE = (
    "{% for message in messages %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endfor %}"
)


def build_reference_tokenizer(family: str, words: Sequence[str]):
    """The word-level tokenizer of `family`: its special tokens (ids 0..), then `words`."""
    specials = (*_BASE_SPECIALS, *_FAMILY_SPECIALS[family].values())
    return word_level_tokenizer(specials, words, _FAMILY_SPECIALS[family], spaced_decoding=True)


# ---------------------------------------------------------------------------------------------------- model
_TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    tie_word_embeddings=False,
)
_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def _config(family: str, tokenizer) -> Any:
    import transformers as tf

    text = dict(_TEXT, vocab_size=len(tokenizer))
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _FAMILY_SPECIALS[family].items()}
    if family == "llava":
        return tf.LlavaConfig(
            vision_config=dict(_VISION, model_type="clip_vision_model", image_size=IMAGE_SIZE, patch_size=8,
                               projection_dim=64),
            text_config=dict(model_type="llama", **text),
            image_token_index=ids["image_token"],
            image_seq_length=(IMAGE_SIZE // 8) ** 2,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",  # drop CLS: 36 tokens, one per cell
            projector_hidden_act="gelu",
        )
    if family == "qwen2_vl":
        return tf.Qwen2VLConfig(
            vision_config=dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=2, hidden_size=text["hidden_size"],
                               patch_size=4, temporal_patch_size=2, spatial_merge_size=2, in_channels=3),
            # head_dim 32: the M-RoPE sections sum to 16
            text_config=dict(text, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                        mrope_section=[4, 6, 6])),
            image_token_id=ids["image_token"],
            video_token_id=ids["video_token"],
            vision_start_token_id=ids["vision_start_token"],
            vision_end_token_id=ids["vision_end_token"],
        )
    qwen_ids = dict(image_token_id=ids["image_token"], video_token_id=ids["video_token"],
                    vision_start_token_id=ids["vision_start_token"], vision_end_token_id=ids["vision_end_token"])
    # Qwen2.5-VL and Qwen3-VL name the tower width `hidden_size` and the merger's output width `out_hidden_size`
    qwen_vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=text["hidden_size"],
                       patch_size=4, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
    if family == "qwen2_5_vl":
        return tf.Qwen2_5_VLConfig(
            # 16 px windows: 16 / patch 4 / merge 2 = 2 x 2 merged tokens per window (3 x 3 windows per image); the
            # last block attends over the whole image, as the released models' full-attention blocks do
            vision_config=dict(qwen_vision, window_size=16, fullatt_block_indexes=[1]),
            text_config=dict(text, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                        mrope_section=[4, 6, 6])),
            **qwen_ids,
        )
    if family == "qwen3_vl":
        return tf.Qwen3VLConfig(
            # a learned 12 x 12 position grid (one entry per patch of a 48 px image); one DeepStack level
            vision_config=dict(qwen_vision, num_position_embeddings=(IMAGE_SIZE // 4) ** 2,
                               deepstack_visual_indexes=[0]),
            text_config=dict(text, head_dim=32, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                     mrope_section=[4, 6, 6],
                                                                     mrope_interleaved=True)),
            **qwen_ids,
        )
    if family == "internvl":
        return tf.InternVLConfig(
            vision_config=dict(_VISION, image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[4, 4]),
            text_config=dict(model_type="qwen2", **text),
            image_token_id=ids["context_image_token"],
            image_seq_length=36,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
    raise AssertionError(family)


_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
}


_QWEN_PROCESSORS = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}


def build_reference_processor(family: str, words: Sequence[str]):
    """The family's real processor class around its real (``*Pil``) image processor and the word-level tokenizer,
    writing 36 placeholders per 48 x 48 image."""
    import transformers as tf

    _check(family)
    tokenizer = build_reference_tokenizer(family, words)
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if family == "llava":
        image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
        return tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                 vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if family in _QWEN_PROCESSORS:
        pixels = IMAGE_SIZE * IMAGE_SIZE
        image_processor = tf.Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels},
                                                      patch_size=4, temporal_patch_size=2, merge_size=2)
        return processor_without_video(getattr(tf, _QWEN_PROCESSORS[family]), image_processor=image_processor,
                                       tokenizer=tokenizer, chat_template=_QWEN_TEMPLATE)
    image_processor = tf.GotOcr2ImageProcessorPil(size=square, crop_to_patches=False, min_patches=1, max_patches=1)
    return processor_without_video(tf.InternVLProcessor, image_processor=image_processor, tokenizer=tokenizer,
                                   image_seq_length=36)


def build_reference_model(family: str, words: Sequence[str], *, seed: int = 0) -> tuple[nn.Module, Any]:
    """A freshly initialised (untrained) model of `family` and its processor with the vocabulary `words`; the
    weights depend only on `seed`."""
    import transformers as tf

    _check(family)
    processor = build_reference_processor(family, words)
    config = _config(family, processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(tf, _CLASSES[family])._from_config(config, attn_implementation="sdpa")
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = EOS_ID, PAD_ID, BOS_ID
    gen.do_sample = False
    return model, processor


def _check(family: str) -> None:
    if family not in REFERENCE_FAMILIES:
        raise ConfigError("family", family, f"one of {', '.join(REFERENCE_FAMILIES)}")
