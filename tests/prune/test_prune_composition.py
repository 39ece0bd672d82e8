"""Pruning together with the other components and the runtime: LVTC on the pruned runs, RVTC's tiles pruned per
tile, InternVL's `downsample`, VisionZip's attention read off an SDPA tower, threads, `vtc.disabled`, and
`save_pretrained`."""

import threading

import pytest
import torch
from prune_helpers import (
    FAMILIES,
    KEEP,
    check_kept,
    compressed,
    items_of,
    logits,
    per_item,
    placeholder_runs,
    prune,
    three_samples,
)
from references import append_tokens, vtc_hooks

import vtc
from vtc.prune import attention_received
from vtc.registry import get_adapter
from vtc.testing import build_tiny_model, build_tiny_processor, image_placeholder, tiny_batch, tiny_images

LVTC = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4)  # the tiny models have 4 decoder layers


@pytest.mark.parametrize("method", ["pool", "visionzip"])  # a pooled grid, and runs with no grid
@pytest.mark.parametrize("family", FAMILIES)
def test_lvtc_pools_the_pruned_tokens(family, method):
    config = vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=KEEP[family]), lvtc=LVTC)
    model, processor = compressed(family, config)
    batch, alone = three_samples(family, processor)
    batched = logits(model, batch, use_cache=True)
    stats = vtc.last_stats(model)
    seq_len = batch["input_ids"].shape[1]
    assert stats["layer_seq_lens"][0] == seq_len > stats["layer_seq_lens"][1]
    for index, inputs in enumerate(alone):
        single = logits(model, inputs)[0]
        torch.testing.assert_close(batched[index, -single.shape[0]:], single, rtol=0, atol=1e-5)

    generated = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    no_cache = logits(model, append_tokens(batch, generated.sequences[:, :-1]), use_cache=False)
    for step, step_logits in enumerate(generated.logits):
        torch.testing.assert_close(step_logits, no_cache[:, seq_len - 1 + step], rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["random", "pool"])
def test_rvtc_tiles_are_pruned_tile_by_tile(method):
    rvtc = vtc.RVTCConfig(mode="budget", max_visual_tokens=40, max_tiles=6)  # counted in pruned tokens
    config = vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=KEEP["internvl"]), rvtc=rvtc)
    model, processor = compressed("internvl", config)
    inputs = tiny_batch("internvl", processor, batch=2, image_sizes=[(32, 32), (96, 32)])
    features = items_of(model, inputs)
    count = per_item("internvl", config)
    assert all(f.shape[0] == count for f in features)
    assert sum(placeholder_runs(inputs["input_ids"], model.config.image_token_id)) == count * len(features)
    with torch.no_grad():
        model(**inputs)
    visual = vtc.last_stats(model)["visual_tokens"]
    assert visual[1] > count and all(v <= 40 for v in visual)  # the wide image gets several tiles within the budget
    check_kept("internvl", method, vtc.last_stats(model)["kept"], [[count] * (v // count) for v in visual])


# ---------------------------------------------------------------------------------------------------- downsample
SIZES = [(32, 32), (64, 32), (57, 43), (40, 12), (96, 96)]  # 1, 2x1 + thumbnail, 2x2 + thumbnail, ... natively


def visual_tokens_per_image(model, processor):
    counts = []
    for image in tiny_images(SIZES):
        inputs = processor(images=[image], text=[f"{image_placeholder('internvl')} w1"], return_tensors="pt")
        with torch.no_grad():
            model(**inputs)
        counts.append(vtc.last_stats(model)["visual_tokens"][0])
    return counts


def test_downsample_gives_each_image_fewer_tiles_within_its_budget():
    model, processor = build_tiny_model("internvl"), build_tiny_processor("internvl")
    native = [16, 48, 80, 64, 80]  # tokens per image: 16 per tile
    reference_inputs = tiny_batch("internvl", processor, batch=2)
    reference = logits(model, reference_inputs)
    for keep, expected in [(80, native), (64, [16, 48, 64, 64, 64]), (48, [16, 48, 48, 48, 48]),
                           (16, [16] * 5), (0.6, [16, 16, 48, 16, 48])]:
        vtc.compress(model, prune("downsample", keep), processor=processor)
        got = visual_tokens_per_image(model, processor)
        assert got == expected, keep
        assert vtc.last_stats(model)["kept"] is None
    # at the most the processor gives an image, nothing changes
    vtc.compress(model, prune("downsample", 80), processor=processor)
    assert tiny_batch("internvl", processor, batch=2)["input_ids"].equal(reference_inputs["input_ids"])
    assert torch.equal(logits(model, reference_inputs), reference)
    vtc.unpatch(model)
    assert vtc_hooks(model) == [] and torch.equal(logits(model, reference_inputs), reference)


def test_downsample_needs_the_processor():
    with pytest.raises(vtc.ConfigError, match="processor=None is invalid"):
        vtc.compress(build_tiny_model("internvl"), prune("downsample", 48))


# ---------------------------------------------------------------------------------------------------- VisionZip
@pytest.mark.parametrize("family", FAMILIES)
def test_the_attention_row_read_off_the_tower_is_its_eager_attention(family):
    """The query and key taps of the feature layer, during an SDPA tower's own forward, give the [CLS] row that an
    eager tower returns as `attentions`."""
    model = build_tiny_model(family, "eager")
    adapter = get_adapter(model)
    taps = adapter.feature_layer_attention()
    captured = {}
    handles = [taps.query.register_forward_hook(lambda m, a, out: captured.__setitem__("query", out)),
               taps.key.register_forward_hook(lambda m, a, out: captured.__setitem__("key", out))]
    pixel_values = tiny_batch(family, build_tiny_processor(family), batch=2)["pixel_values"]
    with torch.no_grad():
        out = model.model.vision_tower(pixel_values, output_attentions=True, return_dict=True)
    for handle in handles:
        handle.remove()
    layers = len(out.attentions)
    layer = model.config.vision_feature_layer + layers  # hidden_states[f] is the output of layer f - 1
    expected = out.attentions[layer][:, :, 0, 1:].sum(dim=1)
    got = attention_received(captured["query"], captured["key"], taps.num_heads, taps.scale, cls=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- runtime
@pytest.mark.parametrize("family", FAMILIES)
def test_threads_sharing_a_pruned_model_get_what_each_gets_alone(family):
    model, processor = compressed(family, prune("visionzip", KEEP[family]))
    batches = [tiny_batch(family, processor, batch=1, image_sizes=[size])
               for size in ([(32, 32), (64, 32)] if family == "internvl" else [(48, 40), (40, 48)])]
    alone = []
    for inputs in batches:
        alone.append((logits(model, inputs), vtc.last_stats(model)["kept"]))
    results = [None, None]

    def run(index):
        for _ in range(3):
            results[index] = (logits(model, batches[index]), vtc.last_stats(model)["kept"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (got, kept), (expected, expected_kept) in zip(results, alone):
        assert torch.equal(got, expected) and kept == expected_kept


def test_kept_follows_the_rows_generate_repeats():
    model, processor = compressed("internvl", prune("divprune", 5))
    inputs = tiny_batch("internvl", processor, batch=2)  # one tile, then three
    model(**inputs)
    kept = vtc.last_stats(model)["kept"]
    model.generate(**inputs, max_new_tokens=2, num_beams=2, num_return_sequences=2, do_sample=False)
    assert vtc.last_stats(model)["kept"] == [kept[0], kept[0], kept[1], kept[1]]


def test_disabled_runs_the_unpruned_model():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    inputs = tiny_batch("llava", processor, batch=2)
    reference = logits(model, inputs)
    vtc.compress(model, prune("divprune", 0.25), processor=processor)
    with vtc.disabled(model):
        assert torch.equal(logits(model, inputs), reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_writes_a_clean_backbone_and_the_pruning_config(family, tmp_path):
    config = prune("random", KEEP[family], seed=5)
    model, processor = compressed(family, config)
    inputs = tiny_batch(family, processor, batch=2)
    pruned = logits(model, inputs)
    model.save_pretrained(tmp_path)
    assert vtc.VTCConfig.load(tmp_path / "vtc_config.json") == config

    backbone = type(model).from_pretrained(tmp_path)
    assert not vtc.is_compressed(backbone)
    vtc.load_pretrained(backbone.eval(), tmp_path, processor=build_tiny_processor(family))
    assert vtc.get_config(backbone) == config
    assert torch.equal(logits(backbone, inputs), pruned)
