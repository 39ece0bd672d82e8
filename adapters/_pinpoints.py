"""The pinpoints RVTC, or pruning's `downsample`, allows each image of an any-resolution LLaVA family (LLaVA-NeXT,
LLaVA-OneVision)."""

from __future__ import annotations

from collections.abc import Callable

from transformers.image_processing_utils import select_best_resolution

from vtc.config import PruneConfig, RVTCConfig
from vtc.rvtc import plan_tiles

__all__ = ["DownsamplePinpoints", "PinpointPlan"]


class PinpointPlan:
    """Per image `(height, width)`, the pinpoints RVTC allows it (see `_AnyResAdapter.rvtc_install`)."""

    def __init__(self, config: RVTCConfig, tile_size: int, tokens_per_crop: int, native: list[list[int]], crop: int):
        self.config, self.tile_size, self.tokens_per_crop = config, tile_size, tokens_per_crop
        self.native, self.crop = native, crop
        # Asked for every image several times per forward (crops, packing, layout); a value is never mutated, and a
        # racing thread at worst computes the same entry twice.
        self._cache: dict[tuple[int, int], list[list[int]]] = {}

    def __call__(self, height: int, width: int) -> list[list[int]]:
        key = (height, width)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            plan = plan_tiles(width, height, self.config, self.tile_size, self.tokens_per_crop, thumbnail="always")
            crop, low = self.crop, self.config.min_tiles
            allowed = [p for p in self.native if low <= -(-p[0] // crop) * -(-p[1] // crop) <= plan.tiles]
            self._cache[key] = allowed or [[plan.rows * crop, plan.cols * crop]]
        return self._cache[key]


class DownsamplePinpoints:
    """Per image `(height, width)`, the pinpoints `PruneConfig(method="downsample")` allows it: those with which the
    image natively makes at most its budget (`keep`, or that fraction of the tokens it makes with every pinpoint),
    else those with which it makes the fewest. The family's own `select_best_resolution` then chooses among them: an
    image never gets more tokens than it does natively, and a budget at its native count changes nothing.

    Args:
        config: the pruning config.
        native: the model's `image_grid_pinpoints`, `[height, width]` each.
        tokens: `tokens((height, width), pinpoint)`, the tokens an image of that size makes when tiled to `pinpoint`
            (base view, unpadded crops and newline tokens).
    """

    def __init__(self, config: PruneConfig, native: list[list[int]],
                 tokens: Callable[[tuple[int, int], list[int]], int]):
        self.config, self.native, self.tokens = config, native, tokens
        self._cache: dict[tuple[int, int], list[list[int]]] = {}  # as `PinpointPlan._cache`

    def __call__(self, height: int, width: int) -> list[list[int]]:
        key = (height, width)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            counts = [self.tokens(key, p) for p in self.native]
            chosen = list(select_best_resolution(key, self.native))
            budget = self.config.kept_count(counts[self.native.index(chosen)])
            allowed = [p for p, n in zip(self.native, counts) if n <= budget]
            self._cache[key] = allowed or [p for p, n in zip(self.native, counts) if n == min(counts)]
        return self._cache[key]
