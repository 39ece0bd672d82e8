"""pool / unpool / unpool_bilinear: shapes, round trips, exact identity at ratio 1, gradients, dtype and device.

Axes: b batch, s sequence, g groups, d hidden.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from strategies import RATIOS, batch_layouts

from vtc.layout import VisualSpan
from vtc.ops import group_index, pool, unpool, unpool_bilinear

DIMS = st.integers(1, 4)
SEEDS = st.integers(0, 2**16)


def _randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _text_mask(gi) -> torch.Tensor:
    """`(b, s)` True where a position is a singleton outside every span."""
    return ~gi.is_visual.gather(1, gi.index) & (gi.size.gather(1, gi.index) == 1)


@given(batch_layouts(), RATIOS, DIMS, SEEDS)
def test_shapes_and_means(case, ratio, d, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    x = _randn(len(layout), seq_len, d, seed=seed, dtype=torch.float64)
    x_c = pool(x, gi)
    assert x_c.shape == (len(layout), gi.max_groups, d)
    assert unpool(x_c, gi).shape == x.shape
    assert unpool_bilinear(x_c, gi, layout, ratio).shape == x.shape
    # Reference mean through a dense (b, g, s) membership matrix, independent of the scatter in `pool`.
    member = (gi.index[:, None, :] == torch.arange(gi.max_groups)[None, :, None]).double()
    expected = (member @ x) / member.sum(-1, keepdim=True).clamp(min=1)
    torch.testing.assert_close(x_c, expected)
    assert not bool(x_c[~gi.valid].any())  # padding slots are zeros


@given(batch_layouts(), RATIOS, DIMS, SEEDS)
def test_constant_per_group_round_trip(case, ratio, d, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    x = unpool(_randn(len(layout), gi.max_groups, d, seed=seed, dtype=torch.float64), gi)  # constant per group
    torch.testing.assert_close(unpool(pool(x, gi), gi), x)


@given(batch_layouts(), RATIOS, DIMS, SEEDS)
def test_bilinear_matches_unpool_on_constant_input(case, ratio, d, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    # Constant along the sequence (one value per sample and channel): interpolation has nothing to blend.
    x_c = _randn(len(layout), 1, d, seed=seed, dtype=torch.float64).expand(-1, gi.max_groups, -1)
    torch.testing.assert_close(unpool_bilinear(x_c, gi, layout, ratio), unpool(x_c, gi))


@given(batch_layouts(), RATIOS, DIMS, SEEDS)
def test_text_rows_unchanged(case, ratio, d, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    x = _randn(len(layout), seq_len, d, seed=seed)
    text = _text_mask(gi)
    assert torch.equal(unpool(pool(x, gi), gi)[text], x[text])
    assert torch.equal(unpool_bilinear(pool(x, gi), gi, layout, ratio)[text], x[text])


@given(batch_layouts(), DIMS, SEEDS, st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_ratio_one_is_exact_identity(case, d, seed, dtype):
    layout, seq_len = case
    gi = group_index(layout, seq_len, 1)
    x = _randn(len(layout), seq_len, d, seed=seed, dtype=dtype)
    if x.numel():
        x[0, 0, 0] = -0.0  # a mean would drop the sign bit
    assert torch.equal(pool(x, gi), x) and torch.equal(unpool(x, gi), x)
    assert torch.equal(unpool_bilinear(x, gi, layout, 1), unpool(x, gi))
    assert torch.equal(torch.signbit(pool(x, gi)), torch.signbit(x))


@given(batch_layouts(), RATIOS, DIMS, SEEDS)
def test_gradients(case, ratio, d, seed):
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    x = _randn(len(layout), seq_len, d, seed=seed, dtype=torch.float64).requires_grad_()
    pool(x, gi).sum().backward()
    # d mean / d member = 1 / group size.
    expected = (1.0 / gi.size.gather(1, gi.index).double())[..., None].expand_as(x)
    torch.testing.assert_close(x.grad, expected)

    x_c = _randn(len(layout), gi.max_groups, d, seed=seed + 1, dtype=torch.float64).requires_grad_()
    unpool(x_c, gi).sum().backward()
    torch.testing.assert_close(x_c.grad, gi.size.double()[..., None].expand_as(x_c))

    x_c.grad = None
    unpool_bilinear(x_c, gi, layout, ratio).sum().backward()
    # Bilinear weights sum to one, so every cell hands one unit of gradient back: the totals are preserved.
    torch.testing.assert_close(x_c.grad.sum((1, 2)), torch.full((len(layout),), float(seq_len * d), dtype=x.dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtype_and_device_follow_input(dtype):
    layout = [(VisualSpan(1, 30, (5, 6)),), (VisualSpan(0, 18, (3, 5), newline=True),)]
    gi = group_index(layout, 32, 4)
    x = _randn(2, 32, 3, seed=0, dtype=dtype)
    for out in (pool(x, gi), unpool(pool(x, gi), gi), unpool_bilinear(pool(x, gi), gi, layout, 4)):
        assert out.dtype == dtype and out.device == x.device
    if dtype != torch.float64:
        # Half precision is averaged in float32: the result is the float32 mean, rounded once.
        assert torch.equal(pool(x, gi), pool(x.float(), gi).to(dtype))


def test_trailing_dims_are_kept():
    layout = [(VisualSpan(0, 16, (4, 4)),)]
    gi = group_index(layout, 16, 4)
    x = _randn(1, 16, 2, 3, seed=0)
    assert pool(x, gi).shape == (1, 4, 2, 3)
    torch.testing.assert_close(pool(x, gi).flatten(2), pool(x.flatten(2), gi))
    assert unpool_bilinear(pool(x, gi), gi, layout, 4).shape == x.shape


def test_bilinear_hand_example():
    # A 1x4 grid pooled in runs of 2 becomes [a, b]; align_corners=False puts the four cells at source coordinates
    # -0.25, 0.25, 0.75, 1.25, clamped at the edges.
    layout = [(VisualSpan(0, 4, (1, 4)),)]
    gi = group_index(layout, 4, 2)
    x_c = torch.tensor([[[0.0], [4.0]]])
    assert unpool_bilinear(x_c, gi, layout, 2).flatten().tolist() == [0.0, 1.0, 3.0, 4.0]
    assert unpool(x_c, gi).flatten().tolist() == [0.0, 0.0, 4.0, 4.0]


def test_bilinear_leaves_newlines_and_gridless_alone():
    layout = [(VisualSpan(0, 12, (2, 5), newline=True), VisualSpan(12, 3))]
    gi = group_index(layout, 16, 4)
    x_c = _randn(1, gi.max_groups, 2, seed=3)
    a, b = unpool(x_c, gi), unpool_bilinear(x_c, gi, layout, 4)
    untouched = torch.tensor([5, 11, 12, 13, 14, 15])
    assert torch.equal(a[0, untouched], b[0, untouched])


def test_invalid_arguments():
    layout = [(VisualSpan(0, 4, (2, 2)),)]
    gi = group_index(layout, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        pool(torch.zeros(1, 5, 2), gi)
    with pytest.raises(ValueError, match="floating-point"):
        pool(torch.zeros(1, 4, 2, dtype=torch.long), gi)
    with pytest.raises(ValueError, match="shape"):
        unpool(torch.zeros(1, 4, 2), gi)
    with pytest.raises(ValueError, match="ratio"):
        unpool_bilinear(torch.zeros(1, 1, 2), gi, layout, 0)
    with pytest.raises(ValueError, match="samples"):
        unpool_bilinear(torch.zeros(1, 1, 2), gi, layout * 2, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    layout = [(VisualSpan(1, 30, (5, 6)),), (VisualSpan(0, 18, (3, 5), newline=True),)]
    gi, gi_cuda = group_index(layout, 32, 4), group_index(layout, 32, 4, device="cuda")
    x = _randn(2, 32, 8, seed=0)
    torch.testing.assert_close(pool(x.cuda(), gi_cuda).cpu(), pool(x, gi))
    torch.testing.assert_close(unpool_bilinear(pool(x.cuda(), gi), gi, layout, 4).cpu(),
                               unpool_bilinear(pool(x, gi), gi, layout, 4))
    # bfloat16 sums stall at 256 (256 + 1 rounds back to 256): the float32 accumulation keeps the mean exact. CPU
    # kernels accumulate in float32 on their own, so only CUDA can tell.
    run = group_index([(VisualSpan(0, 1024),)], 1024, 1024, device="cuda")
    assert pool(torch.ones(1, 1024, 1, dtype=torch.bfloat16, device="cuda"), run).item() == 1.0
