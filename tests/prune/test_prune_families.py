"""Pruning on LLaVA-1.5 and InternVL × every method that acts on the model's tokens: the exact budget at the language
model's input, processor and model agreeing, `keep` at the native count being the unpatched model, batch == singles,
cached == uncached `generate`, sdpa == eager, seeded `random`, refused pairs leaving the model untouched, `unpatch`,
copies, and `get_image_features` keeping transformers' contract."""

import copy
import pickle

import pytest
import torch
from prune_helpers import (
    FAMILIES,
    GRID,
    KEEP,
    MODEL_METHODS,
    check_batch_equals_singles,
    check_generate_then_unpatch,
    check_kept,
    check_sdpa_and_eager_agree,
    compressed,
    items_of,
    logits,
    native_count,
    per_item,
    placeholder_runs,
    prune,
    three_samples,
    with_positions,
)
from references import identical, vtc_hooks

import vtc
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

ATTENTION = ("sdpa", "eager")
CASES = [(family, method) for family in FAMILIES for method in MODEL_METHODS]


@pytest.mark.parametrize("keep_kind", ["int", "fraction"])
@pytest.mark.parametrize(("family", "method"), CASES)
def test_budget_agreement_generate_and_unpatch(family, method, keep_kind):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    reference_inputs = tiny_batch(family, processor, batch=2)
    reference = logits(model, reference_inputs)
    model.generate(**reference_inputs, max_new_tokens=1)  # transformers installs its lazy output-capture hooks
    keys = list(model.state_dict())
    config = prune(method, KEEP[family] if keep_kind == "int" else 0.3)
    vtc.compress(model, config, processor=processor)

    inputs = tiny_batch(family, processor, batch=2)  # batch 2: different tile counts on InternVL
    image_token = model.config.image_token_id
    count = per_item(family, config)
    assert count < native_count(family)
    features = items_of(model, inputs)
    assert all(f.shape[0] == count for f in features)  # the model makes what the processor writes
    runs = placeholder_runs(inputs["input_ids"], image_token)
    assert runs == [count] * len(runs) if family == "llava" else sum(runs) == count * len(features)

    out = model(**with_positions(inputs))
    stats = vtc.last_stats(model)
    per_sample = (inputs["input_ids"] == image_token).sum(1).tolist()
    assert stats["visual_tokens"] == per_sample and sum(per_sample) == count * len(features)
    check_kept(family, method, stats["kept"], [[count] * len(spans) for spans in stats["visual_layout"]])

    assert out.logits.shape[1] == inputs["input_ids"].shape[1]
    check_generate_then_unpatch(model, processor, family, inputs, stats, keys, reference_inputs)
    assert torch.equal(logits(model, reference_inputs), reference)


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize(("family", "method"), CASES)
def test_keep_at_the_native_count_is_the_unpatched_model(family, method, attn):
    model, processor = build_tiny_model(family, attn), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    reference = logits(model, inputs)
    reference_generation = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)

    vtc.compress(model, prune(method, native_count(family)), processor=processor)
    assert tiny_batch(family, processor, batch=2)["input_ids"].equal(inputs["input_ids"])
    assert torch.equal(logits(model, inputs), reference)
    kept = vtc.last_stats(model)["kept"]
    assert kept is None if method == "pool" else all(k == list(range(native_count(family))) for s in kept for k in s)
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False),
                       reference_generation)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_a_batch_equals_its_samples_alone(family, method):
    model, processor = compressed(family, prune(method, KEEP[family]))
    batch, alone = three_samples(family, processor)
    check_batch_equals_singles(model, method, batch, alone)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_sdpa_and_eager_agree(family, method):
    def run(attn):
        model, processor = compressed(family, prune(method, KEEP[family]), attn)
        inputs = tiny_batch(family, processor, batch=2)
        real = inputs["attention_mask"].bool()  # padding positions carry no meaning
        return logits(model, inputs)[real], vtc.last_stats(model)["kept"]

    check_sdpa_and_eager_agree(run)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_is_seeded(family):
    def kept(seed):
        model, processor = compressed(family, prune("random", KEEP[family], seed=seed))
        inputs = tiny_batch(family, processor, batch=2)
        return logits(model, inputs), vtc.last_stats(model)["kept"]

    first, again, other = kept(0), kept(0), kept(1)
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    assert first[1] != other[1]
    # every item with the same token count keeps the same positions for one seed
    assert len({tuple(k) for sample in first[1] for k in sample}) == 1


@pytest.mark.parametrize(("family", "config", "message"), [
    ("llava", prune("downsample", 16), "one fixed input resolution.*method='pool'"),
    ("llava", prune("random", 65), "at most 64: the model makes 8x8 tokens"),
    ("internvl", prune("divprune", 17), "at most 16: the model makes 4x4 tokens"),
    ("internvl", prune("downsample", 8), "16..80 with method='downsample'.*method='pool'"),
    ("internvl", vtc.VTCConfig(prune=vtc.PruneConfig(method="downsample", keep=48), rvtc=vtc.RVTCConfig()),
     "both choose how many tiles"),
])
def test_a_refused_pair_is_a_config_error_and_leaves_the_model_untouched(family, config, message):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reference = model(**inputs).logits.detach()
    with pytest.raises(vtc.ConfigError, match=message):
        vtc.compress(model, config, processor=processor)
    assert not vtc.is_compressed(model) and vtc_hooks(model) == []
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], t) for name, t in before.items())
    again = tiny_batch(family, processor, batch=2)
    assert again.keys() == inputs.keys() and again["input_ids"].equal(inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)


def test_visionzip_needs_a_single_feature_layer():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    model.config.vision_feature_layer = [-2, -1]
    with pytest.raises(vtc.ConfigError, match="vision_feature_layer=\\[-2, -1\\] is not such a layer"):
        vtc.compress(model, prune("visionzip", 16), processor=processor)
    assert not vtc.is_compressed(model)
    model, processor = compressed("llava", prune("visionzip", 16))
    with pytest.raises(vtc.ConfigError, match="vision_feature_layer=-1 is invalid"):
        model.model.get_image_features(tiny_batch("llava", processor)["pixel_values"], vision_feature_layer=-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_copy_is_an_independent_pruned_model(family):
    model, processor = compressed(family, prune("visionzip", KEEP[family]))  # the method with hooks
    inputs = tiny_batch(family, processor, batch=2)
    # before any forward: transformers adds unpicklable hooks of its own at the first one
    restored = pickle.loads(pickle.dumps(model))
    pruned = logits(model, inputs)
    assert vtc.get_config(restored) == vtc.get_config(model) and torch.equal(logits(restored, inputs), pruned)
    twin = copy.deepcopy(model)
    assert torch.equal(logits(twin, inputs), pruned)
    assert vtc.last_stats(twin)["kept"] == vtc.last_stats(model)["kept"]
    vtc.unpatch(twin)
    assert vtc_hooks(twin) == [] and vtc.is_compressed(model)
    assert torch.equal(logits(model, inputs), pruned)


def test_a_cls_token_before_the_grid_is_refused():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    model.config.vision_feature_select_strategy = "full"  # the CLS token becomes a language token
    with pytest.raises(vtc.ConfigError, match="one 8x8 token grid per image or tile"):
        vtc.compress(model, prune("random", 8), processor=processor)
    assert not vtc.is_compressed(model)


IMAGE_FLAGS = ({}, {"output_hidden_states": True}, {"output_attentions": True})


@pytest.mark.parametrize(("family", "method"), CASES)
def test_get_image_features_keeps_the_model_contract(family, method):
    model, processor = build_tiny_model(family, "eager"), build_tiny_processor(family)
    pixel_values = tiny_batch(family, processor, batch=2)["pixel_values"]

    def outputs():
        with torch.no_grad():
            return [(model.model.get_image_features(pixel_values, return_dict=True, **flags),
                     model.model.get_image_features(pixel_values, return_dict=False, **flags)) for flags in IMAGE_FLAGS]

    references = outputs()
    config = prune(method, KEEP[family])
    vtc.compress(model, config, processor=processor)
    for (output, as_tuple), (reference, reference_tuple) in zip(outputs(), references):
        assert type(output) is type(reference) and type(as_tuple) is type(reference_tuple) is tuple
        assert identical(as_tuple, output.to_tuple())  # return_dict=False: the same fields, in order
        assert list(output.keys()) == list(reference.keys())
        for name in output.keys():
            if name != "pooler_output":
                assert identical(output[name], reference[name]), name
        tokens = output.pooler_output
        assert type(tokens) is type(reference.pooler_output)
        assert [t.shape for t in tokens] == [(per_item(family, config), t.shape[-1]) for t in reference.pooler_output]


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_indices_name_the_native_tokens_that_reach_the_language_model(family):
    model, processor = compressed(family, prune("divprune", KEEP[family]))
    inputs = tiny_batch(family, processor, batch=2)
    pruned = items_of(model, inputs)
    logits(model, inputs)
    kept = [indices for sample in vtc.last_stats(model)["kept"] for indices in sample]
    with vtc.disabled(model):  # the model's own method: every native token
        native = items_of(model, inputs)
    assert all(full.shape[0] == GRID[family][0] * GRID[family][1] for full in native)
    for tokens, full, indices in zip(pruned, native, kept, strict=True):
        assert torch.equal(tokens, full[indices])
