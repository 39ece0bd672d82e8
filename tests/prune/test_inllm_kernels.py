"""Pruning inside the decoder keeps SDPA's fast kernels: an unpadded prompt's shortened layers call SDPA without a
mask (causal, as the unpatched model's layers do), so flash can run them; on a CUDA device, flash forced gives what
the default backend gives."""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import vtc
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

CASES = [("llava", "fastv"), ("llava", "pdrop"), ("qwen2_vl", "dart"), ("qwen3_vl", "fastv")]


class SDPAMasks(TorchFunctionMode):
    """Each call of `F.scaled_dot_product_attention`: whether it was given a mask."""

    def __init__(self):
        super().__init__()
        self.masked = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.masked.append((kwargs.get("attn_mask", args[3] if len(args) > 3 else None)) is not None)
        return func(*args, **kwargs)


def pruned(family, method):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=0.5)), processor=processor)
    return model, processor


@pytest.mark.parametrize(("family", "method"), CASES)
def test_an_unpadded_prompt_s_pruned_layers_call_sdpa_without_a_mask(family, method):
    model, processor = pruned(family, method)
    inputs = tiny_batch(family, processor, batch=1)
    calls = SDPAMasks()
    with torch.no_grad(), calls:
        model(**inputs)
    lengths = vtc.last_stats(model)["layer_seq_lens"]
    assert lengths[-1] < lengths[0]  # the last layers ran shortened
    language_calls = calls.masked[-len(lengths):]  # the vision tower's calls come first
    assert language_calls == [False] * len(lengths)


def test_a_left_padded_batch_still_masks_its_padding():
    model, processor = pruned("llava", "fastv")
    inputs = tiny_batch("llava", processor, batch=2)
    assert not bool(inputs["attention_mask"].all())
    calls = SDPAMasks()
    with torch.no_grad(), calls:
        model(**inputs)
    assert all(calls.masked[-4:])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("family", "method"), CASES)
def test_flash_forced_gives_what_the_default_backend_gives(family, method):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, processor = pruned(family, method)
    model.to("cuda", torch.bfloat16)
    inputs = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v
              for k, v in tiny_batch(family, processor, batch=1).items()}
    with torch.no_grad():
        default = model(**inputs).logits.float()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises where any call needs another kernel (a mask)
            flash = model(**inputs).logits.float()
            generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    # bfloat16 keeps 8 bits of mantissa: two kernels summing in another order differ by about 1e-2
    assert (flash - default).abs().mean() / default.abs().mean() < 2e-2
