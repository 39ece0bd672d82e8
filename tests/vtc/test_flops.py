"""Analytic prefill FLOPs: hand-computed values, monotonicity, compression savings, transformers configs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtc.errors import ConfigError
from vtc.flops import FlopsBreakdown, decoder_dims, prefill_flops, uniform_layer_lens


def tiny(**overrides):
    # hidden 8, 2 query heads and 1 key/value head of size 4, MLP 16, vocab 10, 2 layers.
    dims = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                vocab_size=10, num_hidden_layers=2)
    dims.update(overrides)
    return SimpleNamespace(**dims)


def causal_pairs(n):
    # Counted by brute force on purpose, independently of the closed form n(n+1)/2 used by the code.
    return sum(1 for q in range(n) for k in range(n) if k <= q)


def test_tiny_config_by_hand():
    # Weights per layer: q 8x8=64, o 8x8=64, k 8x4=32, v 8x4=32, gate/up/down 3 x 8x16=384 -> 576.
    # Layer 0 sees 3 tokens, layer 1 sees 5: linear = 2*3*576 + 2*5*576 = 3456 + 5760 = 9216.
    # Attention per (query, key) pair: 2 matmuls x 2 FLOPs x 2 heads x 4 dims = 32; pairs 6 and 15 -> 192 + 480 = 672.
    # LM head on the last token: 2 * 8 * 10 = 160.
    out = prefill_flops(tiny(), [3, 5])
    assert out == FlopsBreakdown(linear=9216, attention=672, lm_head=160)
    assert out.total == 9216 + 672 + 160 == 10048
    assert causal_pairs(3) * 32 + causal_pairs(5) * 32 == 672


def test_lm_head_tokens():
    assert prefill_flops(tiny(), [3, 5], lm_head_tokens=5).lm_head == 5 * 160
    assert prefill_flops(tiny(), [3, 5], lm_head_tokens=0).lm_head == 0


def test_defaults_for_kv_heads_and_head_dim():
    cfg = SimpleNamespace(hidden_size=8, intermediate_size=16, num_attention_heads=2, vocab_size=10,
                          num_hidden_layers=1)
    assert decoder_dims(cfg)["num_key_value_heads"] == 2 and decoder_dims(cfg)["head_dim"] == 4
    # Without GQA all four projections are 8x8: 4*64 + 384 = 640 weights; one token, one pair.
    assert prefill_flops(cfg, [1]) == FlopsBreakdown(linear=2 * 640, attention=2 * 2 * 2 * 4, lm_head=160)
    assert decoder_dims(tiny(num_key_value_heads=None, head_dim=None)) == decoder_dims(
        tiny(num_key_value_heads=2, head_dim=4))


def test_zero_length_layer_costs_nothing():
    assert prefill_flops(tiny(num_hidden_layers=1), [0], lm_head_tokens=0).total == 0


@given(st.integers(0, 2000), st.integers(1, 500))
def test_monotone_in_sequence_length(n, extra):
    cfg = tiny()
    a, b = prefill_flops(cfg, uniform_layer_lens(cfg, n)), prefill_flops(cfg, uniform_layer_lens(cfg, n + extra))
    assert b.linear > a.linear and b.attention > a.attention and b.lm_head == a.lm_head and b.total > a.total


@given(st.integers(2, 4000), st.integers(0, 23), st.integers(1, 24))
def test_halving_some_layers_lowers_flops(n, start, count):
    cfg = tiny(num_hidden_layers=24)
    full = uniform_layer_lens(cfg, n)
    short = list(full)
    for i in range(start, min(start + count, 24)):
        short[i] = n // 2
    assert prefill_flops(cfg, short).total < prefill_flops(cfg, full).total


def test_compressed_vs_uniform_ratio():
    cfg = tiny(num_hidden_layers=4)
    n, m = 100, 25
    full = prefill_flops(cfg, uniform_layer_lens(cfg, n), lm_head_tokens=0)
    half = prefill_flops(cfg, [n, n, m, m], lm_head_tokens=0)
    # Linear work scales with n: two of four layers at a quarter of the tokens -> (2*100 + 2*25) / 400.
    assert half.linear * 400 == full.linear * 250
    # Attention scales with causal pairs: (2*5050 + 2*325) / (4*5050).
    assert half.attention * (4 * causal_pairs(n)) == full.attention * (2 * causal_pairs(n) + 2 * causal_pairs(m))
    # The quadratic part saves more than the linear part.
    assert half.attention / full.attention < half.linear / full.linear


def test_qwen2_config():
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100)
    assert decoder_dims(cfg) == dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=100,
                                     num_hidden_layers=3, num_key_value_heads=2, head_dim=16)
    # Per layer: q, o 64x64 = 4096 each; k, v 64x32 = 2048 each; MLP 3 x 64x128 = 24576 -> 36864 weights.
    # 10 tokens: linear 2*10*36864 = 737280 per layer; attention 2*2*4*16 * 55 = 14080 per layer; head 2*64*100.
    out = prefill_flops(cfg, [10, 10, 10])
    assert out == FlopsBreakdown(linear=3 * 737280, attention=3 * 14080, lm_head=12800)


def test_multimodal_config_uses_its_text_config():
    from transformers import LlavaConfig, Qwen2Config

    text = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=100)
    assert decoder_dims(LlavaConfig(text_config=text.to_dict())) == decoder_dims(text)


def test_wrong_number_of_layers_raises():
    with pytest.raises(ConfigError, match=r"len\(layer_seq_lens\)=3 is invalid: expected num_hidden_layers=2"):
        prefill_flops(tiny(), [1, 2, 3])
    with pytest.raises(ConfigError):
        prefill_flops(tiny(), [])


@pytest.mark.parametrize("lens", [[1, -1], [1, 2.0], [True, 1]])
def test_bad_lengths_raise(lens):
    with pytest.raises(ConfigError, match=r"layer_seq_lens\[\d\]"):
        prefill_flops(tiny(), lens)


@pytest.mark.parametrize("tokens", [-1, 1.0, True])
def test_bad_lm_head_tokens_raise(tokens):
    with pytest.raises(ConfigError, match="lm_head_tokens"):
        prefill_flops(tiny(), [1, 1], lm_head_tokens=tokens)


@pytest.mark.parametrize("missing", ["hidden_size", "intermediate_size", "num_attention_heads", "vocab_size",
                                     "num_hidden_layers"])
def test_missing_attribute_is_named(missing):
    cfg = tiny()
    delattr(cfg, missing)
    with pytest.raises(ConfigError, match=f"{missing}=None") as info:
        decoder_dims(cfg)
    assert info.value.field == missing


def test_invalid_dimension_is_named():
    with pytest.raises(ConfigError, match="num_key_value_heads=0"):
        decoder_dims(tiny(num_key_value_heads=0))


def test_uniform_layer_lens():
    assert uniform_layer_lens(tiny(num_hidden_layers=3), 7) == [7, 7, 7]
    with pytest.raises(ConfigError, match="seq_len"):
        uniform_layer_lens(tiny(), -1)
