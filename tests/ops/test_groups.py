"""Group index and compressed lengths: hypothesis properties against a brute-force reference, plus hand examples.

Axes: b batch, s sequence, g groups.

The layout strategies live here and the other `tests/ops` files import them from this module.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from references import members, reference_groups
from strategies import RATIOS, batch_layouts

from vtc.layout import VisualSpan
from vtc.ops import compressed_lengths, group_index, pooled_grid, window_shape


def formula_lengths(layout, seq_len: int, ratio: int) -> list[int]:
    """`n_text + sum over spans of (pooled cells + newlines)`, written out independently of the library."""
    side = math.isqrt(ratio)
    sh, sw = (side, side) if side * side == ratio else (1, ratio)
    out = []
    for sample in layout:
        n = seq_len - sum(s.length for s in sample)
        for s in sample:
            if s.grid is None:
                n += math.ceil(s.length / ratio)
            else:
                n += math.ceil(s.grid[0] / sh) * math.ceil(s.grid[1] / sw) + (s.grid[0] if s.newline else 0)
        out.append(n)
    return out


# ---- properties ------------------------------------------------------------------------------------------------


@given(batch_layouts(), RATIOS)
def test_groups_match_brute_force(case, ratio):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    for b, sample in enumerate(layout):
        assert members(gi, b) == reference_groups(sample, seq_len, ratio)


@given(batch_layouts(), RATIOS)
def test_partition_dense_and_ordered(case, ratio):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    assert gi.index.shape == (len(layout), seq_len) and gi.seq_len == seq_len
    assert gi.first.shape == gi.size.shape == gi.valid.shape == gi.is_visual.shape == (len(layout), gi.max_groups)
    for b in range(len(layout)):
        n = int(gi.num_groups[b])
        # Every position has exactly one id (a tensor entry), and the ids used are exactly 0..n-1.
        assert sorted(set(gi.index[b].tolist())) == list(range(n))
        counts = torch.bincount(gi.index[b], minlength=gi.max_groups)
        assert torch.equal(counts, gi.size[b])
        assert int(gi.size[b].sum()) == seq_len
        first = gi.first[b, :n]
        assert bool((first[1:] > first[:-1]).all())
        # `first` is the smallest member of each group.
        assert torch.equal(gi.index[b, first], torch.arange(n))
        for k, m in enumerate(members(gi, b)):
            assert m[0] == int(first[k])
        assert gi.valid[b].tolist() == [k < n for k in range(gi.max_groups)]
        if n < gi.max_groups:
            assert bool((gi.first[b, n:] == first[-1]).all())
            assert not bool(gi.is_visual[b, n:].any())


@given(batch_layouts(), RATIOS)
def test_text_and_newline_tokens_are_singletons(case, ratio):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    for b, sample in enumerate(layout):
        visual = {p for s in sample for p in s.positions()}
        newline = {s.start + i * (s.grid[1] + 1) + s.grid[1] for s in sample if s.newline for i in range(s.grid[0])}
        for p in range(seq_len):
            if p not in visual or p in newline:
                assert int(gi.size[b, gi.index[b, p]]) == 1, p
            assert bool(gi.is_visual[b, gi.index[b, p]]) == (p in visual), p


@given(batch_layouts(), RATIOS)
def test_lengths_agree(case, ratio):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    assert gi.num_groups.tolist() == compressed_lengths(layout, seq_len, ratio) == formula_lengths(
        layout, seq_len, ratio)
    assert gi.max_groups == max(gi.num_groups.tolist())


@given(batch_layouts())
def test_ratio_one_is_identity(case):
    layout, seq_len = case
    gi = group_index(layout, seq_len, 1)
    assert gi.num_groups.tolist() == [seq_len] * len(layout)
    assert torch.equal(gi.index, torch.arange(seq_len).expand(len(layout), -1))
    assert torch.equal(gi.first, gi.index) and bool((gi.size == 1).all()) and bool(gi.valid.all())
    assert gi.is_identity


# ---- hand examples ---------------------------------------------------------------------------------------------


def test_window_shape_and_pooled_grid():
    assert [window_shape(r) for r in (1, 2, 3, 4, 9, 16)] == [(1, 1), (1, 2), (1, 3), (2, 2), (3, 3), (4, 4)]
    assert pooled_grid((5, 5), (2, 2)) == (3, 3)
    assert pooled_grid((3, 5), (1, 3)) == (3, 2)
    assert pooled_grid((4, 4), (1, 1)) == (4, 4)


def test_4x4_grid_ratio_4():
    gi = group_index([(VisualSpan(1, 16, (4, 4)),)], 18, 4)
    assert gi.num_groups.tolist() == [6]  # 4 windows + the text token on either side
    assert members(gi, 0) == [[0], [1, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16], [17]]
    assert gi.size.tolist() == [[1, 4, 4, 4, 4, 1]]
    assert gi.is_visual.tolist() == [[False, True, True, True, True, False]]


def test_5x5_grid_ratio_4_has_partial_edges():
    gi = group_index([(VisualSpan(0, 25, (5, 5)),)], 25, 4)
    assert gi.num_groups.tolist() == [9]
    assert gi.size.tolist() == [[4, 4, 2, 4, 4, 2, 2, 2, 1]]


def test_3x5_newline_grid_ratio_4():
    gi = group_index([(VisualSpan(0, 18, (3, 5), newline=True),)], 18, 4)
    assert members(gi, 0) == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 10], [5], [11], [12, 13], [14, 15], [16], [17]]
    assert compressed_lengths([(VisualSpan(0, 18, (3, 5), newline=True),)], 18, 4) == [9]


def test_gridless_run_ratio_2():
    gi = group_index([(VisualSpan(2, 5),)], 7, 2)
    assert gi.size.tolist() == [[1, 1, 2, 2, 1]]
    assert members(gi, 0)[2:] == [[2, 3], [4, 5], [6]]


def test_non_square_ratio_runs_along_rows():
    gi = group_index([(VisualSpan(0, 10, (2, 5)),)], 10, 3)
    assert members(gi, 0) == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]


def test_ragged_batch_is_right_padded():
    layout = [(VisualSpan(0, 16, (4, 4)),), ()]
    gi = group_index(layout, 16, 4)
    assert gi.num_groups.tolist() == [4, 16] and gi.max_groups == 16
    assert gi.valid[0].tolist() == [True] * 4 + [False] * 12
    assert gi.first[0].tolist() == [0, 2, 8, 10] + [10] * 12
    assert gi.size[0].tolist() == [4] * 4 + [0] * 12
    assert not gi.is_identity


def test_empty_sequence():
    gi = group_index([(), ()], 0, 4)
    assert gi.index.shape == (2, 0) and gi.first.shape == (2, 0) and gi.num_groups.tolist() == [0, 0]


def test_device_argument():
    gi = group_index([(VisualSpan(0, 4, (2, 2)),)], 4, 4, device="cpu")
    assert all(t.device.type == "cpu" for t in (gi.index, gi.first, gi.size, gi.valid, gi.is_visual, gi.num_groups))
    assert gi.index.dtype == gi.first.dtype == gi.size.dtype == gi.num_groups.dtype == torch.long


@pytest.mark.parametrize("ratio", [0, -4, 2.0, True, "4"])
def test_invalid_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        group_index([()], 4, ratio)
    with pytest.raises(ValueError, match="ratio"):
        compressed_lengths([()], 4, ratio)


@pytest.mark.parametrize(("layout", "seq_len", "match"), [
    ([(VisualSpan(2, 4),)], 5, "past seq_len"),
    ([(VisualSpan(0, 4), VisualSpan(3, 2))], 8, "overlaps"),
    ([(VisualSpan(5, 1), VisualSpan(0, 2))], 8, "ordered"),
    ([], 4, "non-empty"),
    ([(VisualSpan(0, 1),)], -1, "seq_len"),
])
def test_invalid_layout(layout, seq_len, match):
    with pytest.raises(ValueError, match=match):
        group_index(layout, seq_len, 4)
    with pytest.raises(ValueError, match=match):
        compressed_lengths(layout, seq_len, 4)


def test_invalid_window():
    with pytest.raises(ValueError, match="window"):
        pooled_grid((2, 2), (0, 1))
