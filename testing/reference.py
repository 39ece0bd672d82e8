"""The reference models' recipes: per family, a small model of the real class and its real processor, built from
scratch (`vtc.tasks.train_reference` trains them; `vtc.tasks.reference_model` loads the trained ones).

They are the family recipes (:data:`vtc.testing.recipes.RECIPES`) at the reference sizes, which are data:
``reference_recipes.json`` holds the sizes the families share and, per family (in the order they were built), what it
changes. The vocabulary is given: every word of the tasks' questions and answers (`vtc.tasks.vocabulary()`), so that
this module knows nothing of the tasks.

Each model is sized so that ONE visual token covers ONE 8-px cell of the synthetic tasks' 48 x 48 images (36 visual
tokens per image):

* LLaVA: CLIP 48 px, patch 8 -> 6 x 6 patches (+ CLS, dropped by the ``"default"`` strategy).
* Qwen2-VL: patch 4, spatial merge 2, temporal patch 2 -> 12 x 12 patches -> 6 x 6 merged tokens; the image
  processor's pixel bounds are 48 x 48 exactly, so an image keeps its size.
* Qwen2.5-VL and Qwen3-VL: as Qwen2-VL (patch 4, spatial merge 2, temporal patch 2, the same image processor);
  Qwen2.5-VL's window attention uses 16 px windows (2 x 2 merged tokens) with full attention in the last block,
  Qwen3-VL's learned position grid is 12 x 12 (one entry per patch) and it keeps one DeepStack level (block 0).
* InternVL: one 48 px tile (no tiling, no thumbnail), patch 4 -> 12 x 12 -> pixel shuffle 0.5 -> 6 x 6 tokens.

The tokenizer is word-level: every word of the tasks' questions and answers is one token, after the special tokens
the family's processor needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from vtc.errors import ConfigError

from .recipes import RECIPES, FamilyRecipe, SizeTable, build_model, build_processor, chat_template, token_ids
from .tokenizer import BASE_SPECIALS, EOS_ID, PAD_ID, word_level_tokenizer

__all__ = [
    "EOS_ID",
    "PAD_ID",
    "REFERENCE_FAMILIES",
    "REFERENCE_SIZES",
    "build_reference_model",
    "build_reference_processor",
    "build_reference_tokenizer",
]

#: The reference sizes of each family with a reference recipe.
REFERENCE_SIZES = SizeTable.from_json(Path(__file__).with_name("reference_recipes.json"))

#: The families with a reference recipe, in the order they were built.
REFERENCE_FAMILIES: tuple[str, ...] = tuple(REFERENCE_SIZES.per_family)


def _specials(recipe: FamilyRecipe) -> tuple[str, ...]:
    return (*BASE_SPECIALS, *recipe.named_tokens.values())


def build_reference_tokenizer(family: str, words: Sequence[str]):
    """The word-level tokenizer of `family`: its special tokens (ids 0..), then `words`."""
    recipe = _recipe(family)
    return word_level_tokenizer(_specials(recipe), words, recipe.named_tokens, spaced_decoding=True)


def build_reference_processor(family: str, words: Sequence[str]):
    """The family's real processor class around its real (``*Pil``) image processor and the word-level tokenizer,
    writing 36 placeholders per 48 x 48 image."""
    recipe = _recipe(family)
    # A chat template only where the family's prompt format needs more than the bare image token: Qwen writes each
    # image between <|vision_start|> and <|vision_end|>, as the released checkpoints' template does.
    template = chat_template(recipe.placeholder) if recipe.placeholder != recipe.image_token else None
    return build_processor(recipe, REFERENCE_SIZES[family], build_reference_tokenizer(family, words),
                           template=template)


def build_reference_model(family: str, words: Sequence[str], *, seed: int = 0) -> tuple[nn.Module, Any]:
    """A freshly initialised (untrained) model of `family` and its processor with the vocabulary `words`; the
    weights depend only on `seed`."""
    recipe = _recipe(family)
    processor = build_reference_processor(family, words)
    model = build_model(recipe, REFERENCE_SIZES[family], ids=token_ids(recipe, _specials(recipe)),
                        vocab_size=len(processor.tokenizer), attn_implementation="sdpa", seed=seed)
    model.generation_config.do_sample = False
    return model, processor


def _recipe(family: str) -> FamilyRecipe:
    if family not in REFERENCE_FAMILIES:
        raise ConfigError("family", family, f"one of {', '.join(REFERENCE_FAMILIES)}")
    return RECIPES[family]
