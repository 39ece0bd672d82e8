"""LVTC's KV cache is smaller by the fraction its layer lengths predict; PVTC's by exactly the visual tokens it removes;
pruning inside the decoder (FastV, DART, PyramidDrop) caches each layer's pruned length.

On tiny models of several families, batch 1 and a left-padded batch of 2: after a prefill with `use_cache=True`, each
decoder layer caches exactly the length `vtc.last_stats(model)["layer_seq_lens"]` records for it, the cache holds
`sum_layers(2 * batch * kv_heads * head_dim * len_layer * dtype_bytes)` bytes (keys and values, from the config), and
cached decode steps add exactly one token per step to every layer, compressed or not.
"""

import pytest
import torch

import vtc
from vtc.bench import kv_cache_megabytes
from vtc.registry import get_adapter
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

FAMILIES = ("llava", "qwen2_vl", "internvl")
K, L = 1, 3  # of the tiny models' 4 decoder layers
DECODE_STEPS = 3
LVTC_CONFIGS = [(ratio, restore) for ratio in (1, 4, 16) for restore in ("delta", "add")]


def lvtc(ratio: int, restore: str) -> vtc.VTCConfig:
    return vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=K, restore_layer=L, ratio=ratio, restore=restore))


def cached_lengths(cache) -> list[int]:
    """Per decoder layer, the key length its cache holds (values checked to match)."""
    lengths = []
    for layer in cache.layers:
        assert layer.keys.shape[-2] == layer.values.shape[-2]
        lengths.append(layer.keys.shape[-2])
    return lengths


def cache_bytes(cache) -> int:
    total = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert total / 2**20 == pytest.approx(kv_cache_megabytes(cache), rel=1e-12)  # the ablation's own counter agrees
    return total


def predicted_bytes(model, batch: int, lens: list[int]) -> int:
    """The formula: keys and values of `batch` rows, `kv_heads x head_dim` each, per cached token per layer."""
    text = get_adapter(model).text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    dtype_bytes = torch.empty((), dtype=model.dtype).element_size()
    return sum(2 * batch * kv_heads * head_dim * length * dtype_bytes for length in lens)


def prefill(model, inputs):
    """One prefill with a fresh cache: (cache, per-layer lengths the instrumentation recorded)."""
    with torch.no_grad():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return out.past_key_values, vtc.last_stats(model)["layer_seq_lens"]


def decoded_cache(model, inputs):
    """The cache after DECODE_STEPS cached decode steps (generate's last token is never fed back)."""
    out = model.generate(**inputs, max_new_tokens=DECODE_STEPS + 1, min_new_tokens=DECODE_STEPS + 1,
                         do_sample=False, return_dict_in_generate=True)
    return out.past_key_values


def check_prefill_cache(model, inputs, cache, lens) -> int:
    batch = inputs["input_ids"].shape[0]
    num_layers = len(get_adapter(model).decoder_layers)
    assert len(lens) == num_layers
    assert cached_lengths(cache) == lens
    assert [cache.get_seq_length(i) for i in range(num_layers)] == lens
    total = cache_bytes(cache)
    assert total == predicted_bytes(model, batch, lens)
    return total


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    family = request.param
    return family, build_tiny_model(family), build_tiny_processor(family)


@pytest.mark.parametrize("batch", [1, 2])
def test_lvtc_cache_follows_the_layer_lengths(tiny, batch):
    family, model, processor = tiny
    vtc.unpatch(model)
    inputs = tiny_batch(family, processor, batch=batch)
    seq_len = inputs["input_ids"].shape[1]
    num_layers = len(get_adapter(model).decoder_layers)

    vtc.compress(model, vtc.VTCConfig())  # no compression, but the same instrumentation
    base_cache, base_lens = prefill(model, inputs)
    assert base_lens == [seq_len] * num_layers
    base_bytes = check_prefill_cache(model, inputs, base_cache, base_lens)
    assert cached_lengths(decoded_cache(model, inputs)) == [n + DECODE_STEPS for n in base_lens]

    for ratio, restore in LVTC_CONFIGS:
        where = f"{family} batch {batch} lvtc r={ratio} {restore}"
        vtc.compress(model, lvtc(ratio, restore), processor=processor)
        cache, lens = prefill(model, inputs)
        # only layers K..L-1 are shorter; ratio 1 may still merge padding runs of a left-padded batch
        assert lens[:K] == [seq_len] * K and lens[L:] == [seq_len] * (num_layers - L), where
        assert len(set(lens[K:L])) == 1 and lens[K] <= seq_len, where
        if ratio > 1:
            assert lens[K] < seq_len, where
        compressed_bytes = check_prefill_cache(model, inputs, cache, lens)
        # compressed / uncompressed bytes == sum of compressed / sum of uncompressed layer lengths, exactly
        assert compressed_bytes * sum(base_lens) == base_bytes * sum(lens), where

        # decode: every layer, compressed or not, grows by exactly one token per step
        after = decoded_cache(model, inputs)
        assert vtc.last_stats(model)["layer_seq_lens"] == lens, where  # generate's prefill compressed the same
        assert cached_lengths(after) == [n + DECODE_STEPS for n in lens], where
        assert cache_bytes(after) == predicted_bytes(model, batch, [n + DECODE_STEPS for n in lens]), where
    vtc.unpatch(model)


def test_pvtc_cache_shrinks_by_the_removed_visual_tokens(tiny):
    family, model, processor = tiny
    vtc.unpatch(model)
    vtc.compress(model, vtc.VTCConfig())
    base = {batch: tiny_batch(family, processor, batch=batch) for batch in (1, 2)}
    measured = {}
    for batch, inputs in base.items():
        cache, lens = prefill(model, inputs)
        measured[batch] = (check_prefill_cache(model, inputs, cache, lens), vtc.last_stats(model)["visual_tokens"])

    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    for batch, base_inputs in base.items():
        where = f"{family} batch {batch} pvtc r=4"
        base_bytes, base_visual = measured[batch]
        inputs = tiny_batch(family, processor, batch=batch)  # the patched processor emits fewer placeholders
        cache, lens = prefill(model, inputs)
        visual = vtc.last_stats(model)["visual_tokens"]
        removed = [b - v for b, v in zip(base_visual, visual)]
        assert all(r > 0 for r in removed), where
        # every row loses exactly its removed visual tokens; the padded batch is as long as its longest row
        base_real, real = base_inputs["attention_mask"].sum(1).tolist(), inputs["attention_mask"].sum(1).tolist()
        assert [b - r for b, r in zip(base_real, removed)] == real, where
        base_len = base_inputs["input_ids"].shape[1]
        assert lens == [max(real)] * len(lens), where
        if batch == 1:
            assert lens == [base_len - removed[0]] * len(lens), where
        pvtc_bytes = check_prefill_cache(model, inputs, cache, lens)
        assert base_bytes - pvtc_bytes == predicted_bytes(model, batch, [base_len - lens[0]] * len(lens)), where
        after = decoded_cache(model, inputs)
        assert cached_lengths(after) == [n + DECODE_STEPS for n in lens], where
    vtc.unpatch(model)


@pytest.mark.parametrize("method", ["fastv", "dart", "pdrop"])
@pytest.mark.parametrize("batch", [1, 2])
def test_pruning_inside_the_decoder_caches_the_pruned_layer_lengths(tiny, batch, method):
    family, model, processor = tiny
    vtc.unpatch(model)
    inputs = tiny_batch(family, processor, batch=batch)
    seq_len = inputs["input_ids"].shape[1]
    first = 1 if method == "pdrop" else K + 1  # FastV and DART from layer 2, PyramidDrop's stages at 1, 2, 3
    layer = (1, 2, 3) if method == "pdrop" else first
    vtc.compress(model, vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=0.3, layer=layer)))
    cache, lens = prefill(model, inputs)
    # the layers before the first stage cache the prompt; from it on, each stage caches fewer tokens
    assert lens[:first] == [seq_len] * first and lens[first] < seq_len and lens == sorted(lens, reverse=True)
    check_prefill_cache(model, inputs, cache, lens)
    after = decoded_cache(model, inputs)
    assert vtc.last_stats(model)["layer_seq_lens"] == lens  # generate's prefill pruned the same way
    assert cached_lengths(after) == [n + DECODE_STEPS for n in lens]
    assert cache_bytes(after) == predicted_bytes(model, batch, [n + DECODE_STEPS for n in lens])
    vtc.unpatch(model)
