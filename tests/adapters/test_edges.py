"""Edge cases around the forward: a processor two models would share, image sizes without pixels, and LVTC's exact
identity at ratio 1 on padded batches in every dtype."""

import copy

import pytest
import torch

import vtc
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch

PVTC = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))


@pytest.mark.parametrize("family", ["llava", "internvl", "qwen2_vl"])
def test_a_processor_patched_by_one_model_is_refused_by_a_second(family):
    first, second, processor = build_tiny_model(family), build_tiny_model(family), build_tiny_processor(family)
    plain_length = tiny_batch(family, processor)["input_ids"].shape[1]
    before = {k: v.clone() for k, v in second.state_dict().items()}
    vtc.compress(first, PVTC, processor=processor)
    with pytest.raises(vtc.ConfigError, match="its own processor"):
        vtc.compress(second, PVTC, processor=processor)
    assert not vtc.is_compressed(second)
    assert all(torch.equal(v, before[k]) for k, v in second.state_dict().items())

    own = copy.deepcopy(build_tiny_processor(family))  # a processor of its own works
    vtc.compress(second, PVTC, processor=own)
    vtc.unpatch(first)  # in any order: each restores only its own processor
    assert tiny_batch(family, processor)["input_ids"].shape[1] == plain_length
    assert tiny_batch(family, own)["input_ids"].shape[1] < plain_length
    vtc.unpatch(second)
    assert tiny_batch(family, own)["input_ids"].shape[1] == plain_length


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_image_sizes_without_pixels_is_a_text_only_forward(family):
    """transformers treats a forward with `image_sizes` (or a grid) but no `pixel_values` as text only; so does vtc,
    e.g. an `inputs_embeds` forward built from the prompt's embeddings."""
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    without_pixels = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values")}
    with torch.no_grad():
        reference = model(inputs_embeds=embeds, **without_pixels).logits
        vtc.compress(model, vtc.VTCConfig())
        assert torch.equal(model(inputs_embeds=embeds, **without_pixels).logits, reference)
        vtc.compress(model, vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3)))
        assert torch.equal(model(inputs_embeds=embeds, **without_pixels).logits, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lvtc_ratio_1_is_the_unpatched_model_on_a_left_padded_batch(family, dtype):
    model, processor = build_tiny_model(family).to(dtype), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    assert not bool(inputs["attention_mask"].all())  # really padded
    with torch.no_grad():
        reference = model(**inputs).logits
        for restore in ("delta", "upsample"):
            vtc.compress(model, vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=1,
                                                                  restore=restore)))
            assert torch.equal(model(**inputs).logits, reference)
