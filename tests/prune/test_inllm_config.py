"""Pruning inside the decoder: `PruneConfig(layer=...)` and its JSON, what `compress` refuses (typed errors naming the
valid layers or budgets, the model untouched), the decode-time refusals, the FLOP count and the KV-cache formula."""

import copy
import dataclasses
import json

import pytest
import torch
from inllm_helpers import METHODS, config
from references import vtc_hooks

import vtc
from vtc.config import PruneConfig, VTCConfig
from vtc.flops import llm_prune_flops, prefill_flops, prune_flops, pruning_flops
from vtc.registry import get_adapter
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch


def tiny(family, batch=1):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    return model, processor, tiny_batch(family, processor, batch=batch)


def untouched(model):
    return not vtc.is_compressed(model) and vtc_hooks(model) == []


# ---------------------------------------------------------------------------------------------------- the config
def test_layer_defaults_and_normal_forms():
    assert PruneConfig(method="fastv").layer is None and PruneConfig(method="fastv").in_llm
    assert not PruneConfig(method="pool").in_llm and PruneConfig.IN_LLM_METHODS == ("fastv", "pdrop", "dart")
    assert PruneConfig(method="fastv").resolve_stage_layers(32) == (2,)  # the official K = 2
    assert PruneConfig(method="dart", layer=-1).resolve_stage_layers(32) == (31,)
    assert PruneConfig(method="pdrop").resolve_stage_layers(32) == (8, 16, 24)  # the official stages
    assert PruneConfig(method="pdrop").resolve_stage_layers(4) == (1, 2, 3)
    assert PruneConfig(method="pdrop", layer=[2, -1]).resolve_stage_layers(8) == (2, 7)
    assert PruneConfig(method="pdrop", layer=5).layer == (5,)
    assert dataclasses.replace(PruneConfig(method="fastv", layer=3), method="dart").layer == 3


@pytest.mark.parametrize("config", [PruneConfig(method="pdrop", keep=0.3, layer=(2, 4, 6)),
                                    PruneConfig(method="fastv", keep=64, layer=-3), PruneConfig(method="dart")])
def test_json_round_trip(config):
    assert PruneConfig.from_json(config.to_json()) == config
    both = VTCConfig(prune=config, rvtc=vtc.RVTCConfig())
    assert VTCConfig.from_dict(json.loads(both.to_json())) == both


@pytest.mark.parametrize("kwargs", [
    {"method": "pool", "layer": 2},  # only the in-decoder methods have a layer
    {"method": "visionzip", "layer": (1, 2)},
    {"method": "fastv", "layer": 0},
    {"method": "fastv", "layer": (1, 2)},  # several stages only for pdrop
    {"method": "dart", "layer": 2.0},
    {"method": "dart", "layer": True},
    {"method": "pdrop", "layer": ()},
    {"method": "pdrop", "layer": (3, 2)},
    {"method": "pdrop", "layer": (2, 2)},
    {"method": "pdrop", "layer": (1, 0)},
    {"method": "pdrop", "layer": "8,16"},
    {"method": "pdrop", "layer": {"a": 1}},
])
def test_every_bad_layer_is_a_config_error(kwargs):
    with pytest.raises(vtc.ConfigError) as info:
        PruneConfig(**kwargs)
    assert info.value.field == "layer"


@pytest.mark.parametrize(("layer", "num_layers", "message"), [
    (4, 4, "an index in 1..3 or -3..-1"), (-4, 4, "an index in 1..3"), ((1, 5), 4, "increasing"),
    ((2, -3), 4, "They resolve to \\[2, 1\\]"),
])
def test_layers_outside_the_decoder_name_the_valid_ones(layer, num_layers, message):
    method = "pdrop" if isinstance(layer, tuple) else "fastv"
    with pytest.raises(vtc.ConfigError, match=message):
        PruneConfig(method=method, layer=layer).resolve_stage_layers(num_layers)


def test_in_decoder_pruning_composes_with_pvtc_but_not_with_lvtc():
    VTCConfig(pvtc=vtc.PVTCConfig(), prune=PruneConfig(method="fastv"))
    with pytest.raises(vtc.ConfigError, match="both shorten the sequence inside the decoder") as info:
        VTCConfig(lvtc=vtc.LVTCConfig(), prune=PruneConfig(method="dart"))
    assert info.value.field == "prune"
    with pytest.raises(vtc.ConfigError, match="both replace the projector's output"):
        VTCConfig(pvtc=vtc.PVTCConfig(), prune=PruneConfig(method="pool"))


# ---------------------------------------------------------------------------------------------------- compress
@pytest.mark.parametrize(("family", "prune", "message"), [
    ("llava", PruneConfig(method="fastv", layer=4), "an index in 1..3"),
    ("llava", PruneConfig(method="pdrop", layer=(1, 2, 4)), "an index in 1..3"),
    ("llava", PruneConfig(method="dart", keep=65), "at most 64"),
    ("internvl", PruneConfig(method="fastv", keep=17), "at most 16"),  # per tile
    ("llava", PruneConfig(method="pdrop", keep=0.2, layer=(1, 2, 3)), "at least 1/4 of the native tokens"),
    ("llava", PruneConfig(method="pdrop", keep=15, layer=(1, 2, 3)), "at least 1/4 of 64 tokens"),
    ("llava", PruneConfig(method="pdrop", keep=0.4, layer=(2, 3)), "at least 2/4"),
])
def test_bad_layers_and_budgets_are_refused_and_the_model_is_untouched(family, prune, message):
    model, processor, _ = tiny(family)
    with pytest.raises(vtc.ConfigError, match=message):
        vtc.compress(model, VTCConfig(prune=prune), processor=processor)
    assert untouched(model)


@pytest.mark.parametrize("method", METHODS)
def test_pruning_inside_the_deepstack_layers_is_refused_naming_the_valid_layers(method):
    base = build_tiny_model("qwen3_vl")
    model_config = base.config
    model_config.vision_config.deepstack_visual_indexes = [0, 1]  # injections after layers 0 and 1
    model = type(base)._from_config(model_config)
    with pytest.raises(vtc.ConfigError, match=r"an index in 2\.\.3 \(or -2\.\.-1\).*DeepStack") as info:
        vtc.compress(model, config(method, layer=(1, 2, 3) if method == "pdrop" else 1))
    assert info.value.field == "prune.layer" and untouched(model)
    vtc.compress(model, config(method, keep=0.6, layer=(2, 3) if method == "pdrop" else 2))
    assert vtc.is_compressed(model)


def test_sliding_window_layers_the_rule_reads_are_refused(monkeypatch):
    model, processor, _ = tiny("internvl")
    text_config = model.model.language_model.config
    monkeypatch.setattr(text_config, "layer_types", ["full_attention", "sliding_attention", "full_attention",
                                                     "full_attention"])
    with pytest.raises(vtc.ConfigError, match=r"stages from a layer in \[3\].*layers \[1\]"):
        vtc.compress(model, config("fastv"), processor=processor)  # FastV reads layer 1's attention
    assert untouched(model)
    vtc.compress(model, config("fastv", layer=3), processor=processor)


def test_static_caches_custom_masks_and_edited_caches_are_refused():
    model, processor, inputs = tiny("qwen2_vl")
    vtc.compress(model, config("fastv"), processor=processor)
    with pytest.raises(vtc.UnsupportedModelError, match="DynamicCache"):
        model.generate(**inputs, max_new_tokens=2, cache_implementation="static")
    next_token = {"input_ids": torch.tensor([[7]])}
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).past_key_values
        stripped = copy.deepcopy(cache)
        del stripped._vtc_prune_prefill
        with pytest.raises(vtc.UnsupportedModelError, match="no pruned prefill"):
            model(**next_token, past_key_values=stripped, use_cache=True)
        model(**next_token, past_key_values=cache, use_cache=True)
        cache.crop(-4)  # cutting into the prompt
        with pytest.raises(vtc.UnsupportedModelError, match="no longer matches the pruned prefill"):
            model(**next_token, past_key_values=cache, use_cache=True)
    model, processor, inputs = tiny("llava")
    vtc.compress(model, config("dart"), processor=processor)
    seq_len = inputs["input_ids"].shape[1]
    with pytest.raises(vtc.UnsupportedModelError, match="dart needs a 2-D padding mask"), torch.no_grad():
        model(**{**inputs, "attention_mask": torch.ones(1, 1, seq_len, seq_len).tril()})


# ---------------------------------------------------------------------------------------------------- FLOPs
def test_the_methods_own_flops():
    text = build_tiny_model("llava").model.language_model.config  # d 64, 4 heads and 2 key heads of 16
    d, a, e = 64, 64, 32
    assert llm_prune_flops("fastv", text, 100, [64]) == 2 * 100 * a
    assert llm_prune_flops("dart", text, 100, [64, 16]) == 100 * e + 2 * 8 * 80 * d
    assert llm_prune_flops("pdrop", text, 100, [64], stages=3) == 3 * (2 * 100 * d * e + 2 * d * a + 2 * 100 * a)
    with pytest.raises(vtc.ConfigError, match="llm_prune_flops") as info:
        prune_flops("fastv", 576, 64, 8)
    assert info.value.field == "method"
    with pytest.raises(vtc.ConfigError, match="prune_flops"):
        llm_prune_flops("pool", text, 100, [64])


@pytest.mark.parametrize("method", METHODS)
def test_flops_and_kv_cache_follow_the_pruned_layer_lengths(method):
    model, processor, inputs = tiny("qwen2_vl", batch=2)
    vtc.compress(model, config(method), processor=processor)
    with torch.no_grad():
        cache = model(**inputs, use_cache=True, logits_to_keep=1).past_key_values
    stats = vtc.last_stats(model)
    lengths = stats["layer_seq_lens"]
    text = get_adapter(model).text_config
    # the cache: keys and values of every row, 2 key heads of 16, float32, per cached token per layer
    assert [layer.keys.shape[-2] for layer in cache.layers] == lengths
    assert sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)) == sum(
        2 * 2 * 2 * 16 * n * 4 for n in lengths)
    full = prefill_flops(text, [inputs["input_ids"].shape[1]] * 4)
    assert prefill_flops(text, lengths).total < full.total
    per_sample = pruning_flops(get_adapter(model), get_config(model).prune, stats["visual_layout"],
                               inputs["attention_mask"].sum(1).tolist())
    stages = 3 if method == "pdrop" else 1
    expected = [llm_prune_flops(method, text, int(n), [span.length for span in spans], stages=stages)
                for n, spans in zip(inputs["attention_mask"].sum(1), stats["visual_layout"])]
    assert per_sample == expected and all(f > 0 for f in per_sample)


def get_config(model):
    return vtc.get_config(model)
