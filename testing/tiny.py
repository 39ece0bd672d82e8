"""Tiny random multimodal models with real Hugging Face processors, built in memory for seven families.

Everything here is built offline, with nothing downloaded:

* :func:`tiny_tokenizer` builds a word-level tokenizer (vocabulary of at most 256) from the ``tokenizers`` library.
* :func:`build_tiny_model` builds an ``XXXForConditionalGeneration`` from a tiny config with random weights
  (text hidden 64, 4 decoder layers, vision hidden 32, patch 4).
* :func:`build_tiny_processor` builds the family's real processor class around the ``*Pil`` image processors, set
  up so that the placeholder counts it writes into ``input_ids`` match the tiny model's visual-feature counts.
* :func:`tiny_images` and :func:`tiny_batch` make deterministic inputs that go straight into ``model(**inputs)`` and
  ``model.generate(**inputs)``.

The test suite uses these, and so does the embedded default of ``vtc ablate``. The models are random, so what they
generate is noise. Shapes, token counts, masks and cache behaviour are the same as in the full-size checkpoints.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

from vtc.loading import processor_without_video

__all__ = [
    "IMAGE_TOKEN_IDS",
    "TINY_FAMILIES",
    "ablation_image_sizes",
    "build_tiny_model",
    "build_tiny_processor",
    "default_image_sizes",
    "image_placeholder",
    "make_tiny",
    "tiny_batch",
    "tiny_images",
    "tiny_tokenizer",
    "word_level_tokenizer",
]

#: The families supported here, named by ``model.config.model_type``.
TINY_FAMILIES: tuple[str, ...] = (
    "internvl",
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
)

# ---------------------------------------------------------------------------------------------------- tokenizer
# Special and placeholder tokens get fixed ids, which are the first ids of the vocabulary. The model configs use the
# same ids, so the processor and the model agree on every placeholder.
_SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",  # 0
    "<s>",  # 1
    "</s>",  # 2
    "<unk>",  # 3
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
_TOK = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
PAD_ID, BOS_ID, EOS_ID = _TOK["<pad>"], _TOK["<s>"], _TOK["</s>"]

_WORDS: tuple[str, ...] = (
    *(f"w{i}" for i in range(200)),
    *"a an the this that is are of in on with and what how many there it".split(),
    *"describe image picture photo cat dog red blue green small big color caption question answer user".split(),
    *". , ? ! :".split(),
)

VOCAB_SIZE = 256

#: Per family: the token string the family's processor expands, and its id (``config.image_token_id``).
IMAGE_TOKEN_IDS: dict[str, int] = {
    "internvl": _TOK["<IMG_CONTEXT>"],
    "llava": _TOK["<image>"],
    "llava_next": _TOK["<image>"],
    "llava_onevision": _TOK["<image>"],
    "qwen2_vl": _TOK["<|image_pad|>"],
    "qwen2_5_vl": _TOK["<|image_pad|>"],
    "qwen3_vl": _TOK["<|image_pad|>"],
}

_QWEN_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
# The named multimodal tokens each family's processor reads from its tokenizer, as in the released checkpoints.
_FAMILY_TOKENS: dict[str, dict[str, str]] = {
    "internvl": {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    },
    "llava": {"image_token": "<image>"},
    "llava_next": {"image_token": "<image>"},
    "llava_onevision": {"image_token": "<image>", "video_token": "<video>"},
    "qwen2_vl": _QWEN_TOKENS,
    "qwen2_5_vl": _QWEN_TOKENS,
    "qwen3_vl": _QWEN_TOKENS,
}


def _check_family(model_type: str) -> None:
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
    if model_type is not None:
        _check_family(model_type)
    assert len(_SPECIAL_TOKENS) + len(_WORDS) <= VOCAB_SIZE, "tiny vocabulary must fit vocab_size"
    return word_level_tokenizer(_SPECIAL_TOKENS, _WORDS, _FAMILY_TOKENS.get(model_type, {}))


def word_level_tokenizer(specials: Sequence[str], words: Sequence[str], named_tokens: dict[str, str], *,
                         spaced_decoding: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: `specials` (starting with ``<pad> <s> </s> <unk>``) take ids 0.., then `words`.

    Text is split on whitespace and punctuation; `named_tokens` become the tokenizer's named multimodal tokens
    (``tokenizer.image_token`` and so on). With `spaced_decoding`, decoding joins words with single spaces. Padding is
    on the left, for batched generation; no BOS is added.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate((*specials, *words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if spaced_decoding:
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=dict(named_tokens),
        padding_side="left",
        model_max_length=512,
    )


# ---------------------------------------------------------------------------------------------------- models
_IMAGE_SIZE = 32  # vision-tower input (one tile / crop) in pixels
_PATCH = 4  # vision patch size: 8x8 patches per 32 px tile
_PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # LLaVA-NeXT / OneVision anyres grids, as (height, width)
_MERGE = 2  # Qwen spatial merge
_TEMPORAL = 2  # Qwen temporal patch
_QWEN_MIN_PIXELS = 16 * 16  # 4x4 patches, 4 tokens
_QWEN_MAX_PIXELS = 64 * 64  # 16x16 patches, 64 tokens
_INTERNVL_MAX_TILES = 4

_TEXT = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
)
# mrope_section sums to head_dim / 2 = 8
_QWEN_ROPE = dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3])
_QWEN_IDS = dict(
    image_token_id=_TOK["<|image_pad|>"],
    video_token_id=_TOK["<|video_pad|>"],
    vision_start_token_id=_TOK["<|vision_start|>"],
    vision_end_token_id=_TOK["<|vision_end|>"],
)
_QWEN_VISION = dict(
    depth=2,
    num_heads=2,
    patch_size=_PATCH,
    temporal_patch_size=_TEMPORAL,
    spatial_merge_size=_MERGE,
    in_channels=3,
)
# Qwen2.5-VL and Qwen3-VL name the tower width `hidden_size` and the merger's output width `out_hidden_size`.
_QWEN_SEPARATE_OUT_VISION = dict(_QWEN_VISION, hidden_size=32, intermediate_size=64, out_hidden_size=64)


# The ViT size shared by the CLIP (LLaVA, LLaVA-NeXT) and SigLIP (OneVision) towers.
_VIT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=_IMAGE_SIZE,
    patch_size=_PATCH,
)


def _clip_vision() -> dict:
    return dict(_VIT, model_type="clip_vision_model", projection_dim=32)


def _clip_llava_kwargs(model_type: str) -> dict:
    """What LLaVA-1.5 and LLaVA-NeXT share: CLIP, a Llama decoder, the penultimate layer without CLS."""
    return dict(
        vision_config=_clip_vision(),
        text_config=dict(model_type="llama", **_TEXT),
        image_token_index=IMAGE_TOKEN_IDS[model_type],
        image_seq_length=64,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def _tiny_config(model_type: str):
    import transformers as tf

    if model_type == "internvl":
        # 32 px tile, patch 4 -> 8x8 patches (+CLS, dropped) -> pixel shuffle 0.5 -> 4x4 = 16 tokens per tile.
        return tf.InternVLConfig(
            vision_config=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=[_IMAGE_SIZE, _IMAGE_SIZE],
                patch_size=[_PATCH, _PATCH],
            ),
            text_config=dict(model_type="qwen2", **_TEXT),
            image_token_id=IMAGE_TOKEN_IDS["internvl"],
            image_seq_length=16,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
    if model_type == "llava":
        # CLIP 32 px, patch 4 -> 8x8 = 64 tokens (CLS dropped by the "default" strategy).
        return tf.LlavaConfig(**_clip_llava_kwargs("llava"), projector_hidden_act="gelu")
    if model_type == "llava_next":
        return tf.LlavaNextConfig(**_clip_llava_kwargs("llava_next"), image_grid_pinpoints=_PINPOINTS)
    if model_type == "llava_onevision":
        # SigLIP has no CLS token, so the select strategy is "full".
        return tf.LlavaOnevisionConfig(
            vision_config=dict(_VIT, model_type="siglip_vision_model"),
            text_config=dict(model_type="qwen2", **_TEXT),
            image_token_index=IMAGE_TOKEN_IDS["llava_onevision"],
            video_token_index=_TOK["<video>"],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            image_grid_pinpoints=_PINPOINTS,
            vision_aspect_ratio="anyres_max_9",
        )
    if model_type == "qwen2_vl":
        return tf.Qwen2VLConfig(
            # vision hidden_size is the merger's output width, which must equal the LLM hidden size
            vision_config=dict(_QWEN_VISION, embed_dim=32, hidden_size=64, mlp_ratio=2),
            text_config=dict(_TEXT, rope_parameters=_QWEN_ROPE),
            **_QWEN_IDS,
        )
    if model_type == "qwen2_5_vl":
        return tf.Qwen2_5_VLConfig(
            vision_config=dict(
                _QWEN_SEPARATE_OUT_VISION,
                window_size=16,  # 16 px / patch 4 / merge 2 = 2x2 merged tokens per attention window
                fullatt_block_indexes=[1],
            ),
            text_config=dict(_TEXT, rope_parameters=_QWEN_ROPE),
            **_QWEN_IDS,
        )
    if model_type == "qwen3_vl":
        return tf.Qwen3VLConfig(
            vision_config=dict(
                _QWEN_SEPARATE_OUT_VISION,
                num_position_embeddings=64,  # learned 8x8 position grid, resampled to each image's grid
                deepstack_visual_indexes=[0],
            ),
            text_config=dict(_TEXT, head_dim=16, rope_parameters=dict(_QWEN_ROPE, mrope_interleaved=True)),
            **_QWEN_IDS,
        )
    raise AssertionError(model_type)  # unreachable: callers check the family first


_MODEL_CLASSES = {
    "internvl": "InternVLForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}


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
    import transformers as tf

    _check_family(model_type)
    cfg = _tiny_config(model_type)
    model_cls = getattr(tf, _MODEL_CLASSES[model_type])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls._from_config(cfg, attn_implementation=attn_implementation)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = EOS_ID, PAD_ID, BOS_ID
    return model.eval()


# ---------------------------------------------------------------------------------------------------- processors
def _image_processor(model_type: str):
    import transformers as tf

    square = {"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}
    if model_type == "internvl":
        # Images are cut into up to 4 tiles of 32 px, plus a thumbnail tile when there is more than one tile.
        return tf.GotOcr2ImageProcessorPil(
            size=square, crop_to_patches=True, min_patches=1, max_patches=_INTERNVL_MAX_TILES
        )
    if model_type == "llava":
        return tf.CLIPImageProcessorPil(size={"shortest_edge": _IMAGE_SIZE}, crop_size=square)
    if model_type == "llava_next":
        return tf.LlavaNextImageProcessorPil(
            size={"shortest_edge": _IMAGE_SIZE}, crop_size=square, image_grid_pinpoints=_PINPOINTS
        )
    if model_type == "llava_onevision":
        return tf.LlavaOnevisionImageProcessorPil(size=square, image_grid_pinpoints=_PINPOINTS)
    # Qwen: images are resized to multiples of patch*merge = 8 px with a pixel count in [16², 64²], so a 32x32 image
    # gives an 8x8 patch grid (16 tokens) and the largest images a 16x16 grid (64 tokens).
    return tf.Qwen2VLImageProcessorPil(
        size={"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS},
        patch_size=_PATCH,
        temporal_patch_size=_TEMPORAL,
        merge_size=_MERGE,
    )


def build_tiny_processor(model_type: str) -> ProcessorMixin:
    """Build the family's real processor around the ``*Pil`` image processor and :func:`tiny_tokenizer`.

    Its placeholder expansion matches :func:`build_tiny_model` for the same family:

    * InternVL: 16 ``<IMG_CONTEXT>`` per 32 px tile, between ``<img>`` and ``</img>``.
    * LLaVA: 64 per image.
    * LLaVA-NeXT and OneVision: anyres over ``[[32, 64], [64, 32], [64, 64]]``.
    * Qwen: ``grid_t * grid_h * grid_w / 4``, plus ``mm_token_type_ids``.

    Families with a video processor (InternVL, OneVision, Qwen) get none (:func:`processor_without_video`), so they
    take images only. Every family's processor saves with ``save_pretrained``; ``vtc.loading.load_processor`` loads it.
    Its chat template writes each image's placeholder as the family's own template does, then the text.

    Raises:
        ValueError: if ``model_type`` is not one of ``TINY_FAMILIES``.
    """
    _check_family(model_type)
    processor = _bare_processor(model_type)
    processor.chat_template = _chat_template(model_type)
    return processor


def _chat_template(model_type: str) -> str:
    """A minimal chat template: the images' placeholders as the family's own template writes them, then the text.

    Prompts built from messages (`vtc.tasks.build_prompt`, `vtc.bench.example_inputs`) then carry what the family
    needs around each image (Qwen's M-RoPE index looks for the vision start token).
    """
    image = image_placeholder(model_type)
    return ("{% for message in messages %}{% for item in message['content'] %}"
            f"{{% if item['type'] == 'image' %}}{image}{{% else %}}{{{{ item['text'] }}}}{{% endif %}}"
            "{% endfor %}{% endfor %}")


def _bare_processor(model_type: str) -> ProcessorMixin:
    import transformers as tf

    common = dict(image_processor=_image_processor(model_type), tokenizer=tiny_tokenizer(model_type))
    if model_type == "llava":
        return tf.LlavaProcessor(
            **common, patch_size=_PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1
        )
    if model_type == "llava_next":
        return tf.LlavaNextProcessor(
            **common, patch_size=_PATCH, vision_feature_select_strategy="default", num_additional_image_tokens=1
        )
    if model_type == "llava_onevision":
        return processor_without_video(
            tf.LlavaOnevisionProcessor,
            **common,
            num_image_tokens=(_IMAGE_SIZE // _PATCH) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
        )
    if model_type == "internvl":
        return processor_without_video(tf.InternVLProcessor, **common, image_seq_length=16)
    cls = {"qwen2_vl": tf.Qwen2VLProcessor, "qwen2_5_vl": tf.Qwen2_5_VLProcessor, "qwen3_vl": tf.Qwen3VLProcessor}
    return processor_without_video(cls[model_type], **common)


# ---------------------------------------------------------------------------------------------------- inputs
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
    _check_family(model_type)
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
    _check_family(model_type)
    return [*_DEFAULT_SIZES[model_type], *_MORE_ABLATION_SIZES[model_type]]


_DEFAULT_PROMPTS = ("w3 w7 {image} describe the image .", "what is in this picture ? w11 w12 w13 {image} w5 w8 w9 .")


def image_placeholder(model_type: str) -> str:
    # What the families' chat templates write for one image; the processor expands the image token in it.
    if model_type.startswith("qwen"):
        return "<|vision_start|><|image_pad|><|vision_end|>"
    if model_type == "internvl":
        return "<IMG_CONTEXT>"  # expanded to <img> + <IMG_CONTEXT> * 16 * tiles + </img>
    return "<image>"


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
        processor: from :func:`build_tiny_processor` (or a patched one).
        batch: the number of samples. The default prompts of batch 2 have different lengths, so the shorter
            sample is left-padded. Its default images have different sizes where the family can give them
            different visual-token counts (all but LLaVA-1.5).
        image_sizes: ``(width, height)`` of each sample's image. Defaults per family.
        prompt: one prompt for every sample, or one per sample. ``{image}`` marks where the image goes. Without it,
            the image comes first.

    The result can be passed as ``model(**inputs)`` and ``model.generate(**inputs, ...)``.
    """
    _check_family(model_type)
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
