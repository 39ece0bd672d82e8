"""Pruning before the language model on Qwen2-VL, Qwen2.5-VL and Qwen3-VL (every image its own token grid, M-RoPE
positions, DeepStack on Qwen3-VL) × every method: the budget per image at the language model's input, processor and
model agreeing, `keep` at every image's count being the unpatched model, the kept tokens at their unpruned positions
(forward and `generate`), batch == singles, cached == uncached `generate`, sdpa == eager, seeded `random`, selections
equal to independent implementations on the model's own tensors, `downsample`, refusals, copies, and
`get_image_features` keeping transformers' contract."""

import copy
import pickle

import pytest
import torch
from prune_helpers import (
    check_batch_equals_singles,
    check_generate_then_unpatch,
    check_sdpa_and_eager_agree,
    placeholder_runs,
    prune,
)
from references import identical, vtc_hooks
from test_prune_rules import divprune_oracle
from transformers.vision_utils import get_vision_window_index

import vtc
from vtc.prune import SELECTION_METHODS, pool_grid, visionzip_counts
from vtc.testing import build_tiny_model, build_tiny_processor, image_placeholder, tiny_batch, tiny_images

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
METHODS = ("pool", "random", "divprune", "visionzip")
CASES = [(family, method) for family in FAMILIES for method in METHODS]
#: The tiny batch's images: 32x32 px (4x4 tokens) and 56x40 px (5x7 tokens); the processor's most: 8x8 tokens.
GRIDS = ((4, 4), (5, 7))
MOST = 64
KEEP = 6


def logits(model, inputs, **kwargs):
    """The model's logits; no positions given: the model makes its M-RoPE positions from the padding mask."""
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def budget(config, grid):
    """The visual tokens an image of native token grid `grid` keeps under `config` (a `VTCConfig`)."""
    n = grid[0] * grid[1]
    if config.prune.method == "pool":
        oh, ow = pool_grid(grid, min(config.prune.kept_count(n), n))
        return oh * ow
    return min(config.prune.kept_count(n), n)


def compressed(family, config, attn="sdpa"):
    model, processor = build_tiny_model(family, attn), build_tiny_processor(family)
    vtc.compress(model, config, processor=processor)
    return model, processor


def image_features(model, inputs, **kwargs):
    with torch.no_grad():
        return model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                              image_grid_thw=inputs["image_grid_thw"], return_dict=True, **kwargs)


def lm_positions(model):
    """A list that receives the `position_ids` of every language-model call (after vtc's own pre-hook)."""
    seen = []
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"][-3:].clone()), with_kwargs=True)
    return seen


def check_kept(kept, counts):
    """Per sample, per image: `count` distinct native indices (ascending but for VisionZip's contextual targets)."""
    assert [[len(indices) for indices in sample] for sample in kept] == counts
    for sample, grid in zip(kept, GRIDS):
        for indices in sample:
            assert len(set(indices)) == len(indices) and all(0 <= i < grid[0] * grid[1] for i in indices)


@pytest.mark.parametrize("keep_kind", ["int", "fraction"])
@pytest.mark.parametrize(("family", "method"), CASES)
def test_budget_agreement_generate_and_unpatch(family, method, keep_kind):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    reference_inputs = tiny_batch(family, processor, batch=2)
    reference = logits(model, reference_inputs)
    model.generate(**reference_inputs, max_new_tokens=1)  # transformers installs its lazy output-capture hooks
    keys = list(model.state_dict())
    config = prune(method, KEEP if keep_kind == "int" else 0.3)
    vtc.compress(model, config, processor=processor)

    inputs = tiny_batch(family, processor, batch=2)
    counts = [budget(config, grid) for grid in GRIDS]
    assert counts != [16, 35]
    assert [t.shape[0] for t in image_features(model, inputs).pooler_output] == counts  # model == processor
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == counts

    logits(model, inputs)
    stats = vtc.last_stats(model)
    assert stats["visual_tokens"] == counts
    if method in SELECTION_METHODS:
        check_kept(stats["kept"], [[count] for count in counts])
    else:
        assert stats["kept"] is None

    check_generate_then_unpatch(model, processor, family, inputs, stats, keys, reference_inputs, logits)
    assert torch.equal(logits(model, reference_inputs), reference)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("family", "method"), CASES)
def test_keep_at_every_image_count_is_the_unpatched_model(family, method, attn):
    model, processor = build_tiny_model(family, attn), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    reference = logits(model, inputs)
    reference_generation = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    vtc.compress(model, prune(method, MOST), processor=processor)  # at least every image's count: all of them
    assert tiny_batch(family, processor, batch=2)["input_ids"].equal(inputs["input_ids"])
    assert torch.equal(logits(model, inputs), reference)
    kept = vtc.last_stats(model)["kept"]
    assert kept is None if method == "pool" else kept == [[list(range(h * w))] for h, w in GRIDS]
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False),
                       reference_generation)


@pytest.mark.parametrize(("family", "method"), [case for case in CASES if case[1] in SELECTION_METHODS])
def test_kept_tokens_have_their_unpruned_positions_in_forward_and_generate(family, method):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    native_inputs = tiny_batch(family, processor, batch=2)
    native_seen = lm_positions(model)
    logits(model, native_inputs)
    native = native_seen[-1]
    vtc.compress(model, prune(method, KEEP), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    image_token = model.config.image_token_id

    seen = lm_positions(model)
    logits(model, inputs)
    forward_kept = vtc.last_stats(model)["kept"]
    model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert vtc.last_stats(model)["kept"] == forward_kept
    forward, prefill = seen[0], seen[1]  # the forward, then generate's prefill
    for positions in (forward, prefill):
        for row in range(2):
            real = native_inputs["attention_mask"][row].bool(), inputs["attention_mask"][row].bool()
            is_image = native_inputs["input_ids"][row] == image_token, inputs["input_ids"][row] == image_token
            native_image = native[:, row, is_image[0]]
            assert torch.equal(positions[:, row, is_image[1]], native_image[:, forward_kept[row][0]])
            # the text keeps its unpruned positions, before and after the image
            assert torch.equal(positions[:, row, real[1] & ~is_image[1]], native[:, row, real[0] & ~is_image[0]])


@pytest.mark.parametrize(("family", "method"), CASES)
def test_a_batch_equals_its_samples_alone(family, method):
    model, processor = compressed(family, prune(method, KEEP))
    images = tiny_images([(32, 32), (56, 40)])
    texts = [p.replace("{image}", image_placeholder(family)) for p in (
        "w3 w7 {image} describe the image .", "what is in this picture ? w11 w12 w13 {image} w5 w8 w9 .",
        "w5 w6 what is this ?")]
    batch = processor(images=[[images[0]], [images[1]], []], text=texts, return_tensors="pt", padding=True)
    alone = [processor(images=[images[0]], text=texts[:1], return_tensors="pt"),
             processor(images=[images[1]], text=texts[1:2], return_tensors="pt"),
             processor(text=texts[2:], return_tensors="pt")]
    check_batch_equals_singles(model, method, batch, alone, logits)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_sdpa_and_eager_agree(family, method):
    def run(attn):
        model, processor = compressed(family, prune(method, KEEP), attn)
        inputs = tiny_batch(family, processor, batch=2)
        return logits(model, inputs)[inputs["attention_mask"].bool()], vtc.last_stats(model)["kept"]

    check_sdpa_and_eager_agree(run)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_is_seeded(family):
    def kept(seed):
        model, processor = compressed(family, prune("random", KEEP, seed=seed))
        return logits(model, tiny_batch(family, processor, batch=2)), vtc.last_stats(model)["kept"]

    first, again, other = kept(0), kept(0), kept(1)
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and first[1] != other[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_selections_equal_independent_rules_on_the_native_features(family):
    """DivPrune on the model's own native tokens; the pruned tokens are those tokens."""
    model, processor = compressed(family, prune("divprune", KEEP))
    inputs = tiny_batch(family, processor, batch=2)
    pruned = image_features(model, inputs)
    logits(model, inputs)
    kept = [sample[0] for sample in vtc.last_stats(model)["kept"]]
    with vtc.disabled(model):
        native = image_features(model, inputs)
    for index, (tokens, full, indices) in enumerate(zip(pruned.pooler_output, native.pooler_output, kept)):
        assert indices == divprune_oracle(full.numpy(), KEEP)
        assert torch.equal(tokens, full[indices])
        for level, native_level in zip(getattr(pruned, "deepstack_features", None) or [],
                                       getattr(native, "deepstack_features", None) or []):
            assert torch.equal(level[index], native_level[index][indices])


@pytest.mark.parametrize("family", FAMILIES)
def test_visionzip_dominant_tokens_are_those_the_last_block_attends_to_most(family, monkeypatch):
    """The reference: transformers' own eager attention weights of the last vision block (recorded from its eager
    attention function), averaged over each image's queries and heads, summed over each token's patches."""
    model, processor = build_tiny_model(family, "eager"), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    visual = model.model.visual
    module = __import__(type(visual.blocks[-1].attn).__module__, fromlist=["eager_attention_forward"])
    own, weights = module.eager_attention_forward, []

    def recording(attention, *args, **kwargs):
        output, attention_weights = own(attention, *args, **kwargs)
        if attention is visual.blocks[-1].attn:
            weights.append(attention_weights[0])  # (heads, n, n) of one image
        return output, attention_weights

    monkeypatch.setattr(module, "eager_attention_forward", recording)
    with torch.no_grad():
        visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    received = torch.cat([w.float().mean(dim=(0, 1)) for w in weights])
    if family == "qwen2_5_vl":  # the tower runs window-permuted blocks of merge x merge patches
        window_index, _ = get_vision_window_index(inputs["image_grid_thw"], spatial_merge_size=2,
                                                  window_size=visual.window_size, patch_size=visual.patch_size)
        received = received.reshape(-1, 4)[torch.argsort(window_index)].flatten()
    scores = received.reshape(-1, 4).sum(dim=1).split([h * w for h, w in GRIDS])

    vtc.compress(model, prune("visionzip", KEEP), processor=processor)
    logits(model, tiny_batch(family, processor, batch=2))
    for sample, score, (h, w) in zip(vtc.last_stats(model)["kept"], scores, GRIDS):
        dominant = visionzip_counts(KEEP, h * w)[0]
        expected = torch.sort(score, descending=True, stable=True).indices[:dominant].sort().values
        assert sample[0][:dominant] == expected.tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_downsample_gives_each_image_at_most_its_budget_natively(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    reference_inputs = tiny_batch(family, processor, batch=2)
    vtc.compress(model, prune("downsample", 0.5), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    grids = [(h // 2, w // 2) for _, h, w in inputs["image_grid_thw"].tolist()]
    counts = [h * w for h, w in grids]
    assert all(0 < count <= -(-n // 2) for count, n in zip(counts, (16, 35)))
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == counts
    logits(model, inputs)
    assert vtc.last_stats(model)["visual_tokens"] == counts and vtc.last_stats(model)["kept"] is None
    vtc.unpatch(model)
    vtc.compress(model, prune("downsample", MOST), processor=processor)  # every image within budget: unchanged
    again = tiny_batch(family, processor, batch=2)
    assert again.keys() == reference_inputs.keys() and all(torch.equal(again[k], v) for k, v in reference_inputs.items())


@pytest.mark.parametrize(("family", "config", "message"), [
    ("qwen2_vl", prune("random", MOST + 1), "at most 64: the processor gives an image at most 64"),
    ("qwen2_5_vl", prune("downsample", MOST + 1), "at most 64"),
    ("qwen3_vl", vtc.VTCConfig(prune=vtc.PruneConfig(method="downsample", keep=0.5), rvtc=vtc.RVTCConfig()),
     "both choose how many tiles"),
])
def test_a_refused_value_is_a_config_error_and_leaves_the_model_untouched(family, config, message):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    check_untouched_after_refusal(model, processor, family, config, message)


def test_visionzip_needs_a_full_attention_last_block():
    model, processor = build_tiny_model("qwen2_5_vl"), build_tiny_processor("qwen2_5_vl")
    model.model.visual.fullatt_block_indexes = [0]
    check_untouched_after_refusal(model, processor, "qwen2_5_vl", prune("visionzip", KEEP),
                                  "last vision block attends within windows")


def check_untouched_after_refusal(model, processor, family, config, message):
    inputs = tiny_batch(family, processor, batch=2)
    reference = logits(model, inputs)
    with pytest.raises(vtc.ConfigError, match=message):
        vtc.compress(model, config, processor=processor)
    assert not vtc.is_compressed(model) and vtc_hooks(model) == []
    assert tiny_batch(family, processor, batch=2)["input_ids"].equal(inputs["input_ids"])
    assert torch.equal(logits(model, inputs), reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_copy_is_an_independent_pruned_model(family):
    model, processor = compressed(family, prune("visionzip", KEEP))  # the method with the most hooks
    inputs = tiny_batch(family, processor, batch=2)
    restored = pickle.loads(pickle.dumps(model))  # before any forward: transformers adds unpicklable hooks then
    pruned = logits(model, inputs)
    assert torch.equal(logits(restored, inputs), pruned)
    twin = copy.deepcopy(model)
    assert torch.equal(logits(twin, inputs), pruned)
    assert vtc.last_stats(twin)["kept"] == vtc.last_stats(model)["kept"]
    vtc.unpatch(twin)
    assert vtc_hooks(twin) == [] and vtc.is_compressed(model)
    assert torch.equal(logits(model, inputs), pruned)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_get_image_features_keeps_the_model_contract(family, method):
    model, processor = build_tiny_model(family, "eager"), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    flags = ({}, {"output_hidden_states": True})
    references = [image_features(model, inputs, **f) for f in flags]
    config = prune(method, KEEP)
    vtc.compress(model, config, processor=processor)
    for f, reference in zip(flags, references):
        output = image_features(model, inputs, **f)
        assert type(output) is type(reference) and list(output.keys()) == list(reference.keys())
        for name in output.keys():
            if name not in ("pooler_output", "deepstack_features"):
                assert identical(output[name], reference[name]), name
        counts = [budget(config, grid) for grid in GRIDS]
        for tokens in (output.pooler_output, *(getattr(output, "deepstack_features", None) or [])):
            assert type(tokens) is type(reference.pooler_output) and [len(t) for t in tokens] == counts
