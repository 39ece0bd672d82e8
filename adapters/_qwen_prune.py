"""Pruning before the language model (`vtc.PruneConfig`) on Qwen2-VL, Qwen2.5-VL and Qwen3-VL: the kept tokens'
M-RoPE positions, and VisionZip on their packed vision tower.

Positions. An image's tokens have 3-axis positions (temporal, row, column) on its language-token grid, which the
model's `get_rope_index` computes from the prompt. Under a selection method (random, DivPrune, VisionZip) every kept
token keeps the position it has unpruned, and so does every text token: the index runs on the prompt with each
image's placeholders expanded back to its native tokens, and the kept tokens' positions are read out of it
(`native_positions`). The text after an image and every generated token therefore see the positions they see
unpruned (`rope_deltas` counts the tokens taken out). Under `pool` the positions are those of the pooled grid, as
under PVTC (the adapter's `pvtc_rope_index`).

`generate` computes the prompt's positions (`_prepare_position_ids_for_generation`) before it calls
`get_image_features`, and a forward given `position_ids` never recomputes them: where the selection depends on the
features (DivPrune, VisionZip) it is not known when the positions are made. The index then gives each image's tokens
provisional positions (those of its first tokens) and records them (`CallState.prune_positions`); a pre-hook on the
language model replaces them with the exact ones once the selection is made: in the prefill, and in every step of an
uncached `generate` (which passes the prompt's positions again). It acts only on positions equal to the recorded
ones, so positions a caller made otherwise pass unchanged. The text positions and `rope_deltas` do not depend on the
selection, so the decode steps' positions, which continue from them, are exact from the start.

VisionZip. The merger reads the output of the tower's last block, so the scores come from that block's attention:
the tower runs every image as its own segment of one packed sequence (`cu_seqlens`), and a token's score is the mean
attention it receives at that block from the queries of its own segment (every head; Qwen's ViT has no [CLS] token),
computed from the block's own queries and keys (after the vision rotary embedding, as its attention uses them),
copied out by hooks while the tower runs. A language token is a `merge x merge` block of patches: its score is the sum
of its patches', its key (the merge metric) their head-averaged mean. The contextual tokens are merged before the
merger, as the official code merges before the projector: a contextual token's `merge x merge` patch features are its
target's plus the mean of those joined to it, then the model's merger (and, on Qwen3-VL, each DeepStack merger on
its own input features, so that every kept token still has one feature per DeepStack level).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vtc.errors import PlaceholderMismatchError
from vtc.prune import merge_contextual, random_selection, visionzip_counts, visionzip_selection

from ._attention_taps import rotate_half_rotary

__all__ = ["PrunedRopeIndex", "VisionZipInputs", "native_positions", "prune_images", "received_attention",
           "tower_scores", "visionzip_image"]

#: `mm_token_type_ids` of an image placeholder.
_IMAGE = 1


def native_positions(original: Any, bound: inspect.BoundArguments, kept: Sequence[torch.Tensor],
                     native_counts: Sequence[int], image_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`get_rope_index` of a pruned prompt: every token's unpruned position.

    Args:
        original: the model's own `get_rope_index`; `bound` its arguments for the pruned prompt.
        kept: per image of the batch, in order, the indices of its native tokens that its placeholders hold.
        native_counts: per image, its native tokens.
        image_token_id: the image placeholder's id.

    Returns:
        `(positions (3, b, s), rope_deltas (b, 1))`: each kept token at its native position, each text token at its
        own; the deltas such that the position after the prompt is the one after the unpruned prompt.
    """
    arguments = bound.arguments
    input_ids, types, mask = arguments["input_ids"], arguments["mm_token_type_ids"], arguments.get("attention_mask")
    host_ids, host_types = input_ids.cpu(), types.cpu()
    host_mask = torch.ones_like(host_ids, dtype=torch.bool) if mask is None else mask.cpu().bool()
    rows, image = [], 0  # per row: its real positions, and its native ids, types and source of every real token
    for row in range(input_ids.shape[0]):
        real = host_mask[row].nonzero().flatten()
        ids, kinds = host_ids[row, real], host_types[row, real]
        pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (native ids, native types, sources)
        start = offset = 0
        for kind, run in itertools.groupby(kinds.tolist()):
            length = len(list(run))
            if kind == _IMAGE:  # one image's placeholders (the model's own index groups them the same way)
                if image >= len(kept) or len(kept[image]) != length:
                    raise PlaceholderMismatchError(
                        f"image {image} has a run of {length} placeholders, but its pruned tokens number "
                        f"{len(kept[image]) if image < len(kept) else 0}: process the prompts with the processor "
                        "passed to vtc.compress")
                n = native_counts[image]
                pieces.append((torch.full((n,), image_token_id, dtype=ids.dtype),
                               torch.full((n,), _IMAGE, dtype=kinds.dtype), kept[image].cpu() + offset))
                image += 1
            else:
                n = length
                pieces.append((ids[start:start + n], kinds[start:start + n], torch.arange(offset, offset + n)))
            start, offset = start + length, offset + n
        native_ids, native_kinds, sources = (torch.cat(part) for part in zip(*pieces))
        rows.append((real, native_ids, native_kinds, sources))
    if image != len(kept):
        raise PlaceholderMismatchError(f"the prompts hold {image} images' placeholders for {len(kept)} images: "
                                       "process the prompts with the processor passed to vtc.compress")
    width = max(len(native) for _, native, _, _ in rows)
    expanded_ids = host_ids.new_zeros((len(rows), width))
    expanded_types, expanded_mask = host_types.new_zeros((len(rows), width)), host_ids.new_zeros((len(rows), width))
    for row, (_, native_ids, native_kinds, _) in enumerate(rows):  # left-padded to one width
        expanded_ids[row, width - len(native_ids):] = native_ids
        expanded_types[row, width - len(native_ids):] = native_kinds
        expanded_mask[row, width - len(native_ids):] = 1
    device = input_ids.device
    native = inspect.signature(original).bind(*bound.args, **bound.kwargs)
    native.arguments.update(input_ids=expanded_ids.to(device), mm_token_type_ids=expanded_types.to(device),
                            attention_mask=expanded_mask.to(device))
    positions, deltas = original(*native.args, **native.kwargs)
    pruned = positions.new_zeros((3, *input_ids.shape))
    removed = []
    for row, (real, native_ids, _, sources) in enumerate(rows):
        pruned[:, row, real.to(device)] = positions[:, row, (sources + width - len(native_ids)).to(device)]
        removed.append(len(native_ids) - len(real))
    return pruned, deltas + torch.tensor(removed, dtype=deltas.dtype, device=deltas.device).reshape(-1, 1)


@dataclass
class _ProvisionalPositions:
    """Positions `get_rope_index` made before the selection was known, and what to make the exact ones from."""

    original: Any
    bound: inspect.BoundArguments
    native_counts: list[int]
    positions: torch.Tensor  # (3, b, s)
    exact: torch.Tensor | None = None
    exact_for: Any = None  # the selection `exact` was made for


class PrunedRopeIndex:
    """The model's `get_rope_index` under a selection method, and the language model's pre-hook that makes
    provisional positions exact (see the module's docstring)."""

    def __init__(self, state: Any):
        self.state = state

    def _selection(self, counts: list[int], native_counts: list[int]) -> list[torch.Tensor] | None:
        """The kept indices of every image of the call, where they are known already."""
        config, call = self.state.config.prune, self.state.call
        if config.method == "random":  # depends on the counts alone
            return [random_selection(n, count, config.seed) for n, count in zip(native_counts, counts)]
        pruned = call.pruned
        # inside a forward, `get_image_features` ran before the positions are computed: its selection is this call's
        if call.in_forward and pruned is not None and [len(k) for k in pruned] == counts:
            return pruned
        return None

    @torch.compiler.disable  # host work per row, as in the model's own index
    def get_rope_index(self, original, *args, **kwargs):
        bound = inspect.signature(original).bind(*args, **kwargs)
        grid_thw = bound.arguments.get("image_grid_thw")
        if grid_thw is None or bound.arguments.get("mm_token_type_ids") is None:
            return original(*args, **kwargs)
        adapter, call = self.state.adapter, self.state.call
        templates = adapter.image_templates({"image_grid_thw": grid_thw}, 0)
        counts = [max(span.end for span in template) for template in templates]
        native_counts = (grid_thw.prod(-1) // adapter.merge_size**2).tolist()
        kept = self._selection(counts, native_counts)
        provisional = kept is None
        if provisional:
            kept = [torch.arange(count) for count in counts]
        positions, deltas = native_positions(original, bound, kept, native_counts, adapter.image_token_id)
        call.prune_positions = (_ProvisionalPositions(original, bound, native_counts, positions) if provisional
                                else None)
        return positions, deltas

    @torch.compiler.disable
    def before_language_model(self, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = self.state.call
        pending, selection = call.prune_positions, call.pruned
        position_ids = kwargs.get("position_ids")
        if pending is None or selection is None or not isinstance(position_ids, torch.Tensor):
            return None
        provisional = pending.positions
        batch, length = provisional.shape[1:]
        if position_ids.dim() != 3 or position_ids.shape[-1] < length or position_ids.shape[1] % batch:
            return None  # a decode step, or positions of another prompt
        copies = position_ids.shape[1] // batch  # `generate` repeats every row for beams and returned sequences
        prompt = position_ids[-3:, :, :length]
        if not torch.equal(prompt, provisional.repeat_interleave(copies, dim=1).to(prompt.device)):
            return None
        if pending.exact_for is not selection:
            pending.exact = native_positions(pending.original, pending.bound, selection, pending.native_counts,
                                             self.state.adapter.image_token_id)[0]
            pending.exact_for = selection
        exact = position_ids.clone()
        exact[-3:, :, :length] = pending.exact.repeat_interleave(copies, dim=1).to(exact.device)
        return args, {**kwargs, "position_ids": exact}


class VisionZipInputs:
    """Hooks that copy what VisionZip needs beyond the last block's `qkv` output and the merger's input (which the
    generic taps copy): the last block's `cu_seqlens` and rotary `(cos, sin)`, and each DeepStack merger's input."""

    def __init__(self, state: Any, name: str):
        self.state, self.name = state, name

    def attention_inputs(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        capture = self.state.call.prune_capture
        if capture is not None:
            capture[self.name] = (kwargs["cu_seqlens"], kwargs["position_embeddings"])

    def merger_input(self, _module: nn.Module, args: tuple) -> None:
        capture = self.state.call.prune_capture
        if capture is not None:
            capture[self.name] = args[0]


def received_attention(queries: torch.Tensor, keys: torch.Tensor, cu_seqlens: torch.Tensor, scale: float,
                       chunk: int = 1024) -> torch.Tensor:
    """`(t,)`: the attention each row of a packed sequence receives, averaged over every query of its segment and
    every head. `queries`, `keys` `(t, h, d_h)` as the attention uses them; the segments `cu_seqlens`. Queries are
    taken `chunk` at a time: a segment's `(h, t_i, t_i)` weights would not fit for large images."""
    received = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k = queries[start:end].float(), keys[start:end].float()
        total = q.new_zeros(end - start)
        for first in range(0, end - start, chunk):
            weights = torch.einsum("qhd,khd->hqk", q[first:first + chunk], k).mul(scale).softmax(dim=-1)
            total += weights.sum(dim=(0, 1))
        received.append(total / ((end - start) * q.shape[1]))
    return torch.cat(received)


def tower_scores(capture: dict[str, Any], attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """From the last block's captured `qkv` output, `cu_seqlens` and rotary `(cos, sin)`: per tower row (in the
    tower's order), the attention it receives (`received_attention`) and its key averaged over heads."""
    qkv = capture["query"]
    cu_seqlens, (cos, sin) = capture["attention_inputs"]
    rows, heads = qkv.shape[0], attention.num_heads
    queries, keys = qkv.reshape(rows, 3, heads, -1).unbind(1)[:2]
    queries, keys = (rotate_half_rotary(x[None].float(), cos[None].float(), sin[None].float())[0]
                     for x in (queries, keys))
    return received_attention(queries, keys, cu_seqlens, attention.scaling), keys.mean(dim=1)


def visionzip_image(scores: torch.Tensor, metric: torch.Tensor, count: int,
                    mergers: Sequence[tuple[nn.Module, torch.Tensor, torch.Tensor]]
                    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """VisionZip on one image of `n` language tokens of `unit` patches each.

    Args:
        scores: `(n, unit)` the attention each token's patches receive; metric `(n, unit, d_h)` their keys.
        count: the tokens to keep.
        mergers: `(merger, its output (n, d), its input (n, unit, d_v))`: the merger, then every DeepStack merger.

    Returns:
        The kept tokens (dominant, then contextual), the kept indices, and each DeepStack level's kept features.
    """
    n = mergers[0][1].shape[0]
    dominant, contextual = visionzip_counts(count, n)
    selection = visionzip_selection(scores.sum(dim=1), metric.mean(dim=1), dominant, contextual)
    kept = torch.cat([selection.dominant, selection.targets])
    outputs = []
    for merger, output, inputs in mergers:
        parts = [output[selection.dominant.to(output.device)]]
        if contextual:
            merged = merge_contextual(inputs, selection)  # (c, unit, d_v): before the merger
            parts.append(merger(merged.reshape(-1, merged.shape[-1])).to(output.dtype))
        outputs.append(torch.cat(parts))
    return outputs[0], kept, outputs[1:]


def prune_images(adapter: Any, output: Any, grid_thw: torch.Tensor, reduce: Any) -> list[torch.Tensor] | None:
    """`Adapter.prune_image_output` on the Qwen-VL families: each image of `output` (the model's own
    `get_image_features` result for the images `grid_thw`) reduced to its count (`image_templates`), in place; every
    DeepStack level keeps the same tokens (pooled the same way under `pool`). Returns the kept indices per image,
    `None` for `pool`."""
    m = adapter.merge_size
    grids = [(h // m, w // m) for h, w in (adapter.check_image_grid(g) for g in grid_thw.tolist())]
    counts = [max(span.end for span in template)
              for template in adapter.image_templates({"image_grid_thw": grid_thw}, 0)]
    deepstack = getattr(output, "deepstack_features", None) or []
    if adapter.prune_config.method == "visionzip":
        tokens, kept, levels = _visionzip_images(adapter, output, grid_thw, grids, counts, reduce.capture)
    else:
        reduced = [reduce(item, grid, count, i)
                   for i, (item, grid, count) in enumerate(zip(output.pooler_output, grids, counts))]
        tokens, kept = [t for t, _ in reduced], [k for _, k in reduced]
        levels = [[item[k.to(item.device)] if k is not None else reduce(item, grid, count, i)[0]
                   for i, (item, grid, count, k) in enumerate(zip(level, grids, counts, kept))]
                  for level in deepstack]
    output.pooler_output = type(output.pooler_output)(tokens)
    if deepstack:
        output.deepstack_features = type(deepstack)(type(level)(items) for level, items in zip(deepstack, levels))
    return None if adapter.prune_config.method == "pool" else kept


def _visionzip_images(adapter: Any, output: Any, grid_thw: torch.Tensor, grids: list[tuple[int, int]],
                      counts: list[int], capture: dict[str, Any]) -> tuple[list, list, list]:
    """VisionZip on every image: its tokens, its kept indices, and per DeepStack level its features."""
    visual, unit = adapter.visual, adapter.merge_size**2
    scores, metric = tower_scores(capture, visual.blocks[-1].attn)
    mergers = [visual.merger, *getattr(visual, "deepstack_merger_list", ())]
    names = ["projector_input", *(f"deepstack_{k}" for k in range(len(mergers) - 1))]
    # per tower row: its score, its key and every merger's input, taken to merge-block order together
    rows = [scores[:, None], metric, *(capture[name].float() for name in names)]
    ordered = adapter.to_merge_order(torch.cat(rows, dim=-1), grid_thw).split([r.shape[-1] for r in rows], dim=-1)
    per_image = [part.split([h * w * unit for h, w in grids]) for part in ordered]
    outputs = [output.pooler_output, *(getattr(output, "deepstack_features", None) or [])]
    tokens, kept, levels = [], [], []
    for i, ((h, w), count) in enumerate(zip(grids, counts)):
        score, key, *inputs = (part[i].reshape(h * w, unit, -1) for part in per_image)
        image_mergers = [(merger, level[i], x.to(capture[name].dtype))
                         for merger, level, x, name in zip(mergers, outputs, inputs, names)]
        image_tokens, image_kept, image_levels = visionzip_image(score[..., 0], key, count, image_mergers)
        tokens.append(image_tokens)
        kept.append(image_kept)
        levels.append(image_levels)
    return tokens, kept, [list(level) for level in zip(*levels)]
