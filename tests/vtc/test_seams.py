"""Canaries for the transformers contracts vtc's core reads (`vtc.seams`): when a release moves one, these fail with
the seam's name, before the component tests fail by the hundred."""

import inspect

import pytest
import torch

from vtc.adapters.base import Adapter
from vtc.registry import get_adapter
from vtc.seams import CACHE_ARGUMENTS, cache_argument, causal_mask, output_cache
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch


def test_the_mask_builder_takes_the_cache_under_a_known_name():
    from transformers import masking_utils

    parameters = inspect.signature(masking_utils.create_causal_mask).parameters
    assert any(name in parameters for name in CACHE_ARGUMENTS)
    assert {"config", "inputs_embeds", "attention_mask", "position_ids", "layer_idx",
            "allow_is_causal_skip"} <= set(parameters)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_decoder_layers_and_outputs_carry_the_cache_under_a_known_name(family):
    """A forward hook on a decoder layer sees the cache among its keyword arguments, and the model's output returns
    it: LVTC and the prefill recorder read both."""
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    layer = get_adapter(model).decoder_layers[0]
    seen = []
    handle = layer.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(cache_argument(kwargs)),
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            output = model(**tiny_batch(family, processor), use_cache=True)
    finally:
        handle.remove()
    assert seen and seen[0] is not None and seen[0] is output_cache(output)


def test_the_mask_builder_builds_a_mask_for_a_shorter_sequence():
    model = build_tiny_model("llava", "eager")  # eager: a mask is always materialised
    config = get_adapter(model).text_config
    hidden = torch.zeros(1, 5, config.hidden_size)
    mask = causal_mask(config=config, inputs_embeds=hidden, attention_mask=torch.ones(1, 5, dtype=torch.long),
                       cache=None, layer_idx=0, allow_is_causal_skip=False)
    assert mask is not None and mask.shape[-2:] == (5, 5)


def test_the_supported_range_is_the_installed_release():
    from packaging.version import Version
    from transformers import __version__

    assert Version(Adapter.min_transformers) <= Version(__version__) < Version(Adapter.max_transformers)
