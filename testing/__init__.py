"""Tiny random models of every supported family with their real processors, built in memory: what vtc's own tests
run on, and what a user's shape and mask property tests can run on too.

    model, processor = vtc.testing.make_tiny("llava_next")
    inputs = vtc.testing.tiny_batch("llava_next", processor, batch=2)
    model(**inputs)

Nothing is downloaded. The models are random (what they generate is noise); shapes, token counts, masks and cache
behaviour are those of the full-size checkpoints. Both are built from one
per-family recipe table (`RECIPES`) at their own sizes: the tiny zoo here, and the reference models
(`build_reference_model`), which `vtc.tasks.train_reference` trains and `vtc.tasks.reference_model` loads.
"""

from __future__ import annotations

from vtc.loading import processor_without_video

from .recipes import RECIPES, FamilyRecipe
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
    build_tiny_model,
    build_tiny_processor,
    image_placeholder,
    make_tiny,
    tiny_tokenizer,
)
from .tiny_inputs import ablation_image_sizes, default_image_sizes, tiny_batch, tiny_images
from .tiny_video import VIDEO_FAMILIES, tiny_video_batch
from .tokenizer import word_level_tokenizer

__all__ = [
    "IMAGE_TOKEN_IDS",
    "RECIPES",
    "REFERENCE_EOS_ID",
    "REFERENCE_FAMILIES",
    "REFERENCE_PAD_ID",
    "TINY_FAMILIES",
    "VIDEO_FAMILIES",
    "FamilyRecipe",
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
    "tiny_video_batch",
    "word_level_tokenizer",
]
