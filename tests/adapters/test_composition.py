"""All three components at once, on every family: counts agree, the middle layers run short, generate works."""

import pytest
import torch

import vtc
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch


def _observe_layer_lengths(model) -> list[list[int]]:
    """Per decoder layer, the sequence length of every call it runs (a test hook, not vtc's bookkeeping)."""
    seen = []
    for layer in model._vtc_state.adapter.decoder_layers:
        lengths = []
        seen.append(lengths)
        # after vtc's own pre-hooks: the hidden states the layer runs on
        layer.register_forward_pre_hook(lambda _module, args, kwargs, lengths=lengths: lengths.append(
            (args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True)
    return seen


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_rvtc_pvtc_and_lvtc_together(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    with torch.no_grad():
        reference = model(**tiny_batch(family, processor, batch=2)).logits
    rvtc = None if family == "llava" else vtc.RVTCConfig(mode="area", max_tiles=4)  # LLaVA-1.5 has no tiles
    config = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3),
                           rvtc=rvtc)
    vtc.compress(model, config, processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    seen = _observe_layer_lengths(model)
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
    stats = vtc.last_stats(model)
    assert stats["visual_tokens"] == (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    full, short = stats["layer_seq_lens"][0], stats["layer_seq_lens"][1]
    assert full == inputs["input_ids"].shape[1] and short < full and stats["layer_seq_lens"][3] == full
    # the lengths vtc reports are the ones the layers processed in the prefill
    assert stats["layer_seq_lens"] == [lengths[0] for lengths in seen]

    vtc.unpatch(model)
    with torch.no_grad():
        assert torch.equal(model(**tiny_batch(family, processor, batch=2)).logits, reference)
