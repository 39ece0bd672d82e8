"""2-D attention masks of the compressed sequence, at prefill and during cached decoding.

Axes: b batch, s sequence (full length), g groups (compressed length), n new tokens appended after prefill.

A group is attended to exactly when its first member was: with left padding the padding positions are text
singletons, so they stay masked, and the right-padding slots of shorter samples are masked on top.
"""

from __future__ import annotations

import torch

from vtc.ops.groups import GroupIndex

__all__ = ["compact_mask", "extend_mask"]


def compact_mask(mask2d: torch.Tensor | None, gi: GroupIndex) -> torch.Tensor | None:
    """The 2-D attention mask of the compressed sequence.

    Args:
        mask2d: `(b, s)` mask of the full sequence (1/True = attend), or `None` for "attend everywhere".
        gi: the batch's `GroupIndex`.

    Returns:
        `(b, g)` in `mask2d`'s dtype and device: the mask at each group's first member, 0 in padding slots. With
        `mask2d=None` it stays `None` when every sample has the same number of groups; otherwise the padding slots
        need masking, and a long mask of 1 (valid) / 0 (padding) is returned.
    """
    if mask2d is None:
        if not gi.is_ragged:
            return None
        return gi.valid.long()
    if mask2d.dim() != 2 or tuple(mask2d.shape) != (gi.batch_size, gi.seq_len):
        raise ValueError(f"mask2d must have shape (b={gi.batch_size}, s={gi.seq_len}), got {tuple(mask2d.shape)}")
    first, valid = gi.first.to(mask2d.device), gi.valid.to(mask2d.device)
    kept = mask2d.gather(1, first)
    return torch.where(valid, kept, torch.zeros((), dtype=mask2d.dtype, device=mask2d.device))


def extend_mask(compact: torch.Tensor | None, mask2d_new: torch.Tensor | None, n_new: int, batch: int, *,
                compact_len: int | None = None) -> torch.Tensor | None:
    """The compressed prefill mask followed by the mask of `n_new` tokens appended after it (decode steps).

    Args:
        compact: `(b, g)` from `compact_mask`, or `None` (all ones).
        mask2d_new: `(b, n_new)` mask of the appended tokens, or `None` (all ones).
        n_new: number of appended tokens.
        batch: `b`.
        compact_len: `g`; only needed when `compact` is `None` but `mask2d_new` is not, since then the length of the
            all-ones prefix cannot be read off a tensor.

    Returns:
        `(b, g + n_new)` in the dtype and device of `compact` (else `mask2d_new`), or `None` when both are `None`.
    """
    if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 0:
        raise ValueError(f"n_new must be an integer >= 0, got {n_new!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if compact is None and mask2d_new is None:
        return None
    if compact is not None and (compact.dim() != 2 or compact.shape[0] != batch):
        raise ValueError(f"compact must have shape (b={batch}, g), got {tuple(compact.shape)}")
    if mask2d_new is not None and tuple(mask2d_new.shape) != (batch, n_new):
        raise ValueError(f"mask2d_new must have shape (b={batch}, n_new={n_new}), got {tuple(mask2d_new.shape)}")
    if compact is None:
        if compact_len is None or compact_len < 0:
            raise ValueError("extend_mask needs compact_len (the compressed prefill length) when compact is None "
                             "but mask2d_new is not")
        compact = mask2d_new.new_ones(batch, compact_len)
    if mask2d_new is None:
        mask2d_new = compact.new_ones(batch, n_new)
    return torch.cat([compact, mask2d_new.to(device=compact.device, dtype=compact.dtype)], dim=1)
