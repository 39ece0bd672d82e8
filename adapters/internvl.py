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

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        patches = torch.stack(features.patches)
        shuffled = self.base_model.pixel_shuffle(patches, scale_factor=self.model.config.downsample_ratio)
        tokens = self.projector(shuffled.reshape(patches.shape[0], -1, shuffled.shape[-1]))
        return list(tokens)

    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        h, w = self.token_grid
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
