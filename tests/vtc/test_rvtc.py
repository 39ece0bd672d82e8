"""The RVTC policy: the paper's token-count table, the official rule, and properties over sizes and settings."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vtc
from vtc.ops.tiles import area_tile_cap, candidate_grids, edge_tile_cap, match_grid
from vtc.rvtc import TilePlan, check_budget, plan_tiles, tile_token_grid

S = 448  # the paper's tile side; 256 visual tokens per tile

# (W, H) -> (cols, rows, thumbnail) under RVTC with max_tiles=6, 448 px tiles: the edge and the area rule.
TABLE = {
    (448, 448): ((1, 1, False), (1, 1, False)),
    (640, 480): ((1, 1, False), (1, 1, False)),
    (800, 600): ((2, 2, True), (1, 1, False)),
    (1024, 768): ((3, 2, True), (2, 2, True)),
    (1280, 720): ((2, 1, True), (2, 1, True)),
    (1920, 1080): ((2, 1, True), (2, 1, True)),
    (600, 1800): ((1, 3, True), (1, 3, True)),
    (3000, 400): ((6, 1, True), (6, 1, True)),
}
TOKENS = {  # the table's visual tokens: edge, area
    (448, 448): (256, 256), (640, 480): (256, 256), (800, 600): (1280, 256), (1024, 768): (1792, 1280),
    (1280, 720): (768, 768), (1920, 1080): (768, 768), (600, 1800): (1024, 1024), (3000, 400): (1792, 1792),
}


@pytest.mark.parametrize("size", list(TABLE))
def test_the_token_count_table_is_reproduced(size):
    for mode, expected, tokens in zip(("edge", "area"), TABLE[size], TOKENS[size]):
        plan = plan_tiles(*size, vtc.RVTCConfig(mode=mode, max_tiles=6), S)
        assert (plan.cols, plan.rows, plan.thumbnail) == expected, mode
        assert plan.visual_tokens(256) == tokens, mode


def test_without_the_cap_small_images_are_upsampled_as_in_the_table():
    # The InternVL2 columns: the plain aspect-ratio match over all grids up to max_num tiles.
    assert match_grid(640, 480, candidate_grids(1, 6), S) == (3, 2)
    assert match_grid(640, 480, candidate_grids(1, 12), S) == (4, 3)
    assert match_grid(3000, 400, candidate_grids(1, 12), S) == (8, 1)
    assert match_grid(1280, 720, candidate_grids(1, 12), S) == (4, 2)


def official_grid(width, height, min_num, max_num, tile):
    """The rule released with the paper, candidate order included: a set of grids sorted by
    tile count, closest aspect ratio, ties to a later grid while the image's area exceeds half the grid's."""
    ratios = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
              if min_num <= i * j <= max_num}
    best, best_diff = (1, 1), float("inf")
    for i, j in sorted(ratios, key=lambda r: r[0] * r[1]):
        diff = abs(width / height - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * i * j:
            best = (i, j)
    return best


sizes = st.integers(1, 4000)
tile_sizes = st.sampled_from([14, 32, 336, 448]) | st.integers(8, 600)


@given(sizes, sizes, tile_sizes, st.integers(1, 3), st.integers(1, 12))
def test_edge_mode_is_the_official_rule(width, height, tile, min_tiles, max_tiles):
    max_tiles = max(min_tiles, max_tiles)
    config = vtc.RVTCConfig(mode="edge", min_tiles=min_tiles, max_tiles=max_tiles)
    cap = min(max_tiles, math.ceil(height / tile) * math.ceil(width / tile))
    plan = plan_tiles(width, height, config, tile)
    if min_tiles <= cap:  # otherwise the official code falls back to one tile and RVTC keeps min_tiles
        assert (plan.cols, plan.rows) == official_grid(width, height, min_tiles, cap, tile)
    assert plan.thumbnail == (plan.tiles > 1)


@st.composite
def settings(draw, mode=None):
    mode = mode or draw(st.sampled_from(vtc.RVTCConfig.MODES))
    min_tiles = draw(st.integers(1, 4))
    max_tiles = draw(st.integers(min_tiles, 12))
    tokens_per_tile = draw(st.integers(1, 300))
    thumbnail = draw(st.sampled_from(["auto", "always", "never"]))
    use_thumbnail = True if thumbnail == "always" else draw(st.booleans())
    budget = None
    if mode == "budget":
        needed = tokens_per_tile * (min_tiles + (thumbnail == "always" or (use_thumbnail and thumbnail == "auto"
                                                                             and min_tiles > 1)))
        budget = draw(st.integers(needed, needed + 8 * tokens_per_tile))
    config = vtc.RVTCConfig(mode=mode, min_tiles=min_tiles, max_tiles=max_tiles, use_thumbnail=use_thumbnail,
                            max_visual_tokens=budget)
    return config, tokens_per_tile, thumbnail


@given(sizes, sizes, tile_sizes, settings())
def test_tiles_stay_within_the_bounds_and_the_rule_cap(width, height, tile, setting):
    config, tokens_per_tile, thumbnail = setting
    plan = plan_tiles(width, height, config, tile, tokens_per_tile, thumbnail=thumbnail)
    assert isinstance(plan, TilePlan) and plan.tiles == plan.cols * plan.rows
    assert config.min_tiles <= plan.tiles <= config.max_tiles
    if config.mode == "edge":
        assert plan.tiles <= max(config.min_tiles, edge_tile_cap(width, height, tile))
    if config.mode == "area":
        assert plan.tiles <= max(config.min_tiles, area_tile_cap(width, height, tile))
    expected_thumbnail = {"always": True, "never": False, "auto": config.use_thumbnail and plan.tiles > 1}
    assert plan.thumbnail == expected_thumbnail[thumbnail]
    assert plan.items == plan.tiles + plan.thumbnail


@given(sizes, sizes, tile_sizes, st.integers(1, 4), st.integers(1, 12))
def test_area_never_gives_more_tiles_than_edge(width, height, tile, min_tiles, max_tiles):
    kwargs = dict(min_tiles=min_tiles, max_tiles=max(min_tiles, max_tiles))
    edge = plan_tiles(width, height, vtc.RVTCConfig(mode="edge", **kwargs), tile)
    area = plan_tiles(width, height, vtc.RVTCConfig(mode="area", **kwargs), tile)
    assert area.tiles <= edge.tiles


@given(st.integers(1, 600), st.integers(1, 600), st.integers(2, 6), tile_sizes, settings())
def test_more_pixels_never_give_fewer_tiles_at_the_same_aspect_ratio(width, height, scale, tile, setting):
    config, tokens_per_tile, thumbnail = setting
    small = plan_tiles(width, height, config, tile, tokens_per_tile, thumbnail=thumbnail)
    large = plan_tiles(width * scale, height * scale, config, tile, tokens_per_tile, thumbnail=thumbnail)
    assert large.tiles >= small.tiles


@given(sizes, sizes, tile_sizes, settings(mode="budget"))
def test_budget_mode_never_exceeds_its_budget(width, height, tile, setting):
    config, tokens_per_tile, thumbnail = setting
    plan = plan_tiles(width, height, config, tile, tokens_per_tile, thumbnail=thumbnail)
    assert plan.visual_tokens(tokens_per_tile) <= config.max_visual_tokens


def test_budget_mode_takes_the_largest_count_that_fits_and_pvtc_makes_tiles_cheaper():
    wide = (3000, 400)
    config = vtc.RVTCConfig(mode="budget", max_tiles=12, max_visual_tokens=1000)
    # 256 tokens a tile: 2 tiles + thumbnail = 768 fit, 3 + thumbnail = 1024 do not
    assert plan_tiles(*wide, config, S, 256).tiles == 2
    # under PVTC ratio 4 a 16x16 tile makes 8x8 tokens: up to 14 tiles + thumbnail fit, capped at 12, matched 8x1
    per_tile = math.prod(tile_token_grid((16, 16), vtc.PVTCConfig(ratio=4)))
    plan = plan_tiles(*wide, config, S, per_tile)
    assert per_tile == 64 and (plan.cols, plan.rows) == (8, 1) and plan.visual_tokens(per_tile) == 576


def test_pvtc_tile_grid_is_the_pooled_grid():
    assert tile_token_grid((16, 16), None) == (16, 16)
    assert tile_token_grid((16, 16), vtc.PVTCConfig(ratio=9)) == (6, 6)  # ragged windows count whole
    assert tile_token_grid((4, 4), vtc.PVTCConfig(ratio=16)) == (1, 1)


def test_min_tiles_is_honoured_where_the_official_code_falls_back_to_one_tile():
    plan = plan_tiles(300, 200, vtc.RVTCConfig(mode="edge", min_tiles=2), S)
    assert (plan.cols, plan.rows, plan.thumbnail) == (2, 1, True)


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("size", [(0, 100), (100, 0), (-5, 100), (100, -1), (True, 100), (100.0, 100), (None, 1)])
def test_non_positive_or_non_integer_sizes_are_refused(size):
    with pytest.raises(ValueError, match="width|height"):
        plan_tiles(*size, vtc.RVTCConfig(), S)


@pytest.mark.parametrize("kwargs", [dict(tile_size=0), dict(tile_size=-448), dict(tokens_per_tile=0),
                                    dict(thumbnail="sometimes")])
def test_bad_tile_arguments_are_refused(kwargs):
    arguments = {"tile_size": S, "tokens_per_tile": 256, "thumbnail": "auto", **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        plan_tiles(640, 480, vtc.RVTCConfig(), **arguments)


def test_min_tiles_above_max_tiles_is_a_config_error():
    with pytest.raises(vtc.ConfigError, match="max_tiles"):
        vtc.RVTCConfig(min_tiles=4, max_tiles=3)


@pytest.mark.parametrize("min_tiles, budget, needed", [(1, 255, 256), (2, 700, 768)])
def test_a_budget_below_min_tiles_is_a_config_error_naming_what_it_needs(min_tiles, budget, needed):
    config = vtc.RVTCConfig(mode="budget", min_tiles=min_tiles, max_visual_tokens=budget)
    for call in (lambda: plan_tiles(640, 480, config, S, 256), lambda: check_budget(config, S, 256)):
        with pytest.raises(vtc.ConfigError, match=f"max_visual_tokens={budget}.*>= {needed}"):
            call()


def test_a_model_whose_whole_image_tile_is_always_there_refuses_use_thumbnail_false():
    with pytest.raises(vtc.ConfigError, match="use_thumbnail"):
        plan_tiles(640, 480, vtc.RVTCConfig(use_thumbnail=False), S, thumbnail="always")
