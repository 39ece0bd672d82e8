"""Pooling windows over a visual grid, and the token counts they produce.

Axes: h, w grid rows and columns; sh, sw window rows and columns.

`pooled_grid` is the single place where a grid and a window become a token count. The group index, the compressed
lengths, the projector and the processor's placeholder count all call it, so they cannot disagree at ragged edges.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_ratio", "pooled_grid", "window_shape"]


def check_ratio(ratio: int) -> int:
    """Return `ratio` as an `int`, or raise `ValueError` unless it is an integer >= 1."""
    # bool is an Integral too, but `ratio=True` is always a mistake.
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Integral):
        raise ValueError(f"ratio must be an integer >= 1, got {ratio!r}")
    if ratio < 1:
        raise ValueError(f"ratio must be an integer >= 1, got {ratio}")
    return int(ratio)


def window_shape(ratio: int) -> tuple[int, int]:
    """The `(sh, sw)` window that merges `ratio` grid cells into one token.

    A perfect square `ratio = s * s` gives an `s x s` window, which keeps the pooled grid's aspect ratio. Any other
    ratio gives a `1 x ratio` run along a row: there is no square window of that area, and a row run never mixes rows,
    so the pooled grid is still a grid.

    Args:
        ratio: how many grid cells become one token (`1` keeps every cell).
    """
    ratio = check_ratio(ratio)
    side = math.isqrt(ratio)
    return (side, side) if side * side == ratio else (1, ratio)


def pooled_grid(grid: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    """The `(ceil(h / sh), ceil(w / sw))` grid left after pooling `grid` with `window`.

    Partial windows at the bottom and right edges count as whole tokens, so no cell is ever dropped.

    Args:
        grid: `(h, w)`, both >= 1.
        window: `(sh, sw)`, both >= 1, e.g. from `window_shape`.
    """
    (h, w), (sh, sw) = grid, window
    if h < 1 or w < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    if sh < 1 or sw < 1:
        raise ValueError(f"window must be positive, got {window}")
    return (-(-h // sh), -(-w // sw))
