"""A compressed model copies, pickles and saves as what it is: an independent, working compressed model.

Every family with every component on (RVTC where the family has tiles). The vtc parameters are perturbed first, so
that an output computed with another model's (or the uncompressed model's) parameters cannot pass for the right one.
"""

import copy
import io
import json

import pytest
import torch
from safetensors import safe_open

import vtc
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch
from vtc.training import CONFIG_NAME, WEIGHTS_NAME


def compressed(family, *, measure_plain=True):
    """A tiny model of `family` with all its components on and non-trivial vtc parameters, its processor, a batch,
    and the uncompressed logits (`None` unless `measure_plain`: a model that ran no forward yet pickles)."""
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    plain = logits(model, tiny_batch(family, processor, batch=2)) if measure_plain else None
    rvtc = None if family == "llava" else vtc.RVTCConfig(mode="area", max_tiles=4)
    config = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4),
                           lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3, restore="add"), rvtc=rvtc)
    vtc.compress(model, config, processor=processor)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "vtc_" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model, processor, tiny_batch(family, processor, batch=2), plain


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def vtc_parameters(model):
    return {name: p for name, p in model.named_parameters() if "vtc_" in name}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_deep_copy_is_an_independent_compressed_model(family):
    model, processor, inputs, plain = compressed(family)
    reference = logits(model, inputs)
    assert not torch.equal(reference, plain)

    clone = copy.deepcopy(model)
    assert torch.equal(logits(clone, inputs), reference)
    assert vtc.last_stats(clone)["layer_seq_lens"] == vtc.last_stats(model)["layer_seq_lens"]

    # the copy trains its own parameters
    vtc.mark_only_vtc_trainable(clone)
    clone(**inputs).logits.float().square().mean().backward()
    own, originals = vtc_parameters(clone), vtc_parameters(model)
    assert own.keys() == originals.keys() and own
    assert all(own[name] is not originals[name] for name in own)
    assert all(own[name].grad is not None for name in own)
    assert all(p.grad is None for p in originals.values())

    # unpatching the copy leaves the original compressed
    vtc.unpatch(clone)
    clone.zero_grad()
    unpatched_inputs = tiny_batch(family, build_tiny_processor(family), batch=2)
    assert not vtc.is_compressed(clone) and torch.equal(logits(clone, unpatched_inputs), plain)
    assert vtc.is_compressed(model) and torch.equal(logits(model, inputs), reference)
    assert torch.equal(logits(model, tiny_batch(family, processor, batch=2)), reference)  # its processor too


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_pickled_compressed_model_loads_back_compressed(family):
    model, processor, inputs, _ = compressed(family, measure_plain=False)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # before any forward: transformers adds unpicklable hooks of its own at the first one
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert vtc.is_compressed(loaded)
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))
    vtc.unpatch(loaded)
    assert vtc.is_compressed(model) and not vtc.is_compressed(loaded)
    assert not [name for name, _ in loaded.named_parameters() if "vtc_" in name]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_pretrained_writes_a_clean_backbone_and_the_vtc_files(family, tmp_path):
    model, processor, inputs, plain = compressed(family)
    reference = logits(model, inputs)
    model.save_pretrained(tmp_path)

    assert vtc.is_compressed(model) and torch.equal(logits(model, inputs), reference)  # still compressed
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as backbone:
        assert not [key for key in backbone.keys() if "vtc_" in key]
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == vtc.get_config(model).to_dict()
    assert (tmp_path / WEIGHTS_NAME).exists()

    loaded, info = type(model).from_pretrained(tmp_path, local_files_only=True, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    fresh_processor = build_tiny_processor(family)
    assert torch.equal(logits(loaded.eval(), tiny_batch(family, fresh_processor, batch=2)), plain)
    vtc.load_pretrained(loaded, tmp_path, processor=fresh_processor)
    assert torch.equal(logits(loaded, tiny_batch(family, fresh_processor, batch=2)), reference)
