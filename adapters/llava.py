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

import functools
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)
from transformers.utils import ModelOutput

from vtc.errors import InputError, PlaceholderMismatchError, UnsupportedModelError
from vtc.layout import SampleLayout, VisualSpan
from vtc.patch import PatchLedger
from vtc.registry import register_adapter
from vtc.rvtc import check_budget, tile_token_grid
from vtc.seams import hidden_states_request

from ._anyres_prune import AnyResPruning
from ._per_image import attribute_swap_lock, concatenate_outputs, consecutive_runs, swapped_attribute
from ._pinpoints import PinpointPlan
from .base import (
    MAKE_INPUTS_WITH_PROCESSOR,
    Adapter,
    FixedPlaceholders,
    VisionFeatures,
    check_pixel_tiles,
    shift_spans,
)

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
    def vision_tile(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of one crop the vision tower takes."""
        vc = self.model.config.vision_config
        return vc.num_channels, vc.image_size, vc.image_size

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

    def _selected_hidden_states(self, pixel_values: torch.Tensor, output_hidden_states: Any = None,
                                output_attentions: bool | None = None) -> tuple[torch.Tensor, ModelOutput]:
        """The vision hidden states the model selects, CLS included where the tower has one: `(n, tokens, d)`, and
        the tower's output, asked for what the model's `get_image_features` asks it for."""
        layer = self.model.config.vision_feature_layer
        flags = {} if output_attentions is None else {"output_attentions": output_attentions}
        out = self.vision_tower(pixel_values.to(self.vision_tower.dtype), return_dict=True,
                                output_hidden_states=hidden_states_request(output_hidden_states, layer), **flags)
        if isinstance(layer, int):
            return out.hidden_states[layer], out
        return torch.cat([out.hidden_states[i] for i in layer], dim=-1), out

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
    prune_methods = ("pool", "random", "divprune", "visionzip")  # not downsample: one fixed input resolution

    def vision_features(self, pixel_values: torch.Tensor, *, output_hidden_states: Any = None,
                        output_attentions: bool | None = None, **image_inputs: Any) -> VisionFeatures:
        check_pixel_tiles(pixel_values, self.vision_tile, leading=(("images",),), item="input")
        hidden, tower_output = self._selected_hidden_states(pixel_values, output_hidden_states, output_attentions)
        patches, cls = self._split_items(hidden)
        return VisionFeatures(patches=patches, cls=cls, items_per_image=[1] * len(patches), tower_output=tower_output)

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        cls = features.cls if features.cls is not None else [None] * len(features.patches)
        return [self._project_item(p, c) for p, c in zip(features.patches, cls)]

    def pvtc_output(self, tokens: list[torch.Tensor], features: VisionFeatures) -> ModelOutput:
        return BaseModelOutputWithPooling(pooler_output=[t.flatten(0, 1) for t in tokens])

    def patch_processor_for_pvtc(self, processor: Any, ledger: PatchLedger) -> None:
        h, w = self.token_grid_under_pvtc(self.patch_grid)
        ledger.set_attr(processor, "replace_image_token", FixedPlaceholders(processor.image_token, h * w))

    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        template = self.item_template(self.patch_grid)
        if self.keeps_cls_token:
            template = (VisualSpan(0, 1, None), *shift_spans(template, 1))
        per_image = sum(s.length for s in template)
        num_images = num_placeholders // per_image
        pixel_values = image_inputs.get("pixel_values")
        if pixel_values is not None:
            num_images = pixel_values.shape[0]
        return [template] * num_images


class _AnyResAdapter(AnyResPruning, LlavaLikeAdapter):
    """LLaVA-NeXT and OneVision: a base crop plus high-resolution crops packed into one unpadded grid."""

    dynamic_resolution = True
    image_input_keys = ("pixel_values", "image_sizes")

    def _crops_per_image(self, image_inputs: Mapping[str, Any]) -> list[int]:
        config = self.model.config
        return [
            image_size_to_num_patches(size, self.grid_pinpoints_for(size), config.vision_config.image_size)
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
            rows, cols = get_anyres_image_grid_shape(size, self.grid_pinpoints_for(size), crop_size)
            joined = rearrange(grid[1:], "(rows cols) gh gw d -> d (rows gh) (cols gw)", rows=rows, cols=cols)
            joined = self._shrink_joined(unpad_image(joined, size), gh)
            with_newlines = torch.cat([joined, repeat(newline.to(joined), "d -> d h 1", h=joined.shape[1])], -1)
            packed.append(torch.cat([base, rearrange(with_newlines, "d h w -> (h w) d")]))
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
        placeholders = functools.partial(self.detached().pvtc_placeholders, processor.image_token)
        ledger.set_attr(processor, "replace_image_token", placeholders)

    def pvtc_placeholders(self, token: str, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        """The processor's `replace_image_token` under PVTC. The count is the length of the packed probe: the
        packing the model runs, not a re-derived formula."""
        sizes = image_inputs["image_sizes"]
        probes = self._pvtc_grids(image_inputs)
        packed = self._pack_grids([probes[image_idx]], [sizes[image_idx]], torch.ones(1))
        return token * len(packed[0])

    # Each image's size decides its crops and its packing: read them to the host once, where `torch.compile` runs
    # this eagerly (one graph break, where every read of a size in the tiling and packing would break again).
    @staticmethod
    @torch.compiler.disable
    def _image_sizes_on_host(image_sizes: Any) -> list[tuple[int, int]]:
        rows = image_sizes.tolist() if hasattr(image_sizes, "tolist") else list(image_sizes)
        if not all(isinstance(row, (list, tuple)) and len(row) == 2 for row in rows):
            raise InputError(f"image_sizes must hold one (height, width) per image, got {rows!r}. "
                             f"{MAKE_INPUTS_WITH_PROCESSOR}")
        return [(int(height), int(width)) for height, width in rows]

    def vision_features(self, pixel_values: torch.Tensor, *, output_hidden_states: Any = None,
                        output_attentions: bool | None = None, **image_inputs: Any) -> VisionFeatures:
        check_pixel_tiles(pixel_values, self.vision_tile, leading=(("images", "crops"), ("crops",)), item="crop")
        if image_inputs.get("image_sizes") is None:
            raise InputError("pixel_values reached the model without image_sizes, which decide each image's crops: "
                             f"pass the processor's full output to the model. {MAKE_INPUTS_WITH_PROCESSOR}")
        image_inputs = {**image_inputs, "image_sizes": self._image_sizes_on_host(image_inputs["image_sizes"])}
        crops = self._crops_per_image(image_inputs)
        # Every crop image_sizes calls for must be there: a missing one would shift the crops of every later image.
        if pixel_values.dim() == 5:
            complete = len(pixel_values) == len(crops) and pixel_values.shape[1] >= max(crops)
        else:
            complete = len(pixel_values) == sum(crops)
        if not complete:
            raise InputError(f"pixel_values of shape {tuple(pixel_values.shape)} do not hold the crops image_sizes "
                             f"calls for, {crops} per image: expected shape ({len(crops)}, >= "
                             f"{max(crops, default=0)}, ...) or ({sum(crops)}, ...). {MAKE_INPUTS_WITH_PROCESSOR}")
        if pixel_values.dim() == 5:  # (images, max_crops, 3, s, s), padded: keep each image's real crops
            pixel_values = torch.cat([pv[:n] for pv, n in zip(pixel_values, crops)], dim=0)
        hidden, tower_output = self._selected_hidden_states(pixel_values, output_hidden_states, output_attentions)
        patches, cls = self._split_items(hidden)
        return VisionFeatures(patches=patches, cls=cls, items_per_image=crops, image_inputs=dict(image_inputs),
                              tower_output=tower_output)

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
        if self.prune_config is not None:
            return self.pruned_templates(image_inputs["image_sizes"], crops)
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

    def native_template(self, image_size, num_crops: int) -> SampleLayout:
        """One image's native template from the packing arithmetic of `_pack_grids` (no model run): what pruning
        budgets from, in the processor and in the model alike."""
        h, w = self.patch_grid
        packed = self._pack_grids([torch.zeros(num_crops, h, w, 1)], [image_size], torch.ones(1))[0]
        return self._template_from_probe(packed[:, 0], num_crops, (h, w))

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

    # ------------------------------------------------------------------------------------------------- RVTC
    #: The pinpoints each image may use under RVTC (a `PinpointPlan`) or `downsample` (a `DownsamplePinpoints`), else
    #: `None`; set through the ledger.
    rvtc_pinpoints: PinpointPlan | None = None

    def grid_pinpoints_for(self, image_size) -> list[list[int]]:
        """The resolutions `[height, width]` an image of `image_size` `(height, width)` may be tiled to: the config's
        `image_grid_pinpoints`, or under RVTC or `downsample` that image's own candidates."""
        if self.rvtc_pinpoints is None:
            return self.model.config.image_grid_pinpoints
        height, width = (int(v) for v in image_size)
        return self.rvtc_pinpoints(height, width)

    def rvtc_install(self, state: Any) -> None:
        """Restrict, per image, the pinpoints the image may be tiled to, in the processor and in the model alike.

        An image of size `(H, W)` may use the model's own pinpoints with between `min_tiles` and `plan.tiles`
        high-resolution crops, where `plan = plan_tiles(W, H, ...)`; the family's own `select_best_resolution` then
        chooses among them, as it does natively. When none of its pinpoints is that small, the image gets exactly
        the planned grid. The candidates are a function of the image size, the crop size and the config alone, so
        the image processor (cropping), the processor (placeholder count) and the model (which recomputes the crops
        from `image_sizes`) derive the same ones. The base crop is the thumbnail: always present, counted in a
        budget. No image gets more crops than the unpatched model gives it, unless that is fewer than `min_tiles`.

        The model reads the candidates from its config, which is swapped per run of images under a lock: threads
        sharing the model take turns through the vision encoder while RVTC is on.
        """
        config, crop = state.config.rvtc, self.model.config.vision_config.image_size
        tile_size = config.tile_size or crop
        gh, gw = tile_token_grid(self.patch_grid, state.config.pvtc)
        # An upper bound of one crop's tokens: its cells (unpadding only removes some) and a newline per row.
        tokens_per_crop = gh * gw + gh + int(self.keeps_cls_token)
        check_budget(config, tile_size, tokens_per_crop, thumbnail="always")
        native = [list(p) for p in self.model.config.image_grid_pinpoints]
        self.restrict_pinpoints(state, PinpointPlan(config, tile_size, tokens_per_crop, native, crop))

    def restrict_pinpoints(self, state: Any, plan: Any) -> None:
        """Give every image the pinpoints `plan(height, width)` allows it, in the image processor, the processor's
        placeholder count and the model (RVTC's tiling, pruning's `downsample`)."""
        ledger, processor = state.ledger, state.processor
        image_patches = self._rvtc_image_patches_seam(processor.image_processor)
        ledger.set_attr(self, "rvtc_pinpoints", plan)
        view = self.detached()
        ledger.replace_method(processor.image_processor, image_patches, view.rvtc_image_patches)
        ledger.replace_method(processor, "_get_number_of_features", view.rvtc_number_of_features)
        ledger.replace_method(self.base_model, "pack_image_features", self.rvtc_pack_image_features)
        ledger.replace_method(self.base_model, "get_image_features", self.rvtc_get_image_features)

    @staticmethod
    def _rvtc_image_patches_seam(image_processor: Any) -> str:
        # The per-image tiling step: `get_image_patches` in the PIL backend, `_get_image_patches` with torchvision.
        for name in ("get_image_patches", "_get_image_patches"):
            if callable(getattr(image_processor, name, None)):
                return name
        raise UnsupportedModelError(
            f"RVTC needs an any-resolution image processor with a per-image `get_image_patches`, got "
            f"{type(image_processor).__name__}"
        )

    def rvtc_image_patches(self, original, image, grid_pinpoints, *args, **kwargs):
        """The image processor's per-image tiling, with the image's own candidates (channels-first images)."""
        return original(image, self.grid_pinpoints_for(image.shape[-2:]), *args, **kwargs)

    def rvtc_number_of_features(self, original, orig_height: int, orig_width: int, height: int, width: int) -> int:
        """The processor's placeholder count of one image, with the image's own candidates."""
        candidates = self.grid_pinpoints_for((orig_height, orig_width))
        with swapped_attribute(original.__self__.image_processor, "image_grid_pinpoints", candidates):
            return original(orig_height, orig_width, height, width)

    def _image_pinpoints(self, candidates):
        """The model's config showing `candidates` inside the block; other threads wait outside it."""
        if candidates is None:  # images that are not tiled (several images in one OneVision sample)
            return attribute_swap_lock()
        return swapped_attribute(self.model.config, "image_grid_pinpoints", [list(p) for p in candidates])

    def rvtc_pack_image_features(self, original, image_features, image_sizes, *args, **kwargs):
        """`pack_image_features`, image by image, each with its own candidates."""
        packed, lengths = [], []
        for i in range(len(image_features)):
            with self._image_pinpoints(self.grid_pinpoints_for(image_sizes[i])):
                features, feature_lens = original(image_features[i:i + 1], image_sizes[i:i + 1], *args, **kwargs)
            packed.extend(features)
            lengths.append(feature_lens)
        return packed, torch.cat(lengths)

    def rvtc_get_image_features(self, original, *args, **kwargs):
        """`get_image_features`, run by run of consecutive samples whose images share their candidates."""
        signature = inspect.signature(original)
        extra = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
        arguments = dict(signature.bind(*args, **kwargs).arguments)
        extra_kwargs = arguments.pop(extra, {}) if extra else {}
        outputs = []
        # by keyword: the model's own decorators re-bind the call against their own view of the signature
        for candidates, run_arguments in self._rvtc_runs(arguments):
            with self._image_pinpoints(candidates):
                outputs.append(original(**{**arguments, **run_arguments}, **extra_kwargs))
        return outputs[0] if len(outputs) == 1 else concatenate_outputs(outputs)

    def _rvtc_runs(self, arguments: Mapping[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
        """Split a `get_image_features` call into runs of consecutive samples whose images share their candidates:
        `(candidates, the arguments of the run)`; one run keeps the arguments as they are."""
        sizes, pixel_values = arguments["image_sizes"], arguments["pixel_values"]
        batch_num_images = arguments.get("batch_num_images")
        per_sample = [1] * len(sizes) if batch_num_images is None else [int(n) for n in batch_num_images]
        first_image = [0, *torch.tensor(per_sample).cumsum(0).tolist()]
        # Only a sample with one image is tiled (OneVision); the others have no preference.
        keys = [
            tuple(map(tuple, self.grid_pinpoints_for(sizes[first_image[s]]))) if n == 1 else None
            for s, n in enumerate(per_sample)
        ]
        runs = consecutive_runs(keys)
        if len(runs) == 1:
            return [(runs[0][0], {})]
        inputs = {"image_sizes": sizes, **({} if batch_num_images is None else {"batch_num_images": batch_num_images})}
        first_crop = [0, *torch.tensor(self._crops_per_image(inputs)).cumsum(0).tolist()]
        split = []
        for candidates, start, stop in runs:
            images = slice(first_image[start], first_image[stop])
            crops = images if pixel_values.dim() == 5 else slice(first_crop[images.start], first_crop[images.stop])
            run = {"pixel_values": pixel_values[crops], "image_sizes": sizes[images]}
            if batch_num_images is not None:
                run["batch_num_images"] = batch_num_images[start:stop]
            split.append((candidates, run))
        return split


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
