"""Tiny random models of every supported family with their real processors, built in memory: what vtc's own tests
run on, and what a user's shape and mask property tests can run on too.

    model, processor = vtc.testing.make_tiny("llava_next")
    inputs = vtc.testing.tiny_batch("llava_next", processor, batch=2)
    model(**inputs)

Nothing is downloaded. The models are random (what they generate is noise); shapes, token counts, masks and cache
behaviour are those of the full-size checkpoints. The reference models' recipes (`build_reference_model`) live here
too: `vtc.tasks.train_reference` trains them and `vtc.tasks.reference_model` loads the trained ones.
"""

from __future__ import annotations

from vtc.loading import processor_without_video

from .reference import EOS_ID as REFERENCE_EOS_ID
from .reference import PAD_ID as REFERENCE_PAD_ID
from .reference import (
    REFERENCE_FAMILIES,
    build_reference_model,
    build_reference_processor,
    build_reference_tokenizer,
)
from .tiny import (
    IMAGE_TOKEN_IDS,
    TINY_FAMILIES,
    ablation_image_sizes,
    build_tiny_model,
    build_tiny_processor,
    default_image_sizes,
    image_placeholder,
    make_tiny,
    tiny_batch,
    tiny_images,
    tiny_tokenizer,
    word_level_tokenizer,
)

__all__ = [
    "IMAGE_TOKEN_IDS",
    "REFERENCE_EOS_ID",
    "REFERENCE_FAMILIES",
    "REFERENCE_PAD_ID",
    "TINY_FAMILIES",
    "ablation_image_sizes",
    "build_reference_model",
    "build_reference_processor",
    "build_reference_tokenizer",
    "build_tiny_model",
    "build_tiny_processor",
    "default_image_sizes",
    "image_placeholder",
    "make_tiny",
    "processor_without_video",
    "tiny_batch",
    "tiny_images",
    "tiny_tokenizer",
    "word_level_tokenizer",
]
