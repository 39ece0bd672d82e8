"""The PVTC projector as an op: token counts, window locality, padding, dtypes, parameter count, warm start."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

from vtc.ops import average_token_windows, partition_windows, pooled_grid
from vtc.pvtc import PVTCProjector, RegionCrossAttention, RMSNorm

VISION, TEXT = 8, 16


def per_patch(projector: nn.Module, grid: torch.Tensor) -> torch.Tensor:
    """The native projection of a 1x1-token model: the projector on every patch."""
    return projector(grid)


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values, so that no branch starts as the identity or at zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module


def build(ratio: int, global_query: str, warm: bool, token_window=(1, 1)) -> PVTCProjector:
    native = nn.Linear(VISION * token_window[0] * token_window[1], TEXT) if warm else None
    projector = PVTCProjector(VISION, TEXT, ratio=ratio, token_window=token_window, num_heads=4,
                              global_query=global_query, scale_grid=(3, 3), native_projector=native)
    return randomise(projector).eval()


@st.composite
def cases(draw):
    side = draw(st.integers(1, 3))
    return dict(
        ratio=side * side,
        h=draw(st.integers(1, 7)),
        w=draw(st.integers(1, 7)),
        n=draw(st.integers(1, 3)),
        global_query=draw(st.sampled_from(["cls", "none"])),
        warm=draw(st.booleans()),
    )


@settings(max_examples=30)
@given(case=cases(), data=st.data())
def test_each_output_depends_only_on_its_window(case, data):
    projector = build(case["ratio"], case["global_query"], case["warm"])
    n, h, w = case["n"], case["h"], case["w"]
    patches, cls = torch.randn(n, h, w, VISION), torch.randn(n, VISION)
    with torch.no_grad():
        out = projector(patches, cls, per_patch)
    side = math.isqrt(case["ratio"])
    assert out.shape == (n, *pooled_grid((h, w), (side, side)), TEXT)  # ceil(h/s) x ceil(w/s) per item

    # perturb one patch: only the output of the window holding it may move
    item, row, col = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    moved = patches.clone()
    moved[item, row, col] += 10.0
    with torch.no_grad():
        out_moved = projector(moved, cls, per_patch)
    changed = (out_moved - out).abs().amax(-1) > 1e-6
    expected = torch.zeros_like(changed)
    expected[item, row // side, col // side] = True
    assert torch.equal(changed, expected)


@settings(max_examples=30)
@given(case=cases())
def test_padding_never_leaks(case):
    """Every output equals the same projector run on its window's real patches alone (no padding at all)."""
    projector = build(case["ratio"], "none", warm=True)
    n, h, w = case["n"], case["h"], case["w"]
    patches = torch.randn(n, h, w, VISION)
    side = math.isqrt(case["ratio"])
    with torch.no_grad():
        out = projector(patches, None, per_patch)
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                window = patches[:, i * side:(i + 1) * side, j * side:(j + 1) * side]
                region = torch.nn.functional.silu(projector.region_proj(projector.region_norm(window))).flatten(1, 2)
                local = projector.native_projector(window.mean(dim=(1, 2)))
                expected = projector.local_block(local, region, None)
                torch.testing.assert_close(out[:, i, j], expected, rtol=1e-5, atol=1e-5)


def test_masked_region_slots_do_not_move_the_output():
    block = randomise(RegionCrossAttention(TEXT, num_heads=4)).eval()
    query, region = torch.randn(5, TEXT), torch.randn(5, 4, TEXT)
    valid = torch.tensor([[True, True, False, False]] * 5)
    garbage = region.clone()
    garbage[:, 2:] = torch.randn(5, 2, TEXT) * 100
    with torch.no_grad():
        torch.testing.assert_close(block(query, region, valid), block(query, garbage, valid))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_and_device_follow_the_input(dtype):
    projector = build(4, "cls", warm=True).to(dtype)
    patches, cls = torch.randn(2, 5, 6, VISION, dtype=dtype), torch.randn(2, VISION, dtype=dtype)
    with torch.no_grad():
        out = projector(patches, cls, per_patch)
    assert out.dtype == dtype and out.device == patches.device and out.shape == (2, 3, 3, TEXT)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("global_query", ["cls", "mean", "none"])
def test_warm_start_at_ratio_1_is_exactly_the_native_projector(global_query):
    native = randomise(nn.Sequential(nn.Linear(4 * VISION, TEXT), nn.GELU(), nn.Linear(TEXT, TEXT)))
    projector = PVTCProjector(VISION, TEXT, ratio=1, token_window=(2, 2), num_heads=4, global_query=global_query,
                              native_projector=native)

    def space_to_depth(module, grid):  # 2x2 patches per token, concatenated
        n, h, w, d = grid.shape
        return module(grid.reshape(n, h // 2, 2, w // 2, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, -1))

    patches, cls = torch.randn(3, 6, 4, VISION), torch.randn(3, VISION)
    with torch.no_grad():
        assert torch.equal(projector(patches, cls, space_to_depth), space_to_depth(native, patches))


def test_average_token_windows_averages_tokens_position_by_position():
    grid = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 4, 6, 1)  # 2x3 tokens of 2x2 patches
    averaged = average_token_windows(grid, (2, 2), side=2)  # windows of 2x2 tokens: one full, one with 2x1 tokens
    assert averaged.shape == (1, 2, 4, 1)
    # top-left patch of the first window: mean of the top-left patches of tokens (0,0), (0,1), (1,0), (1,1)
    assert averaged[0, 0, 0, 0] == (0 + 2 + 12 + 14) / 4
    # the right window holds only tokens (0,2) and (1,2)
    assert averaged[0, 0, 2, 0] == (4 + 16) / 2
    assert torch.equal(average_token_windows(grid, (2, 2), side=1), grid)


def test_partition_windows_reports_padding():
    regions, valid = partition_windows(torch.ones(1, 3, 5, 2), (2, 2))
    assert regions.shape == (1, 2, 3, 4, 2) and valid.shape == (2, 3, 4)
    assert int(valid.sum()) == 15 and float(regions.sum()) == 30.0


@pytest.mark.parametrize(("ratio", "millions"), [(1, 147.3), (4, 172.1)])
def test_paper_parameter_count_at_internvl_2b_dimensions(ratio, millions):
    """Vision width 1024, language width 2048, 2x2 pixel shuffle, 32x32 patches per tile; counted on meta tensors."""
    with torch.device("meta"):
        side = math.isqrt(ratio)
        projector = PVTCProjector(1024, 2048, ratio=ratio, token_window=(2, 2), num_heads=16, mlp_ratio=4.0,
                                  global_query="cls", scale_grid=(16 // side, 16 // side))
    count = sum(p.numel() for p in projector.parameters())
    assert round(count / 1e6, 1) == millions
    if ratio == 1:
        c = 2048
        assert count == 4096 * c + 4096 + 2 * (1024 * c + 1024) + 256 * c + 2 * (16 * c * c + 3 * c)


def test_constructor_rejects_a_non_square_ratio_and_indivisible_heads():
    with pytest.raises(ValueError, match="perfect square"):
        PVTCProjector(VISION, TEXT, ratio=2)
    with pytest.raises(ValueError, match="divisible"):
        PVTCProjector(VISION, TEXT, ratio=4, num_heads=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_normalises_in_float32_and_applies_its_gain_in_the_input_dtype(dtype):
    norm = randomise(RMSNorm(24)).to(dtype)
    x = (torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(1)) * 7).to(dtype)
    x32 = x.float()
    expected = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.eps)).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, atol=0, rtol=0)

