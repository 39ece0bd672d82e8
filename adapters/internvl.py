"""InternVL (the transformers-native `InternVLForConditionalGeneration`, e.g. InternVL3-hf).

Seams (transformers 5.23, `models/internvl/modeling_internvl.py`):
* `InternVLModel.get_image_features`: vision tower → layer selection → drop CLS → `pixel_shuffle`
  (`config.downsample_ratio`, 2×2 patches per token at 0.5) → `multi_modal_projector`;
* every tile is an independent item: the model never learns which tiles belong to which image, and each tile fills
  `image_seq_length` consecutive placeholders;
* processor: `InternVLProcessor.image_seq_length` (placeholders per tile), tiling by the GotOcr2 image processor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from vtc.config import PruneConfig, RVTCConfig
from vtc.errors import ConfigError, PlaceholderMismatchError, UnsupportedModelError
from vtc.layout import SampleLayout
from vtc.patch import PatchLedger
from vtc.prune import item_token_count
from vtc.registry import register_adapter
from vtc.rvtc import TilePlan, check_budget, plan_tiles, tile_token_grid
from vtc.seams import hidden_states_request

from .base import Adapter, VisionFeatures, check_pixel_tiles

__all__ = ["InternVLAdapter"]


class _TilePolicy:
    """The GotOcr2 image processor's tiling under RVTC: every image gets exactly its planned tiles."""

    def __init__(self, config: RVTCConfig, tile_size: int, tokens_per_tile: int):
        self.config, self.tile_size, self.tokens_per_tile = config, tile_size, tokens_per_tile

    def plan(self, height: int, width: int) -> TilePlan:
        return plan_tiles(int(width), int(height), self.config, self.tile_size, self.tokens_per_tile)

    # Both image-processor backends pass channels-first images: the size is `shape[-2:]`.
    def crop_image_to_patches(self, original, images, min_patches, max_patches, use_thumbnail=True, patch_size=None,
                              resample=None):
        tiles = self.plan(*images.shape[-2:])
        return original(images, tiles.tiles, tiles.tiles, use_thumbnail=tiles.thumbnail, patch_size=patch_size,
                        resample=resample)

    def get_number_of_image_patches(self, original, height: int, width: int, images_kwargs: dict | None = None) -> int:
        return self.plan(height, width).items


class _DownsampleTiling:
    """The GotOcr2 image processor under `PruneConfig(method="downsample")`: each image gets the most crops whose
    tokens stay within its budget (`keep`, or that fraction of its native tokens; a grid of several crops brings the
    thumbnail, which counts), but never more than it gets natively, and the processor's own aspect-ratio match
    among the grids of that many crops. An image always keeps one tile, whatever its budget."""

    def __init__(self, config: PruneConfig, tokens_per_tile: int):
        self.config, self.tokens_per_tile = config, tokens_per_tile

    def crops(self, image_processor: Any, height: int, width: int, min_patches: int, max_patches: int) -> int:
        bounds = {"min_patches": min_patches, "max_patches": max_patches}
        native = type(image_processor).get_number_of_image_patches(image_processor, height, width, bounds)
        tiles = self.config.kept_count(native * self.tokens_per_tile) // self.tokens_per_tile
        budget = tiles - 1 if tiles > 2 else 1  # crops, the thumbnail of a grid of several taken off
        return min(budget, native - 1 if native > 1 else 1)

    # Both image-processor backends pass channels-first images: the size is `shape[-2:]`.
    def crop_image_to_patches(self, original, images, min_patches, max_patches, use_thumbnail=True, patch_size=None,
                              resample=None):
        crops = self.crops(original.__self__, *images.shape[-2:], min_patches, max_patches)
        return original(images, crops, crops, use_thumbnail=use_thumbnail, patch_size=patch_size, resample=resample)

    def get_number_of_image_patches(self, original, height: int, width: int, images_kwargs: dict | None = None) -> int:
        image_processor, kwargs = original.__self__, dict(images_kwargs or {})
        low, high = (kwargs.get(name) or getattr(image_processor, name) for name in ("min_patches", "max_patches"))
        crops = self.crops(image_processor, height, width, low, high)
        return original(height, width, {**kwargs, "min_patches": crops, "max_patches": crops})


@register_adapter("internvl")
class InternVLAdapter(Adapter):
    model_class_names = ("InternVLForConditionalGeneration",)
    dynamic_resolution = True

    @property
    def projector(self) -> nn.Module:
        return self.base_model.multi_modal_projector

    @property
    def projector_window(self) -> tuple[int, int]:
        side = round(1 / self.model.config.downsample_ratio)
        return side, side

    @property
    def vision_has_cls(self) -> bool:
        return True

    @property
    def patch_grid(self) -> tuple[int, int]:
        vc = self.model.config.vision_config
        return vc.image_size[0] // vc.patch_size[0], vc.image_size[1] // vc.patch_size[1]

    @property
    def token_grid(self) -> tuple[int, int]:
        """The language-token grid of one tile after the native pixel shuffle."""
        (h, w), (sh, sw) = self.patch_grid, self.projector_window
        return h // sh, w // sw

    @property
    def vision_tile(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of one tile the vision tower takes."""
        vc = self.model.config.vision_config
        return vc.num_channels, vc.image_size[0], vc.image_size[1]

    def vision_features(self, pixel_values: torch.Tensor, *, output_hidden_states: Any = None,
                        output_attentions: bool | None = None, **image_inputs: Any) -> VisionFeatures:
        check_pixel_tiles(pixel_values, self.vision_tile, leading=(("tiles",),))
        config, tower = self.model.config, self.base_model.vision_tower
        layer = config.vision_feature_layer
        flags = {} if output_attentions is None else {"output_attentions": output_attentions}
        out = tower(pixel_values=pixel_values.to(tower.dtype), return_dict=True,
                    output_hidden_states=hidden_states_request(output_hidden_states, layer), **flags)
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        h, w = self.patch_grid
        patches = hidden[:, 1:].reshape(-1, h, w, hidden.shape[-1])
        return VisionFeatures(patches=list(patches), cls=hidden[:, 0], items_per_image=[1] * len(patches),
                              tower_output=out)

    @property
    def vision_feature_dim(self) -> int:
        return self.model.config.vision_config.hidden_size

    def apply_projector(self, projector: nn.Module, grid: torch.Tensor) -> torch.Tensor:
        shuffled = self.base_model.pixel_shuffle(grid, scale_factor=self.model.config.downsample_ratio)
        return projector(shuffled)

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        tokens = self.apply_projector(self.projector, torch.stack(features.patches))
        return list(tokens.flatten(1, 2))

    # ------------------------------------------------------------------------------------------------- PVTC
    @property
    def reference_token_grid(self) -> tuple[int, int]:
        return self.token_grid

    def pvtc_output(self, tokens: list[torch.Tensor], features: VisionFeatures) -> ModelOutput:
        # The model checks `pooler_output.shape[0] * shape[1]` against its placeholders: one row per tile.
        return BaseModelOutputWithPooling(pooler_output=torch.stack(tokens).flatten(1, 2))

    def patch_processor_for_pvtc(self, processor: Any, ledger: PatchLedger) -> None:
        h, w = self.token_grid_under_pvtc(self.token_grid)
        ledger.set_attr(processor, "image_seq_length", h * w)

    # ------------------------------------------------------------------------------------------------- pruning
    # The model sees tiles, never images (nothing it is given says which tiles make one image): `keep` is per tile.
    # `downsample` alone acts in the processor, which sees images: its `keep` is per image.
    prune_methods = ("downsample", "pool", "random", "divprune", "visionzip")

    def patch_processor_for_prune(self, processor: Any, ledger: PatchLedger) -> None:
        ledger.set_attr(processor, "image_seq_length", sum(s.length for s in self.item_template(self.token_grid)))

    def downsample_install(self, state: Any) -> None:
        """Give every image fewer tiles (`_DownsampleTiling`); only the image processor changes."""
        config, ledger, image_processor = state.config.prune, state.ledger, state.processor.image_processor
        self._require_tiling_processor(image_processor, "prune method='downsample'")
        h, w = self.token_grid
        most = (image_processor.max_patches + int(image_processor.max_patches > 1)) * h * w
        if most == h * w or not getattr(image_processor, "crop_to_patches", True):
            # every image is one tile already: a row that claims a budget it cannot reach would mislead
            raise ConfigError("prune.method", "downsample", "another method for this processor: it gives every "
                              f"image one tile ({h * w} tokens), so there are no tiles to take away",
                              hint="Use method='pool' to average each tile's token grid down to `keep` tokens.")
        if isinstance(config.keep, int) and not h * w <= config.keep <= most:
            raise ConfigError("prune.keep", config.keep, f"an int in {h * w}..{most} with method='downsample': one "
                              f"tile makes {h * w} tokens, and the processor gives an image at most {most}",
                              hint="Below one tile, use method='pool' (per tile).")
        tiling = _DownsampleTiling(config, h * w)
        ledger.replace_method(image_processor, "crop_image_to_patches", tiling.crop_image_to_patches)
        ledger.replace_method(image_processor, "get_number_of_image_patches", tiling.get_number_of_image_patches)

    # ------------------------------------------------------------------------------------------------- layout
    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        template = self.item_template(self.token_grid)
        per_tile = sum(s.length for s in template)
        num_tiles, remainder = divmod(num_placeholders, per_tile)
        pixel_values = image_inputs.get("pixel_values")
        if pixel_values is not None:
            num_tiles, remainder = pixel_values.shape[0], 0
        if remainder:
            raise PlaceholderMismatchError(
                f"{num_placeholders} image placeholders are not a whole number of tiles of {per_tile} tokens; "
                "process text and images together with the (vtc-patched) processor"
            )
        return [template] * num_tiles

    # ------------------------------------------------------------------------------------------------- RVTC
    @staticmethod
    def _require_tiling_processor(image_processor: Any, component: str) -> None:
        for name in ("crop_image_to_patches", "get_number_of_image_patches"):
            if not callable(getattr(image_processor, name, None)):
                raise UnsupportedModelError(
                    f"{component} needs the GotOcr2 tiling image processor of InternVL (with `{name}`), got "
                    f"{type(image_processor).__name__}"
                )

    def rvtc_tile_size(self, config: RVTCConfig) -> int:
        """The tile side of the RVTC rule: `config.tile_size`, or the side of the vision tower's input tile."""
        return config.tile_size or self.model.config.vision_config.image_size[0]

    def rvtc_install(self, state: Any) -> None:
        """Cut every image into exactly its planned grid, plus the thumbnail when planned.

        Only the image processor changes. Its per-image crop is asked for exactly the planned number of tiles, and
        GotOcr2's aspect-ratio match among the grids of that count returns the planned grid: the closest match over
        all allowed counts is also the closest of its own count, and within one count GotOcr2 orders and breaks ties
        as the rule does (with the tile side of the crop, so only a `tile_size` other than the model's tile could
        turn an exact tie between two grids of one count the other way). The model needs no change: every tile is
        an independent item, and the processor writes `image_seq_length` placeholders for each tile it produced.
        """
        config, ledger = state.config.rvtc, state.ledger
        image_processor = state.processor.image_processor
        self._require_tiling_processor(image_processor, "RVTC")
        tile_size = self.rvtc_tile_size(config)
        h, w = tile_token_grid(self.token_grid, state.config.pvtc)
        prune = state.config.prune
        per_tile = h * w if prune is None else item_token_count(prune, self.token_grid)
        check_budget(config, tile_size, per_tile)

        tiling = _TilePolicy(config, tile_size, per_tile)
        ledger.replace_method(image_processor, "crop_image_to_patches", tiling.crop_image_to_patches)
        ledger.replace_method(image_processor, "get_number_of_image_patches", tiling.get_number_of_image_patches)
        # The crop only runs with tiling on; the bounds are RVTC's, so the processor's own attributes tell the truth.
        ledger.set_attr(image_processor, "crop_to_patches", True)
        ledger.set_attr(image_processor, "min_patches", config.min_tiles)
        ledger.set_attr(image_processor, "max_patches", config.max_tiles)
