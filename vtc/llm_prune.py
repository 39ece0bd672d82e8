"""The in-decoder pruning rules (`vtc.PruneConfig` methods `fastv`, `pdrop`, `dart`), as pure functions: no model,
no state. `vtc._install_llm_prune` feeds them what the decoder computed and shortens the sequence with their choice.

* `last_token_attention`: the attention one query (the last prompt token) gives every key, averaged over heads: the
  score of FastV (arXiv 2403.06764; github.com/pkunlp-icler/FastV at commit
  d1659729b5bf1be225e99ee15783deeea80f63b1) and PyramidDrop (arXiv 2410.17247; github.com/Cooperx521/PyramidDrop at
  commit 6444f304aee4b7edcb022839fb9e8cd07859704a);
* `top_indices`: the `count` highest scores of an item (FastV's and PyramidDrop's `topk`), in ascending order;
* `dart_selection`: DART's pivots and the tokens least similar to them (arXiv 2502.11494; the upstream code of
  github.com/ZichenWen1/DART at commit 5a19452fc173017191c247848673e0bde755695a);
* `pdrop_schedule`: PyramidDrop's tokens per stage, with the keep ratio solved for an average budget.

`docs/prune.md` gives each rule's files and lines, and where vtc differs from the official code.

Axes: b batch, s sequence, h query heads, k key/value heads, d head width, n an item's tokens, e feature width.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["DART_PIVOTS", "PDropSchedule", "dart_selection", "last_token_attention", "pdrop_average", "pdrop_counts",
           "pdrop_schedule", "top_indices"]

#: DART's pivots: the image tokens and the text tokens after the image with the largest key norms, 4 of each (the
#: official `pivot_image_token` and `pivot_text_token`).
DART_PIVOTS = (4, 4)


def last_token_attention(query: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """The attention probabilities one query gives every key, averaged over heads: `(b, s)`.

    The softmax runs over the whole row of keys the query attends to (text, image and every other token), in float32,
    as eager attention computes it; the average over heads is taken after it.

    Args:
        query: `(b, h, d)` the query of each sample's last prompt token, after the rotary embedding.
        keys: `(b, s, k, d)` the keys, after the rotary embedding; query head `i` reads key head `i // (h / k)`.
        key_mask: `(b, s)` bool, the keys the query attends to (causal and padding).
        scale: the factor on `Q K^T`.
    """
    b, h, d = query.shape
    k = keys.shape[2]
    grouped = query.float().reshape(b, k, h // k, d)
    logits = torch.einsum("bkgd,bskd->bkgs", grouped, keys.float()).reshape(b, h, -1) * scale
    logits = logits.masked_fill(~key_mask[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)


def top_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the `count` highest of `scores` `(n,)`, in ascending order. Among equal scores the lower index
    ranks first (a stable sort; the official `topk` leaves that order open)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:count].sort().values


def _lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the `count` lowest of `values`, the lower index first among equal values."""
    return torch.sort(values, stable=True).indices[:count]


def dart_selection(states: torch.Tensor, key_norms: torch.Tensor, candidates: torch.Tensor, text: torch.Tensor,
                   count: int, pivots: tuple[int, int] = DART_PIVOTS) -> torch.Tensor:
    """DART's choice among one item's tokens: indices into `candidates`, ascending.

    Pivots: the `pivots[0]` candidates with the largest key norm (kept), and the `pivots[1]` text tokens after the
    item with the largest key norm. The `count - pivots[0]` other kept tokens are shared among the pivots, in
    ascending position order: each in turn takes, from the candidates nobody has taken yet, the ones whose states
    are least cosine-similar to its own (`floor(r / p)` each, one more for the first `r mod p` pivots, for `r` tokens
    and `p` pivots).

    Args:
        states: `(s, e)` one sample's hidden states at the pruned layer's input, after the language model's final norm.
        key_norms: `(s,)` the L1 norm of each token's key in the layer before (every key head, after the rotary
            embedding).
        candidates: `(n,)` long, the item's positions.
        text: `(m,)` long, the positions of the text tokens after the item (may be empty).
        count: the tokens to keep, `1 <= count`.
        pivots: how many image and text pivots.
    """
    n = candidates.shape[0]
    if count >= n:
        return torch.arange(n, device=candidates.device)
    image_pivots = top_indices(key_norms[candidates], min(pivots[0], count))
    text_pivots = text[top_indices(key_norms[text], min(pivots[1], text.shape[0]))]
    pivot_positions = torch.cat([candidates[image_pivots], text_pivots]).sort().values
    taken = torch.zeros(n, dtype=torch.bool, device=candidates.device)
    taken[image_pivots] = True
    pool = states[candidates].float()
    share, extra = divmod(count - image_pivots.shape[0], pivot_positions.shape[0])
    pivot_states = states[pivot_positions].float()
    for i in range(pivot_positions.shape[0]):
        similarity = F.cosine_similarity(pivot_states[i][None], pool, dim=-1)
        picked = _lowest(similarity.masked_fill(taken, float("inf")), share + (i < extra))
        taken[picked] = True
    # the `count` taken indices in ascending order, read without waiting for the device (a stable sort of flags)
    return torch.sort((~taken).to(torch.uint8), stable=True).indices[:count]


class PDropSchedule(NamedTuple):
    """PyramidDrop's tokens for one item of `native` tokens.

    Args:
        ratio: `lambda`, the keep ratio of each stage: stage `j` (from 1) keeps `int(native * lambda ** j)`.
        counts: the tokens each stage keeps.
        average: the item's visual tokens per decoder layer, averaged over all layers (a fraction).
    """

    ratio: float
    counts: tuple[int, ...]
    average: Fraction


def pdrop_counts(native: int, ratio: float, stages: int) -> tuple[int, ...]:
    """`int(native * ratio ** j)` for the stages `j = 1..stages`: the official `int(N * ratio_list[j])` with
    `ratio_list = [1, lambda, lambda^2, ...]`."""
    return tuple(int(native * ratio ** j) for j in range(1, stages + 1))


def pdrop_average(native: int, counts: Sequence[int], stage_layers: Sequence[int], num_layers: int) -> Fraction:
    """The visual tokens per decoder layer, averaged over the `num_layers` layers: `native` before the first stage
    layer, then each stage's count until the next one."""
    bounds = [*stage_layers, num_layers]
    total = stage_layers[0] * native + sum(c * (bounds[j + 1] - bounds[j]) for j, c in enumerate(counts))
    return Fraction(total, num_layers)


@functools.lru_cache(maxsize=1024)
def pdrop_schedule(native: int, stage_layers: tuple[int, ...], num_layers: int, target: Fraction) -> PDropSchedule:
    """The stage counts whose average over the decoder layers is closest to `target` visual tokens: within one token
    of it wherever it can be reached (`pdrop_average` of all-zero counts <= target <= native).

    The average grows with `lambda` in steps of less than one token (a stage's count grows by one at a time, and the
    stages cover fewer than all layers), so the `lambda` where it first reaches `target` (found by bisection) and the
    one just below bracket `target` within one token; the closer wins (the larger on a tie). A `target` below what
    dropping every token at the first stage gives returns that schedule; at or above `native`, every stage keeps all.

    Args:
        native: the item's tokens.
        stage_layers: the first decoder layer of each stage, increasing.
        num_layers: the decoder layers.
        target: the wanted average.
    """
    stages = len(stage_layers)
    if target >= native:
        return PDropSchedule(1.0, (native,) * stages, Fraction(native))

    def average(ratio: float) -> Fraction:
        return pdrop_average(native, pdrop_counts(native, ratio, stages), stage_layers, num_layers)

    low, high = 0.0, 1.0  # average(low) < target <= average(high), unless the target is below every average
    if average(low) >= target:
        return PDropSchedule(0.0, (0,) * stages, average(low))
    for _ in range(64):
        middle = (low + high) / 2
        if average(middle) >= target:
            high = middle
        else:
            low = middle
    ratio = high if abs(average(high) - target) <= abs(average(low) - target) else low
    return PDropSchedule(ratio, pdrop_counts(native, ratio, stages), average(ratio))
