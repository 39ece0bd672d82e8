"""The group index: which positions of each sample merge into one compressed token.

Axes: b batch, s sequence (full length), g groups (compressed length, padded to the batch maximum).

Everything the compressed sequence needs (pooled states, attention mask, positions, lengths) is read from one
`GroupIndex`, so those pieces cannot drift apart. Text positions, including left padding, and the newline tokens of a
`newline=True` span stay singletons; only grid cells and grid-less visual runs are merged.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vtc.layout import BatchLayout, SampleLayout, VisualSpan
from vtc.ops.windows import check_ratio, pooled_grid, window_shape

__all__ = ["GroupIndex", "check_layout", "compressed_lengths", "group_index"]


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
    """

    index: torch.Tensor
    num_groups: torch.Tensor
    first: torch.Tensor
    size: torch.Tensor
    is_visual: torch.Tensor
    valid: torch.Tensor

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
        # The shape test is free; the tensor test (a device sync) only runs when the shapes already agree.
        return self.max_groups == self.seq_len and bool((self.num_groups == self.seq_len).all())


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


def compressed_lengths(layout: BatchLayout, seq_len: int, ratio: int) -> list[int]:
    """Groups per sample, from arithmetic alone; always equal to `group_index(...).num_groups`.

    Args:
        layout: one tuple of `VisualSpan`s per sample.
        seq_len: `s`, the (padded) sequence length every sample shares.
        ratio: grid cells per compressed token.
    """
    ratio = check_ratio(ratio)
    check_layout(layout, seq_len)
    return [seq_len - sum(span.length for span in sample) + sum(_span_groups(span, ratio) for span in sample)
            for sample in layout]


def _leaders(sample: SampleLayout, seq_len: int, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(s,)` position of the first member of each position's group, and `(s,)` whether the position is visual.

    Labelling every position by its group's first member makes the dense, causally ordered numbering a plain
    `unique(sorted=True)`.
    """
    leader = torch.arange(seq_len)  # text and newline tokens lead themselves
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


def group_index(layout: BatchLayout, seq_len: int, ratio: int, *, device: torch.device | str | None = None
                ) -> GroupIndex:
    """Build the `GroupIndex` of a batch.

    Grid spans are grouped by `window_shape(ratio)` windows (partial at the bottom and right edges), grid-less spans
    by consecutive runs of `ratio` (the last one partial); every other position is a group of its own.

    Args:
        layout: one tuple of `VisualSpan`s per sample, ordered by start.
        seq_len: `s`, the (padded) sequence length every sample shares.
        ratio: grid cells per compressed token; `1` gives the identity grouping.
        device: where the index tensors live (CPU when `None`).
    """
    ratio = check_ratio(ratio)
    check_layout(layout, seq_len)
    index, first, size, is_visual = [], [], [], []
    for sample in layout:
        leader, visual = _leaders(sample, seq_len, ratio)
        sample_first, sample_index, sample_size = torch.unique(leader, sorted=True, return_inverse=True,
                                                               return_counts=True)
        index.append(sample_index)
        first.append(sample_first)
        size.append(sample_size)
        is_visual.append(visual[sample_first])

    num_groups = torch.tensor([len(f) for f in first], dtype=torch.long)
    g = int(num_groups.max())
    # Padding slots repeat the last real first position so that gathers at `first` stay in range and monotone.
    first = torch.stack([torch.cat([f, f[-1:].expand(g - len(f))]) for f in first])
    size = torch.stack([torch.cat([n, n.new_zeros(g - len(n))]) for n in size])
    is_visual = torch.stack([torch.cat([v, v.new_zeros(g - len(v))]) for v in is_visual])
    valid = torch.arange(g)[None, :] < num_groups[:, None]
    index = torch.stack(index).reshape(len(layout), seq_len)
    return GroupIndex(index=index.to(device), num_groups=num_groups.to(device), first=first.to(device),
                      size=size.to(device), is_visual=is_visual.to(device), valid=valid.to(device))
