"""compact_mask / extend_mask: kept counts, padding slots, None handling, shapes and dtypes.

Axes: b batch, s sequence, g groups, n new tokens.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from strategies import RATIOS, batch_layouts

from vtc.layout import VisualSpan
from vtc.ops import compact_mask, extend_mask, group_index

SEEDS = st.integers(0, 2**16)
MASK_DTYPES = st.sampled_from([torch.long, torch.bool, torch.int32, torch.float32])


def _random_mask(b: int, s: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randint(0, 2, (b, s), generator=torch.Generator().manual_seed(seed)).to(dtype)


@given(batch_layouts(), RATIOS, SEEDS, MASK_DTYPES)
def test_compact_mask_keeps_first_members(case, ratio, seed, dtype):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    mask = _random_mask(len(layout), seq_len, seed, dtype)
    compact = compact_mask(mask, gi)
    assert compact.shape == (len(layout), gi.max_groups) and compact.dtype == dtype
    for b in range(len(layout)):
        n = int(gi.num_groups[b])
        kept = sum(bool(mask[b, int(gi.first[b, k])]) for k in range(n))
        assert int(compact[b].long().sum()) == kept
        assert not bool(compact[b, n:].bool().any())  # padding slots are 0
        assert torch.equal(compact[b, :n], mask[b, gi.first[b, :n]])


@given(batch_layouts(), RATIOS)
def test_compact_mask_none(case, ratio):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    compact = compact_mask(None, gi)
    if len(set(gi.num_groups.tolist())) == 1:
        assert compact is None
    else:
        assert compact.dtype == torch.long
        assert torch.equal(compact, gi.valid.long())
        # The same as compacting an all-ones mask.
        assert torch.equal(compact, compact_mask(torch.ones(len(layout), seq_len, dtype=torch.long), gi))


@given(batch_layouts(), SEEDS)
def test_compact_mask_ratio_one_is_identity(case, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, 1)
    mask = _random_mask(len(layout), seq_len, seed, torch.long)
    assert torch.equal(compact_mask(mask, gi), mask)
    assert compact_mask(None, gi) is None


@given(batch_layouts(), RATIOS, SEEDS, st.integers(0, 3), st.booleans(), st.booleans())
def test_extend_mask(case, ratio, seed, n_new, with_compact, with_new):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    b = len(layout)
    compact = _random_mask(b, gi.max_groups, seed, torch.long) if with_compact else None
    new = _random_mask(b, n_new, seed + 1, torch.long) if with_new else None
    out = extend_mask(compact, new, n_new, b, compact_len=gi.max_groups)
    if compact is None and new is None:
        assert out is None
        return
    assert out.shape == (b, gi.max_groups + n_new) and out.dtype == torch.long
    prefix, suffix = out[:, :gi.max_groups], out[:, gi.max_groups:]
    assert torch.equal(prefix, compact if compact is not None else torch.ones_like(prefix))
    assert torch.equal(suffix, new if new is not None else torch.ones_like(suffix))


def test_compact_mask_left_padding_hand_example():
    # Two padding tokens, then a 2x2 image pooled to one token, then one text token.
    layout = [(VisualSpan(2, 4, (2, 2)),), (VisualSpan(0, 4, (2, 2)),)]
    gi = group_index(layout, 7, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    assert compact_mask(mask, gi).tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    ragged = group_index([(VisualSpan(0, 4, (2, 2)),), ()], 4, 4)
    assert compact_mask(None, ragged).tolist() == [[1, 0, 0, 0], [1, 1, 1, 1]]


def test_extend_mask_dtype_follows_compact():
    compact = torch.tensor([[True, False]])
    out = extend_mask(compact, torch.tensor([[1, 0, 1]]), 3, 1)
    assert out.dtype == torch.bool and out.tolist() == [[True, False, True, False, True]]
    assert extend_mask(None, torch.tensor([[0, 1]]), 2, 1, compact_len=3).tolist() == [[1, 1, 1, 0, 1]]
    assert extend_mask(compact, None, 2, 1).tolist() == [[True, False, True, True]]


def test_invalid_arguments():
    gi = group_index([(VisualSpan(0, 4, (2, 2)),)], 4, 4)
    with pytest.raises(ValueError, match="shape"):
        compact_mask(torch.ones(1, 5), gi)
    with pytest.raises(ValueError, match="compact_len"):
        extend_mask(None, torch.ones(1, 2), 2, 1)
    with pytest.raises(ValueError, match="n_new"):
        extend_mask(torch.ones(1, 2), None, -1, 1)
    with pytest.raises(ValueError, match="mask2d_new"):
        extend_mask(torch.ones(1, 2), torch.ones(1, 3), 2, 1)
    with pytest.raises(ValueError, match="compact"):
        extend_mask(torch.ones(2, 2), None, 2, 1)
