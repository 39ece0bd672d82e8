"""PVTC in bfloat16 on a CUDA device (skipped where there is none): warm ratio=1 parity, counts and generation."""

import pytest
import torch

import vtc
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def on_cuda(inputs):
    return {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_bfloat16_warm_ratio_1_parity_and_ratio_4_generation(family, attn):
    model = build_tiny_model(family, attn).to("cuda", torch.bfloat16)
    processor = build_tiny_processor(family)
    inputs = on_cuda(tiny_batch(family, processor, batch=2))
    with torch.no_grad():
        reference = model(**inputs).logits

    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=1)), processor=processor)
    assert next(model.model.vtc_pvtc.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)

    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    compressed = on_cuda(tiny_batch(family, processor, batch=2))
    out = model.generate(**compressed, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == compressed["input_ids"].shape[1] + 3
    assert sum(vtc.last_stats(model)["visual_tokens"]) * 3 <= int((inputs["input_ids"] == model.config.image_token_id).sum())
