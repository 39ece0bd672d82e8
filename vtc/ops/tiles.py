"""Tiling arithmetic: how many tiles of side `s` an image may have, and which `cols x rows` grid it gets.

Sizes are in pixels, `(width, height)`; grids are `(cols, rows)`. Pure integer and float arithmetic, no state.

`match_grid` is the aspect-ratio match of the paper's code (`dynamic_preprocess`): among the candidate
grids, ordered by tile count, take the one whose `cols / rows` is closest to `width / height`; on an exact tie with
the best so far, move to the later (larger) grid only while the image's area exceeds half the grid's area. Within
one tile count the candidates are tried in order of increasing columns (the official code leaves that order to a
Python set; it only matters on an exact tie between two grids with the same tile count).
"""

from __future__ import annotations

import functools
import numbers

__all__ = ["area_tile_cap", "candidate_grids", "check_image_size", "edge_tile_cap", "match_grid"]


def check_image_size(width: int, height: int) -> tuple[int, int]:
    """Return `(width, height)` as ints, or raise `ValueError` unless both are integers >= 1."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"image {name} must be an integer >= 1 pixel, got {value!r}")
    return int(width), int(height)


def _check_tile_size(tile_size: int) -> int:
    if isinstance(tile_size, bool) or not isinstance(tile_size, numbers.Integral) or tile_size < 1:
        raise ValueError(f"tile_size must be an integer >= 1 pixel, got {tile_size!r}")
    return int(tile_size)


def edge_tile_cap(width: int, height: int, tile_size: int) -> int:
    """`ceil(W / s) * ceil(H / s)`: the tiles of side `s` needed to cover the image at its own resolution."""
    (width, height), s = check_image_size(width, height), _check_tile_size(tile_size)
    return -(-width // s) * -(-height // s)


def area_tile_cap(width: int, height: int, tile_size: int) -> int:
    """`ceil(W * H / s^2)`: as many tiles as the image's area fills, never more than `edge_tile_cap`."""
    (width, height), s = check_image_size(width, height), _check_tile_size(tile_size)
    return -(-(width * height) // (s * s))


@functools.lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every `(cols, rows)` with `min_tiles <= cols * rows <= max_tiles`, by tile count, then by columns."""
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got min_tiles={min_tiles}, max_tiles={max_tiles}")
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles // c + 1) if c * r >= min_tiles]
    return tuple(sorted(grids, key=lambda grid: (grid[0] * grid[1], grid[0])))


def match_grid(width: int, height: int, candidates: tuple[tuple[int, int], ...], tile_size: int) -> tuple[int, int]:
    """The candidate grid the aspect-ratio match chooses for a `width x height` image (see the module doc).

    Args:
        candidates: `(cols, rows)` grids ordered by tile count, e.g. from `candidate_grids`; at least one.
        tile_size: the tile side `s` of the tie-break (`W * H > s^2 * cols * rows / 2`).
    """
    (width, height), s = check_image_size(width, height), _check_tile_size(tile_size)
    if not candidates:
        raise ValueError("match_grid needs at least one candidate grid")
    aspect, area = width / height, width * height
    best, best_diff = candidates[0], float("inf")
    for cols, rows in candidates:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * s * s * cols * rows:
            best = (cols, rows)
    return best
