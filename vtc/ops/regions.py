"""Cutting a patch grid into the windows (regions) that PVTC turns into one output token each.

Axes: n items (images or tiles), h, w patch-grid rows and columns, gh, gw pooled (output) grid, k patches per window,
d channels.

Grids that a window does not divide are padded at the bottom and right; every function reports which slots are real,
and the pooled grid always comes from `pooled_grid`, the one count function the processor side calls too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat

from vtc.ops.windows import pooled_grid

__all__ = ["average_token_windows", "partition_windows"]

_HALF = (torch.float16, torch.bfloat16)


def _check_grid(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (n, h, w, d), got {tuple(x.shape)}")


def _pad_grid(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad `(n, h, w, d)` to `(n, rows, cols, d)` at the bottom and right."""
    pad_h, pad_w = rows - x.shape[1], cols - x.shape[2]
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def partition_windows(x: torch.Tensor, window: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a patch grid into non-overlapping `window`s, row-major inside each window.

    Args:
        x: `(n, h, w, d)` patch grid.
        window: `(wh, ww)` patches per window.

    Returns:
        `(regions, valid)`: regions `(n, gh, gw, wh * ww, d)` (padding slots are zeros) and valid `(gh, gw, wh * ww)`
        bool, False at padding slots. `(gh, gw) = pooled_grid((h, w), window)`.
    """
    _check_grid(x, "x")
    _, h, w, _ = x.shape
    wh, ww = window
    gh, gw = pooled_grid((h, w), window)
    regions = rearrange(_pad_grid(x, gh * wh, gw * ww), "n (gh wh) (gw ww) d -> n gh gw (wh ww) d", wh=wh, ww=ww)
    valid = torch.ones(1, h, w, 1, dtype=torch.bool, device=x.device)
    valid = rearrange(_pad_grid(valid, gh * wh, gw * ww), "1 (gh wh) (gw ww) 1 -> gh gw (wh ww)", wh=wh, ww=ww)
    return regions, valid


def average_token_windows(x: torch.Tensor, token: tuple[int, int], side: int) -> torch.Tensor:
    """The patch grid of a coarser tokenisation: every `side x side` block of tokens averaged into one token.

    A projector that turns each `token = (th, tw)` block of patches into one language token sees, after this, a grid
    whose tokens are the means of `side x side` of the original tokens, taken patch position by patch position (the
    top-left patches of the tokens are averaged together, and so on). Feeding that grid to the projector gives one
    token per PVTC window from the model's own projector. Partial windows at the bottom and right edges average only
    their real tokens.

    Args:
        x: `(n, h, w, d)` patch grid, `h` and `w` multiples of `th` and `tw`.
        token: `(th, tw)` patches per native token.
        side: native tokens per window side; `1` returns `x` itself.

    Returns:
        `(n, gh * th, gw * tw, d)` with `(gh, gw) = pooled_grid((h // th, w // tw), (side, side))`, in `x`'s dtype.
    """
    _check_grid(x, "x")
    _, h, w, _ = x.shape
    th, tw = token
    if h % th or w % tw:
        raise ValueError(f"a ({h}, {w}) patch grid is not a whole number of ({th}, {tw}) tokens")
    if side == 1:
        return x
    gh, gw = pooled_grid((h // th, w // tw), (side, side))
    acc = x.float() if x.dtype in _HALF else x
    acc = _pad_grid(acc, gh * side * th, gw * side * tw)
    # sh, sw: a window's native tokens; th, tw: the patch position inside a token, which the mean keeps apart.
    total = reduce(acc, "n (gh sh th) (gw sw tw) d -> n (gh th) (gw tw) d", "sum", sh=side, sw=side, th=th, tw=tw)
    ones = torch.ones(1, h // th, w // tw, 1, dtype=acc.dtype, device=x.device)
    count = reduce(_pad_grid(ones, gh * side, gw * side), "1 (gh sh) (gw sw) 1 -> gh gw", "sum", sh=side, sw=side)
    # real tokens per window, spread over the window's output patches
    mean = total / repeat(count, "gh gw -> (gh th) (gw tw) 1", th=th, tw=tw)
    return mean.to(x.dtype)
