"""compact_positions / gather_groups: monotonicity, first and mean semantics, identity, broadcast batches, M-RoPE.

Axes: a rope axes, b batch, s sequence, g groups, d hidden.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from strategies import RATIOS, batch_layouts

from vtc.layout import VisualSpan
from vtc.ops import compact_positions, gather_groups, group_index, window_shape

SEEDS = st.integers(0, 2**16)
AXES = st.sampled_from([None, 3, 4])  # None: 1-D positions (b, s)


def _monotone_positions(axes: int | None, b: int, s: int, seed: int) -> torch.Tensor:
    """Non-decreasing along `s` on every axis, with repeats (as M-RoPE has inside an image)."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randint(0, 3, (axes or 1, b, s), generator=gen)
    pos = steps.cumsum(-1) + torch.randint(0, 5, (axes or 1, b, 1), generator=gen)
    return pos[0] if axes is None else pos


def _interleaves(layout, ratio: int) -> bool:
    """Whether a newline span is pooled by windows taller than one row (the documented exception for "mean")."""
    sh, _ = window_shape(ratio)
    return any(s.newline and sh > 1 and s.grid[0] > 1 for sample in layout for s in sample)


def _non_decreasing(x: torch.Tensor) -> bool:
    return bool((x[..., 1:] >= x[..., :-1]).all())


@given(batch_layouts(), RATIOS, AXES, SEEDS)
def test_first_mode(case, ratio, axes, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    pos = _monotone_positions(axes, len(layout), seq_len, seed)
    out = compact_positions(pos, gi, mode="first")
    assert out.dtype == pos.dtype and out.shape == pos.shape[:-1] + (gi.max_groups,)
    # The first member's position, in every slot (padding slots point at the last real group's first member).
    assert torch.equal(out, pos.gather(-1, gi.first.expand_as(out)))
    assert _non_decreasing(out)


@given(batch_layouts(), RATIOS, AXES, SEEDS)
def test_mean_mode(case, ratio, axes, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    pos = _monotone_positions(axes, len(layout), seq_len, seed)
    out = compact_positions(pos, gi, mode="mean")
    assert out.dtype == torch.float32 and out.shape == pos.shape[:-1] + (gi.max_groups,)
    member = (gi.index[:, None, :] == torch.arange(gi.max_groups)[None, :, None]).double()  # (b, g, s)
    expected = (member @ pos.double()[..., None])[..., 0] / member.sum(-1).clamp(min=1)
    valid = gi.valid.expand_as(out)
    torch.testing.assert_close(out[valid], expected[valid].float())
    singleton = (gi.size == 1).expand_as(out)
    assert torch.equal(out[singleton], pos.gather(-1, gi.first.expand_as(out))[singleton].float())
    # Padding slots repeat the last valid slot.
    for b, n in enumerate(gi.num_groups.tolist()):
        if n:
            assert bool((out[..., b, n:] == out[..., b, n - 1, None]).all())
    if not _interleaves(layout, ratio):
        assert _non_decreasing(out)


@given(batch_layouts(), AXES, SEEDS)
def test_ratio_one_is_identity(case, axes, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, 1)
    pos = _monotone_positions(axes, len(layout), seq_len, seed)
    assert torch.equal(compact_positions(pos, gi, mode="first"), pos)
    assert torch.equal(compact_positions(pos, gi, mode="mean"), pos.float())
    x = torch.randn(len(layout), seq_len, 3)
    assert torch.equal(gather_groups(x, gi), x)


@given(batch_layouts(), RATIOS, AXES, SEEDS, st.sampled_from(["first", "mean"]))
def test_broadcast_batch(case, ratio, axes, seed, mode):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    pos = _monotone_positions(axes, 1, seq_len, seed)
    expanded = pos.expand(*pos.shape[:-2], len(layout), seq_len)
    assert torch.equal(compact_positions(pos, gi, mode=mode), compact_positions(expanded, gi, mode=mode))


@given(batch_layouts(), RATIOS, SEEDS)
def test_gather_groups_rotary_shapes(case, ratio, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    cos = torch.randn(1, seq_len, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = gather_groups(cos, gi)
    assert out.shape == (len(layout), gi.max_groups, 4) and out.dtype == cos.dtype
    for b in range(len(layout)):
        assert torch.equal(out[b], cos[0, gi.first[b]])


def test_hand_example_2x2_window():
    gi = group_index([(VisualSpan(1, 16, (4, 4)),)], 18, 4)
    pos = torch.arange(18)[None]
    assert compact_positions(pos, gi, mode="first").tolist() == [[0, 1, 3, 9, 11, 17]]
    assert compact_positions(pos, gi, mode="mean").tolist() == [[0.0, 3.5, 5.5, 11.5, 13.5, 17.0]]


def test_mrope_hand_example():
    # Qwen-style (t, h, w) positions of a 2x4 image after one text token, pooled by 2x2 windows.
    gi = group_index([(VisualSpan(1, 8, (2, 4)),)], 9, 4)
    t = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1])
    h = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 2])
    w = torch.tensor([0, 1, 2, 3, 4, 1, 2, 3, 4])
    out = compact_positions(torch.stack([t, h, w])[:, None], gi, mode="mean")
    assert out.shape == (3, 1, 3)
    assert out[:, 0].tolist() == [[0.0, 1.0, 1.0], [0.0, 1.5, 1.5], [0.0, 1.5, 3.5]]


def test_mean_can_step_back_inside_newline_spans():
    # Documented exception: with a newline span and 2x2 windows the newline token of row 0 (position 4) is ordered
    # after the window holding cells 2, 3, 7, 8, whose mean is 5.0.
    gi = group_index([(VisualSpan(0, 10, (2, 4), newline=True),)], 10, 4)
    assert compact_positions(torch.arange(10)[None], gi, mode="mean").tolist() == [[3.0, 5.0, 4.0, 9.0]]
    assert compact_positions(torch.arange(10)[None], gi, mode="first").tolist() == [[0, 2, 4, 9]]


def test_invalid_arguments():
    gi = group_index([(VisualSpan(0, 4, (2, 2)),)], 4, 4)
    with pytest.raises(ValueError, match="mode"):
        compact_positions(torch.arange(4)[None], gi, mode="last")
    with pytest.raises(ValueError, match="sequence length"):
        compact_positions(torch.arange(5)[None], gi)
    with pytest.raises(ValueError, match="batch"):
        compact_positions(torch.arange(4).expand(2, 4), gi)
    with pytest.raises(ValueError, match="shape"):
        compact_positions(torch.arange(4), gi)
    with pytest.raises(ValueError, match="sequence length"):
        gather_groups(torch.zeros(1, 3, 2), gi)
