"""VisionZip (`vtc.PruneConfig(method="visionzip")`) on the any-resolution LLaVA families (NeXT, OneVision).

An image's native tokens are its packed sequence (`adapters._anyres_prune`): the base view's grid, the crops joined
into one grid, unpadded (on OneVision shrunk bilinearly where the crops are many), a newline token closing each row.
The vision tower sees every view (the base view and each crop) as its own row, so VisionZip's inputs are per view:

* a patch's score is the attention it receives at the layer the model reads (`vision_feature_layer`), within its own
  view: the [CLS] query's row on LLaVA-NeXT's CLIP, the mean over every query and head on OneVision's SigLIP (no
  [CLS] token), computed from that layer's own queries and keys copied out by hooks (SDPA stays on, no layer runs
  twice); its key, averaged over heads, is the merge metric; the projector's input row is what a contextual token
  is merged from;
* these per-view grids go through the model's own packing (`_AnyResAdapter._pack_grids`: unpadding, OneVision's
  bilinear resize of the joined grid), so that they line up with the packed tokens one for one.

The image's `keep` is split into dominant and contextual tokens by `vtc.prune.visionzip_counts` over its grid cells
(the newline tokens are no patch: the tower scores none of them, and none is summarised). The dominant tokens are the
highest-scoring cells; newline tokens rank after every cell (kept, in order, only where `keep` exceeds the cells).
The contextual tokens are merged from the remaining cells as `vtc.prune.merge_contextual` does, from the projector's
inputs and then projected, as the official code merges before the projector; where OneVision resized the joined grid
a packed token is an interpolation of projected tokens with no projector input of its own, so that image's
contextual tokens are merged from the packed tokens themselves (after the projector).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from vtc.prune import attention_received, merge_contextual, visionzip_counts, visionzip_selection

__all__ = ["packed_view_features", "visionzip_image", "visionzip_item_shapes"]


def packed_view_features(adapter: Any, capture: dict[str, torch.Tensor], image_sizes: Sequence[tuple[int, int]],
                         crops: Sequence[int]) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """Per image, `(n, 2 + d_h + d_v)` float32 rows lined up with its `n` packed tokens: a newline flag (1 on the
    newline tokens), the score, the head-averaged key and the projector's input; and those channel widths."""
    taps = adapter.feature_layer_attention()
    queries, keys, inputs = capture["query"], capture["key"], capture["projector_input"]
    h, w = adapter.patch_grid
    # the tower's last h * w tokens are the patches (a [CLS] token, where the tower has one, comes first)
    scores = attention_received(queries, keys, taps.num_heads, taps.scale, cls=adapter.vision_has_cls)[:, -h * w:]
    metric = keys.float().reshape(*keys.shape[:2], taps.num_heads, -1).mean(dim=2)[:, -h * w:]
    inputs = inputs.float().reshape(len(scores), h * w, -1)
    rows = torch.cat([torch.zeros_like(scores)[..., None], scores[..., None], metric, inputs], dim=-1)
    widths = (1, 1, metric.shape[-1], inputs.shape[-1])
    newline = torch.zeros(rows.shape[-1], device=rows.device)
    newline[0] = 1
    grids = list(rows.reshape(-1, h, w, rows.shape[-1]).split(list(crops)))
    return adapter._pack_grids(grids, image_sizes, newline), widths


def joined_is_resized(adapter: Any, image_size: tuple[int, int], crops: int) -> bool:
    """Whether the family resizes the image's unpadded joined grid (OneVision's `anyres_max_N` with many crops)."""
    if crops == 1:
        return False
    h, w = adapter.patch_grid
    crop = adapter.model.config.vision_config.image_size
    rows, cols = get_anyres_image_grid_shape(image_size, adapter.grid_pinpoints_for(image_size), crop)
    unpadded = unpad_image(torch.zeros(1, rows * h, cols * w), image_size)
    return adapter._shrink_joined(unpadded, h).shape != unpadded.shape


def visionzip_image(tokens: torch.Tensor, packed: torch.Tensor, widths: Sequence[int], count: int,
                    projector: Any, resized: bool, input_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip on one image: its `count` tokens (dominant, then contextual) and their indices into its packed
    sequence (the dominant ascending, then the contextual tokens' targets).

    Args:
        tokens: `(n, d)` the image's packed tokens, as the model made them.
        packed: `(n, sum(widths))` its rows of `packed_view_features`.
        projector: the model's projector, which makes a contextual token from its merged inputs.
        resized: whether the joined grid was resized after the projector: its contextual tokens are then merged from
            `tokens`.
        input_dtype: the projector's input dtype.
    """
    flag, scores, metric, inputs = packed.split(list(widths), dim=-1)
    is_newline = flag[:, 0] > 0.5
    cells, newlines = (~is_newline).nonzero().flatten(), is_newline.nonzero().flatten()
    contextual = visionzip_counts(min(count, len(cells)), len(cells))[1]
    dominant = count - contextual
    selection = visionzip_selection(scores[cells, 0], metric[cells], min(dominant, len(cells)), contextual)
    kept_dominant = torch.cat([cells[selection.dominant], newlines[:max(0, dominant - len(cells))]]).sort().values
    parts = [tokens[kept_dominant.to(tokens.device)]]
    if contextual:
        if resized:
            merged = merge_contextual(tokens[cells.to(tokens.device)].float(), selection)
        else:
            merged = projector(merge_contextual(inputs[cells], selection).to(input_dtype)[None])[0]
        parts.append(merged.to(tokens.dtype))
    return torch.cat(parts), torch.cat([kept_dominant, cells[selection.targets]])


def visionzip_item_shapes(adapter: Any, image_sizes: Sequence[tuple[int, int]], crops: Sequence[int]
                          ) -> list[tuple[int, int, int]]:
    """Per image, what VisionZip's work on it is counted on (`vtc.flops.pruning_flops`): `(tower tokens, queries
    per tower token's row, grid cells)`; the attention costs `2 * queries * tower tokens * width`, the merge is over
    the cells. A view's row is one [CLS] query (LLaVA-NeXT) or every one of its tokens' (OneVision)."""
    h, w = adapter.patch_grid
    view = h * w + int(adapter.vision_has_cls)
    shapes = []
    for size, n in zip(image_sizes, crops):
        cells = sum(span.length - (span.grid[0] if span.newline else 0)
                    for span in adapter.native_template(size, n) if span.grid is not None)
        shapes.append((n * view, 1 if adapter.vision_has_cls else view, cells))
    return shapes
