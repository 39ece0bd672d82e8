"""RVTC on every family with dynamic resolution: the patched processor and the patched model agree on every image.

Images of several sizes and aspect ratios go through the tiny models; per image, the placeholders the processor
writes equal the visual features the model produces, the counts follow the policy, `generate` runs and `unpatch`
gives back the processor (and model config) exactly as they were.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

import vtc
from vtc.rvtc import plan_tiles
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch

DYNAMIC = tuple(f for f in TINY_FAMILIES if f != "llava")
QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
NON_IMAGE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")

# (width, height): square, landscape, portrait, small, very wide and very tall.
SIZES = [(32, 32), (64, 40), (40, 12), (24, 20), (57, 43), (12, 90)]
# Tiny tiles: InternVL and LLaVA-NeXT/OneVision use their native 32 px tile; Qwen's native tile (16x16 tokens,
# 128 px) exceeds the tiny processor's 64x64-pixel maximum, so a 16 px tile (2x2 tokens) shows the effect.
QWEN_TILE = 16


def tiling(family):
    """`(tile side, tokens per tile as RVTC counts them, thumbnail policy)` of a tiny family."""
    if family == "internvl":
        return 32, 16, "auto"
    if family in QWEN:
        return QWEN_TILE, 4, "never"
    return 32, 8 * 8 + 8, "always"  # a crop's 8x8 patches plus a newline per row; the base crop is always there


def modes(family):
    """Each mode, the budget allowing two tiles and the thumbnail."""
    _, tokens, thumbnail = tiling(family)
    budget = tokens * (2 + (thumbnail != "never"))
    budget_mode = {"mode": "budget", "max_visual_tokens": budget}
    return {"edge": {"mode": "edge"}, "area": {"mode": "area"}, "budget": budget_mode}


@pytest.fixture(scope="module")
def zoo():
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = build_tiny_model(family), build_tiny_processor(family)
        return cache[family]

    return get


def rvtc_config(family, **kwargs):
    return vtc.RVTCConfig(tile_size=QWEN_TILE if family in QWEN else None, **kwargs)


def placeholders(model, inputs):
    return (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()


def features_per_image(family, model, inputs, tiles_per_image=None):
    """Visual features the model makes for each image, from its own `get_image_features`."""
    kwargs = {k: v for k, v in inputs.items() if k not in NON_IMAGE_KEYS}
    with torch.no_grad():
        pooled = model.model.get_image_features(**kwargs).pooler_output
    if family == "internvl":  # (tiles, tokens per tile, d): tiles are independent items
        assert pooled.shape[0] == sum(tiles_per_image)
        return [n * pooled.shape[1] for n in tiles_per_image]
    return [f.shape[0] for f in pooled]


def crops_per_image(model, inputs):
    adapter = vtc.api.get_adapter_of(model) if vtc.is_compressed(model) else vtc.registry.get_adapter(model)
    return adapter._crops_per_image({k: v for k, v in inputs.items() if k in adapter.image_input_keys})


def snapshot(*objects):
    return [dict(vars(obj)) for obj in objects]


@pytest.mark.parametrize("mode", ["edge", "area", "budget"])
@pytest.mark.parametrize("family", DYNAMIC)
def test_processor_and_model_agree_per_image_and_unpatch_restores(zoo, family, mode):
    model, processor = zoo(family)
    native = tiny_batch(family, processor, batch=len(SIZES), image_sizes=SIZES)
    native_tokens = placeholders(model, native)
    native_counted = processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in SIZES]).num_image_tokens
    # what the size-only count adds to the placeholders (InternVL's image start and end tokens, up to 5.24)
    (extra,) = {n - t for n, t in zip(native_counted, native_tokens)}
    before = snapshot(processor, processor.image_processor, model.config)
    config = rvtc_config(family, **modes(family)[mode])

    vtc.compress(model, vtc.VTCConfig(rvtc=config), processor=processor)
    inputs = tiny_batch(family, processor, batch=len(SIZES), image_sizes=SIZES)
    tokens = placeholders(model, inputs)
    tile, per_tile, thumbnail = tiling(family)
    plans = [plan_tiles(w, h, config, tile, per_tile, thumbnail=thumbnail) for w, h in SIZES]
    tiles = [p.items for p in plans] if family == "internvl" else None
    assert features_per_image(family, model, inputs, tiles) == tokens
    # the processor's size-only count (what serving engines use) agrees with what it writes
    counted = processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in SIZES]).num_image_tokens
    assert [n - extra for n in counted] == tokens

    if family == "internvl":  # exactly the planned tiles (and thumbnail), 16 tokens each
        assert tokens == [p.items * 16 for p in plans]
    elif family in QWEN:  # within the planned tiles' pixels and never more than unpatched
        assert all(n <= min(p.tiles * (tile // 8) ** 2, base) for n, p, base in zip(tokens, plans, native_tokens))
    else:  # at most the planned crops (plus the base crop), never more than unpatched
        vtc.unpatch(model)
        native_crops = crops_per_image(model, native)
        vtc.compress(model, vtc.VTCConfig(rvtc=config), processor=processor)
        crops = crops_per_image(model, inputs)
        assert all(c - 1 <= p.tiles and c <= n for c, p, n in zip(crops, plans, native_crops))
    if mode == "budget":
        assert max(tokens) <= config.max_visual_tokens
    assert tokens != native_tokens  # the sizes were chosen so that RVTC changes something on every family

    with torch.no_grad():
        model(**inputs)
    assert vtc.last_stats(model)["visual_tokens"] == tokens
    generated = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 2

    vtc.unpatch(model)
    assert snapshot(processor, processor.image_processor, model.config) == before
    again = tiny_batch(family, processor, batch=len(SIZES), image_sizes=SIZES)
    assert torch.equal(again["input_ids"], native["input_ids"])
    assert torch.equal(again["pixel_values"], native["pixel_values"])


@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3), st.integers(1, 12), st.booleans())
def test_internvl_crops_exactly_the_planned_grid(width, height, min_tiles, max_tiles, area):
    # The patched crop asks GotOcr2 for exactly `plan.tiles` tiles; its aspect-ratio match among the grids of that
    # count (same tile side) must return the planned grid itself.
    config = vtc.RVTCConfig(mode="area" if area else "edge", min_tiles=min_tiles, max_tiles=max(min_tiles, max_tiles))
    plan = plan_tiles(width, height, config, 448)
    assert get_optimal_tiled_canvas((height, width), (448, 448), plan.tiles, plan.tiles) == (plan.cols, plan.rows)


def test_llava_next_small_images_get_the_planned_grid_outside_the_model_pinpoints(zoo):
    # The tiny pinpoints all have 2 or 4 crops; a 24x20 image deserves one 32 px tile, so it gets pinpoint [32, 32].
    model, processor = zoo("llava_next")
    vtc.compress(model, vtc.VTCConfig(rvtc=vtc.RVTCConfig()), processor=processor)
    adapter = vtc.api.get_adapter_of(model)
    assert adapter.grid_pinpoints_for((20, 24)) == [[32, 32]]
    assert adapter.grid_pinpoints_for((40, 64)) == [[32, 64], [64, 32]]  # plan 2x1: the model's 2-crop pinpoints
    vtc.unpatch(model)


@pytest.mark.parametrize("family", DYNAMIC)
def test_rvtc_composes_with_pvtc_and_lvtc(zoo, family):
    model, processor = zoo(family)
    # 40 tokens: one plain tile (+ thumbnail) at most, several once PVTC makes each tile 4x cheaper
    budget = vtc.RVTCConfig(mode="budget", max_visual_tokens=40, tile_size=QWEN_TILE if family in QWEN else None)
    lvtc = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4)
    config = vtc.VTCConfig(rvtc=budget, pvtc=vtc.PVTCConfig(ratio=4), lvtc=lvtc)
    vtc.compress(model, config, processor=processor)
    inputs = tiny_batch(family, processor, batch=len(SIZES), image_sizes=SIZES)
    tokens = placeholders(model, inputs)
    tiles = None
    if family == "internvl":
        tiles = [plan_tiles(w, h, budget, 32, 4).items for w, h in SIZES]
        assert max(tiles) > 2  # PVTC's pooled count let the budget afford more than one tile and its thumbnail
    assert features_per_image(family, model, inputs, tiles) == tokens
    assert max(tokens) <= 40
    with torch.no_grad():
        model(**inputs)
    lens = vtc.last_stats(model)["layer_seq_lens"]
    assert lens[1] < lens[0] == lens[3]  # LVTC runs its layers short on the RVTC+PVTC sequence
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    vtc.unpatch(model)


# ---------------------------------------------------------------------------------------------------- bad input
def test_rvtc_on_one_fixed_resolution_is_refused_and_changes_nothing():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    before = snapshot(processor, processor.image_processor, model.config)
    with pytest.raises(vtc.ConfigError, match="one fixed input resolution.*internvl"):
        vtc.compress(model, vtc.VTCConfig(rvtc=vtc.RVTCConfig()), processor=processor)
    assert not vtc.is_compressed(model)
    assert snapshot(processor, processor.image_processor, model.config) == before


@pytest.mark.parametrize("family, config, match", [
    ("internvl", vtc.RVTCConfig(mode="budget", max_visual_tokens=15), r"max_visual_tokens=15 .*>= 16"),
    ("llava_next", vtc.RVTCConfig(mode="budget", max_visual_tokens=100), r"max_visual_tokens=100 .*>= 144"),
    ("llava_onevision", vtc.RVTCConfig(use_thumbnail=False), "use_thumbnail"),
    ("qwen2_vl", vtc.RVTCConfig(tile_size=20), "tile_size=20 .*multiple of 8"),
])
def test_configs_that_cannot_apply_are_refused_atomically(zoo, family, config, match):
    model, processor = zoo(family)
    before = snapshot(processor, processor.image_processor, model.config)
    with pytest.raises(vtc.ConfigError, match=match):
        vtc.compress(model, vtc.VTCConfig(rvtc=config), processor=processor)
    assert not vtc.is_compressed(model)
    assert snapshot(processor, processor.image_processor, model.config) == before


def test_rvtc_needs_the_processor(zoo):
    model, _ = zoo("internvl")
    with pytest.raises(vtc.ConfigError, match="processor"):
        vtc.compress(model, vtc.VTCConfig(rvtc=vtc.RVTCConfig()))
    assert not vtc.is_compressed(model)


def test_a_qwen_budget_an_extreme_aspect_ratio_cannot_meet_is_an_error_not_an_overrun(zoo):
    model, processor = zoo("qwen2_vl")
    # one token per 8 px tile; a 160x8 image is at least one merge block high and four wide
    config = vtc.RVTCConfig(mode="budget", tile_size=8, max_visual_tokens=1)
    vtc.compress(model, vtc.VTCConfig(rvtc=config), processor=processor)
    try:
        assert placeholders(model, tiny_batch("qwen2_vl", processor, image_sizes=[(16, 16)])) == [1]
        with pytest.raises(vtc.ConfigError, match=r"max_visual_tokens=1 .*>= 4 for a 160x8 image"):
            tiny_batch("qwen2_vl", processor, image_sizes=[(160, 8)])
    finally:
        vtc.unpatch(model)
    assert math.prod(tiny_batch("qwen2_vl", processor, image_sizes=[(160, 8)])["image_grid_thw"][0].tolist()) > 4
