"""The tiny model zoo (`vtc.testing`): real processors and tiny models agree on every placeholder count."""

from __future__ import annotations

import socket

import pytest
import torch
import transformers
from transformers import ProcessorMixin

from vtc.testing import (
    IMAGE_TOKEN_IDS,
    TINY_FAMILIES,
    build_tiny_model,
    build_tiny_processor,
    default_image_sizes,
    image_placeholder,
    tiny_batch,
    tiny_images,
    tiny_tokenizer,
)

ATTN = ("sdpa", "eager")
PROCESSOR_CLASSES = {
    "internvl": "InternVLProcessor",
    "llava": "LlavaProcessor",
    "llava_next": "LlavaNextProcessor",
    "llava_onevision": "LlavaOnevisionProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}
# Families whose samples can have different visual-token counts in one batch (LLaVA-1.5 has one fixed resolution).
RAGGED_FAMILIES = {f for f in TINY_FAMILIES if f != "llava"}
NON_IMAGE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


@pytest.fixture(scope="module")
def zoo():
    """Builds each (family, attn) model and each family's processor once for the whole module."""
    models: dict[tuple[str, str], transformers.PreTrainedModel] = {}
    processors: dict[str, ProcessorMixin] = {}

    def get(family: str, attn: str):
        if (family, attn) not in models:
            models[family, attn] = build_tiny_model(family, attn)
        if family not in processors:
            processors[family] = build_tiny_processor(family)
        return models[family, attn], processors[family]

    return get


def features_per_image(family: str, model, processor, inputs, batch: int) -> list[int]:
    """The number of visual features the model produces for each image, from `get_image_features`."""
    image_kwargs = {k: v for k, v in inputs.items() if k not in NON_IMAGE_KEYS}
    with torch.no_grad():
        pooled = model.model.get_image_features(**image_kwargs).pooler_output
    if family == "internvl":
        # A 3-D tensor (tiles, tokens_per_tile, hidden); the image processor says how many tiles each image has.
        tiles = processor.image_processor(tiny_images(default_image_sizes(family, batch)))["num_patches"]
        assert pooled.ndim == 3 and pooled.shape[0] == sum(tiles)
        return [int(n) * pooled.shape[1] for n in tiles]
    # LLaVA family: a list of (n_i, hidden); Qwen: a tuple of (n_i, hidden).
    assert isinstance(pooled, (list, tuple)) and len(pooled) == batch
    return [f.shape[0] for f in pooled]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_processor_and_model_agree(zoo, family, attn, batch):
    model, processor = zoo(family, attn)
    assert model.config.model_type == family
    assert model.config._attn_implementation == attn
    assert model.config.image_token_id == IMAGE_TOKEN_IDS[family] == processor.image_token_id

    inputs = tiny_batch(family, processor, batch=batch)
    ids = inputs["input_ids"]
    assert ids.shape[0] == batch
    assert not (ids == tiny_tokenizer().unk_token_id).any(), "default prompts must be in the tiny vocabulary"

    # One image per sample: the placeholders in each row equal the features of that sample's image.
    placeholders = (ids == model.config.image_token_id).sum(-1).tolist()
    assert placeholders == features_per_image(family, model, processor, inputs, batch)
    if family.startswith("qwen"):
        assert torch.equal(inputs["mm_token_type_ids"], (ids == model.config.image_token_id).long())

    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert logits.shape == (batch, ids.shape[1], 256)
    assert torch.isfinite(logits).all()
    assert generated.shape == (batch, ids.shape[1] + 3)
    assert torch.equal(generated[:, : ids.shape[1]], ids)

    if batch == 2:
        mask = inputs["attention_mask"]
        lengths = mask.sum(-1).tolist()
        assert lengths[0] != lengths[1], "the two samples should have different lengths"
        short = lengths.index(min(lengths))
        assert mask[short, 0] == 0 and mask[short, -1] == 1, "padding must be on the left"
        if family in RAGGED_FAMILIES:
            assert placeholders[0] != placeholders[1]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_processor_is_the_real_class(family):
    processor = build_tiny_processor(family)
    assert type(processor) is getattr(transformers, PROCESSOR_CLASSES[family])
    assert type(processor.image_processor).__name__.endswith("Pil")
    # The construction workaround must not leave anything behind, on the instance or in transformers.
    assert "check_argument_for_proper_class" not in vars(processor)
    assert (
        ProcessorMixin.check_argument_for_proper_class.__qualname__ == "ProcessorMixin.check_argument_for_proper_class"
    )
    assert processor.tokenizer.padding_side == "left"



@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_chat_template_writes_the_family_placeholder(family):
    processor = build_tiny_processor(family)
    content = [{"type": "text", "text": "w1 "}, {"type": "image"}, {"type": "text", "text": " w2 ?"}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}])
    assert prompt == f"w1 {image_placeholder(family)} w2 ?"

def test_default_counts_and_bigger_qwen_grids():
    # The default batch-1 image gives the families' usual counts.
    expected = {"internvl": 16, "llava": 64, "llava_next": 234, "llava_onevision": 234}
    expected |= {f: 16 for f in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")}
    for family, n in expected.items():
        processor = build_tiny_processor(family)
        ids = tiny_batch(family, processor)["input_ids"]
        assert int((ids == IMAGE_TOKEN_IDS[family]).sum()) == n, family
    # Qwen grids grow with the image, up to 16x16 patches (64 tokens).
    processor = build_tiny_processor("qwen2_vl")
    out = tiny_batch("qwen2_vl", processor, batch=2, image_sizes=[(16, 16), (200, 200)])
    assert out["image_grid_thw"].tolist() == [[1, 4, 4], [1, 16, 16]]


def test_tokenizer():
    tok = tiny_tokenizer()
    assert len(tok) <= 256
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.padding_side == "left"
    ids = tok("w3 w7 <image> describe the image")["input_ids"]
    assert ids[2] == IMAGE_TOKEN_IDS["llava"] and tok.unk_token_id not in ids
    assert tok("<|image_pad|><|image_pad|>")["input_ids"] == [IMAGE_TOKEN_IDS["qwen2_vl"]] * 2
    internvl = tiny_tokenizer("internvl")
    assert internvl.context_image_token_id == IMAGE_TOKEN_IDS["internvl"]
    assert internvl.start_image_token == "<img>" and internvl.end_image_token == "</img>"


def test_unknown_family():
    for build in (build_tiny_model, build_tiny_processor, tiny_tokenizer, image_placeholder):
        with pytest.raises(ValueError, match="qwen3_vl"):
            build("blip")


def test_same_seed_same_weights_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = build_tiny_model("qwen2_vl", seed=3).state_dict()
    b = build_tiny_model("qwen2_vl", seed=3).state_dict()
    c = build_tiny_model("qwen2_vl", seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_images_are_deterministic():
    first, second = tiny_images([(40, 24), (8, 8)]), tiny_images([(40, 24), (8, 8)])
    assert [im.size for im in first] == [(40, 24), (8, 8)]
    assert all(im.mode == "RGB" for im in first)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(first, second, strict=True))


def test_no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for family in TINY_FAMILIES:
        model = build_tiny_model(family)
        inputs = tiny_batch(family, build_tiny_processor(family), batch=2)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
