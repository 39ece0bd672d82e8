"""The group index: which positions of each sample merge into one compressed token.

Axes: b batch, s sequence (full length), g groups (compressed length, padded to the batch maximum).

Everything the compressed sequence needs (pooled states, attention mask, positions, lengths) is read from one
`GroupIndex`, so those pieces cannot drift apart. Text positions and the newline tokens of a `newline=True` span stay
singletons; only grid cells, grid-less visual runs and (when given) runs of padding are merged.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vtc.layout import BatchLayout, SampleLayout, VisualSpan
from vtc.ops.windows import check_ratio, pooled_grid, window_shape

__all__ = ["GroupIndex", "cell_mask", "check_layout", "compressed_lengths", "group_index"]


# eq=False: the generated __eq__ would compare tensors and fail on their ambiguous truth value.
@dataclass(frozen=True, eq=False)
class GroupIndex:
    """How the `s` positions of each sample map to its compressed groups.

    Groups are numbered densely by their first member, so the compressed sequence keeps causal order. Samples with
    fewer groups are right-padded to `g = max(num_groups)`; padding slots have `valid=False` and `size=0`.

    Args:
        index: `(b, s)` long, the group id of every position.
        num_groups: `(b,)` long, real groups per sample.
        first: `(b, g)` long, position of each group's first member; padding slots repeat the last real group's.
        size: `(b, g)` long, members per group (0 for padding slots).
        is_visual: `(b, g)` bool, whether the group lies in a visual span (its newline tokens included).
        valid: `(b, g)` bool, False for padding slots.
        lengths: `num_groups` as host integers, so that shape decisions never read a device tensor (a host sync).
        rows: `(b * s,)` long, the row of every position in the `(b * g)` flattened compressed batch.
        divisor: `(b * g, 1)` float32, `size` with padding slots counted as 1: what a segment sum is divided by.
        fill_rows: `(b * g,)` long, for every slot of the flattened compressed batch the row it copies a per-group
            value from: itself, or for a padding slot its sample's last real group.
    """

    index: torch.Tensor
    num_groups: torch.Tensor
    first: torch.Tensor
    size: torch.Tensor
    is_visual: torch.Tensor
    valid: torch.Tensor
    lengths: tuple[int, ...]
    rows: torch.Tensor
    divisor: torch.Tensor
    fill_rows: torch.Tensor

    @property
    def max_groups(self) -> int:
        """`g`, the padded compressed length."""
        return self.first.shape[1]

    @property
    def seq_len(self) -> int:
        """`s`, the full sequence length."""
        return self.index.shape[1]

    @property
    def batch_size(self) -> int:
        """`b`."""
        return self.index.shape[0]

    @property
    def is_identity(self) -> bool:
        """True when every position is a group of its own (`ratio=1`, or no visual token to merge)."""
        return self.max_groups == self.seq_len and all(n == self.seq_len for n in self.lengths)

    @property
    def is_ragged(self) -> bool:
        """True when samples have different numbers of groups, so the shorter ones end in padding slots."""
        return any(n != self.max_groups for n in self.lengths)


def check_layout(layout: BatchLayout, seq_len: int) -> None:
    """Raise `ValueError` unless every sample's spans are ordered, disjoint and inside `[0, seq_len)`."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 0:
        raise ValueError(f"seq_len must be an integer >= 0, got {seq_len!r}")
    if isinstance(layout, (str, bytes)) or not isinstance(layout, Sequence) or len(layout) == 0:
        raise ValueError("layout must be a non-empty list with one tuple of VisualSpans per sample")
    for b, sample in enumerate(layout):
        end = 0
        for span in sample:
            if not isinstance(span, VisualSpan):
                raise ValueError(f"sample {b}: expected VisualSpan, got {type(span).__name__}")
            if span.start < end:
                raise ValueError(f"sample {b}: span at {span.start} overlaps or precedes the span ending at {end}; "
                                 "spans must be ordered by start and disjoint")
            if span.end > seq_len:
                raise ValueError(f"sample {b}: span [{span.start}, {span.end}) runs past seq_len={seq_len}")
            end = span.end


def _span_groups(span: VisualSpan, ratio: int) -> int:
    """Number of groups one span becomes at `ratio`."""
    if span.grid is None:
        return -(-span.length // ratio)
    ph, pw = pooled_grid(span.grid, window_shape(ratio))
    # Newline tokens are never pooled: one per grid row survives.
    return ph * pw + (span.grid[0] if span.newline else 0)


def _check_padding(padding: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor | None:
    if padding is None:
        return None
    shape = tuple(getattr(padding, "shape", ()))
    if not isinstance(padding, torch.Tensor) or padding.dtype != torch.bool or shape != (batch, seq_len):
        raise ValueError(f"padding must be a bool tensor of shape (b={batch}, s={seq_len}), got "
                         f"{getattr(padding, 'dtype', type(padding).__name__)} {shape}")
    return padding.cpu()


def _padding_runs(sample: SampleLayout, padding_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(s,)` whether a position is padding outside the visual spans, and `(s,)` the start of its run of such."""
    pad = padding_row.clone()
    for span in sample:
        pad[span.start:span.end] = False  # a masked visual token still belongs to its window
    positions = torch.arange(len(pad))
    starts = pad & ~torch.cat([pad.new_zeros(1), pad[:-1]])
    run_start = torch.where(starts, positions, torch.full_like(positions, -1)).cummax(0).values
    return pad, run_start


def compressed_lengths(layout: BatchLayout, seq_len: int, ratio: int, *, padding: torch.Tensor | None = None
                       ) -> list[int]:
    """Groups per sample, from arithmetic alone; always equal to `group_index(...).num_groups`.

    Args:
        layout: one tuple of `VisualSpan`s per sample.
        seq_len: `s`, the (padded) sequence length every sample shares.
        ratio: grid cells per compressed token.
        padding: `(b, s)` bool, True at padding positions; each run of them outside the visual spans counts once.
    """
    ratio = check_ratio(ratio)
    check_layout(layout, seq_len)
    padding = _check_padding(padding, len(layout), seq_len)
    lengths = []
    for b, sample in enumerate(layout):
        n = seq_len - sum(span.length for span in sample) + sum(_span_groups(span, ratio) for span in sample)
        if padding is not None:
            pad, run_start = _padding_runs(sample, padding[b])
            n -= int(pad.sum()) - len(torch.unique(run_start[pad]))
        lengths.append(n)
    return lengths


def _leaders(sample: SampleLayout, seq_len: int, ratio: int, padding_row: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(s,)` position of the first member of each position's group, and `(s,)` whether the position is visual.

    Labelling every position by its group's first member makes the dense, causally ordered numbering a plain
    `unique(sorted=True)`.
    """
    leader = torch.arange(seq_len)  # text and newline tokens lead themselves
    if padding_row is not None:
        pad, run_start = _padding_runs(sample, padding_row)
        leader = torch.where(pad, run_start, leader)
    visual = torch.zeros(seq_len, dtype=torch.bool)
    sh, sw = window_shape(ratio)
    for span in sample:
        visual[span.start:span.end] = True
        if span.grid is None:
            offset = torch.arange(span.length)
            leader[span.start:span.end] = span.start + offset // ratio * ratio
            continue
        h, w = span.grid
        stride = w + 1 if span.newline else w  # cell (i, j) sits at start + i * stride + j
        rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
        cells = span.start + rows * stride + cols
        leader[cells.flatten()] = (span.start + rows // sh * sh * stride + cols // sw * sw).flatten()
    return leader, visual


def group_index(layout: BatchLayout, seq_len: int, ratio: int, *, padding: torch.Tensor | None = None,
                device: torch.device | str | None = None) -> GroupIndex:
    """Build the `GroupIndex` of a batch.

    Grid spans are grouped by `window_shape(ratio)` windows (partial at the bottom and right edges), grid-less spans
    by consecutive runs of `ratio` (the last one partial); with `padding`, each maximal run of padding positions
    outside the visual spans is one group; every other position is a group of its own.

    Args:
        layout: one tuple of `VisualSpan`s per sample, ordered by start.
        seq_len: `s`, the (padded) sequence length every sample shares.
        ratio: grid cells per compressed token; `1` (without `padding`) gives the identity grouping.
        padding: `(b, s)` bool, True where the attention mask is 0. No position attends to padding, so one masked
            group can stand for a whole run of it, and a left-padded sample's compressed length no longer counts
            its padding (which would otherwise set the batch's compressed length).
        device: where the index tensors live (CPU when `None`).
    """
    ratio = check_ratio(ratio)
    check_layout(layout, seq_len)
    padding = _check_padding(padding, len(layout), seq_len)
    index, first, size, is_visual = [], [], [], []
    # Batches often repeat a sample's structure (same image size, same prompt length): group each distinct
    # (spans, padding) once.
    grouped: dict[tuple, tuple[torch.Tensor, ...]] = {}
    for b, sample in enumerate(layout):
        row = None if padding is None else padding[b]
        key = (sample, None if row is None else row.numpy().tobytes())
        if key not in grouped:
            leader, visual = _leaders(sample, seq_len, ratio, row)
            sample_first, sample_index, sample_size = torch.unique(leader, sorted=True, return_inverse=True,
                                                                   return_counts=True)
            grouped[key] = (sample_index, sample_first, sample_size, visual[sample_first])
        sample_index, sample_first, sample_size, sample_visual = grouped[key]
        index.append(sample_index)
        first.append(sample_first)
        size.append(sample_size)
        is_visual.append(sample_visual)

    lengths = tuple(len(f) for f in first)
    batch, g = len(layout), max(lengths)
    num_groups = torch.tensor(lengths, dtype=torch.long)
    # Padding slots repeat the last real first position so that gathers at `first` stay in range and monotone.
    first = torch.stack([torch.cat([f, f[-1:].expand(g - len(f))]) for f in first])
    size = torch.stack([torch.cat([n, n.new_zeros(g - len(n))]) for n in size])
    is_visual = torch.stack([torch.cat([v, v.new_zeros(g - len(v))]) for v in is_visual])
    valid = torch.arange(g)[None, :] < num_groups[:, None]
    index = torch.stack(index).reshape(batch, seq_len)
    offsets = torch.arange(batch)[:, None] * g
    rows = (index + offsets).flatten()
    # Derived here, once per structure, rather than by a few device ops in every forward that pools.
    divisor = size.clamp(min=1).reshape(-1, 1).float()
    fill_rows = (torch.minimum(torch.arange(g)[None, :], (num_groups - 1).clamp(min=0)[:, None]) + offsets).flatten()
    # Built on the host, sent to the device as one copy that does not wait for the device's queued work.
    parts = [index, num_groups, first, size, is_visual, valid, rows, divisor, fill_rows]
    packed = torch.cat([part.flatten().long() for part in parts]).to(device, non_blocking=True)
    index, num_groups, first, size, is_visual, valid, rows, divisor, fill_rows = (
        chunk.view(part.shape).to(part.dtype)
        for chunk, part in zip(packed.split([part.numel() for part in parts]), parts, strict=True)
    )
    return GroupIndex(index=index, num_groups=num_groups, first=first, size=size, is_visual=is_visual, valid=valid,
                      lengths=lengths, rows=rows, divisor=divisor, fill_rows=fill_rows)


def cell_mask(layout: BatchLayout, seq_len: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """`(b, s)` bool: True at the positions pooling merges (grid cells and grid-less visual tokens).

    Text positions and the newline tokens of `newline=True` spans are False: they are never pooled, so a restore
    that adds back full-resolution detail must leave them alone.

    Args:
        layout: one tuple of `VisualSpan`s per sample, ordered by start.
        seq_len: `s`, the (padded) sequence length every sample shares.
        device: where the mask lives (CPU when `None`).
    """
    check_layout(layout, seq_len)
    mask = torch.zeros(len(layout), seq_len, dtype=torch.bool)
    for b, sample in enumerate(layout):
        for span in sample:
            mask[b, span.start:span.end] = True
            if span.newline:
                h, w = span.grid
                mask[b, span.start + w:span.end:w + 1] = False  # the token closing each row
    return mask.to(device)
