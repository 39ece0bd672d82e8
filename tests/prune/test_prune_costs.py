"""What pruning before the language model reports it cost: `last_stats()["pruned_items"]` gives every image's (tile's)
native and kept token counts, grouped by sample, on every family (images of their own sizes included); and
`vtc.evaluate` charges each method's FLOPs on those counts, not on a typical image's."""

import math

import pytest
import torch

import vtc
from vtc.evaluate import prefill_costs
from vtc.flops import decoder_dims, prefill_flops, prune_flops
from vtc.registry import get_adapter
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

FAMILIES = ("llava", "llava_next", "llava_onevision", "internvl", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def native_items(model, inputs):
    """Every item's native visual tokens, from the unpatched model's own `get_image_features`."""
    image_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        pooled = model.model.get_image_features(**image_inputs, return_dict=True).pooler_output
    return [item.shape[0] for item in pooled]


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_items_are_each_image_s_native_and_kept_counts_by_sample(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    natives = native_items(model, inputs)
    vtc.compress(model, vtc.VTCConfig(prune=vtc.PruneConfig(method="random", keep=0.5)), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)  # the patched processor's placeholders
    with torch.no_grad():
        model(**inputs)
    stats = vtc.last_stats(model)
    items = stats["pruned_items"]
    assert [item for sample in items for item in sample] == [(n, math.ceil(n / 2)) for n in natives]
    assert [sum(kept for _, kept in sample) for sample in items] == stats["visual_tokens"]


def test_an_unpruned_prefill_reports_no_pruned_items():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    with torch.no_grad():
        model(**tiny_batch("llava", processor, batch=2))
    assert vtc.last_stats(model)["pruned_items"] is None


@pytest.mark.parametrize(("family", "method"), [("qwen2_vl", "divprune"), ("qwen2_vl", "visionzip"),
                                                ("llava_next", "divprune"), ("internvl", "visionzip")])
def test_evaluate_charges_each_image_its_own_method_flops(family, method):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=0.5)), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    with torch.no_grad():
        model(**inputs)
    stats, adapter = vtc.last_stats(model), get_adapter(model)
    text_config = adapter.text_config
    layers = decoder_dims(text_config)["num_hidden_layers"]
    width = text_config.hidden_size
    for sample, cost, length in zip(stats["pruned_items"], prefill_costs(model, inputs),
                                    inputs["attention_mask"].sum(dim=1).tolist()):
        if method == "divprune":
            spent = sum(2 * n * n * width + 2 * k * n for n, k in sample)
        else:  # the tower's tokens per item: each language token covers a projector window of patches
            rows, cols = adapter.projector_window
            heads = adapter.feature_layer_attention().num_heads
            dim = adapter.vision_feature_dim
            spent = 0
            for n, k in sample:
                tower = n * rows * cols + int(adapter.vision_has_cls)
                spent += prune_flops("visionzip", n, k, width, tower_tokens=tower, attention_width=dim,
                                     head_width=dim // heads, queries=1 if adapter.vision_has_cls else tower)
        assert cost.prefill_flops == prefill_flops(text_config, [length] * layers).total + spent
