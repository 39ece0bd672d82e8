"""The in-decoder pruning rules of `vtc.llm_prune` and the shortened-sequence ops of `vtc.ops.select` against plain,
independent implementations (Python loops over the official code's steps) on random tensors."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from inllm_helpers import dart_oracle

from vtc import llm_prune as rules
from vtc.ops import keep_selection, scatter_selected, select_positions, selected_mask


def generator(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- FastV row
def eager_row(query, keys, key_mask, scale):
    """One query's attention as eager attention computes it, head by head (grouped-query heads repeat their key),
    then averaged over heads."""
    h, k = query.shape[1], keys.shape[2]
    rows = []
    for b in range(query.shape[0]):
        heads = []
        for head in range(h):
            logits = [float(query[b, head] @ keys[b, j, head // (h // k)]) * scale for j in range(keys.shape[1])]
            logits = [x if key_mask[b, j] else -math.inf for j, x in enumerate(logits)]
            top = max(logits)
            weights = [math.exp(x - top) for x in logits]
            heads.append([w / sum(weights) for w in weights])
        rows.append([sum(column) / h for column in zip(*heads)])
    return torch.tensor(rows)


@given(st.integers(0, 10_000), st.sampled_from([(4, 2), (4, 4), (6, 3)]), st.integers(2, 12))
def test_last_token_attention_is_the_eager_row(seed, heads, s):
    h, k = heads
    g = generator(seed)
    query, keys = torch.randn(2, h, 8, generator=g), torch.randn(2, s, k, 8, generator=g)
    key_mask = torch.rand(2, s, generator=g) < 0.7
    key_mask[:, 0] = True
    got = rules.last_token_attention(query, keys, key_mask, 8**-0.5)
    torch.testing.assert_close(got, eager_row(query, keys, key_mask, 8**-0.5), rtol=0, atol=1e-6)
    assert torch.all(got[~key_mask] == 0)


@given(st.integers(0, 10_000), st.integers(1, 30), st.data())
def test_top_indices_are_the_highest_scores_ascending_lower_index_first(seed, n, data):
    count = data.draw(st.integers(1, n))
    scores = torch.randint(0, 4, (n,), generator=generator(seed)).float()  # many ties
    expected = sorted(sorted(range(n), key=lambda i: (-scores[i], i))[:count])
    assert rules.top_indices(scores, count).tolist() == expected


# ---------------------------------------------------------------------------------------------------- DART
@given(st.integers(0, 10_000), st.integers(1, 40), st.integers(0, 6), st.data())
def test_dart_equals_the_official_rule(seed, n, m, data):
    count = data.draw(st.integers(1, n))
    g = generator(seed)
    s = 3 + n + m
    states, key_norms = torch.randn(s, 6, generator=g), torch.rand(s, generator=g)
    candidates, text = torch.arange(2, 2 + n), torch.arange(2 + n, 2 + n + m)
    got = rules.dart_selection(states, key_norms, candidates, text, count)
    assert got.tolist() == dart_oracle(states, key_norms, candidates.tolist(), text.tolist(), count)
    assert len(got) == min(count, n)


def test_dart_keeps_the_image_pivots_and_the_tokens_least_like_them():
    # four candidates; the pivot (largest key norm) is token 0; the text pivot is token 4
    states = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    key_norms = torch.tensor([9.0, 1.0, 1.0, 1.0, 5.0])
    picked = rules.dart_selection(states, key_norms, torch.arange(4), torch.tensor([4]), 2, pivots=(1, 1))
    assert picked.tolist() == [0, 3]  # token 3 is the least similar to pivot 0 (cosine -1)


# ---------------------------------------------------------------------------------------------------- PyramidDrop
def test_pdrop_counts_are_the_official_int_of_native_times_the_ratio_powers():
    assert rules.pdrop_counts(576, 0.5, 3) == (288, 144, 72)
    assert rules.pdrop_counts(16, 0.5, 3) == (8, 4, 2)
    # the official setting: layers 8, 16, 24 of 32, lambda 0.5: 576 tokens for 8 layers, then 288, 144, 72
    assert rules.pdrop_average(576, (288, 144, 72), (8, 16, 24), 32) == Fraction(8 * (576 + 288 + 144 + 72), 32)


@given(st.integers(1, 700), st.integers(2, 40), st.data())
def test_pdrop_schedule_hits_the_requested_average_within_one_token(native, num_layers, data):
    stage_layers = tuple(sorted(data.draw(st.sets(st.integers(1, num_layers - 1), min_size=1, max_size=4))))
    floor = rules.pdrop_average(native, (0,) * len(stage_layers), stage_layers, num_layers)
    target = Fraction(data.draw(st.integers(math.ceil(floor * 100), native * 100)), 100)
    schedule = rules.pdrop_schedule(native, stage_layers, num_layers, target)
    assert abs(schedule.average - target) <= 1
    assert schedule.average == rules.pdrop_average(native, schedule.counts, stage_layers, num_layers)
    assert schedule.counts == rules.pdrop_counts(native, schedule.ratio, len(stage_layers))
    assert list(schedule.counts) == sorted(schedule.counts, reverse=True) and schedule.counts[0] <= native


def test_pdrop_schedule_at_the_ends():
    assert rules.pdrop_schedule(16, (1, 2, 3), 4, Fraction(16)).counts == (16, 16, 16)
    assert rules.pdrop_schedule(16, (1, 2, 3), 4, Fraction(3)).counts == (0, 0, 0)  # below 16 / 4: all dropped
    schedule = rules.pdrop_schedule(576, (8, 16, 24), 32, Fraction(270))  # the official lambda = 0.5 average
    assert schedule.counts == (288, 144, 72) and schedule.average == 270


# ---------------------------------------------------------------------------------------------------- selections
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 20))
def test_a_selection_keeps_the_flagged_positions_in_order(seed, b, s):
    g = generator(seed)
    keep = torch.rand(b, s, generator=g) < 0.5
    keep[:, -1] = True
    lengths = keep.sum(1).tolist()
    selection = keep_selection(keep, lengths)
    x = torch.randn(b, s, 3, generator=g)
    picked = select_positions(x, selection)
    for row in range(b):
        kept = keep[row].nonzero().flatten().tolist()
        assert selection.index[row, :lengths[row]].tolist() == kept
        assert selection.index[row, lengths[row]:].tolist() == [kept[-1]] * (max(lengths) - lengths[row])
        assert torch.equal(picked[row, :lengths[row]], x[row, kept])
    assert selection.valid.sum(1).tolist() == lengths
    mask = torch.randint(0, 2, (b, s), generator=g)
    assert torch.equal(selected_mask(mask, selection), mask.gather(1, selection.index) * selection.valid)
    assert (selected_mask(None, selection) is None) == (len(set(lengths)) == 1)
    # writing back: the kept rows replaced, the others untouched, padding slots never written
    full = torch.randn(b, s, 3, generator=g)
    written = scatter_selected(full, picked + 1, selection)
    assert torch.equal(written[keep], x[keep] + 1) and torch.equal(written[~keep], full[~keep])


def test_a_selection_broadcasts_a_batch_of_one_and_checks_its_lengths():
    keep = torch.tensor([[True, False, True], [True, True, True]])
    selection = keep_selection(keep, [2, 3])
    cos = torch.arange(3.0)[None, :, None].expand(1, 3, 2)
    assert select_positions(cos, selection)[:, :, 0].tolist() == [[0, 2, 2], [0, 1, 2]]
    with pytest.raises(ValueError, match="lengths"):
        keep_selection(keep, [2])
    with pytest.raises(ValueError, match="sequence length"):
        select_positions(torch.zeros(2, 4, 1), selection)
