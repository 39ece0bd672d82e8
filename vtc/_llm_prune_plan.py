"""The host side of pruning inside the decoder: what a prefill's structure decides before any device work.

From the visual layout and the padding mask the instrumentation read when the forward began, a `PrunePlan` says, per
item (an image, or a tile where the model sees tiles: one template of the adapter), where its tokens are and how many
each stage keeps; per sample, how long the sequence is after each stage and where its last prompt token sits. All
of it is known before the decoder runs (the counts depend on the budget, never on the hidden states), so the hooks
never wait for the device to learn a shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from .config import PruneConfig
from .layout import BatchLayout, SampleLayout
from .llm_prune import pdrop_schedule

__all__ = ["PlannedItem", "PrunePlan", "item_counts", "plan_prefill"]


@dataclass(frozen=True, eq=False)
class PlannedItem:
    """One item of a prefill.

    Args:
        row: its sample.
        positions: `(n,)` long on the model's device, its positions in the full sequence, ascending.
        text: `(m,)` long on the model's device, the text positions after it up to its sample's last prompt token
            (DART's text pivots are chosen among them).
        counts: the tokens it keeps from each stage on.
    """

    row: int
    positions: torch.Tensor
    text: torch.Tensor
    counts: tuple[int, ...]

    @property
    def native(self) -> int:
        return self.positions.shape[0]


@dataclass(frozen=True, eq=False)
class PrunePlan:
    """What the stages of one prefill do, decided on the host.

    Args:
        seq_len: the prompt length the language model gets.
        items: every item, in batch order.
        lengths: per stage, per sample, the sequence length after the stage.
        last: per stage, per sample, the position of its last prompt token in the sequence entering the stage.
        active: whether any stage drops a token (otherwise every layer runs as unpatched).
        padded: whether the prompt's attention mask masks any position (otherwise the stages need a mask only where
            their rows keep different lengths, and SDPA may run its causal kernels, flash among them).
    """

    seq_len: int
    items: tuple[PlannedItem, ...]
    lengths: tuple[tuple[int, ...], ...]
    last: tuple[tuple[int, ...], ...]
    active: bool
    padded: bool = True


def item_counts(config: PruneConfig, native: int, stage_layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """The tokens an item of `native` tokens keeps from each stage on: `keep` (at most `native`) for FastV and DART;
    PyramidDrop's schedule for `keep` on average over the decoder layers."""
    if config.method != "pdrop":
        return (min(config.kept_count(native), native),)
    keep = Fraction(config.keep) if isinstance(config.keep, int) else Fraction(repr(config.keep)) * native
    return pdrop_schedule(native, stage_layers, num_layers, keep).counts


def _items_per_sample(adapter: Any, layout: BatchLayout, image_inputs: dict[str, Any],
                      placeholders: int) -> list[list[SampleLayout]]:
    """Each sample's spans grouped into its items, one adapter template each, in the order the layout was made from
    them. Where `generate` repeated every row (beam search), each original row's items are laid out once per copy."""
    sizes = [len(template) for template in adapter.image_templates(image_inputs, placeholders)]
    spans = sum(len(sample) for sample in layout)
    copies = spans // sum(sizes) if sizes and spans % sum(sizes) == 0 else 1
    grouped, next_item = [], 0
    for row, sample in enumerate(layout):
        if row % copies:
            grouped.append(grouped[-1])
            continue
        items, cursor = [], 0
        while cursor < len(sample):
            size = sizes[next_item] if next_item < len(sizes) else 1
            items.append(sample[cursor:cursor + size])
            cursor, next_item = cursor + size, next_item + 1
        grouped.append(items)
    return grouped


def plan_prefill(config: PruneConfig, stage_layers: tuple[int, ...], num_layers: int, adapter: Any,
                 layout: BatchLayout, image_inputs: dict[str, Any], host_mask: torch.Tensor | None, seq_len: int,
                 device: torch.device | None) -> PrunePlan:
    """The `PrunePlan` of a prefill with this layout and host padding mask (`None`: no padding)."""
    placeholders = sum(span.length for sample in layout for span in sample)
    batch = len(layout)
    real = torch.ones(batch, seq_len, dtype=torch.bool) if host_mask is None else host_mask.bool()
    positions = torch.arange(seq_len)
    # the last prompt token: the last attended position (the last position under left padding)
    last_prompt = [int(row.nonzero().max()) if row.any() else seq_len - 1 for row in real]
    visual = torch.zeros(batch, seq_len, dtype=torch.bool)
    for b, sample in enumerate(layout):
        for span in sample:
            visual[b, span.start:span.end] = True
    host_items = []
    for b, items in enumerate(_items_per_sample(adapter, layout, image_inputs, placeholders)):
        for spans in items:
            where = torch.cat([torch.arange(span.start, span.end) for span in spans])
            after = positions[(positions > int(where[-1])) & (positions <= last_prompt[b]) & real[b] & ~visual[b]]
            counts = item_counts(config, len(where), stage_layers, num_layers)
            host_items.append((b, where, after, counts))
    lengths, last = [], []
    for stage in range(len(stage_layers)):
        dropped, dropped_before = [0] * batch, [0] * batch  # by the end of this stage / before it, ahead of the last
        for b, where, _, counts in host_items:
            native = len(where)
            dropped[b] += native - counts[stage]
            if int(where[-1]) < last_prompt[b]:
                dropped_before[b] += native - (counts[stage - 1] if stage else native)
        lengths.append(tuple(seq_len - n for n in dropped))
        last.append(tuple(p - n for p, n in zip(last_prompt, dropped_before)))
    # one host-to-device copy for every item's positions
    parts = [t for _, where, after, _ in host_items for t in (where, after)]
    packed = torch.cat(parts).to(device, non_blocking=True) if parts else torch.zeros(0, dtype=torch.long)
    chunks = packed.split([t.numel() for t in parts])
    items = tuple(PlannedItem(b, chunks[2 * i], chunks[2 * i + 1], counts)
                  for i, (b, _, _, counts) in enumerate(host_items))
    active = any(count < len(where) for _, where, _, counts in host_items for count in counts)
    return PrunePlan(seq_len, items, tuple(lengths), tuple(last), active, padded=not bool(real.all()))
