"""Pure tensor ops behind every compressor: group index, pool / unpool, masks and positions, the kept positions of a
shortened sequence (`Selection`), tiling arithmetic.

Axes used across the package: b batch, s sequence (full length), g groups (compressed length), d hidden,
a rope axes. Everything here is tensor-in / tensor-out, holds no state and knows no model family.
"""

from vtc.ops.groups import GroupIndex, cell_mask, check_layout, compressed_lengths, group_index
from vtc.ops.masks import compact_mask, extend_mask
from vtc.ops.pool import pool, unpool, unpool_bilinear
from vtc.ops.positions import compact_positions, gather_groups
from vtc.ops.regions import average_token_windows, partition_windows
from vtc.ops.select import Selection, keep_selection, scatter_selected, select_positions, selected_mask
from vtc.ops.tiles import area_tile_cap, candidate_grids, check_image_size, edge_tile_cap, match_grid
from vtc.ops.windows import check_ratio, pooled_grid, window_shape

__all__ = [
    "GroupIndex",
    "Selection",
    "area_tile_cap",
    "average_token_windows",
    "candidate_grids",
    "cell_mask",
    "check_image_size",
    "check_layout",
    "check_ratio",
    "compact_mask",
    "compact_positions",
    "compressed_lengths",
    "edge_tile_cap",
    "extend_mask",
    "gather_groups",
    "group_index",
    "keep_selection",
    "match_grid",
    "partition_windows",
    "pool",
    "pooled_grid",
    "scatter_selected",
    "select_positions",
    "selected_mask",
    "unpool",
    "unpool_bilinear",
    "window_shape",
]
