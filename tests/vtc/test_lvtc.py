"""LVTC semantics: what layer K receives, how each restore mode rebuilds the full length, and what raises.

Reference values come from brute force over the visual layout (no vtc.ops), on tiny random models.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from references import reference_groups
from transformers import StaticCache

import vtc
from vtc.lvtc import GATE_NAME
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

NUM_LAYERS = 4


def lvtc(**kwargs):
    return vtc.VTCConfig(lvtc=vtc.LVTCConfig(**{"compress_layer": 1, "restore_layer": 3, "ratio": 4, **kwargs}))


def tiny(family, batch=2, attn="sdpa"):
    model, processor = build_tiny_model(family, attn), build_tiny_processor(family)
    return model, processor, tiny_batch(family, processor, batch=batch)


def batch_groups(stats, inputs, ratio):
    seq_len = inputs["input_ids"].shape[1]
    padding = (inputs["attention_mask"] == 0).tolist()
    return [reference_groups(spans, seq_len, ratio, pad) for spans, pad in zip(stats["visual_layout"], padding)]


def capture_layer_inputs(layer):
    """The (hidden states, kwargs) the layer runs with, after vtc's own hooks."""
    seen = []
    layer.register_forward_pre_hook(lambda _m, args, kwargs: seen.append((args[0], kwargs)), with_kwargs=True)
    return seen


# ------------------------------------------------------------------------------------------------ what layer K gets
@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])  # ragged 5x7 grid and padding | newline tokens
def test_layer_k_gets_each_group_mean_and_text_untouched(family):
    model, processor, inputs = tiny(family, batch=2 if family == "qwen2_vl" else 1)
    vtc.compress(model, lvtc(), processor=processor)
    layers = model.model.language_model.layers
    compressed_inputs = capture_layer_inputs(layers[1])
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    full, pooled = hidden[1], compressed_inputs[0][0]  # output of layer 0 (= H_K) | what layer 1 ran on
    all_groups = batch_groups(vtc.last_stats(model), inputs, 4)
    assert pooled.shape[1] == max(len(g) for g in all_groups)
    image_token = model.config.image_token_id
    for b, groups in enumerate(all_groups):
        for k, members in enumerate(groups):
            torch.testing.assert_close(pooled[b, k], full[b, members].mean(0), rtol=0, atol=1e-6)
            if len(members) == 1 and inputs["input_ids"][b, members[0]] != image_token:
                assert torch.equal(pooled[b, k], full[b, members[0]])  # text is copied, never averaged
    sizes = {len(members) for groups in all_groups for members in groups}
    assert 4 in sizes and (2 in sizes) == (family == "qwen2_vl")  # 2x2 windows; partial ones at ragged edges


def test_rotary_positions_are_the_mean_per_axis_of_each_group():
    model, processor, inputs = tiny("qwen2_vl")
    vtc.compress(model, lvtc(position="mean"), processor=processor)
    rotary = model.model.language_model.rotary_emb
    calls = []
    rotary.register_forward_pre_hook(lambda _m, args: calls.append(args[1]))
    compressed_inputs = capture_layer_inputs(model.model.language_model.layers[1])
    with torch.no_grad():
        model(**inputs)
    full_positions, pooled_positions = calls  # the model's own call (3, b, s), then LVTC's (3, b, g)
    assert full_positions.shape[0] == 3 and pooled_positions.shape[:2] == full_positions.shape[:2]
    for b, groups in enumerate(batch_groups(vtc.last_stats(model), inputs, 4)):
        for k, members in enumerate(groups):
            expected = full_positions[:, b, members].double().mean(-1)
            torch.testing.assert_close(pooled_positions[:, b, k].double(), expected)
    hidden, kwargs = compressed_inputs[0]
    cos, sin = rotary(hidden, pooled_positions)
    assert torch.equal(kwargs["position_embeddings"][0], cos) and torch.equal(kwargs["position_embeddings"][1], sin)
    assert kwargs["position_ids"] is None  # gapped positions must not reach a packed-sequence detector


def test_first_position_takes_the_first_members_rotary_embedding():
    model, processor, inputs = tiny("llava", batch=1)
    layers = model.model.language_model.layers
    full_inputs = capture_layer_inputs(layers[1])
    with torch.no_grad():
        model(**inputs)
    full_cos, full_sin = full_inputs[0][1]["position_embeddings"]
    vtc.compress(model, lvtc(position="first"), processor=processor)
    with torch.no_grad():
        model(**inputs)
    cos, sin = full_inputs[1][1]["position_embeddings"]
    firsts = [members[0] for members in batch_groups(vtc.last_stats(model), inputs, 4)[0]]
    assert torch.equal(cos[0], full_cos[0, firsts]) and torch.equal(sin[0], full_sin[0, firsts])


# ------------------------------------------------------------------------------------------------ restore modes
def silence(layers):
    """Make decoder layers the identity (zero output projections), so that H'_L = H'_K = pool(H_K) exactly."""
    with torch.no_grad():
        for layer in layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def pooled_then_spread(full, groups_per_sample, bilinear_spans=()):
    """Each position takes its group's mean; grid spans listed in `bilinear_spans` are interpolated instead."""
    out = torch.empty_like(full)
    for b, groups in enumerate(groups_per_sample):
        for members in groups:
            out[b, members] = full[b, members].mean(0)
    for b, span in bilinear_spans:
        (h, w), side = span.grid, 2
        cells = full[b, span.start:span.end].reshape(h, w, -1)
        means = torch.stack([torch.stack([cells[i:i + side, j:j + side].reshape(-1, cells.shape[-1]).mean(0)
                                          for j in range(0, w, side)]) for i in range(0, h, side)])
        grid = F.interpolate(means.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)
        out[b, span.start:span.end] = grid[0].permute(1, 2, 0).reshape(h * w, -1)
    return out


@pytest.mark.parametrize(("restore", "upsample"), [("delta", "nearest"), ("delta", "bilinear"),
                                                   ("upsample", "nearest"), ("upsample", "bilinear"),
                                                   ("add", "nearest")])
def test_restore_rebuilds_the_full_length_as_documented(restore, upsample):
    model, processor, inputs = tiny("qwen2_vl")
    silence(model.model.language_model.layers[1:3])
    vtc.compress(model, lvtc(restore=restore, upsample=upsample), processor=processor)
    if restore == "add":
        with torch.no_grad():
            getattr(model.model.language_model, GATE_NAME).fill_(0.5)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    before, after = hidden[1], hidden[3]  # H_K (output of layer 0) | the restored output of layer L-1 = 2
    layout = vtc.last_stats(model)["visual_layout"]
    spans = [(b, s) for b, sample in enumerate(layout) for s in sample] if upsample == "bilinear" else []
    spread = pooled_then_spread(before, batch_groups(vtc.last_stats(model), inputs, 4), spans)
    if restore == "delta":  # H_K + up(H'_L - H'_K) with silent layers is H_K itself
        expected = before
    elif restore == "upsample":
        expected = spread
    else:  # up(H'_L) + g * H_K on the image tokens, up(H'_L) on text
        image = (inputs["input_ids"] == model.config.image_token_id)[..., None]
        expected = spread + 0.5 * before * image
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-5)


def test_add_gate_is_a_trainable_vtc_parameter_that_starts_at_zero_and_is_removed_by_unpatch():
    model, processor, inputs = tiny("llava", batch=1)
    keys = list(model.state_dict())
    vtc.compress(model, lvtc(restore="add"), processor=processor)
    gate = dict(model.named_parameters())[f"model.language_model.{GATE_NAME}"]
    assert gate.shape == () and float(gate.detach()) == 0.0
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert gate.grad is not None and float(gate.grad) != 0.0
    vtc.unpatch(model)
    assert list(model.state_dict()) == keys and not hasattr(model.model.language_model, GATE_NAME)


def test_restore_layer_none_keeps_the_visual_tokens_compressed_to_the_end():
    model, processor, inputs = tiny("qwen2_5_vl")
    vtc.compress(model, lvtc(restore_layer=None), processor=processor)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    seq_len = inputs["input_ids"].shape[1]
    lens = vtc.last_stats(model)["layer_seq_lens"]
    assert lens[0] == seq_len and lens[1] == lens[2] == lens[3] < seq_len
    assert [out.past_key_values.get_seq_length(i) for i in range(NUM_LAYERS)] == lens
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    generated = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    one_more = {"input_ids": generated.sequences[:, :-1]}
    for key, fill in (("attention_mask", 1), ("mm_token_type_ids", 0)):  # the first generated token: text
        one_more[key] = torch.cat([inputs[key], torch.full_like(inputs[key][:, :1], fill)], 1)
    full = {**inputs, **one_more}
    with torch.no_grad():
        no_cache = model(**full, use_cache=False).logits[:, -1]
    torch.testing.assert_close(generated.logits[-1], no_cache, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------ other paths
def test_output_hidden_states_have_the_length_each_layer_produced():
    model, processor, inputs = tiny("internvl")
    with torch.no_grad():
        reference = model(**inputs, output_hidden_states=True).hidden_states
    seq_len = inputs["input_ids"].shape[1]
    vtc.compress(model, lvtc(ratio=1), processor=processor)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        identity = model(**inputs, output_hidden_states=True).hidden_states
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(identity[:2], reference[:2]))  # before layer K
    for mine, theirs in zip(identity[3:], reference[3:]):  # restored after layer L-1 = 2; padding carries no meaning
        torch.testing.assert_close(mine[real], theirs[real], rtol=0, atol=1e-5)
    vtc.compress(model, lvtc(ratio=4), processor=processor)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    compressed = vtc.last_stats(model)["layer_seq_lens"][1]
    # embeddings, outputs of layers 0..3: layers 1 (K) .. 1 (L-2) produce the compressed length
    assert [h.shape[1] for h in hidden] == [seq_len, seq_len, compressed, seq_len, seq_len]


def test_inputs_embeds_without_input_ids_finds_the_placeholders():
    model, processor, inputs = tiny("llava_onevision")
    vtc.compress(model, lvtc(), processor=processor)
    with torch.no_grad():
        by_ids = model(**inputs).logits
        stats = vtc.last_stats(model)
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        by_embeds = model(**{k: v for k, v in inputs.items() if k != "input_ids"}, inputs_embeds=embeds).logits
    assert vtc.last_stats(model)["layer_seq_lens"] == stats["layer_seq_lens"]
    assert stats["layer_seq_lens"][1] < stats["layer_seq_lens"][0]
    torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=1e-6)


def test_text_only_prompt_runs_uncompressed():
    model, processor, _ = tiny("qwen3_vl")
    vtc.compress(model, lvtc(), processor=processor)
    ids = processor(text=["w1 w2 what is this ?"], return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, use_cache=True)
    assert vtc.last_stats(model)["layer_seq_lens"] == [ids["input_ids"].shape[1]] * NUM_LAYERS
    assert len({out.past_key_values.get_seq_length(i) for i in range(NUM_LAYERS)}) == 1


def test_beam_search_with_a_cache_equals_beam_search_without():
    model, processor, inputs = tiny("llava_next")
    vtc.compress(model, lvtc(), processor=processor)
    kwargs = dict(max_new_tokens=3, min_new_tokens=3, num_beams=3, do_sample=False, output_scores=True,
                  return_dict_in_generate=True)
    cached = model.generate(**inputs, **kwargs)
    assert vtc.last_stats(model)["layer_seq_lens"][1] < inputs["input_ids"].shape[1]
    uncached = model.generate(**inputs, **kwargs, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=0, atol=1e-4)


def test_lvtc_on_top_of_pvtc_pools_the_tokens_pvtc_produced():
    model, processor = build_tiny_model("qwen3_vl"), build_tiny_processor("qwen3_vl")
    config = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3))
    vtc.compress(model, config, processor=processor)
    inputs = tiny_batch("qwen3_vl", processor, batch=2)  # placeholders from the PVTC-patched processor
    generated = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    stats = vtc.last_stats(model)
    seq_len = inputs["input_ids"].shape[1]
    assert stats["visual_tokens"] == [4, 12]  # 4x4 and 5x7 token grids after PVTC
    assert [span.grid for spans in stats["visual_layout"] for span in spans] == [(2, 2), (3, 4)]
    assert stats["layer_seq_lens"][0] == seq_len > stats["layer_seq_lens"][1]
    one_more = {"input_ids": generated.sequences[:, :-1]}
    for key, fill in (("attention_mask", 1), ("mm_token_type_ids", 0)):
        one_more[key] = torch.cat([inputs[key], torch.full_like(inputs[key][:, :1], fill)], 1)
    with torch.no_grad():
        no_cache = model(**{**inputs, **one_more}, use_cache=False).logits[:, -1]
    torch.testing.assert_close(generated.logits[-1], no_cache, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------ what raises
def untouched(model):
    layers = model.model.language_model.layers
    return not vtc.is_compressed(model) and all(not layer._forward_pre_hooks and not layer._forward_hooks
                                                for layer in layers)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"compress_layer": 4, "restore_layer": None}, "compress_layer"),  # K >= number of layers
    ({"compress_layer": -5}, "compress_layer"),  # K < 1 once resolved
    ({"compress_layer": 3, "restore_layer": -2}, "restore_layer"),  # L = 2 <= K
    ({"compress_layer": 1, "restore_layer": 5}, "restore_layer"),  # L beyond the layer count
    ({"restore_layer": None, "restore": "add"}, "restore"),  # a gate that could never act
])
def test_layers_outside_the_model_are_a_config_error_and_leave_it_untouched(kwargs, field):
    model, processor, _ = tiny("llava", batch=1)
    with pytest.raises(vtc.ConfigError, match=field):
        vtc.compress(model, lvtc(**kwargs), processor=processor)
    assert untouched(model)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"compress_layer": 0}, "compress_layer"), ({"compress_layer": 2, "restore_layer": 2}, "restore_layer"),
    ({"ratio": 0}, "ratio"), ({"ratio": 2.5}, "ratio"), ({"ratio": True}, "ratio"), ({"ratio": "4"}, "ratio"),
])
def test_invalid_values_are_refused_by_the_config(kwargs, field):
    with pytest.raises(vtc.ConfigError, match=field):
        vtc.LVTCConfig(**kwargs)


def test_compressing_inside_the_deepstack_layers_is_refused():
    base = build_tiny_model("qwen3_vl")
    config = base.config
    config.vision_config.deepstack_visual_indexes = [0, 1]  # two DeepStack layers: injections after layers 0 and 1
    model = type(base)._from_config(config)
    with pytest.raises(vtc.ConfigError, match="compress_layer=1 is invalid: expected a layer index >= 2"):
        vtc.compress(model, lvtc(compress_layer=1))
    assert untouched(model)
    vtc.compress(model, lvtc(compress_layer=2))
    assert vtc.is_compressed(model)


def test_sliding_window_layers_inside_the_compressed_range_are_refused(monkeypatch):
    model, processor, _ = tiny("internvl", batch=1)
    text_config = model.model.language_model.config
    monkeypatch.setattr(text_config, "layer_types", ["full_attention", "full_attention", "sliding_attention",
                                                     "full_attention"])
    with pytest.raises(vtc.UnsupportedModelError, match=r"layers \[2\] use 'sliding_attention'"):
        vtc.compress(model, lvtc(), processor=processor)
    assert untouched(model)
    vtc.compress(model, lvtc(compress_layer=3, restore_layer=None), processor=processor)  # after the window


def test_a_static_cache_is_refused_with_a_typed_error():
    model, processor, inputs = tiny("qwen2_vl", batch=1)
    vtc.compress(model, lvtc(), processor=processor)
    with pytest.raises(vtc.UnsupportedModelError, match="DynamicCache"):
        model.generate(**inputs, max_new_tokens=2, cache_implementation="static")
    cache = StaticCache(config=model.config, max_cache_len=64)
    with pytest.raises(vtc.UnsupportedModelError, match="StaticCache"), torch.no_grad():
        model(**inputs, past_key_values=cache, use_cache=True)
    with torch.no_grad():  # the model still works
        model(**inputs)


def test_a_4d_attention_mask_is_refused():
    model, processor, inputs = tiny("llava", batch=1)
    vtc.compress(model, lvtc(), processor=processor)
    seq_len = inputs["input_ids"].shape[1]
    mask = torch.ones(1, 1, seq_len, seq_len).tril()
    with pytest.raises(vtc.UnsupportedModelError, match="2-D padding mask"), torch.no_grad():
        model(**{**inputs, "attention_mask": mask})


def test_each_cache_keeps_its_own_prefill_and_a_cropped_cache_is_refused():
    model, processor, inputs = tiny("llava", batch=1)
    vtc.compress(model, lvtc(), processor=processor)
    next_token = {"input_ids": torch.tensor([[7]])}
    with torch.no_grad():
        first = model(**inputs, use_cache=True).past_key_values
        alone = model(**next_token, past_key_values=copy.deepcopy(first), use_cache=True).logits
        model(**inputs, use_cache=True)  # another prefill in between: the first cache still decodes as before
        assert torch.equal(model(**next_token, past_key_values=first, use_cache=True).logits, alone)
        stripped = copy.deepcopy(first)  # a cache whose prefill record was lost cannot be continued
        del stripped._vtc_lvtc_prefill
        with pytest.raises(vtc.UnsupportedModelError, match="no compressed prefill"):
            model(**next_token, past_key_values=stripped, use_cache=True)
        cache = model(**inputs, use_cache=True).past_key_values
        for _ in range(2):  # decode steps on the tracked cache work
            model(**next_token, past_key_values=cache, use_cache=True)
        cache.crop(-1)  # dropping generated tokens (assisted decoding on rejection) keeps every layer consistent
        model(**next_token, past_key_values=cache, use_cache=True)
        cache.crop(-4)  # cutting into the prompt does not
        with pytest.raises(vtc.UnsupportedModelError, match="no longer matches"):
            model(**next_token, past_key_values=cache, use_cache=True)
