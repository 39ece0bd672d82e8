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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)
from transformers.utils import ModelOutput

from vtc._patch import PatchLedger
from vtc.errors import PlaceholderMismatchError
from vtc.layout import SampleLayout, VisualSpan
from vtc.registry import register_adapter

from .base import Adapter, PlaceholderSeam, VisionFeatures

__all__ = ["LlavaAdapter", "LlavaNextAdapter", "LlavaOnevisionAdapter"]


def _split_list(items: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(list(items[start:start + size]))
        start += size
    return out


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
        """Whether the CLS token itself becomes a language token (`"full"` strategy on a tower that has one).

        Under PVTC it never does: the CLS token is the global query instead.
        """
        strategy = self.model.config.vision_feature_select_strategy
        return strategy == "full" and self.vision_has_cls and self.pvtc_side is None

    @property
    def vision_feature_dim(self) -> int:
        layer = self.model.config.vision_feature_layer
        return self.model.config.vision_config.hidden_size * (1 if isinstance(layer, int) else len(layer))

    @property
    def reference_token_grid(self) -> tuple[int, int]:
        return self.patch_grid

    def apply_projector(self, projector: nn.Module, grid: torch.Tensor) -> torch.Tensor:
        return projector(grid)  # one token per patch: the MLP acts on the last axis

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

    def pvtc_output(self, tokens: list[torch.Tensor], features: VisionFeatures) -> ModelOutput:
        return BaseModelOutputWithPooling(pooler_output=[t.flatten(0, 1) for t in tokens])

    def patch_processor_for_pvtc(self, processor: Any, ledger: PatchLedger) -> None:
        h, w = self.token_grid_under_pvtc(self.patch_grid)

        def replace_image_token(image_inputs: dict, image_idx: int, **kwargs) -> str:
            return processor.image_token * (h * w)

        ledger.set_attr(processor, "replace_image_token", replace_image_token)

    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        h, w = self.token_grid_under_pvtc(self.patch_grid)
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

    def _pack_grids(self, grids: list[torch.Tensor], image_sizes, newline: torch.Tensor) -> list[torch.Tensor]:
        """Pack token grids of any size as `pack_image_features` packs the native ones: one `(tokens, d)` per image.

        The model's own packing assumes the native grid of a crop; under PVTC each crop has the pooled grid, and the
        same steps (base crop; the high-resolution crops joined into one grid, unpadded to the image's aspect
        ratio, a newline token closing each row) run on it with the family's own helpers.

        Args:
            grids: per image, `(crops, gh, gw, d)`: the base crop first, then the high-resolution crops row-major.
            image_sizes: per image, the original `(height, width)`.
            newline: `(d,)` the token that closes each row.
        """
        config = self.model.config
        packed = []
        for grid, size in zip(grids, image_sizes):
            crops, gh, gw, d = grid.shape
            base = grid[0].reshape(gh * gw, d)
            if crops == 1:
                packed.append(torch.cat([base, newline[None].to(base)]))
                continue
            crop_size = config.vision_config.image_size
            rows, cols = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, crop_size)
            joined = grid[1:].reshape(rows, cols, gh, gw, d).permute(4, 0, 2, 1, 3).reshape(d, rows * gh, cols * gw)
            joined = self._shrink_joined(unpad_image(joined, size), gh)
            with_newlines = torch.cat([joined, newline[:, None, None].to(joined).expand(d, joined.shape[1], 1)], -1)
            packed.append(torch.cat([base, with_newlines.flatten(1, 2).T]))
        return packed

    def _shrink_joined(self, joined: torch.Tensor, crop_side: int) -> torch.Tensor:
        """Any resize the family applies to the unpadded high-resolution grid `(d, h, w)` (none by default)."""
        return joined

    def _pvtc_grids(self, image_inputs: Mapping[str, Any]) -> list[torch.Tensor]:
        """1-channel zero probes with each image's PVTC crop grids (what `pvtc_output` packs)."""
        gh, gw = self.token_grid_under_pvtc(self.patch_grid)
        return [torch.zeros(n, gh, gw, 1) for n in self._crops_per_image(image_inputs)]

    def pvtc_output(self, tokens: list[torch.Tensor], features: VisionFeatures) -> ModelOutput:
        per_image = [torch.stack(group) for group in _split_list(tokens, features.items_per_image)]
        newline = self.base_model.image_newline
        return BaseModelOutputWithPooling(
            pooler_output=self._pack_grids(per_image, features.image_inputs["image_sizes"], newline)
        )

    def patch_processor_for_pvtc(self, processor: Any, ledger: PatchLedger) -> None:
        # The count is the length of the packed probe: the packing the model runs, not a re-derived formula.
        def replace_image_token(image_inputs: dict, image_idx: int, **kwargs) -> str:
            sizes = image_inputs["image_sizes"]
            probes = self._pvtc_grids(image_inputs)
            packed = self._pack_grids([probes[image_idx]], [sizes[image_idx]], torch.ones(1))
            return processor.image_token * len(packed[0])

        ledger.set_attr(processor, "replace_image_token", replace_image_token)

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
        crops = self._crops_per_image(image_inputs)
        # Pack 1-channel zeros with a newline of ones: the packed sequence shows exactly where the grid cells and the
        # newline tokens are, with no re-derivation of unpadding or resizing. Without PVTC the packing is the
        # model's own.
        if self.pvtc_side is None:
            h, w = self.patch_grid
            probes = [torch.zeros(n, h * w, 1) for n in crops]
            packed = self._pack(probes, image_inputs["image_sizes"], torch.ones(1))
        else:
            h, w = self.token_grid_under_pvtc(self.patch_grid)
            packed = self._pack_grids(self._pvtc_grids(image_inputs), image_inputs["image_sizes"], torch.ones(1))
        return [self._template_from_probe(p[:, 0], n, (h, w)) for p, n in zip(packed, crops)]

    def _template_from_probe(self, probe: torch.Tensor, num_crops: int, grid: tuple[int, int]) -> SampleLayout:
        h, w = grid
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

    def _shrink_joined(self, joined: torch.Tensor, crop_side: int) -> torch.Tensor:
        # "anyres_max_N": a joined grid larger than about N crops is resized down bilinearly, as the model does.
        max_crops = int(self.model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        _, h, w = joined.shape
        scale = math.sqrt(h * w / (max_crops * crop_side**2))
        if scale <= 1.1:
            return joined
        return F.interpolate(joined[None], [int(h // scale), int(w // scale)], mode="bilinear")[0]
