"""Pooling positions into their groups and spreading groups back over positions.

Axes: b batch, s sequence (full length), g groups (compressed length), d hidden (any trailing dims are flattened
into d and restored).

`pool` is a segment mean and `unpool` its gather; together they are LVTC's compress and restore. `unpool_bilinear`
smooths the restore inside grid spans by interpolating each span's pooled grid back to its full grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from vtc.layout import BatchLayout
from vtc.ops.groups import GroupIndex, check_layout
from vtc.ops.windows import check_ratio, pooled_grid, window_shape

__all__ = ["pool", "unpool", "unpool_bilinear"]

_HALF = (torch.float16, torch.bfloat16)


def _check_x(x: torch.Tensor, length: int, gi: GroupIndex, name: str, what: str) -> None:
    if x.dim() < 3 or x.shape[0] != gi.batch_size or x.shape[1] != length:
        raise ValueError(f"{name} must have shape (b={gi.batch_size}, {what}={length}, d...), got {tuple(x.shape)}")


def pool(x: torch.Tensor, gi: GroupIndex) -> torch.Tensor:
    """Mean of each group's members.

    Args:
        x: `(b, s, d)` floating-point states.
        gi: the batch's `GroupIndex`.

    Returns:
        `(b, g, d)` in `x`'s dtype and device; padding slots are zeros. Half-precision inputs are averaged in float32
        so that large groups do not lose precision.
    """
    _check_x(x, gi.seq_len, gi, "x", "s")
    if not x.is_floating_point():
        raise ValueError(f"pool needs a floating-point tensor, got {x.dtype}")
    if gi.is_identity:
        # The segment mean below would turn -0.0 into +0.0; ratio=1 must be bit-exact.
        return x.clone()
    rows = x.flatten(2).flatten(0, 1)
    means = segment_mean(rows.float() if x.dtype in _HALF else rows, gi)
    return means.to(x.dtype).reshape(x.shape[0], gi.max_groups, *x.shape[2:])


def segment_mean(rows: torch.Tensor, gi: GroupIndex) -> torch.Tensor:
    """`(b * s, f)` rows, one per position of the flattened batch → `(b * g, f)` means of each group's rows, in
    `rows`' dtype; padding slots are zeros.

    A segment sum (one row copy per position: `index_add`, which runs far faster on a CPU than an element-wise
    scatter), then a division by the group sizes (padding slots: 0 / 1).
    """
    summed = rows.new_zeros(gi.batch_size * gi.max_groups, rows.shape[-1])
    summed.index_add_(0, gi.rows.to(rows.device), rows)  # in place: the out-of-place form copies the zeros first
    return summed.div_(gi.divisor.to(device=rows.device, dtype=rows.dtype))


def unpool(x_c: torch.Tensor, gi: GroupIndex) -> torch.Tensor:
    """Give every position its group's vector (nearest-neighbour restore).

    Args:
        x_c: `(b, g, d)` compressed states.
        gi: the batch's `GroupIndex`.

    Returns:
        `(b, s, d)` in `x_c`'s dtype and device.
    """
    _check_x(x_c, gi.max_groups, gi, "x_c", "g")
    rows = x_c.flatten(2).flatten(0, 1)
    return rows.index_select(0, gi.rows.to(x_c.device)).reshape(gi.batch_size, gi.seq_len, *x_c.shape[2:])


def unpool_bilinear(x_c: torch.Tensor, gi: GroupIndex, layout: BatchLayout, ratio: int) -> torch.Tensor:
    """Like `unpool`, but grid cells get a bilinear interpolation of their span's pooled grid.

    Each grid span's pooled grid is resized to the span's full grid with `align_corners=False`; newline tokens,
    grid-less spans and text positions are restored as by `unpool`. At `ratio=1` this is exactly `unpool`.

    Args:
        x_c: `(b, g, d)` compressed states.
        gi: the `GroupIndex` built from `layout` at `ratio`.
        layout: the batch's visual layout.
        ratio: the ratio `gi` was built with (it fixes the window shape).

    Returns:
        `(b, s, d)` in `x_c`'s dtype and device.
    """
    ratio = check_ratio(ratio)
    check_layout(layout, gi.seq_len)
    if len(layout) != gi.batch_size:
        raise ValueError(f"layout has {len(layout)} samples but the GroupIndex has {gi.batch_size}")
    out = unpool(x_c, gi)
    flat = x_c.flatten(2)
    window = window_shape(ratio)
    index = gi.index.to(x_c.device)
    samples, positions, values = [], [], []
    for bi, sample in enumerate(layout):
        for span in sample:
            if span.grid is None:
                continue
            (h, w), (sh, sw) = span.grid, window
            ph, pw = pooled_grid(span.grid, window)
            if (ph, pw) == (h, w):
                # Nothing was pooled; interpolating would only add rounding.
                continue
            stride = w + 1 if span.newline else w
            rows, cols = torch.arange(h, device=x_c.device)[:, None], torch.arange(w, device=x_c.device)[None, :]
            # The group of window (i, j) is the group of its top-left cell.
            leaders = span.start + (rows[:ph] * sh) * stride + cols[:, :pw] * sw
            grid = flat[bi, index[bi, leaders]]  # (ph, pw, d)
            grid = rearrange(grid.float() if grid.dtype in _HALF else grid, "ph pw d -> 1 d ph pw")
            full = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            samples.append(torch.full((h * w,), bi, device=x_c.device))
            positions.append((span.start + rows * stride + cols).flatten())
            values.append(rearrange(full, "1 d h w -> (h w) d").to(x_c.dtype))  # row-major
    if not values:
        return out
    flat_out = out.flatten(2)
    # Out-of-place index_put keeps autograd simple: gradients reach x_c through both the gather and the grids.
    flat_out = flat_out.index_put((torch.cat(samples), torch.cat(positions)), torch.cat(values))
    return flat_out.reshape(out.shape)
