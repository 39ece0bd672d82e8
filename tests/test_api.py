"""The public API: compress/unpatch semantics, typed errors, atomic failure."""

import pytest
import torch
from torch import nn

import vtc
import vtc._state
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch


@pytest.fixture
def llava():
    model = build_tiny_model("llava")
    processor = build_tiny_processor("llava")
    return model, processor, tiny_batch("llava", processor, batch=2)


def test_compress_returns_the_same_object_and_keeps_its_class(llava):
    model, processor, _ = llava
    cls = type(model)
    assert vtc.compress(model, vtc.VTCConfig(), processor=processor) is model
    assert type(model) is cls


def test_compress_twice_equals_once(llava):
    model, processor, inputs = llava
    vtc.compress(model, vtc.VTCConfig(), processor=processor)
    ledger_once = vtc.api._state(model).ledger.entries()
    vtc.compress(model, vtc.VTCConfig(), processor=processor)
    assert vtc.api._state(model).ledger.entries() == ledger_once
    with torch.no_grad():
        model(**inputs)
    # one set of recording hooks: each layer recorded exactly once
    assert vtc.last_stats(model)["layer_seq_lens"] == [inputs["input_ids"].shape[1]] * 4


def test_get_config_and_last_stats_before_any_forward(llava):
    model, processor, _ = llava
    config = vtc.VTCConfig()
    vtc.compress(model, config, processor=processor)
    assert vtc.get_config(model) is config
    assert vtc.last_stats(model) == {}


def test_functions_on_an_uncompressed_model_raise_or_pass_through(llava):
    model, _, _ = llava
    assert vtc.unpatch(model) is model
    assert not vtc.is_compressed(model)
    with pytest.raises(vtc.UnsupportedModelError, match="not compressed"):
        vtc.last_stats(model)
    with pytest.raises(vtc.UnsupportedModelError, match="not compressed"):
        vtc.get_config(model)


def test_unknown_model_type_lists_the_supported_ones():
    class Config:
        model_type = "not_a_vlm"

    class Model(nn.Module):
        config = Config()

    with pytest.raises(vtc.UnsupportedModelError) as error:
        vtc.compress(Model(), vtc.VTCConfig())
    for model_type in vtc.supported_models():
        assert model_type in str(error.value)


def test_non_module_and_non_config_inputs_are_rejected(llava):
    model, _, _ = llava
    with pytest.raises(vtc.UnsupportedModelError, match="nn.Module"):
        vtc.compress("model", vtc.VTCConfig())
    with pytest.raises(vtc.ConfigError, match="config="):
        vtc.compress(model, {"pvtc": None})
    assert not vtc.is_compressed(model)


def test_wrong_class_for_a_known_model_type_is_rejected(llava):
    model, _, _ = llava
    with pytest.raises(vtc.UnsupportedModelError, match="LlavaForConditionalGeneration"):
        vtc.compress(model.model, vtc.VTCConfig())  # the inner LlavaModel shares the config's model_type


def test_unsupported_transformers_version_is_a_typed_error(llava, monkeypatch):
    model, _, _ = llava
    from vtc.adapters.llava import LlavaAdapter

    monkeypatch.setattr(LlavaAdapter, "min_transformers", "99.0")
    monkeypatch.setenv("VTC_ALLOW_UNTESTED_TRANSFORMERS", "1")  # the opt-in admits newer releases only
    with pytest.raises(vtc.UnsupportedVersionError, match="pip install") as error:
        vtc.compress(model, vtc.VTCConfig())
    assert "VTC_ALLOW_UNTESTED_TRANSFORMERS" not in str(error.value)
    assert not vtc.is_compressed(model)


def test_a_newer_transformers_is_an_error_unless_the_user_opts_in(llava, monkeypatch):
    model, processor, inputs = llava
    from vtc.adapters.llava import LlavaAdapter

    monkeypatch.setattr(LlavaAdapter, "max_transformers", "5.0")  # the installed release is newer than the range
    monkeypatch.delenv("VTC_ALLOW_UNTESTED_TRANSFORMERS", raising=False)
    with pytest.raises(vtc.UnsupportedVersionError, match="VTC_ALLOW_UNTESTED_TRANSFORMERS=1"):
        vtc.compress(model, vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=-1)))
    assert not vtc.is_compressed(model)

    monkeypatch.setenv("VTC_ALLOW_UNTESTED_TRANSFORMERS", "1")
    with pytest.warns(vtc.UntestedVersionWarning, match=r"tested range >=5\.23\.0,<5\.0"):
        vtc.compress(model, vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=-1)))
    assert vtc.is_compressed(model)
    vtc.unpatch(model)


def test_a_compress_that_fails_half_way_leaves_the_model_untouched(llava, monkeypatch):
    model, processor, inputs = llava
    with torch.no_grad():
        reference = model(**inputs).logits
    attributes = {name: sorted(vars(m)) for name, m in model.named_modules()}
    original = vtc._state.install_instrumentation

    def install_then_fail(model, state):
        original(model, state)  # every hook and wrapper is in place when the failure happens
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(vtc.api, "install_instrumentation", install_then_fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        vtc.compress(model, vtc.VTCConfig(), processor=processor)
    assert not vtc.is_compressed(model)
    assert {name: sorted(vars(m)) for name, m in model.named_modules()} == attributes
    assert all(len(m._forward_pre_hooks) == 0 for m in model.model.language_model.layers)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)


def test_placeholder_mismatch_is_a_typed_error_that_says_to_pass_the_processor(llava):
    model, processor, inputs = llava
    vtc.compress(model, vtc.VTCConfig(), processor=processor)
    ids = inputs["input_ids"].clone()
    image_token = model.config.image_token_id
    first = int(torch.nonzero(ids[0] == image_token)[0])
    ids[0, first] = 5  # one placeholder short
    with pytest.raises(vtc.PlaceholderMismatchError, match="processor="):
        model(**{**inputs, "input_ids": ids})
    with torch.no_grad():  # the model still works afterwards
        model(**inputs)
    assert vtc.last_stats(model)["visual_tokens"] == (inputs["input_ids"] == image_token).sum(1).tolist()


def test_text_only_forward_records_no_visual_tokens(llava):
    model, processor, _ = llava
    vtc.compress(model, vtc.VTCConfig(), processor=processor)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        model(input_ids=ids)
    stats = vtc.last_stats(model)
    assert stats["visual_tokens"] == [0] and stats["visual_layout"] is None and stats["layer_seq_lens"] == [4] * 4


def test_a_component_that_cannot_apply_is_refused_not_ignored(llava):
    model, processor, _ = llava
    with pytest.raises(vtc.ConfigError, match="one fixed input resolution"):
        vtc.compress(model, vtc.VTCConfig(rvtc=vtc.RVTCConfig()), processor=processor)
    assert not vtc.is_compressed(model)
