"""The pinpoints RVTC allows each image of an any-resolution LLaVA family (LLaVA-NeXT, LLaVA-OneVision)."""

from __future__ import annotations

from vtc.config import RVTCConfig
from vtc.rvtc import plan_tiles

__all__ = ["PinpointPlan"]


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
