"""The pruning baselines' arithmetic and selection rules, as pure functions (no model, no state).

Budget: how many tokens an image (a tile on families whose model sees tiles) keeps, and for `pool` on which grid.
`item_template` is the one count function both sides call: the patched processor writes that many placeholders, and
the model's reduced features have that many tokens.

Rules, each on the tokens of one item, returning the kept indices in ascending order (the kept tokens keep their
order):

* `random_selection`: uniform without replacement, seeded;
* `divprune_selection`: DivPrune's greedy max-min diversity on cosine distance (arXiv 2503.02175), after the official
  code, github.com/vbdi/divprune at commit 799e2d950aa01ba7860907f5a6d86061f885dca6 (the `DivPrune` method and its
  call site; `docs/prune.md` gives the file and lines);
* `visionzip_selection` / `merge_contextual`: VisionZip's dominant and contextual tokens (arXiv 2412.04467), after
  the official code, github.com/dvlab-research/VisionZip at commit 3151f6df4fca36a4cd1c985e5956e725b1f9ad02 (the
  vision tower's forward and the attention that stores the keys, in the `visionzip` package; `docs/prune.md` gives
  the files and lines);
* `pool_grid` / `pool_tokens`: 2-D adaptive average pooling of the token grid; `pruned_image_template` (with
  `largest_remainder_split`, `joined_pool_grid`): the same for an image packed as a base grid and a joined grid.

Axes: n native tokens of one item, d feature width, c contextual tokens, b items, t tower tokens, h heads.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import PruneConfig
from .errors import ConfigError
from .layout import SampleLayout, VisualSpan

__all__ = [
    "SELECTION_METHODS",
    "VisionZipSelection",
    "attention_received",
    "check_keep",
    "divprune_selection",
    "item_template",
    "item_token_count",
    "joined_pool_grid",
    "largest_remainder_split",
    "merge_contextual",
    "pool_grid",
    "pool_tokens",
    "pruned_image_template",
    "random_selection",
    "visionzip_counts",
    "visionzip_selection",
    "window_reduce",
]

#: The methods that keep a subset of the native tokens (`last_stats()["kept"]` lists it); the others make new ones.
SELECTION_METHODS = ("random", "divprune", "visionzip")

#: VisionZip's proportion of contextual tokens: its released setting keeps 54 dominant and 10 contextual of 64.
_CONTEXTUAL_SHARE = Fraction(10, 64)


# ---------------------------------------------------------------------------------------------------- budget
@functools.lru_cache(maxsize=4096)
def pool_grid(grid: tuple[int, int], target: int) -> tuple[int, int]:
    """The `(oh, ow)` grid `pool` averages an `(h, w)` token grid to, for about `target` tokens.

    The rule: among the grids with `1 <= oh <= h` and `1 <= ow <= w`, the one whose `oh * ow` is closest to `target`;
    among those, the one whose aspect ratio `oh / ow` distorts `h / w` least (by the factor `max(r, 1 / r)` with
    `r = (oh / ow) / (h / w)`); among those, the one with fewer rows. `target = h * w` gives `(h, w)`. A prime
    target can give a strip (7 tokens: `1 x 7`): choose a `keep` with a near-square factorisation.

    Args:
        grid: `(h, w)`, the item's native token grid.
        target: the wanted token count, `1 <= target <= h * w`.
    """
    h, w = grid

    def cost(shape: tuple[int, int]) -> tuple[int, Fraction, int]:
        oh, ow = shape
        ratio = Fraction(oh * w, ow * h)
        return abs(oh * ow - target), max(ratio, 1 / ratio), oh

    # For each row count the closest products lie at the floor and the ceiling of target / oh.
    candidates = {(oh, min(w, max(1, ow))) for oh in range(1, h + 1) for ow in (target // oh, -(-target // oh))}
    return min(candidates, key=cost)


def item_template(config: PruneConfig, grid: tuple[int, int]) -> SampleLayout:
    """The span an item (an image, or a tile) with the native token grid `grid` fills at the language model's input:
    the pooled grid for `pool`, a run of `config.kept_count(h * w)` tokens with no grid for the selection methods
    (and for `downsample`, whose model makes native grids, the native grid)."""
    h, w = grid
    if config.method == "downsample":
        return (VisualSpan(0, h * w, grid),)
    if config.method == "pool":
        oh, ow = pool_grid(grid, config.kept_count(h * w))
        return (VisualSpan(0, oh * ow, (oh, ow)),)
    return (VisualSpan(0, config.kept_count(h * w), None),)


def largest_remainder_split(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` (the largest-remainder method; equal remainders go to the first)."""
    quotas = [Fraction(total * w, sum(weights)) for w in weights]
    shares = [int(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in by_remainder[:total - sum(shares)]:
        shares[i] += 1
    return shares


@functools.lru_cache(maxsize=4096)
def joined_pool_grid(grid: tuple[int, int], target: int) -> tuple[int, int]:
    """The `(oh, ow)` grid `pool` averages a joined `(rows, cols)` grid to, so that with a newline token closing each
    of its rows it brings about `target` tokens: `vtc.prune.pool_grid`'s rule with `oh * (ow + 1)` in place of the
    product (closest to `target`, then the least aspect distortion, then fewer rows). `rows * (cols + 1)` gives
    `(rows, cols)`."""
    rows, cols = grid

    def cost(shape: tuple[int, int]) -> tuple[int, Fraction, int]:
        oh, ow = shape
        ratio = Fraction(oh * cols, ow * rows)
        return abs(oh * (ow + 1) - target), max(ratio, 1 / ratio), oh

    # For each row count the closest totals lie at the floor and the ceiling of target / oh, a newline taken off.
    candidates = {(oh, min(cols, max(1, per_row - 1)))
                  for oh in range(1, rows + 1) for per_row in (target // oh, -(-target // oh))}
    return min(candidates, key=cost)


def pruned_image_template(config: PruneConfig, native: SampleLayout) -> SampleLayout:
    """The spans one image with the native template `native` (a base grid, then a joined grid with newline tokens
    or lone newline tokens: an image of the any-resolution families) fills at the language model's input under
    `config`: the selection methods keep `min(kept_count(n), n)` of its `n` tokens; `pool` splits the count between
    the base grid and the joined grid by `largest_remainder_split` and pools them to `pool_grid` and
    `joined_pool_grid`, a newline token closing each pooled row (a base-only image keeps its newline tokens)."""
    total = sum(span.length for span in native)
    count = min(config.kept_count(total), total)
    if config.method != "pool":
        return (VisualSpan(0, count, None),)
    base, *rest = native
    if not rest or not rest[0].newline:  # the base view alone: its grid, then its newline token(s), kept
        oh, ow = pool_grid(base.grid, max(1, count - (total - base.length)))
        return (VisualSpan(0, oh * ow, (oh, ow)), *(VisualSpan(s.start + oh * ow - base.length, s.length, s.grid, s.newline) for s in rest))
    joined = rest[0]
    base_share, joined_share = largest_remainder_split(count, (base.length, joined.length))
    bh, bw = pool_grid(base.grid, max(1, base_share))
    oh, ow = joined_pool_grid(joined.grid, joined_share)
    return VisualSpan(0, bh * bw, (bh, bw)), VisualSpan(bh * bw, oh * (ow + 1), (oh, ow), newline=True)


def item_token_count(config: PruneConfig, grid: tuple[int, int]) -> int:
    """The visual tokens an item with the native token grid `grid` brings to the language model under `config`."""
    return sum(span.length for span in item_template(config, grid))


def check_keep(config: PruneConfig, grid: tuple[int, int], item: str) -> None:
    """Raise `ConfigError` when an int `keep` exceeds the native tokens of one item (`grid`), named `item`."""
    native = grid[0] * grid[1]
    if isinstance(config.keep, int) and config.keep > native:
        raise ConfigError("prune.keep", config.keep, f"at most {native}: the model makes {grid[0]}x{grid[1]} "
                          f"tokens per {item}", hint=f"keep={native} keeps every token; a float keeps a fraction.")


def visionzip_counts(count: int, native: int) -> tuple[int, int]:
    """`(dominant, contextual)` for `count` kept tokens out of `native`: VisionZip's 54:10 proportion,
    `contextual = round(count * 10 / 64)` (64 -> 54 + 10, 128 -> 108 + 20, 192 -> 162 + 30), but never more than
    the `native - count` tokens left to summarise: keeping every token keeps them all as dominant."""
    contextual = min(round(count * _CONTEXTUAL_SHARE), native - count)
    return count - contextual, contextual


# ---------------------------------------------------------------------------------------------------- rules
def random_selection(num_tokens: int, count: int, seed: int) -> torch.Tensor:
    """`count` distinct indices of `0..num_tokens - 1`, drawn uniformly without replacement, ascending.

    The draw is `torch.randperm` on a CPU generator seeded with `seed` for every item: an item's selection depends
    only on its token count and the seed (the same on every device, in a batch or alone).
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_tokens, generator=generator)[:count].sort().values


def divprune_selection(features: torch.Tensor, count: int) -> torch.Tensor:
    """DivPrune: `count` indices of the rows of `features` `(n, d)` chosen greedily for diversity, ascending.

    Distances are `1 - cos` between the rows (`D = 1 - Xn Xn^T`, rows L2-normalised, no epsilon, computed in
    float32). The first pick is the token whose nearest neighbour is farthest: the argmax over columns of the
    second-smallest entry of each column of `D` (the smallest being the token's own distance). Each next pick is the
    argmax of the distance to the nearest token picked so far. `argmax` returns the first of equal maxima. The
    official code does not mask the tokens already picked (their own distance, about 0, keeps them out unless the
    remaining tokens duplicate picked ones, where it picks a token twice); here they are masked, so the `count`
    indices are distinct.
    """
    n = features.shape[0]
    if count >= n:
        return torch.arange(n, device=features.device)
    x = features.float()
    normed = x / x.norm(dim=1, keepdim=True)
    distance = 1.0 - normed @ normed.T
    tokens = torch.arange(n, device=features.device)
    picked = torch.zeros(n, dtype=torch.bool, device=features.device)
    selected = torch.empty(count, dtype=torch.long, device=features.device)
    score = distance.topk(2, dim=0, largest=False).values[1]
    nearest = None
    for i in range(count):  # tensor ops only (no index read on the host): `torch.compile` traces it whole
        index = torch.argmax(score, dim=0, keepdim=True)
        selected[i:i + 1] = index
        picked = picked | (tokens == index)
        # the distance to the nearest picked token: the official `min` over the picked rows, kept as a running minimum
        row = distance.index_select(0, index)[0]
        nearest = row if nearest is None else torch.minimum(nearest, row)
        score = nearest.masked_fill(picked, float("-inf"))
    return selected.sort().values


class VisionZipSelection(NamedTuple):
    """VisionZip's choice for one item: indices into its native tokens.

    Args:
        dominant: `(count - c,)` the dominant tokens, ascending.
        targets: `(c,)` the tokens each contextual token is built on, in VisionZip's order.
        merged: the remaining tokens that are not targets, ascending (none without contextual tokens: then the
            tokens that are not dominant are dropped).
        assignment: for each of `merged`, the position in `targets` of the target it is merged into.
    """

    dominant: torch.Tensor
    targets: torch.Tensor
    merged: torch.Tensor
    assignment: torch.Tensor


def visionzip_selection(scores: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int) -> VisionZipSelection:
    """VisionZip's dominant and contextual tokens of one item.

    Dominant: the `dominant` tokens with the highest `scores` (a stable sort: the lower index first among equal
    scores, where the official `topk` leaves the order open), in ascending order. The `R` others keep their order;
    `contextual` targets are picked among them uniformly, at positions `0, s, 2s, ...` with `s = max(1, R //
    contextual)`; every other remaining token is assigned to the target whose key is most cosine-similar (the first
    on ties).

    Args:
        scores: `(n,)` the attention each token receives (from the [CLS] token, summed over heads).
        keys: `(n, d_k)` the tokens' keys at that layer, averaged over heads (VisionZip's "metric").
        dominant: how many dominant tokens, `1 <= dominant <= n`.
        contextual: how many contextual tokens, `0 <= contextual <= n - dominant`.
    """
    device = scores.device
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    top = order[:dominant].sort().values
    remaining = order[dominant:].sort().values
    if contextual == 0:  # nothing summarises the rest: it is dropped
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return VisionZipSelection(top, empty, empty, empty)
    step = max(1, remaining.shape[0] // contextual)
    positions = torch.arange(0, remaining.shape[0], step, device=device)[:contextual]
    is_target = torch.zeros(remaining.shape[0], dtype=torch.bool, device=device)
    is_target[positions] = True
    targets, merged = remaining[positions], remaining[~is_target]
    metric = keys.float()
    metric = metric / metric.norm(dim=-1, keepdim=True)
    similarity = metric[merged] @ metric[targets].T
    assignment = similarity.argmax(dim=1) if merged.numel() else torch.zeros(0, dtype=torch.long, device=device)
    return VisionZipSelection(top, targets, merged, assignment)


def merge_contextual(hidden: torch.Tensor, selection: VisionZipSelection) -> torch.Tensor:
    """VisionZip's contextual tokens `(c, d)` from the rows of `hidden` `(n, d)`: each target's own row plus the mean
    of the rows assigned to it (the target's row alone when none is)."""
    contextual = selection.targets.shape[0]
    sums = hidden.new_zeros((contextual, *hidden.shape[1:]))
    sums.index_add_(0, selection.assignment, hidden[selection.merged])
    counts = torch.bincount(selection.assignment, minlength=contextual).clamp(min=1).to(hidden.dtype)
    return hidden[selection.targets] + sums / counts.reshape(-1, *([1] * (hidden.dim() - 1)))


def attention_received(queries: torch.Tensor, keys: torch.Tensor, num_heads: int, scale: float, *,
                       cls: bool) -> torch.Tensor:
    """The attention each patch receives at one vision layer, from that layer's queries and keys: `(b, t')`.

    With a [CLS] token (the tower's token 0): the softmax row of the CLS query over all `t` keys, summed over heads,
    without the CLS column (`t' = t - 1`), as VisionZip reads `attentions[:, :, 0, 1:].sum(1)`. Without one (the
    substitute this toolkit uses): the attention each token receives, averaged over every query and head (`t' = t`).
    One row (or one item's matrix at a time) is computed; the tower itself runs unchanged.

    Args:
        queries: `(b, t, h * d_h)` the layer's queries, as its attention uses them (after any query norm).
        keys: `(b, t, h * d_h)` the layer's keys.
        num_heads: `h`.
        scale: the factor on `Q K^T` (`d_h ** -0.5`).
        cls: whether token 0 is a [CLS] token.
    """
    b, t, _ = keys.shape
    k = keys.float().reshape(b, t, num_heads, -1)
    if cls:
        q = queries[:, 0].float().reshape(b, num_heads, -1)
        weights = torch.einsum("bhd,bthd->bht", q, k).mul(scale).softmax(dim=-1)
        return weights.sum(dim=1)[:, 1:]
    q = queries.float().reshape(b, t, num_heads, -1)
    received = []
    for item in range(b):  # one item's (h, t, t) matrix at a time
        weights = torch.einsum("qhd,khd->hqk", q[item], k[item]).mul(scale).softmax(dim=-1)
        received.append(weights.mean(dim=(0, 1)))
    return torch.stack(received)


def window_reduce(values: torch.Tensor, grid: tuple[int, int], window: tuple[int, int], how: str) -> torch.Tensor:
    """Per-patch values `(b, h * w, ...)` on a row-major `(h, w)` patch grid, reduced over `window` `(th, tw)` blocks
    to one value per language token (`(b, h / th * w / tw, ...)`, the blocks row-major): `how` is `"sum"` or
    `"mean"`. Where the projector turns `th x tw` patches into one token (a pixel shuffle), a token receives its
    patches' attention and has their mean key."""
    (h, w), (th, tw) = grid, window
    if (th, tw) == (1, 1):
        return values
    b, rest = values.shape[0], values.shape[2:]
    blocks = values.reshape(b, h // th, th, w // tw, tw, *rest).transpose(2, 3)
    blocks = blocks.reshape(b, (h // th) * (w // tw), th * tw, *rest)
    return blocks.sum(dim=2) if how == "sum" else blocks.mean(dim=2)


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`tokens` `(h, w, d)` average-pooled to `grid` `(oh, ow)` with `adaptive_avg_pool2d` (windows `floor(i h / oh)`
    to `ceil((i + 1) h / oh)`, overlapping where `oh` does not divide `h`); the tokens themselves at the same grid."""
    if tuple(tokens.shape[:2]) == tuple(grid):
        return tokens
    pooled = F.adaptive_avg_pool2d(tokens.permute(2, 0, 1)[None].float(), grid)[0]
    return pooled.permute(1, 2, 0).to(tokens.dtype)
