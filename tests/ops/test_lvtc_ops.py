"""The ops as LVTC combines them: padding runs, the restore's cell mask, the delta residual, the whole round trip.

Axes: b batch, s sequence, g groups, d hidden.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from references import members, reference_groups
from strategies import RATIOS, batch_layouts

from vtc.layout import VisualSpan
from vtc.ops import cell_mask, compact_mask, compressed_lengths, group_index, pool, unpool, unpool_bilinear

SEEDS = st.integers(0, 2**16)


def _padding(layout, seq_len, seed) -> torch.Tensor:
    """Random padding outside the visual spans (left runs, holes, right runs: every shape a mask can have)."""
    pad = torch.rand(len(layout), seq_len, generator=torch.Generator().manual_seed(seed)) < 0.4
    for b, sample in enumerate(layout):
        for span in sample:
            pad[b, span.start:span.end] = False
    return pad


@given(batch_layouts(), RATIOS, SEEDS)
def test_padding_runs_are_one_group_each(case, ratio, seed):
    layout, seq_len = case
    padding = _padding(layout, seq_len, seed)
    gi = group_index(layout, seq_len, ratio, padding=padding)
    for b, sample in enumerate(layout):
        expected = reference_groups(sample, seq_len, ratio, padding[b].tolist())
        assert members(gi, b) == expected
    assert gi.num_groups.tolist() == compressed_lengths(layout, seq_len, ratio, padding=padding)
    # The merged group starts with padding, so the compressed mask still hides it: the kept count is unchanged.
    mask = (~padding).long()
    compact = compact_mask(mask, gi)
    for b in range(len(layout)):
        real_groups = sum(1 for m in members(gi, b) if not padding[b, m[0]])
        assert int(compact[b].sum()) == real_groups


@given(batch_layouts())
def test_cell_mask_marks_exactly_the_pooled_positions(case):
    layout, seq_len = case
    cells = cell_mask(layout, seq_len)
    assert cells.shape == (len(layout), seq_len) and cells.dtype == torch.bool
    for b, sample in enumerate(layout):
        assert int(cells[b].sum()) == sum(span.num_cells for span in sample)
        for span in sample:
            if span.newline:
                h, w = span.grid
                assert not bool(cells[b, [span.start + i * (w + 1) + w for i in range(h)]].any())


@pytest.mark.parametrize("bilinear", [False, True])
@given(case=batch_layouts(), ratio=RATIOS, seed=SEEDS)
def test_delta_residual_is_exactly_zero_outside_merged_groups(case, ratio, seed, bilinear):
    """`x - up(pool(x))`, the detail LVTC's delta restore adds back, vanishes wherever nothing was merged."""
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    x = torch.randn(len(layout), seq_len, 3, generator=torch.Generator().manual_seed(seed))
    up = unpool_bilinear(pool(x, gi), gi, layout, ratio) if bilinear else unpool(pool(x, gi), gi)
    residual = x - up
    singleton = gi.size.gather(1, gi.index) == 1
    text = ~cell_mask(layout, seq_len)
    untouched = text if bilinear else singleton  # bilinear also moves singleton cells of a pooled grid
    assert bool((residual[untouched] == 0).all())
    if ratio == 1:
        assert bool((residual == 0).all())


def test_padding_must_be_a_bool_tensor_of_the_batch_shape():
    layout = [(VisualSpan(1, 4, (2, 2)),)]
    with pytest.raises(ValueError, match="padding must be a bool tensor"):
        group_index(layout, 6, 4, padding=torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="padding must be a bool tensor"):
        compressed_lengths(layout, 6, 4, padding=torch.zeros(2, 6, dtype=torch.bool))


def test_left_padding_hand_example():
    # [pad pad text | 2x2 image | text], ratio 4: the padding run and the window each become one group.
    layout = [(VisualSpan(3, 4, (2, 2)),)]
    padding = torch.tensor([[True, True, False, False, False, False, False, False]])
    gi = group_index(layout, 8, 4, padding=padding)
    assert members(gi, 0) == [[0, 1], [2], [3, 4, 5, 6], [7]]
    assert compact_mask((~padding).long(), gi).tolist() == [[0, 1, 1, 1]]
