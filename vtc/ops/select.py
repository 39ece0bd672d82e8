"""A shortened sequence that keeps a subset of each sample's positions, in order: what pruning inside the decoder runs
on.

Axes: b batch, s sequence (before shortening), g kept positions (padded to the batch maximum), d hidden.

Samples that keep fewer positions are right-padded to `g`; a padding slot repeats the sample's last kept position,
so gathers stay in range and positions stay non-decreasing, and it is masked. Kept positions keep their order and
their original rotary positions (the gathered `cos` / `sin`): nothing is renumbered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Selection", "keep_selection", "scatter_selected", "select_positions", "selected_mask"]


# eq=False: the generated __eq__ would compare tensors and fail on their ambiguous truth value.
@dataclass(frozen=True, eq=False)
class Selection:
    """Which positions of each sample the shortened sequence keeps.

    Args:
        index: `(b, g)` long, the kept positions in ascending order; padding slots repeat the last kept one.
        valid: `(b, g)` bool, False for padding slots.
        lengths: kept positions per sample, as host integers (shape decisions never read a device tensor).
        seq_len: `s`, the length of the sequence the positions index.
    """

    index: torch.Tensor
    valid: torch.Tensor
    lengths: tuple[int, ...]
    seq_len: int

    @property
    def max_length(self) -> int:
        """`g`, the padded length of the shortened sequence."""
        return self.index.shape[1]

    @property
    def is_ragged(self) -> bool:
        """True when samples keep different numbers of positions, so the shorter ones end in padding slots."""
        return any(n != self.max_length for n in self.lengths)


def keep_selection(keep: torch.Tensor, lengths: Sequence[int]) -> Selection:
    """The `Selection` of the positions where `keep` `(b, s)` is True.

    Args:
        keep: `(b, s)` bool.
        lengths: per sample, how many positions `keep` holds (known on the host, so that nothing here waits for the
            device), each `>= 1`.
    """
    lengths = tuple(int(n) for n in lengths)
    if len(lengths) != keep.shape[0] or min(lengths, default=1) < 1:
        raise ValueError(f"lengths must hold one count >= 1 per sample of keep {tuple(keep.shape)}, got {lengths}")
    g = max(lengths)
    # A stable sort of "dropped" flags puts the kept positions first, in their order.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :g]
    counts = torch.tensor(lengths).to(keep.device, non_blocking=True)
    valid = torch.arange(g, device=keep.device)[None, :] < counts[:, None]
    last = order.gather(1, (counts - 1)[:, None])
    return Selection(torch.where(valid, order, last), valid, lengths, keep.shape[1])


def select_positions(x: torch.Tensor, selection: Selection) -> torch.Tensor:
    """`x` `(b | 1, s, ...)` at the kept positions: `(b, g, ...)` (a batch of 1 is broadcast)."""
    b, g = selection.index.shape
    if x.shape[0] not in (1, b) or x.shape[1] != selection.seq_len:
        raise ValueError(f"x must have batch {b} (or 1) and sequence length {selection.seq_len}, got {tuple(x.shape)}")
    x = x.expand(b, *x.shape[1:])
    index = selection.index.reshape(b, g, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


def selected_mask(mask2d: torch.Tensor | None, selection: Selection) -> torch.Tensor | None:
    """The 2-D attention mask `(b, g)` of the shortened sequence: `mask2d` `(b, s)` at the kept positions, 0 in
    padding slots. `None` (attend everywhere) stays `None` unless padding slots need masking."""
    if mask2d is None:
        return selection.valid.long() if selection.is_ragged else None
    kept = mask2d.gather(1, selection.index)
    return torch.where(selection.valid, kept, torch.zeros((), dtype=mask2d.dtype, device=mask2d.device))


def scatter_selected(full: torch.Tensor, part: torch.Tensor, selection: Selection) -> torch.Tensor:
    """`full` `(b, s, d)` with the rows of `part` `(b, g, d)` written back at the kept positions (padding slots are
    not written); out of place, so gradients reach `part`."""
    b, s, d = full.shape
    # Padding slots write to one extra column, dropped afterwards: no kept position is written twice.
    target = torch.where(selection.valid, selection.index, torch.full_like(selection.index, s))
    padded = torch.cat([full, full.new_zeros(b, 1, d)], dim=1)
    return padded.scatter(1, target[..., None].expand(-1, -1, d), part.to(full.dtype))[:, :s]
