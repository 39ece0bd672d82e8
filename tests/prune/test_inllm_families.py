"""Pruning inside the decoder (FastV, DART, PyramidDrop) on every family: the kept tokens equal independent
references computed from the unpatched model's own tensors (FastV: eager attention with `output_attentions=True`),
the layers from the first stage on run shorter and cache shorter, a left-padded batch equals its samples alone,
cached `generate` equals an uncached forward, sdpa equals eager, and keeping every token is the unpatched model."""

import pytest
import torch
from inllm_helpers import (
    METHODS,
    config,
    counts,
    dart_reference,
    dropped_positions,
    fastv_reference,
    items,
    masked_logits,
    pdrop_reference,
    stage_layers,
)
from prune_helpers import with_positions
from references import append_tokens, vtc_hooks

import vtc
from vtc.registry import get_adapter
from vtc.testing import (
    TINY_FAMILIES,
    build_tiny_model,
    build_tiny_processor,
    default_image_sizes,
    image_placeholder,
    tiny_batch,
    tiny_images,
)

CASES = [(family, method) for family in TINY_FAMILIES for method in METHODS]
NUM_LAYERS = 4
NATIVE = {"llava": 64, "internvl": 16}  # the tokens of one image or tile where every one has the same
PROMPTS = ("w3 w7 {image} describe the image .", "what is in this picture ? w11 w12 w13 {image} w5 w8 w9 .")


def run(model, inputs, **kwargs):
    """Logits (explicit positions from the padding mask where the family numbers 0..S-1) and `last_stats`."""
    inputs = dict(inputs) if get_adapter(model).uses_mrope else with_positions(inputs)
    with torch.no_grad():
        out = model(**inputs, **kwargs)
    return out, vtc.last_stats(model) if vtc.is_compressed(model) else None


def single(family, processor, index):
    """Sample `index` of `tiny_batch(family, processor, batch=2)`, processed alone."""
    image = tiny_images(default_image_sizes(family, 2))[index]
    return processor(images=[image], text=[PROMPTS[index].replace("{image}", image_placeholder(family))],
                     return_tensors="pt")


def expected_lengths(family, method, inputs, layout):
    """Per decoder layer, the (padded) sequence length: the prompt before the first stage, then the longest row
    after each stage (a row drops `native - count` tokens per item)."""
    seq_len, layers = inputs["input_ids"].shape[1], stage_layers(method)
    lengths = [seq_len] * NUM_LAYERS
    for stage, (start, end) in enumerate(zip(layers, [*layers[1:], NUM_LAYERS])):
        rows = [seq_len - sum(len(p) - counts(method, len(p))[stage] for p in items(family, sample))
                for sample in layout]
        lengths[start:end] = [max(rows)] * (end - start)
    return lengths


@pytest.mark.parametrize(("family", "method"), CASES)
def test_kept_tokens_equal_the_reference_computed_from_the_unpatched_model(family, method):
    model, processor = build_tiny_model(family, "eager"), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    rotary = []
    handle = get_adapter(model).rotary_embedding.register_forward_hook(lambda m, a, out: rotary.append(out))
    unpatched, _ = run(model, inputs, output_attentions=True, output_hidden_states=True, use_cache=True)
    handle.remove()
    model.set_attn_implementation("sdpa")  # the pruned model reads no attention weights: SDPA stays on
    vtc.compress(model, config(method), processor=processor)
    out, stats = run(model, inputs, output_hidden_states=True)
    layout = stats["visual_layout"]
    assert [len(sample) for sample in stats["kept"]] == [len(items(family, sample)) for sample in layout]
    if method == "fastv":
        assert stats["kept"] == fastv_reference(family, inputs, layout, unpatched.attentions)
    elif method == "dart":
        assert stats["kept"] == dart_reference(family, model, inputs, layout, unpatched)
    else:
        assert stats["kept"] == pdrop_reference(family, model, inputs, layout, unpatched.attentions, rotary[0],
                                                out.hidden_states, stats["kept"])
    # the layers from the first stage on see the shorter sequence; the output is full length again
    assert stats["layer_seq_lens"] == expected_lengths(family, method, inputs, layout)
    # hidden_states[i + 1] is layer i's output: the last layer's is full length again
    assert [h.shape[1] for h in out.hidden_states[1:]] == [*stats["layer_seq_lens"][:-1], out.logits.shape[1]]
    assert out.logits.shape == unpatched.logits.shape


@pytest.mark.parametrize(("family", "method"), CASES)
def test_batch_equals_singles_and_cached_generate_equals_a_forward(family, method):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, config(method), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)  # left-padded; different visual counts where the family can
    real = inputs["attention_mask"].bool()
    seq_len = inputs["input_ids"].shape[1]
    out, stats = run(model, inputs, use_cache=True)
    lengths = stats["layer_seq_lens"]
    assert min(lengths) < seq_len and lengths[0] == seq_len
    assert [out.past_key_values.get_seq_length(i) for i in range(NUM_LAYERS)] == lengths
    for index in range(2):
        alone, alone_stats = run(model, single(family, processor, index))
        torch.testing.assert_close(out.logits[index][real[index]], alone.logits[0], rtol=0, atol=1e-5)
        assert stats["kept"][index] == alone_stats["kept"][0]

    # cached decoding on the shorter caches equals an uncached forward over the same tokens that masks the dropped
    # tokens out of the pruned layers (a no-cache forward of the pruned model would rank with another last token)
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    assert vtc.last_stats(model)["kept"] == stats["kept"]  # generate's prefill pruned the same way
    extended = append_tokens(inputs, generated.sequences[:, :-1])
    extended = extended if get_adapter(model).uses_mrope else with_positions(extended)
    dropped = dropped_positions(family, stats["visual_layout"], stats["kept"], method)
    uncached = masked_logits(build_tiny_model(family, "eager"), extended, method, dropped)
    for step, step_logits in enumerate(generated.logits):
        torch.testing.assert_close(step_logits, uncached[:, seq_len - 1 + step], rtol=0, atol=1e-4)
    # and the prefill: every kept position of the prompt (the dropped ones keep their state from when they left)
    for row in range(2):
        kept = real[row].clone()
        kept[dropped[-1][row]] = False
        torch.testing.assert_close(out.logits[row][kept], uncached[row, :seq_len][kept], rtol=0, atol=1e-4)
    cache = generated.past_key_values  # every layer grew by the two tokens fed back
    assert [cache.get_seq_length(i) for i in range(NUM_LAYERS)] == [n + 2 for n in lengths]


@pytest.mark.parametrize(("family", "method"), CASES)
def test_sdpa_equals_eager(family, method):
    processor = build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    real = inputs["attention_mask"].bool()
    results = []
    for attn in ("sdpa", "eager"):
        model = build_tiny_model(family, attn)
        vtc.compress(model, config(method), processor=processor)
        results.append(run(model, inputs))
    (sdpa, sdpa_stats), (eager, eager_stats) = results
    assert sdpa_stats["kept"] == eager_stats["kept"]
    assert sdpa_stats["layer_seq_lens"] == eager_stats["layer_seq_lens"]
    torch.testing.assert_close(sdpa.logits[real], eager.logits[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_keeping_every_token_is_the_unpatched_model(family, method):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    reference, _ = run(model, inputs)
    expected = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    keys = list(model.state_dict())
    # every token of an image (a tile on InternVL); the images of the other families bring fewer than 4096 tokens
    vtc.compress(model, config(method, keep=NATIVE.get(family, 4096)), processor=processor)
    out, stats = run(model, inputs)
    assert torch.equal(out.logits, reference.logits)
    assert stats["layer_seq_lens"] == [inputs["input_ids"].shape[1]] * NUM_LAYERS and stats["kept"] is None
    assert torch.equal(model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False), expected)

    vtc.compress(model, config(method), processor=processor)  # pruning for real, then undone
    assert not torch.equal(run(model, inputs)[0].logits, reference.logits)
    vtc.unpatch(model)
    assert vtc_hooks(model) == [] and list(model.state_dict()) == keys and not hasattr(model, "_vtc_state")
    assert torch.equal(run(model, inputs)[0].logits, reference.logits)
