"""PVTC on every family: counts agree on both sides, generate works, warm ratio=1 is the unpatched model, only vtc_
parameters train, unpatch restores everything, and bad input fails clearly."""

import math

import pytest
import torch

import vtc
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, default_image_sizes, tiny_batch

ATTENTION = ("sdpa", "eager")


def features_per_image(model, inputs):
    """Visual tokens per image as the patched model produces them (what `forward` scatters into placeholders)."""
    base = model.model
    kwargs = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes", "image_grid_thw",
                                                       "batch_num_images")}
    with torch.no_grad():
        pooled = base.get_image_features(**kwargs, return_dict=True).pooler_output
    if isinstance(pooled, torch.Tensor):  # one row per tile
        return [row.shape[0] for row in pooled]
    return [t.shape[0] for t in pooled]


def placeholder_runs(input_ids, image_token):
    """Lengths of the consecutive runs of image placeholders, in batch order."""
    runs = []
    for row in input_ids.tolist():
        run = 0
        for token in row + [None]:
            if token == image_token:
                run += 1
            elif run:
                runs.append(run)
                run = 0
    return runs


def uncompressed(family, attn="sdpa"):
    """A tiny model, its processor, a batch of 2 and the model's logits on it before any compression."""
    model = build_tiny_model(family, attn)
    processor = build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    with torch.no_grad():
        return model, processor, inputs, model(**inputs).logits


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_counts_agree_generate_works_and_unpatch_restores(family, attn):
    model, processor, reference_inputs, reference = uncompressed(family, attn)
    native_counts = {batch: features_per_image(model, tiny_batch(family, processor, batch=batch)) for batch in (1, 2)}

    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    for batch in (1, 2):  # batch 2 holds two images of different sizes wherever the family allows it
        inputs = tiny_batch(family, processor, batch=batch)
        counts = features_per_image(model, inputs)
        image_token = model.config.image_token_id
        runs = placeholder_runs(inputs["input_ids"], image_token)
        if family == "internvl":  # a run holds all tiles of one image
            assert sum(runs) == sum(counts) and len(set(counts)) == 1
        else:
            assert runs == counts
        assert sum(counts) * 3 <= sum(native_counts[batch])  # ratio 4 with ragged edges: well under a third
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert out.shape == (batch, inputs["input_ids"].shape[1] + 3)
        assert vtc.last_stats(model)["visual_tokens"] == (inputs["input_ids"] == image_token).sum(1).tolist()

    vtc.unpatch(model)
    assert all("vtc_" not in name for name, _ in model.named_parameters())
    assert tiny_batch(family, processor, batch=2)["input_ids"].equal(reference_inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**reference_inputs).logits, reference)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_warm_ratio_1_reproduces_the_unpatched_model(family, attn):
    model, processor, inputs, reference = uncompressed(family, attn)
    reference_generation = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=1, init="warm")), processor=processor)
    assert tiny_batch(family, processor, batch=2)["input_ids"].equal(inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False),
                       reference_generation)


# Qwen: three images of different, small grids. A matrix product's last bits depend on how many rows it multiplies at
# once, and the model runs its merger (and each DeepStack merger) once over every image: PVTC's copy must too.
SMALL_IMAGES = {"qwen2_vl": [(16, 16), (16, 24), (24, 16)], "qwen2_5_vl": [(16, 16), (16, 24), (24, 16)],
                "qwen3_vl": [(16, 16), (16, 24), (24, 16)]}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_warm_ratio_1_is_exact_for_images_of_several_sizes(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    sizes = SMALL_IMAGES.get(family) or default_image_sizes(family, 3)
    inputs = tiny_batch(family, processor, batch=3, image_sizes=sizes)
    with torch.no_grad():
        reference = model(**inputs).logits
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=1, init="warm")), processor=processor)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_gradients_reach_only_vtc_parameters(family, attn):
    model = build_tiny_model(family, attn)
    processor = build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    trainable = vtc.mark_only_vtc_trainable(model)
    assert trainable and all("vtc_" in name for name in trainable)
    model.train()
    inputs = tiny_batch(family, processor, batch=2)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable)
    # the warm start's zero-initialised weights still learn: their gradients are not zero
    learning = ("global_scale", "local_block.o_proj.weight", "local_block.down_proj.weight", "global_block.o_proj.weight")
    grads = {name: p.grad for name, p in model.named_parameters() if name.endswith(learning)}
    assert len(grads) == len(learning) and all(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_positions_span_the_pooled_grid(family):
    model = build_tiny_model(family)
    processor = build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    inputs = tiny_batch(family, processor, batch=2, image_sizes=[(56, 40), (56, 40)])  # 10x14 patches: 5x7 tokens
    position_ids, deltas = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    image = inputs["input_ids"][0] == model.config.image_token_id
    start = int(position_ids[0, 0, image][0])
    heights, widths = position_ids[1, 0, image] - start, position_ids[2, 0, image] - start
    assert int(image.sum()) == 3 * 4  # pooled grid ceil(5/2) x ceil(7/2)
    assert heights.unique().tolist() == [0, 1, 2] and widths.unique().tolist() == [0, 1, 2, 3]


def test_deepstack_features_are_reduced_like_the_main_features():
    model = build_tiny_model("qwen3_vl")
    processor = build_tiny_processor("qwen3_vl")
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    inputs = tiny_batch("qwen3_vl", processor, batch=2)
    with torch.no_grad():
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    main = [t.shape for t in out.pooler_output]
    assert out.deepstack_features and all([t.shape for t in level] == main for level in out.deepstack_features)


# ---------------------------------------------------------------------------------------------------- bad input
def test_non_square_ratio_is_a_config_error():
    with pytest.raises(vtc.ConfigError, match="perfect square"):
        vtc.PVTCConfig(ratio=8)


@pytest.mark.parametrize(
    ("family", "config", "message"),
    [
        ("internvl", vtc.PVTCConfig(ratio=25), "at most 16"),  # a tile makes 4x4 tokens
        ("llava", vtc.PVTCConfig(ratio=4, num_heads=3), "divisor of the language width 64"),
        ("llava_onevision", vtc.PVTCConfig(ratio=4, global_query="cls"), "without a CLS token"),
        ("qwen2_vl", vtc.PVTCConfig(ratio=4, mlp_ratio=0.001), "1/64 for the language width 64"),
    ],
)
def test_invalid_for_the_model_is_refused_and_the_model_is_untouched(family, config, message):
    model, processor, inputs, reference = uncompressed(family)
    with pytest.raises(vtc.ConfigError, match=message):
        vtc.compress(model, vtc.VTCConfig(pvtc=config), processor=processor)
    assert not vtc.is_compressed(model)
    assert all("vtc_" not in name for name, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(**tiny_batch(family, processor, batch=2)).logits, reference)


#: The most native tokens one tile (InternVL) or image makes on the tiny models: a 4x4 tile; 8x8 patches (LLaVA); and
#: for Qwen the processor's 64x64-pixel maximum in 8-pixel merged patches.
MAX_NATIVE_TOKENS = {"internvl": 16, "llava": 64, "llava_next": 64, "llava_onevision": 64, "qwen2_vl": 64,
                     "qwen2_5_vl": 64, "qwen3_vl": 64}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_ratio_beyond_the_largest_tile_or_image_is_refused_and_the_model_is_bit_identical(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    limit = MAX_NATIVE_TOKENS[family]
    for ratio in ((math.isqrt(limit) + 1) ** 2, vtc.PVTCConfig.MAX_RATIO):
        with pytest.raises(vtc.ConfigError, match=rf"pvtc.ratio={ratio} is invalid: expected at most {limit}"):
            vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=ratio)), processor=processor)
    assert not vtc.is_compressed(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], t) for name, t in before.items())
    assert tiny_batch(family, processor, batch=2)["input_ids"].equal(inputs["input_ids"])

    # the largest ratio allowed pools a whole tile (or the largest image) into one token, and runs
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=limit)), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    with torch.no_grad():
        assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape
    if family in ("internvl", "llava"):
        assert set(features_per_image(model, inputs)) == {1}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_processor_not_passed_while_the_count_changes_is_a_clear_error(family):
    model = build_tiny_model(family)
    processor = build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)))  # no processor: it still emits native counts
    inputs = tiny_batch(family, processor)
    with pytest.raises(vtc.PlaceholderMismatchError, match="processor="):
        model(**inputs)
    with pytest.raises(vtc.PlaceholderMismatchError, match="processor="):
        model.generate(**inputs, max_new_tokens=2)


def test_a_vision_layer_other_than_the_configured_one_is_refused_not_ignored():
    model = build_tiny_model("llava")  # configured layer: -2
    processor = build_tiny_processor("llava")
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    inputs = tiny_batch("llava", processor)
    with pytest.raises(vtc.ConfigError, match="vision_feature_layer"):
        model(**inputs, vision_feature_layer=-1)
    with torch.no_grad():
        model(**inputs, vision_feature_layer=-2)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_several_images_in_one_prompt(family):
    from vtc.testing import image_placeholder, tiny_images

    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    first, second, third = tiny_images([(64, 40), (32, 48), (40, 40)])
    image = image_placeholder(family)
    inputs = processor(images=[[first, second], [third]], text=[f"w1 {image} w2 {image} w3", f"w4 {image} w5"],
                       return_tensors="pt", padding=True)
    placeholders = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert sum(features_per_image(model, inputs)) == sum(placeholders)
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    stats = vtc.last_stats(model)
    assert stats["visual_tokens"] == placeholders
    for row, spans in zip(inputs["input_ids"], stats["visual_layout"]):  # the layout covers every placeholder
        covered = sorted(p for span in spans for p in span.positions())
        assert covered == torch.nonzero(row == model.config.image_token_id).flatten().tolist()
