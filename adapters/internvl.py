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

from vtc._patch import PatchLedger
from vtc.errors import PlaceholderMismatchError
from vtc.layout import SampleLayout, VisualSpan
from vtc.registry import register_adapter

from .base import Adapter, PlaceholderSeam, VisionFeatures

__all__ = ["InternVLAdapter"]


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

    def vision_features(self, pixel_values: torch.Tensor, **image_inputs: Any) -> VisionFeatures:
        config, tower = self.model.config, self.base_model.vision_tower
        out = tower(pixel_values=pixel_values.to(tower.dtype), output_hidden_states=True, return_dict=True)
        layer = config.vision_feature_layer
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        h, w = self.patch_grid
        patches = hidden[:, 1:].reshape(-1, h, w, hidden.shape[-1])
        return VisionFeatures(patches=list(patches), cls=hidden[:, 0], items_per_image=[1] * len(patches))

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

    def patch_model_for_pvtc(self, ledger: PatchLedger) -> None:
        # Bookkeeping only (the model never reads it), kept in step so that a saved config tells the truth.
        h, w = self.token_grid_under_pvtc(self.token_grid)
        ledger.set_attr(self.model.config, "image_seq_length", h * w)

    # ------------------------------------------------------------------------------------------------- layout
    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        h, w = self.token_grid_under_pvtc(self.token_grid)
        per_tile = h * w
        num_tiles, remainder = divmod(num_placeholders, per_tile)
        pixel_values = image_inputs.get("pixel_values")
        if pixel_values is not None:
            num_tiles, remainder = pixel_values.shape[0], 0
        if remainder:
            raise PlaceholderMismatchError(
                f"{num_placeholders} image placeholders are not a whole number of tiles of {per_tile} tokens; "
                "process text and images together with the (vtc-patched) processor"
            )
        return [(VisualSpan(0, per_tile, (h, w)),)] * num_tiles

    def placeholder_seam(self, processor: Any) -> PlaceholderSeam:
        return PlaceholderSeam(processor, "image_seq_length", "value")
