"""LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision.

Seams (transformers 5.23, `models/llava*/modeling_llava*.py`):
* the vision tower (`model.model.vision_tower`, CLIP or SigLIP) and the layer/strategy selection of
  `LlavaModel.get_image_features` (`config.vision_feature_layer`, `config.vision_feature_select_strategy`);
* the projector `model.model.multi_modal_projector` (one language token per vision patch);
* NeXT/OneVision: `pack_image_features` (base crop, then the high-resolution crops unpadded into one grid with an
  `image_newline` token closing every row) and `image_size_to_num_patches` (crops per image from `image_sizes`);
* processors: `replace_image_token` (LLaVA) and `_get_number_of_features` (NeXT, OneVision).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from vtc.errors import PlaceholderMismatchError
from vtc.layout import SampleLayout, VisualSpan
from vtc.registry import register_adapter

from .base import Adapter, PlaceholderSeam, VisionFeatures

__all__ = ["LlavaAdapter", "LlavaNextAdapter", "LlavaOnevisionAdapter"]


class LlavaLikeAdapter(Adapter):
    """What LLaVA, LLaVA-NeXT and LLaVA-OneVision share: a ViT, a layer selection, a per-patch MLP projector."""

    @property
    def projector(self) -> nn.Module:
        return self.base_model.multi_modal_projector

    @property
    def projector_window(self) -> tuple[int, int]:
        return (1, 1)

    @property
    def vision_tower(self) -> nn.Module:
        return self.base_model.vision_tower

    @property
    def vision_has_cls(self) -> bool:
        embeddings = getattr(self.vision_tower, "embeddings", None)
        if embeddings is None:  # e.g. a CLIPVisionModel wrapper: embeddings live one level down
            embeddings = self.vision_tower.vision_model.embeddings
        return hasattr(embeddings, "class_embedding") or hasattr(embeddings, "cls_token")

    @property
    def patch_grid(self) -> tuple[int, int]:
        """The patch grid of one crop: `(image_size // patch_size,) * 2`."""
        vc = self.model.config.vision_config
        side = vc.image_size // vc.patch_size
        return side, side

    @property
    def keeps_cls_token(self) -> bool:
        """Whether the CLS token itself becomes a language token (`"full"` strategy on a tower that has one)."""
        return self.model.config.vision_feature_select_strategy == "full" and self.vision_has_cls

    def _selected_hidden_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision hidden states the model selects, CLS included where the tower has one: `(n, tokens, d)`."""
        config = self.model.config
        out = self.vision_tower(
            pixel_values.to(self.vision_tower.dtype), output_hidden_states=True, return_dict=True
        )
        layer = config.vision_feature_layer
        if isinstance(layer, int):
            return out.hidden_states[layer]
        return torch.cat([out.hidden_states[i] for i in layer], dim=-1)

    def _split_items(self, hidden: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        h, w = self.patch_grid
        cls = hidden[:, 0] if self.vision_has_cls else None
        patches = hidden[:, 1:] if self.vision_has_cls else hidden
        return list(patches.reshape(-1, h, w, patches.shape[-1])), cls

    def _project_item(self, patches: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        tokens = patches.reshape(-1, patches.shape[-1])
        if self.keeps_cls_token:
            tokens = torch.cat([cls[None], tokens], dim=0)
        return self.projector(tokens)


@register_adapter("llava")
class LlavaAdapter(LlavaLikeAdapter):
    model_class_names = ("LlavaForConditionalGeneration",)

    def vision_features(self, pixel_values: torch.Tensor, **image_inputs: Any) -> VisionFeatures:
        patches, cls = self._split_items(self._selected_hidden_states(pixel_values))
        return VisionFeatures(patches=patches, cls=cls, items_per_image=[1] * len(patches))

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        cls = features.cls if features.cls is not None else [None] * len(features.patches)
        return [self._project_item(p, c) for p, c in zip(features.patches, cls)]

    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        h, w = self.patch_grid
        template: SampleLayout = (VisualSpan(0, h * w, (h, w)),)
        if self.keeps_cls_token:
            template = (VisualSpan(0, 1, None), VisualSpan(1, h * w, (h, w)))
        per_image = sum(s.length for s in template)
        num_images = num_placeholders // per_image
        pixel_values = image_inputs.get("pixel_values")
        if pixel_values is not None:
            num_images = pixel_values.shape[0]
        return [template] * num_images


class _AnyResAdapter(LlavaLikeAdapter):
    """LLaVA-NeXT and OneVision: a base crop plus high-resolution crops packed into one unpadded grid."""

    dynamic_resolution = True
    image_input_keys = ("pixel_values", "image_sizes")

    def _crops_per_image(self, image_inputs: Mapping[str, Any]) -> list[int]:
        config = self.model.config
        return [
            image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
            for size in image_inputs["image_sizes"]
        ]

    def _pack(self, features: list[torch.Tensor], image_sizes, newline: torch.Tensor) -> list[torch.Tensor]:
        """The model's own `pack_image_features`, one packed `(tokens, d)` tensor per image."""
        packed, lengths = self._pack_with_model(features, image_sizes, newline)
        if isinstance(packed, torch.Tensor):
            return list(torch.split(packed, list(lengths)))
        return list(packed)

    def _pack_with_model(self, features, image_sizes, newline):
        raise NotImplementedError

    def vision_features(self, pixel_values: torch.Tensor, **image_inputs: Any) -> VisionFeatures:
        crops = self._crops_per_image(image_inputs)
        if pixel_values.dim() == 5:  # (images, max_crops, 3, s, s), padded: keep each image's real crops
            pixel_values = torch.cat([pv[:n] for pv, n in zip(pixel_values, crops)], dim=0)
        patches, cls = self._split_items(self._selected_hidden_states(pixel_values))
        return VisionFeatures(patches=patches, cls=cls, items_per_image=crops, image_inputs=dict(image_inputs))

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        cls = features.cls if features.cls is not None else [None] * len(features.patches)
        tokens = torch.stack([self._project_item(p, c) for p, c in zip(features.patches, cls)])
        per_image = list(torch.split(tokens, features.items_per_image))
        return self._pack(per_image, features.image_inputs["image_sizes"], self.base_model.image_newline)

    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        if image_inputs.get("image_sizes") is None:
            raise PlaceholderMismatchError(
                "the prompt holds image placeholders but no `image_sizes` reached the model; pass the processor's "
                "full output (pixel_values and image_sizes) to the model"
            )
        h, w = self.patch_grid
        crops = self._crops_per_image(image_inputs)
        # Run the model's own packing on 1-channel zeros with a newline of ones: the packed sequence shows exactly
        # where the grid cells and the newline tokens are, with no re-implementation of unpadding or resizing.
        probes = [torch.zeros(n, h * w, 1) for n in crops]
        packed = self._pack(probes, image_inputs["image_sizes"], torch.ones(1))
        return [self._template_from_probe(p[:, 0], n) for p, n in zip(packed, crops)]

    def _template_from_probe(self, probe: torch.Tensor, num_crops: int) -> SampleLayout:
        h, w = self.patch_grid
        base = (VisualSpan(0, h * w, (h, w)),)
        rest = probe[h * w:]
        newlines = torch.nonzero(rest).flatten().tolist()
        if num_crops == 1 or len(rest) == len(newlines):
            return base + tuple(VisualSpan(h * w + i, 1, None) for i in range(len(rest)))
        rows = len(newlines)
        cols = len(rest) // rows - 1
        return base + (VisualSpan(h * w, rows * (cols + 1), (rows, cols), newline=True),)

    def placeholder_seam(self, processor: Any) -> PlaceholderSeam:
        return PlaceholderSeam(processor, "_get_number_of_features", "method")


@register_adapter("llava_next")
class LlavaNextAdapter(_AnyResAdapter):
    model_class_names = ("LlavaNextForConditionalGeneration",)

    def _pack_with_model(self, features, image_sizes, newline):
        return self.base_model.pack_image_features(
            features, image_sizes, self.model.config.vision_feature_select_strategy, image_newline=newline
        )


@register_adapter("llava_onevision")
class LlavaOnevisionAdapter(_AnyResAdapter):
    model_class_names = ("LlavaOnevisionForConditionalGeneration",)
    image_input_keys = ("pixel_values", "image_sizes", "batch_num_images")

    def _crops_per_image(self, image_inputs: Mapping[str, Any]) -> list[int]:
        crops = super()._crops_per_image(image_inputs)
        batch_num_images = image_inputs.get("batch_num_images")
        if batch_num_images is None:
            return crops
        # several images in one sample are not tiled: one crop each (as in get_image_features)
        single = [n == 1 for n in batch_num_images for _ in range(n)]
        return [c if s else 1 for c, s in zip(crops, single)]

    def _pack_with_model(self, features, image_sizes, newline):
        return self.base_model.pack_image_features(
            features, image_sizes, image_newline=newline, vision_aspect_ratio=self.model.config.vision_aspect_ratio
        )
