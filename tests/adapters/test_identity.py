"""Compress with every component off changes nothing, and unpatch restores the model bit for bit.

Runs for every family × {sdpa, eager} × {batch 1, batch 2 left-padded with different images}.
"""

import pytest
import torch
from references import vtc_hooks

import vtc
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch

ATTENTION = ("sdpa", "eager")


def instance_attributes(model):
    return {name: sorted(vars(m)) for name, m in model.named_modules()}


def vtc_leftovers(model):
    leftovers = [n for n, _ in model.named_modules() if "vtc_" in n]
    leftovers += [n for n, _ in model.named_parameters() if "vtc_" in n]
    leftovers += [n for n, _ in model.named_buffers() if "vtc_" in n]
    for name, module in model.named_modules():
        leftovers += [f"{name}.{a}" for a in vars(module) if a.startswith("vtc_") or a == "_vtc_state"]
    return leftovers


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_identity_compress_and_exact_unpatch(family, attn, batch):
    model = build_tiny_model(family, attn)
    processor = build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=batch)
    with torch.no_grad():
        reference = model(**inputs).logits
    # transformers installs its output-capture hooks and flags lazily, on first use: let it do so before the snapshot
    model.generate(**inputs, max_new_tokens=2, do_sample=False)
    keys, attributes = list(model.state_dict()), instance_attributes(model)

    vtc.compress(model, vtc.VTCConfig(), processor=processor)
    assert vtc.is_compressed(model) and vtc_hooks(model)
    with torch.no_grad():
        compressed = model(**inputs).logits
    torch.testing.assert_close(compressed, reference, rtol=0, atol=0)

    stats = vtc.last_stats(model)
    image_token = vtc.api.get_adapter_of(model).image_token_id
    placeholders = (inputs["input_ids"] == image_token).sum(1).tolist()
    assert stats["visual_tokens"] == placeholders
    assert stats["layer_seq_lens"] == [inputs["input_ids"].shape[1]] * len(stats["layer_seq_lens"])
    for row, sample_layout in zip(inputs["input_ids"], stats["visual_layout"]):
        covered = sorted(p for span in sample_layout for p in span.positions())
        assert covered == torch.nonzero(row == image_token).flatten().tolist()

    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    assert vtc.last_stats(model)["decode_steps"] == 2

    vtc.unpatch(model)
    assert not vtc.is_compressed(model)
    with torch.no_grad():
        restored = model(**inputs).logits
    assert torch.equal(restored, reference)
    assert list(model.state_dict()) == keys
    assert vtc_hooks(model) == []
    assert instance_attributes(model) == attributes
    assert vtc_leftovers(model) == []


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_generate_matches_unpatched_generate(family):
    model = build_tiny_model(family)
    processor = build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    reference = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    vtc.compress(model, vtc.VTCConfig(), processor=processor)
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False), reference)
