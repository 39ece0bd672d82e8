"""Positions and per-position tensors of the compressed sequence.

Axes: a rope axes (M-RoPE: 3 or 4; absent for 1-D positions), b batch, s sequence (full length), g groups
(compressed length), d hidden.

Positions are never renumbered: a group sits at its first member's position or at the mean of its members'
positions, per axis, so the layers before and after the compressed ones and decoding all keep the original numbering.
"""

from __future__ import annotations

import torch

from vtc.ops.groups import GroupIndex
from vtc.ops.pool import segment_mean

__all__ = ["compact_positions", "gather_groups"]

_MODES = ("first", "mean")


def _expand_batch(x: torch.Tensor, batch_dim: int, gi: GroupIndex, name: str) -> torch.Tensor:
    """Expand a broadcast batch of 1 to `b`, after checking the batch and sequence sizes."""
    b = x.shape[batch_dim]
    if b not in (1, gi.batch_size) or x.shape[batch_dim + 1] != gi.seq_len:
        raise ValueError(f"{name} must have batch {gi.batch_size} (or 1) and sequence length {gi.seq_len}, "
                         f"got shape {tuple(x.shape)}")
    if b == gi.batch_size:
        return x
    sizes = [-1] * x.dim()
    sizes[batch_dim] = gi.batch_size
    return x.expand(*sizes)


def compact_positions(position_ids: torch.Tensor, gi: GroupIndex, mode: str = "mean") -> torch.Tensor:
    """Representative positions of the groups.

    Args:
        position_ids: `(b, s)` or `(a, b, s)` (M-RoPE); a batch of 1 is broadcast to `b`.
        gi: the batch's `GroupIndex`.
        mode: `"first"`, the first member's position (input dtype); or `"mean"`, the members' mean per axis (float32;
            a singleton group keeps its exact position).

    Returns:
        `(b, g)` or `(a, b, g)`. Padding slots repeat the last valid slot. With `"first"` positions stay
        non-decreasing along `g` wherever they were along `s`. With `"mean"` they do too, except where groups
        interleave: a `newline=True` span pooled by windows taller than one row puts each row's newline token (a
        singleton) between windows whose later members come after it, so the mean can step back there.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if position_ids.dim() not in (2, 3):
        raise ValueError(f"position_ids must have shape (b, s) or (a, b, s), got {tuple(position_ids.shape)}")
    squeeze = position_ids.dim() == 2
    pos = _expand_batch(position_ids, position_ids.dim() - 2, gi, "position_ids")
    if squeeze:
        pos = pos[None]  # (1, b, s): one code path for 1-D and M-RoPE positions
    a, b, s = pos.shape
    if mode == "first":
        out = pos.gather(2, gi.first.to(pos.device)[None].expand(a, -1, -1))
    elif gi.is_identity:
        out = pos.float()  # each position is its own group; skip the segment mean
    else:
        # The segment mean of `pool`, with the axes as features: rows (b * s, a) into (b * g, a). Integer positions
        # sum exactly in float32 while a group's sum stays below 2**24 (64 members below position 262,144), so the
        # mean does not depend on the summation order there.
        # One copy converts and lays the rows out (a reshape of the permuted view, then `float`, would copy twice).
        rows = pos.permute(1, 2, 0).to(torch.float32, memory_format=torch.contiguous_format).view(b * s, a)
        means = segment_mean(rows, gi)
        if gi.is_ragged:  # padding slots (0 / 1) copy their sample's last real group instead
            means = means.index_select(0, gi.fill_rows.to(pos.device))
        out = means.reshape(b, gi.max_groups, a).permute(2, 0, 1)
    return out[0] if squeeze else out


def gather_groups(x: torch.Tensor, gi: GroupIndex) -> torch.Tensor:
    """`x` at each group's first member, e.g. rotary `cos` / `sin` at the representative positions.

    Args:
        x: `(b, s, ...)`; a batch of 1 is broadcast to `b`.
        gi: the batch's `GroupIndex`.

    Returns:
        `(b, g, ...)` in `x`'s dtype and device; padding slots repeat the last real group.
    """
    if x.dim() < 2:
        raise ValueError(f"x must have shape (b, s, ...), got {tuple(x.shape)}")
    x = _expand_batch(x, 0, gi, "x")
    b, s = x.shape[:2]
    first = gi.first.to(x.device).reshape(b, gi.max_groups, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, first)
