"""Pruning before the language model on LLaVA-NeXT and LLaVA-OneVision (an image is a base view, crops and newline
tokens packed into one sequence): the exact budget per image at the language model's input, processor and model
agreeing, `keep` at the most tokens an image makes being the unpatched model, selections equal to independent
implementations on the model's native features, batch == singles, cached == uncached `generate`, sdpa == eager,
seeded `random`, refused values leaving the model untouched, copies, `unpatch`, `get_image_features`' contract, and
`downsample` giving images fewer crops. VisionZip's own rule: `test_prune_anyres_visionzip.py`."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from prune_helpers import (
    check_batch_equals_singles,
    check_generate_then_unpatch,
    check_sdpa_and_eager_agree,
    logits,
    placeholder_runs,
    prune,
    three_samples,
    with_positions,
)
from references import identical, vtc_hooks
from transformers.image_processing_utils import select_best_resolution

import vtc
from vtc.layout import VisualSpan
from vtc.prune import joined_pool_grid, largest_remainder_split, pool_grid, pruned_image_template
from vtc.registry import get_adapter
from vtc.testing import build_tiny_model, build_tiny_processor, image_placeholder, tiny_batch, tiny_images

FAMILIES = ("llava_next", "llava_onevision")
METHODS = ("pool", "random", "divprune", "visionzip")
CASES = [(family, method) for family in FAMILIES for method in METHODS]
KEEP = 40  # of the tiny images' 208 and 234 native tokens
#: The most tokens the tiny models make for one image: an 8x8 base grid and a 16x16 joined grid with its newlines.
MOST = 64 + 16 * 17


def compressed(family, config, attn="sdpa", **config_overrides):
    model, processor = build_tiny_model(family, attn), build_tiny_processor(family)
    for name, value in config_overrides.items():
        setattr(model.config, name, value)
        setattr(processor, name, value)
    vtc.compress(model, config, processor=processor)
    return model, processor


def items_of(model, inputs):
    """Each image's visual tokens as the (patched) model produces them: `get_image_features().pooler_output`."""
    keys = ("image_sizes", "batch_num_images")
    with torch.no_grad():
        output = model.model.get_image_features(inputs["pixel_values"], return_dict=True,
                                                **{k: inputs[k] for k in keys if k in inputs})
    return list(output.pooler_output)


def native_items(family, inputs):
    """The unpatched model's packed tokens of every image of `inputs` (its own bits)."""
    return items_of(build_tiny_model(family), inputs)


def native_structure(tokens, newline):
    """`(base cells, joined (rows, cols) or None)` of one packed image, read off its newline tokens."""
    is_newline = (tokens == newline.to(tokens)).all(dim=1)
    base = 64
    rows = int(is_newline[base:].sum())
    if rows == 1 and is_newline[-1] and len(tokens) == base + 1:
        return base, None
    return base, (rows, (len(tokens) - base) // rows - 1)


def divprune_reference(features, count):
    """DivPrune as a plain loop over the float32 distances `1 - cos` (the rule's own precision, so that near-equal
    distances between the newline tokens and the cells order as they do in the model)."""
    x = features.float()
    normed = x / x.norm(dim=1, keepdim=True)
    distance = (1.0 - normed @ normed.T).tolist()
    n = len(distance)
    score = [sorted(distance[i][j] for i in range(n))[1] for j in range(n)]
    picked = [max(range(n), key=lambda j: (score[j], -j))]
    while len(picked) < count:
        rest = [j for j in range(n) if j not in picked]
        nearest = {j: min(distance[s][j] for s in picked) for j in rest}
        picked.append(max(rest, key=lambda j: (nearest[j], -j)))
    return sorted(picked)


# ---------------------------------------------------------------------------------------------------- budget
def test_largest_remainder_split_and_joined_pool_grid():
    assert largest_remainder_split(10, (64, 170)) == [3, 7]
    assert largest_remainder_split(5, (1, 1)) == [3, 2]  # equal remainders: the first
    assert sum(largest_remainder_split(71, (64, 170))) == 71
    for rows, cols in [(10, 16), (16, 8), (3, 5), (1, 1)]:
        assert joined_pool_grid((rows, cols), rows * (cols + 1)) == (rows, cols)
        for target in range(2, rows * (cols + 1)):
            oh, ow = joined_pool_grid((rows, cols), target)
            best = min(abs(h * (w + 1) - target) for h in range(1, rows + 1) for w in range(1, cols + 1))
            assert 1 <= oh <= rows and 1 <= ow <= cols and abs(oh * (ow + 1) - target) == best


def test_pruned_image_template():
    native = (VisualSpan(0, 64, (8, 8)), VisualSpan(64, 170, (10, 16), newline=True))
    assert pruned_image_template(vtc.PruneConfig(method="random", keep=40), native) == (VisualSpan(0, 40, None),)
    assert pruned_image_template(vtc.PruneConfig(method="random", keep=500), native) == (VisualSpan(0, 234, None),)
    assert pruned_image_template(vtc.PruneConfig(method="pool", keep=234), native) == native
    base_share, joined_share = largest_remainder_split(40, (64, 170))
    bh, bw = pool_grid((8, 8), base_share)
    oh, ow = joined_pool_grid((10, 16), joined_share)
    assert pruned_image_template(vtc.PruneConfig(method="pool", keep=40), native) == (
        VisualSpan(0, bh * bw, (bh, bw)), VisualSpan(bh * bw, oh * (ow + 1), (oh, ow), newline=True))
    alone = (VisualSpan(0, 64, (8, 8)), VisualSpan(64, 1, None))  # a base view alone, its newline kept
    assert pruned_image_template(vtc.PruneConfig(method="pool", keep=17), alone) == (
        VisualSpan(0, 16, (4, 4)), VisualSpan(16, 1, None))


@pytest.mark.parametrize("keep_kind", ["int", "fraction"])
@pytest.mark.parametrize(("family", "method"), CASES)
def test_budget_agreement_generate_and_unpatch(family, method, keep_kind):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    reference_inputs = tiny_batch(family, processor, batch=2)
    reference = logits(model, reference_inputs)
    native = [len(t) for t in items_of(model, reference_inputs)]
    model.generate(**reference_inputs, max_new_tokens=1)  # transformers installs its lazy output-capture hooks
    keys = list(model.state_dict())
    config = prune(method, KEEP if keep_kind == "int" else 0.3)
    vtc.compress(model, config, processor=processor)

    inputs = tiny_batch(family, processor, batch=2)
    counts = [len(t) for t in items_of(model, inputs)]
    kept = [config.prune.kept_count(n) for n in native]
    if method == "pool":  # about the budget: the pooled grids' tokens
        assert all(abs(c - k) <= 0.1 * k for c, k in zip(counts, kept))
    else:
        assert counts == kept
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == counts  # the processor agrees
    out = model(**with_positions(inputs))
    stats = vtc.last_stats(model)
    assert stats["visual_tokens"] == counts
    if method == "pool":
        assert stats["kept"] is None
    else:
        assert [[len(k) for k in sample] for sample in stats["kept"]] == [[c] for c in counts]
        assert all(len(set(k)) == len(k) and max(k) < n for (k,), n in zip(stats["kept"], native))
        if method != "visionzip":  # VisionZip: the dominant tokens ascending, then the contextual targets
            assert all(k == sorted(k) for (k,) in stats["kept"])

    assert out.logits.shape[1] == inputs["input_ids"].shape[1]
    check_generate_then_unpatch(model, processor, family, inputs, stats, keys, reference_inputs)
    assert torch.equal(logits(model, reference_inputs), reference)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("family", "method"), [*CASES, *((family, "downsample") for family in FAMILIES)])
def test_keep_at_the_most_tokens_of_an_image_is_the_unpatched_model(family, method, attn):
    model, processor = build_tiny_model(family, attn), build_tiny_processor(family)
    assert get_adapter(model).most_native_tokens() == MOST
    inputs = tiny_batch(family, processor, batch=2)
    reference = logits(model, inputs)
    reference_generation = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    vtc.compress(model, prune(method, MOST), processor=processor)
    assert tiny_batch(family, processor, batch=2)["input_ids"].equal(inputs["input_ids"])
    assert torch.equal(logits(model, inputs), reference)
    kept = vtc.last_stats(model)["kept"]
    if method in ("pool", "downsample"):
        assert kept is None
    else:
        assert [k for (k,) in kept] == [list(range(n)) for n in vtc.last_stats(model)["visual_tokens"]]
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False),
                       reference_generation)


# ---------------------------------------------------------------------------------------------------- the rules
@pytest.mark.parametrize(("family", "method"), [case for case in CASES if case[1] != "visionzip"])
def test_the_rules_on_the_native_features(family, method):
    """Each image's tokens equal an independent implementation of the rule on the unpatched model's packed tokens."""
    model, processor = compressed(family, prune(method, KEEP, seed=3) if method == "random" else prune(method, KEEP))
    inputs = tiny_batch(family, processor, batch=2)
    pruned = items_of(model, inputs)
    logits(model, inputs)
    kept = vtc.last_stats(model)["kept"]
    newline = model.model.image_newline
    for index, (tokens, full) in enumerate(zip(pruned, native_items(family, inputs), strict=True)):
        if method == "random":
            expected = torch.randperm(len(full), generator=torch.Generator().manual_seed(3))[:KEEP].sort().values
            assert kept[index][0] == expected.tolist()
        elif method == "divprune":
            assert kept[index][0] == divprune_reference(full, KEEP)
        if method != "pool":
            assert torch.equal(tokens, full[kept[index][0]])
            continue
        base, (rows, cols) = native_structure(full, newline)
        shares = largest_remainder_split(KEEP, (base, rows * (cols + 1)))
        bh, bw = pool_grid((8, 8), shares[0])
        oh, ow = joined_pool_grid((rows, cols), shares[1])
        grid = full[base:].reshape(rows, cols + 1, -1)

        def pooled(cells, size):
            return F.adaptive_avg_pool2d(cells.permute(2, 0, 1)[None], size)[0].permute(1, 2, 0)

        joined = torch.cat([pooled(grid[:, :cols], (oh, ow)), grid[:oh, cols:]], dim=1)
        expected = torch.cat([pooled(full[:base].reshape(8, 8, -1), (bh, bw)).flatten(0, 1), joined.flatten(0, 1)])
        torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-6)


def test_the_processor_count_is_the_models_native_packing_for_every_size():
    """The count function reads the packing arithmetic; the model packs with its own code: they agree."""
    for family in FAMILIES:
        model, processor = build_tiny_model(family), build_tiny_processor(family)
        adapter = get_adapter(model)
        for size in [(20, 24), (24, 20), (32, 64), (64, 32), (64, 64), (90, 30), (30, 90), (100, 70), (7, 50)]:
            inputs = processor(images=tiny_images([size]), text=[image_placeholder(family)], return_tensors="pt")
            crops = adapter._crops_per_image(adapter.image_inputs_from(inputs))
            native = adapter.native_template(inputs["image_sizes"][0].tolist(), crops[0])
            assert sum(span.length for span in native) == len(items_of(model, inputs)[0]), (family, size)


# ---------------------------------------------------------------------------------------------------- runtime
@pytest.mark.parametrize(("family", "method"), CASES)
def test_a_batch_equals_its_samples_alone(family, method):
    model, processor = compressed(family, prune(method, KEEP))
    batch, alone = three_samples(family, processor)
    check_batch_equals_singles(model, method, batch, alone)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_sdpa_and_eager_agree(family, method):
    def run(attn):
        model, processor = compressed(family, prune(method, KEEP), attn)
        inputs = tiny_batch(family, processor, batch=2)
        real = inputs["attention_mask"].bool()
        return logits(model, inputs)[real], vtc.last_stats(model)["kept"]

    check_sdpa_and_eager_agree(run)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_is_seeded(family):
    def kept(seed):
        model, processor = compressed(family, prune("random", KEEP, seed=seed))
        inputs = tiny_batch(family, processor, batch=2)
        return logits(model, inputs), vtc.last_stats(model)["kept"]

    first, again, other = kept(0), kept(0), kept(1)
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert first[1] != other[1]


@pytest.mark.parametrize("method", ["pool", "random"])
def test_several_images_in_one_onevision_sample_are_pruned_base_view_by_base_view(method):
    model, processor = compressed("llava_onevision", prune(method, 17))
    images = tiny_images([(64, 40), (32, 64), (40, 40)])
    placeholder = image_placeholder("llava_onevision")
    texts = [f"{placeholder} w3 {placeholder} w5 .", f"w7 {placeholder} w8 ."]
    inputs = processor(images=[images[:2], images[2:]], text=texts, return_tensors="pt", padding=True)
    native = [len(t) for t in native_items("llava_onevision", inputs)]
    assert native[:2] == [65, 65] and native[2] > 65  # a base view and its newline each; the lone image is tiled
    counts = [len(t) for t in items_of(model, inputs)]
    assert counts[:2] == [17, 17] and (method == "pool" or counts[2] == 17)  # pool: 4x4 + 1
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == counts
    logits(model, inputs)
    assert vtc.last_stats(model)["visual_tokens"] == [34, counts[2]]


@pytest.mark.parametrize("method", ["pool", "random"])
def test_onevision_shrinks_many_crops_before_pruning(method):
    """With `anyres_max_1` the joined grid of a 2x2-crop image is resized down bilinearly: pruning sees the result."""
    model, processor = compressed("llava_onevision", prune(method, 0.5), vision_aspect_ratio="anyres_max_1")
    inputs = tiny_batch("llava_onevision", processor, batch=2, image_sizes=[(64, 64), (64, 40)])
    unpatched = build_tiny_model("llava_onevision")
    unpatched.config.vision_aspect_ratio = "anyres_max_1"
    native = [len(t) for t in items_of(unpatched, inputs)]
    assert native[0] < MOST  # the joined 16x16 grid was resized
    counts = [len(t) for t in items_of(model, inputs)]
    if method == "random":
        assert counts == [-(-n // 2) for n in native]
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == counts
    logits(model, inputs)
    assert vtc.last_stats(model)["visual_tokens"] == counts


@pytest.mark.parametrize("method", ["divprune", "visionzip"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_copy_is_an_independent_pruned_model(family, method):
    model, processor = compressed(family, prune(method, KEEP))
    inputs = tiny_batch(family, processor, batch=2)
    restored = pickle.loads(pickle.dumps(model))  # before any forward: transformers adds unpicklable hooks
    pruned = logits(model, inputs)
    assert vtc.get_config(restored) == vtc.get_config(model) and torch.equal(logits(restored, inputs), pruned)
    twin = copy.deepcopy(model)
    assert torch.equal(logits(twin, inputs), pruned)
    assert vtc.last_stats(twin)["kept"] == vtc.last_stats(model)["kept"]
    vtc.unpatch(twin)
    assert vtc_hooks(twin) == [] and vtc.is_compressed(model)
    assert torch.equal(logits(model, inputs), pruned)


IMAGE_FLAGS = ({}, {"output_hidden_states": True}, {"output_attentions": True})


@pytest.mark.parametrize(("family", "method"), CASES)
def test_get_image_features_keeps_the_model_contract(family, method):
    model, processor = build_tiny_model(family, "eager"), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    arguments = {k: inputs[k] for k in ("image_sizes", "batch_num_images") if k in inputs}

    def outputs():
        with torch.no_grad():
            return [(model.model.get_image_features(inputs["pixel_values"], return_dict=True, **arguments, **flags),
                     model.model.get_image_features(inputs["pixel_values"], return_dict=False, **arguments, **flags))
                    for flags in IMAGE_FLAGS]

    references = outputs()
    vtc.compress(model, prune(method, KEEP), processor=processor)
    for (output, as_tuple), (reference, reference_tuple) in zip(outputs(), references):
        assert type(output) is type(reference) and type(as_tuple) is type(reference_tuple) is tuple
        assert identical(as_tuple, output.to_tuple())
        assert list(output.keys()) == list(reference.keys())
        for name in output.keys():
            if name != "pooler_output":
                assert identical(output[name], reference[name]), name
        assert type(output.pooler_output) is type(reference.pooler_output)
        assert len(output.pooler_output) == len(reference.pooler_output)
        assert all(len(t) < len(r) for t, r in zip(output.pooler_output, reference.pooler_output))


# ---------------------------------------------------------------------------------------------------- downsample
def tokens_per_pinpoint(family, inputs):
    """Per image of `inputs`, `{pinpoint: the tokens the unpatched model makes for it tiled to that pinpoint}`."""
    model = build_tiny_model(family)
    counts = [{} for _ in inputs["image_sizes"]]
    for pinpoint in model.config.image_grid_pinpoints:
        model.config.image_grid_pinpoints = [pinpoint]
        for image, tokens in zip(counts, items_of(model, inputs)):
            image[tuple(pinpoint)] = len(tokens)
    return counts


@pytest.mark.parametrize("keep", [130, 0.5, 0.3])
@pytest.mark.parametrize("family", FAMILIES)
def test_downsample_gives_images_fewer_crops(family, keep):
    """Each image gets the pinpoint the family's own choice picks among those within its budget (or, where none is,
    among those that make the fewest tokens): the count is the unpatched model's at that pinpoint."""
    inputs = tiny_batch(family, build_tiny_processor(family), batch=2)
    native = [len(t) for t in native_items(family, inputs)]
    per_pinpoint = tokens_per_pinpoint(family, inputs)
    expected = []
    for size, n, counts in zip(inputs["image_sizes"].tolist(), native, per_pinpoint):
        budget = vtc.PruneConfig(method="downsample", keep=keep).kept_count(n)
        allowed = [p for p, c in counts.items() if c <= budget]
        allowed = allowed or [p for p, c in counts.items() if c == min(counts.values())]
        expected.append(counts[select_best_resolution(size, allowed)])
    model, processor = compressed(family, prune("downsample", keep))
    inputs = tiny_batch(family, processor, batch=2)
    counts = [len(t) for t in items_of(model, inputs)]
    assert counts == expected and counts != native
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == counts
    assert inputs["pixel_values"].shape[1] < 5  # fewer crops than the native 1 + 4
    logits(model, inputs)
    assert vtc.last_stats(model)["visual_tokens"] == counts and vtc.last_stats(model)["kept"] is None
    vtc.unpatch(model)
    assert tiny_batch(family, processor, batch=2)["pixel_values"].shape[1] == 5


# ---------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("family", "config", "message"), [
    ("llava_next", prune("random", MOST + 1), f"at most {MOST}: the model makes at most {MOST} tokens per image"),
    ("llava_onevision", prune("pool", MOST + 1), f"at most {MOST}"),
    ("llava_next", prune("downsample", 63), f"an int in 64..{MOST} with method='downsample'"),
    ("llava_onevision", prune("downsample", MOST + 1), f"an int in 64..{MOST}"),
    ("llava_next", vtc.VTCConfig(prune=vtc.PruneConfig(method="downsample", keep=0.5), rvtc=vtc.RVTCConfig()),
     "both choose how many tiles"),
    ("llava_onevision", vtc.VTCConfig(prune=vtc.PruneConfig(method="visionzip", keep=0.5), rvtc=vtc.RVTCConfig()),
     "another method together with rvtc on this family"),
    ("llava_next", prune("visionzip", MOST + 1), f"at most {MOST}"),
])
def test_a_refused_value_is_a_config_error_and_leaves_the_model_untouched(family, config, message):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reference = logits(model, inputs)
    with pytest.raises(vtc.ConfigError, match=message):
        vtc.compress(model, config, processor=processor)
    assert not vtc.is_compressed(model) and vtc_hooks(model) == []
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], t) for name, t in before.items())
    again = tiny_batch(family, processor, batch=2)
    assert again.keys() == inputs.keys() and all(torch.equal(again[k], inputs[k]) for k in inputs)
    assert torch.equal(logits(model, inputs), reference)


def test_keep_zero_and_a_cls_token_in_the_grids_are_refused():
    with pytest.raises(vtc.ConfigError, match="keep"):
        vtc.PruneConfig(method="random", keep=0)
    model, processor = build_tiny_model("llava_next"), build_tiny_processor("llava_next")
    model.config.vision_feature_select_strategy = "full"  # each crop's CLS token joins its grid
    with pytest.raises(vtc.ConfigError, match="vision_feature_select_strategy='full'"):
        vtc.compress(model, prune("random", 8), processor=processor)
    assert not vtc.is_compressed(model)
    with pytest.raises(vtc.ConfigError, match="one image_grid_pinpoints entry"):
        model, processor = build_tiny_model("llava_next"), build_tiny_processor("llava_next")
        model.config.image_grid_pinpoints = [[64, 64]]
        vtc.compress(model, prune("downsample", 100), processor=processor)
    assert not vtc.is_compressed(model)


# ---------------------------------------------------------------------------------------------------- composition
@pytest.mark.parametrize("method", ["pool", "random"])
@pytest.mark.parametrize("family", FAMILIES)
def test_with_rvtc_and_lvtc(family, method):
    """RVTC chooses each image's crops, pruning reduces what they make; LVTC pools the pruned tokens (the pooled grids
    with their newline tokens, or runs of the kept tokens)."""
    rvtc = vtc.RVTCConfig(mode="budget", max_visual_tokens=150, max_tiles=4)
    model, processor = compressed(family, vtc.VTCConfig(rvtc=rvtc))
    unpruned = [len(t) for t in items_of(model, tiny_batch(family, processor, batch=2))]
    model, processor = compressed(family, vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=0.5), rvtc=rvtc))
    inputs = tiny_batch(family, processor, batch=2)
    assert inputs["pixel_values"].shape[1] < 5  # RVTC gave the images fewer crops
    counts = [len(t) for t in items_of(model, inputs)]
    assert counts == [-(-n // 2) for n in unpruned] if method == "random" else all(map(int.__lt__, counts, unpruned))
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == counts
    logits(model, inputs)
    assert vtc.last_stats(model)["visual_tokens"] == counts

    lvtc = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4)
    model, processor = compressed(family, vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=KEEP), lvtc=lvtc))
    batch, alone = three_samples(family, processor)
    batched = logits(model, batch, use_cache=True)
    assert vtc.last_stats(model)["layer_seq_lens"][1] < batch["input_ids"].shape[1]
    for index, inputs in enumerate(alone):
        single = logits(model, inputs)[0]
        torch.testing.assert_close(batched[index, -single.shape[0]:], single, rtol=0, atol=1e-5)
