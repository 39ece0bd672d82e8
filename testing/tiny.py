"""Tiny random multimodal models with real Hugging Face processors, built in memory for seven families.

They are the family recipes (:data:`vtc.testing.recipes.RECIPES`) at the tiny sizes (:data:`TINY_SIZES`), with
nothing downloaded:

* :func:`tiny_tokenizer` builds a word-level tokenizer (vocabulary of at most 256) from the ``tokenizers`` library.
* :func:`build_tiny_model` builds an ``XXXForConditionalGeneration`` from a tiny config with random weights
  (text hidden 64, 4 decoder layers, vision hidden 32, patch 4).
* :func:`build_tiny_processor` builds the family's real processor class around the ``*Pil`` image processors, set
  up so that the placeholder counts it writes into ``input_ids`` match the tiny model's visual-feature counts.
* :func:`~vtc.testing.tiny_inputs.tiny_images` and :func:`~vtc.testing.tiny_inputs.tiny_batch` make deterministic
  inputs that go straight into ``model(**inputs)`` and ``model.generate(**inputs)``.

The test suite uses these, and so does the embedded default of ``vtc ablate``. The models are random, so what they
generate is noise. Shapes, token counts, masks and cache behaviour are the same as in the full-size checkpoints.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

from .recipes import (
    RECIPES,
    Sizes,
    SizeTable,
    TextSizes,
    VisionSizes,
    build_model,
    build_processor,
    chat_template,
    token_ids,
)
from .tokenizer import BASE_SPECIALS, word_level_tokenizer

__all__ = [
    "IMAGE_TOKEN_IDS",
    "TINY_FAMILIES",
    "TINY_SIZES",
    "build_tiny_model",
    "build_tiny_processor",
    "check_tiny_family",
    "image_placeholder",
    "make_tiny",
    "tiny_tokenizer",
]

#: The families supported here, named by ``model.config.model_type``.
TINY_FAMILIES: tuple[str, ...] = tuple(RECIPES)

# ---------------------------------------------------------------------------------------------------- tokenizer
# Special and placeholder tokens get fixed ids, which are the first ids of the vocabulary. The model configs use the
# same ids, so the processor and the model agree on every placeholder.
_SPECIAL_TOKENS: tuple[str, ...] = (
    *BASE_SPECIALS,  # 0-3: <pad> <s> </s> <unk>
    "<image>",  # 4   LLaVA / LLaVA-NeXT / LLaVA-OneVision image placeholder
    "<video>",  # 5   LLaVA-OneVision / InternVL video placeholder
    "<img>",  # 6   InternVL image start
    "</img>",  # 7   InternVL image end
    "<IMG_CONTEXT>",  # 8   InternVL image placeholder
    "<|vision_start|>",  # 9   Qwen
    "<|vision_end|>",  # 10  Qwen
    "<|image_pad|>",  # 11  Qwen image placeholder
    "<|video_pad|>",  # 12  Qwen video placeholder
)

_WORDS: tuple[str, ...] = (
    *(f"w{i}" for i in range(200)),
    *"a an the this that is are of in on with and what how many there it".split(),
    *"describe image picture photo cat dog red blue green small big color caption question answer user".split(),
    *". , ? ! :".split(),
)

VOCAB_SIZE = 256

#: Per family: the id of the token the family's processor expands (``config.image_token_id``).
IMAGE_TOKEN_IDS: dict[str, int] = {
    family: _SPECIAL_TOKENS.index(recipe.image_token) for family, recipe in RECIPES.items()
}


def check_tiny_family(model_type: str) -> None:
    """Raise ``ValueError`` (naming the tiny families) unless `model_type` is one of them."""
    if model_type not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny model_type {model_type!r}; expected one of {', '.join(TINY_FAMILIES)}")


def tiny_tokenizer(model_type: str | None = None) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer in memory.

    The vocabulary has the special and placeholder tokens of all seven families (ids 0-12: ``<pad>`` 0, ``<s>`` 1,
    ``</s>`` 2, ``<unk>`` 3, ``<image>``, ``<video>``, ``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ``<|vision_start|>``,
    ``<|vision_end|>``, ``<|image_pad|>``, ``<|video_pad|>``). It also has the words ``w0`` to ``w199``, some English
    words and punctuation. Text is split on whitespace and punctuation, and words outside the vocabulary become
    ``<unk>``. Placeholder tokens are matched even without spaces between them (``<image><image>``).

    Args:
        model_type: if given, the tokenizer also carries the named multimodal tokens that this family's processor
            reads (``tokenizer.image_token`` and so on), as the released checkpoints' tokenizers do.

    Padding is on the left, for batched generation. No BOS is added.
    """
    named_tokens = {}
    if model_type is not None:
        check_tiny_family(model_type)
        named_tokens = RECIPES[model_type].named_tokens
    assert len(_SPECIAL_TOKENS) + len(_WORDS) <= VOCAB_SIZE, "tiny vocabulary must fit vocab_size"
    return word_level_tokenizer(_SPECIAL_TOKENS, _WORDS, named_tokens)


# ---------------------------------------------------------------------------------------------------- sizes
#: The tiny sizes of every family.
TINY_SIZES = SizeTable(
    Sizes(
        image_size=32,  # one tile / crop; patch 4 -> 8x8 patches
        patch=4,
        text=TextSizes(hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2, max_positions=512),
        vision=VisionSizes(hidden=32, intermediate=64, layers=2, heads=2),
        vision_feature_layer=-1,
        max_tiles=4,  # InternVL: up to 2x2 tiles of 32 px, plus the thumbnail
        # Qwen: a 32x32 image gives an 8x8 patch grid (16 tokens), the largest images a 16x16 grid (64 tokens)
        min_pixels=16 * 16,
        max_pixels=64 * 64,
        spatial_merge=2,
        temporal_patch=2,
        window_size=16,  # Qwen2.5-VL: 16 px / patch 4 / merge 2 = 2x2 merged tokens per attention window
        grid_pinpoints=((32, 64), (64, 32), (64, 64)),
    ),
    # LLaVA-1.5 and LLaVA-NeXT read the penultimate CLIP layer, as their released checkpoints do.
    {"llava": {"vision_feature_layer": -2}, "llava_next": {"vision_feature_layer": -2}},
)


# ---------------------------------------------------------------------------------------------------- builders
def make_tiny(model_type: str, attn_implementation: str = "sdpa", *, seed: int = 0) -> tuple[PreTrainedModel,
                                                                                               ProcessorMixin]:
    """A tiny random model of the family ``model_type`` (:func:`build_tiny_model`) and its real processor
    (:func:`build_tiny_processor`), whose placeholder counts match the model's visual features."""
    return build_tiny_model(model_type, attn_implementation, seed=seed), build_tiny_processor(model_type)


def build_tiny_model(model_type: str, attn_implementation: str = "sdpa", *, seed: int = 0) -> PreTrainedModel:
    """Build a tiny ``XXXForConditionalGeneration`` with random weights, in eval mode.

    The text model has hidden size 64, 4 layers, 4 query and 2 key/value heads, and a vocabulary of 256. The vision
    tower has hidden size 32, 2 layers and patch size 4. The placeholder ids are those of :func:`tiny_tokenizer`
    (see ``IMAGE_TOKEN_IDS``). Weights depend only on ``seed``.

    Raises:
        ValueError: if ``model_type`` is not one of ``TINY_FAMILIES``.
    """
    check_tiny_family(model_type)
    recipe = RECIPES[model_type]
    model = build_model(recipe, TINY_SIZES[model_type], ids=token_ids(recipe, _SPECIAL_TOKENS), vocab_size=VOCAB_SIZE,
                        attn_implementation=attn_implementation, seed=seed)
    return model.eval()


def build_tiny_processor(model_type: str) -> ProcessorMixin:
    """Build the family's real processor around the ``*Pil`` image processor and :func:`tiny_tokenizer`.

    Its placeholder expansion matches :func:`build_tiny_model` for the same family:

    * InternVL: 16 ``<IMG_CONTEXT>`` per 32 px tile, between ``<img>`` and ``</img>``.
    * LLaVA: 64 per image.
    * LLaVA-NeXT and OneVision: anyres over ``[[32, 64], [64, 32], [64, 64]]``.
    * Qwen: ``grid_t * grid_h * grid_w / 4``, plus ``mm_token_type_ids``.

    Families with a video processor (InternVL, OneVision, Qwen) get none (``processor_without_video``), so they
    take images only. Every family's processor saves with ``save_pretrained``; ``vtc.loading.load_processor`` loads it.
    Its chat template writes each image's placeholder as the family's own template does, then the text.

    Raises:
        ValueError: if ``model_type`` is not one of ``TINY_FAMILIES``.
    """
    check_tiny_family(model_type)
    recipe = RECIPES[model_type]
    return build_processor(recipe, TINY_SIZES[model_type], tiny_tokenizer(model_type),
                           template=chat_template(recipe.placeholder))


def image_placeholder(model_type: str) -> str:
    """What the family's chat template writes for one image; the processor expands the image token in it."""
    check_tiny_family(model_type)
    return RECIPES[model_type].placeholder
