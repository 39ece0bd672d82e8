"""`get_image_features` keeps transformers' contract under every component.

The model's own method returns its vision tower's output (`last_hidden_state` and, when asked, `hidden_states` and
`attentions`) with the projected visual tokens in `pooler_output`, and a tuple for `return_dict=False`. Compressed,
it returns the same class with the same fields, equal tensors in every field the component does not change, and the
compressed tokens where the model reads them (`pooler_output`; Qwen3-VL's `deepstack_features`). Warm PVTC at
ratio 1 returns exactly what the unpatched method returns.
"""

import pytest
import torch
from references import identical
from transformers.utils import ModelOutput

import vtc
from vtc.seams import output_without, returns_tuple
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch

IMAGE_KEYS = ("pixel_values", "image_sizes", "image_grid_thw", "batch_num_images")
FLAG_SETS = ({}, {"output_hidden_states": True}, {"output_attentions": True},
             {"output_hidden_states": True, "output_attentions": True})
#: The fields a component may change: the visual tokens the model consumes.
COMPRESSED_FIELDS = ("pooler_output", "deepstack_features")
DYNAMIC = tuple(f for f in TINY_FAMILIES if f != "llava")

LVTC = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4)  # the tiny models have 4 decoder layers
CONFIGS = {
    "pvtc": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)),
    "lvtc": vtc.VTCConfig(lvtc=LVTC),
    "pvtc+lvtc": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), lvtc=LVTC),
}


def image_features(model, inputs) -> dict:
    """`get_image_features` for every (return_dict, output flags) combination, keyed by both."""
    kwargs = {k: v for k, v in inputs.items() if k in IMAGE_KEYS}
    with torch.no_grad():
        return {(return_dict, i): model.model.get_image_features(**kwargs, return_dict=return_dict, **flags)
                for return_dict in (True, False) for i, flags in enumerate(FLAG_SETS)}


def assert_same_contract(outputs: dict, references: dict, *, compare_tensors: bool = True) -> None:
    """The outputs have the references' classes and fields; the fields no component changes are equal (where
    `compare_tensors`), and the tuple of `return_dict=False` is the `return_dict=True` output's `to_tuple()`."""
    for (return_dict, flags), output in outputs.items():
        reference = references[(return_dict, flags)]
        assert type(output) is type(reference)
        names = list(outputs[(True, flags)].keys())
        assert names == list(references[(True, flags)].keys())
        if return_dict:
            assert isinstance(output, ModelOutput)
            values = [output[name] for name in names]
        else:
            assert isinstance(output, tuple) and len(output) == len(names)
            values = list(output)
            assert all(identical(v, w) for v, w in zip(values, outputs[(True, flags)].to_tuple()))
        reference_values = list(reference.values()) if return_dict else list(reference)
        for name, value, expected in zip(names, values, reference_values):
            if name in COMPRESSED_FIELDS:
                assert type(value) is type(expected), name
            elif compare_tensors:
                assert identical(value, expected), name


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_warm_pvtc_at_ratio_1_returns_what_the_unpatched_method_returns(family):
    model, processor = build_tiny_model(family, "eager"), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    references = image_features(model, inputs)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=1, init="warm")), processor=processor)
    for key, output in image_features(model, inputs).items():
        assert identical(output, references[key]), key


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_component_keeps_the_class_the_fields_and_the_tower_outputs(family, config):
    model, processor = build_tiny_model(family, "eager"), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)  # the pixels are the same with the patched processor
    references = image_features(model, inputs)
    vtc.compress(model, CONFIGS[config], processor=processor)
    outputs = image_features(model, inputs)
    assert_same_contract(outputs, references)
    # the visual tokens the model consumes are the compressed ones
    counts = [len(t) for t in outputs[(True, 0)].pooler_output]
    native = [len(t) for t in references[(True, 0)].pooler_output]
    assert (sum(counts) * 3 <= sum(native)) == config.startswith("pvtc")


@pytest.mark.parametrize("pvtc", [None, vtc.PVTCConfig(ratio=4)], ids=["rvtc", "rvtc+pvtc"])
@pytest.mark.parametrize("family", DYNAMIC)
def test_rvtc_keeps_the_class_and_the_fields(family, pvtc):
    model, processor = build_tiny_model(family, "eager"), build_tiny_processor(family)
    references = image_features(model, tiny_batch(family, processor, batch=2))
    vtc.compress(model, vtc.VTCConfig(rvtc=vtc.RVTCConfig(max_tiles=2), pvtc=pvtc), processor=processor)
    # RVTC tiles the images anew: their tower outputs differ from the native tiling's, their fields do not
    assert_same_contract(image_features(model, tiny_batch(family, processor, batch=2)), references,
                         compare_tensors=False)


def test_return_dict_follows_the_config_when_not_passed():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    pixel_values = tiny_batch("llava", processor)["pixel_values"]
    model.model.config.return_dict = False
    with torch.no_grad():
        assert isinstance(model.model.get_image_features(pixel_values), tuple)
    assert returns_tuple(model.model, None) and not returns_tuple(model.model, True)


def test_output_without_keeps_the_order_of_the_other_fields():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    output = BaseModelOutputWithPooling(last_hidden_state=torch.zeros(1), hidden_states=(torch.ones(1),))
    output["pooler_output"] = torch.full((1,), 2.0)  # set later: last in the tuple, as transformers' methods do
    trimmed = output_without(output, "hidden_states")
    assert type(trimmed) is BaseModelOutputWithPooling and list(trimmed.keys()) == ["last_hidden_state", "pooler_output"]
    assert trimmed.hidden_states is None and identical(trimmed.to_tuple(), (output[0], output["pooler_output"]))
