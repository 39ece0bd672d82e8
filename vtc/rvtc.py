"""RVTC: resolution-aware tiling. A pure policy gives each image only the tiles its size deserves.

    plan = vtc.rvtc.plan_tiles(800, 600, vtc.RVTCConfig(mode="edge"), tile_size=448)
    plan.cols, plan.rows, plan.thumbnail, plan.tiles     # 2, 2, True, 4

The policy caps the tile count per image, then picks the grid with the paper's aspect-ratio match
(`vtc.ops.tiles.match_grid`):

* `mode="edge"`: at most `ceil(W/s) * ceil(H/s)` tiles, the rule of the paper's released code;
* `mode="area"`: at most `ceil(W*H / s^2)` tiles, never more than `edge`;
* `mode="budget"`: at most the largest tile count whose visual tokens (the thumbnail included, each tile counted
  after any PVTC reduction) fit `max_visual_tokens`.

The cap is then clamped to `[min_tiles, max_tiles]`, so every image gets at least `min_tiles` tiles. (The official
code instead falls back to one tile when `min_tiles` exceeds the edge cap of a small image.)

`install` hands the plan to the model's adapter (`Adapter.rvtc_install`), which patches the processor instance (and,
for families whose model recomputes the grid from the image size, the model instance) so that both apply the plan
per image and agree on every count.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from torch import nn

from ._state import VTCState
from .config import PVTCConfig, RVTCConfig
from .errors import ConfigError
from .ops.tiles import area_tile_cap, candidate_grids, check_image_size, edge_tile_cap, match_grid
from .ops.windows import pooled_grid

__all__ = ["THUMBNAIL_POLICIES", "TilePlan", "check_budget", "install", "plan_tiles", "tile_token_grid"]

#: How a model adds its whole-image tile: `"auto"` (a thumbnail when the config's `use_thumbnail` is on and the image
#: has more than one tile), `"always"` (a base tile the model always adds) or `"never"` (the model has none).
THUMBNAIL_POLICIES = ("auto", "always", "never")


@dataclass(frozen=True)
class TilePlan:
    """One image's tiling: a `cols x rows` grid of tiles, plus a whole-image thumbnail tile when `thumbnail`."""

    cols: int
    rows: int
    thumbnail: bool

    @property
    def tiles(self) -> int:
        """The grid's tiles, thumbnail not included."""
        return self.cols * self.rows

    @property
    def items(self) -> int:
        """The images the vision tower sees: the tiles and the thumbnail."""
        return self.tiles + int(self.thumbnail)

    def visual_tokens(self, tokens_per_tile: int) -> int:
        """The visual tokens of the image when every item makes `tokens_per_tile` tokens."""
        return self.items * tokens_per_tile


def _has_thumbnail(tiles: int, config: RVTCConfig, thumbnail: str) -> bool:
    if thumbnail == "always":
        return True
    return thumbnail == "auto" and config.use_thumbnail and tiles > 1


def _check_policy(config: RVTCConfig, tile_size: int, tokens_per_tile: int, thumbnail: str) -> None:
    if not isinstance(config, RVTCConfig):
        raise ConfigError("config", config, "a vtc.RVTCConfig")
    for name, value in (("tile_size", tile_size), ("tokens_per_tile", tokens_per_tile)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if thumbnail not in THUMBNAIL_POLICIES:
        raise ValueError(f"thumbnail must be one of {', '.join(map(repr, THUMBNAIL_POLICIES))}, got {thumbnail!r}")
    if thumbnail == "always" and not config.use_thumbnail:
        raise ConfigError("rvtc.use_thumbnail", False, "True for this model",
                          hint="Its whole-image base tile is always part of the input and cannot be left out.")


def _budget_tile_cap(config: RVTCConfig, tokens_per_tile: int, thumbnail: str) -> int:
    """The largest tile count in `[min_tiles, max_tiles]` whose tokens fit the budget."""

    def tokens(tiles: int) -> int:
        return tokens_per_tile * (tiles + _has_thumbnail(tiles, config, thumbnail))

    budget = config.max_visual_tokens
    if tokens(config.min_tiles) > budget:
        extra = " plus a thumbnail tile" if _has_thumbnail(config.min_tiles, config, thumbnail) else ""
        raise ConfigError(
            "rvtc.max_visual_tokens", budget,
            f">= {tokens(config.min_tiles)} on this model: min_tiles={config.min_tiles} tile(s){extra} of "
            f"{tokens_per_tile} visual tokens each",
            hint="Raise the budget, lower min_tiles, or make each tile cheaper (PVTC).",
        )
    # tokens() never decreases with the tile count, so the tiles that fit are a prefix
    return max(n for n in range(config.min_tiles, config.max_tiles + 1) if tokens(n) <= budget)


def check_budget(config: RVTCConfig, tile_size: int, tokens_per_tile: int, *, thumbnail: str = "auto") -> None:
    """Raise `ConfigError` unless `config` can plan any image on a model with these tile costs.

    Adapters call it when RVTC is installed, so that a budget below one tile fails before anything is patched.
    """
    _check_policy(config, tile_size, tokens_per_tile, thumbnail)
    if config.mode == "budget":
        _budget_tile_cap(config, tokens_per_tile, thumbnail)


def plan_tiles(width: int, height: int, config: RVTCConfig, tile_size: int, tokens_per_tile: int = 256, *,
               thumbnail: str = "auto") -> TilePlan:
    """The tile grid RVTC gives a `width x height` image.

    Args:
        width, height: the image's size in pixels.
        config: the RVTC settings (mode, `min_tiles`, `max_tiles`, `use_thumbnail`, `max_visual_tokens`).
        tile_size: the tile side `s` in pixels that the caps and the tie-break use.
        tokens_per_tile: visual tokens of one tile (and of the thumbnail) at the language model's input, after any
            PVTC reduction; only `mode="budget"` uses it.
        thumbnail: how the model adds its whole-image tile, one of `THUMBNAIL_POLICIES`.

    Raises:
        ValueError: a size, `tile_size` or `tokens_per_tile` that is not a positive integer.
        ConfigError: `mode="budget"` with a budget below `min_tiles` tiles (and their thumbnail); `use_thumbnail=False`
            for a model that always has its whole-image tile.
    """
    width, height = check_image_size(width, height)
    _check_policy(config, tile_size, tokens_per_tile, thumbnail)
    if config.mode == "edge":
        cap = edge_tile_cap(width, height, tile_size)
    elif config.mode == "area":
        cap = area_tile_cap(width, height, tile_size)
    else:
        cap = _budget_tile_cap(config, tokens_per_tile, thumbnail)
    cap = min(config.max_tiles, max(config.min_tiles, cap))
    cols, rows = match_grid(width, height, candidate_grids(config.min_tiles, cap), tile_size)
    return TilePlan(cols, rows, _has_thumbnail(cols * rows, config, thumbnail))


def tile_token_grid(native_grid: tuple[int, int], pvtc: PVTCConfig | None) -> tuple[int, int]:
    """The language-token grid of one tile: the model's own, or what PVTC pools it to (`vtc.ops.pooled_grid`)."""
    if pvtc is None:
        return native_grid
    return pooled_grid(native_grid, (pvtc.window, pvtc.window))


def install(model: nn.Module, state: VTCState) -> None:
    """Apply `state.config.rvtc` through the model's adapter, recording every change in `state.ledger`."""
    from .registry import get_adapter_class, supported_models

    config, adapter = state.config.rvtc, state.adapter
    if not adapter.dynamic_resolution:
        dynamic = [t for t in supported_models() if get_adapter_class(t).dynamic_resolution]
        raise ConfigError(
            "rvtc", config,
            f"None for model_type {model.config.model_type!r}: it has one fixed input resolution, so there are no "
            "tiles to choose",
            hint=f"RVTC applies to the families with dynamic resolution: {', '.join(dynamic)}.",
        )
    if state.processor is None:
        raise ConfigError("processor", None, "the model's processor: RVTC chooses each image's tiles inside it",
                          hint="Call vtc.compress(model, config, processor=processor) and process inputs with it.")
    adapter.rvtc_install(state)
