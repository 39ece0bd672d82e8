"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL.

Seams (transformers 5.23, `models/qwen2_vl`, `qwen2_5_vl`, `qwen3_vl`):
* the ViT (`model.model.visual`) takes flattened patches in merge-block order `(t, h/m, w/m, m, m)` and ends with
  `visual.merger`, which turns each `m × m` block of patches into one language token: the projector;
* Qwen2.5-VL runs (and feeds the merger) in window-permuted order, undone with `get_vision_window_index`;
* Qwen3-VL's DeepStack mergers (`visual.deepstack_merger_list`) produce one more feature per token for each of
  the first decoder layers;
* `image_grid_thw` (patch units) gives each image's grid; the language-token grid is `(h/m, w/m)`;
* positions are 3-axis M-RoPE (`get_rope_index`); processors: `replace_image_token`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
from transformers.utils import ModelOutput
from transformers.vision_utils import get_vision_window_index

from vtc.config import PruneConfig, RVTCConfig
from vtc.errors import ConfigError, InputError, PlaceholderMismatchError
from vtc.layout import SampleLayout, VisualSpan
from vtc.ops import average_token_windows, pooled_grid
from vtc.patch import PatchLedger
from vtc.registry import register_adapter
from vtc.rvtc import check_budget, plan_tiles, tile_token_grid
from vtc.seams import output_without

from ._attention_taps import AttentionTaps
from ._qwen_pixels import DownsamplePixels, PixelBounds, check_downsample_keep, pixel_bounded_processor
from ._qwen_prune import PrunedRopeIndex, VisionZipInputs, prune_images
from .base import MAKE_INPUTS_WITH_PROCESSOR, Adapter, VisionFeatures, check_placeholder_count, shift_spans

__all__ = ["Qwen2VLAdapter", "Qwen2_5_VLAdapter", "Qwen3VLAdapter"]


@register_adapter("qwen2_vl")
class Qwen2VLAdapter(Adapter):
    model_class_names = ("Qwen2VLForConditionalGeneration",)
    dynamic_resolution = True
    image_input_keys = ("pixel_values", "image_grid_thw")

    @property
    def visual(self) -> nn.Module:
        return self.base_model.visual

    @property
    def merge_size(self) -> int:
        return self.model.config.vision_config.spatial_merge_size

    @property
    def projector(self) -> nn.Module:
        return self.visual.merger

    @property
    def projector_window(self) -> tuple[int, int]:
        return self.merge_size, self.merge_size

    @property
    def vision_has_cls(self) -> bool:
        return False

    @property
    def uses_mrope(self) -> bool:
        return True

    # ------------------------------------------------------------------------------------------------- vision
    # Whether `_merger_inputs` reads the tower's per-block hidden states (not only its last, the merger's input).
    reads_tower_hidden_states = False

    def _merger_inputs(self, output: ModelOutput) -> dict[str, torch.Tensor]:
        """The patch features the merger consumes (and, in Qwen3-VL, each DeepStack merger), from the tower's output
        with its hidden states."""
        return {"merger": output.last_hidden_state}

    def to_merge_order(self, rows: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Undo any reordering the tower applied before its merger (identity here; windows in Qwen2.5-VL)."""
        return rows

    def vision_features(self, pixel_values: torch.Tensor, *, output_hidden_states: bool | None = None,
                        output_attentions: bool | None = None, **image_inputs: Any) -> VisionFeatures:
        grid_thw = image_inputs.get("image_grid_thw")
        grids = self._check_image_inputs(pixel_values, grid_thw)
        # Hidden states only where asked or where a merger reads them: output capture costs `torch.compile` a graph
        # break. The model's own method returns them only where asked.
        if output_hidden_states is None:  # unset: the tower's config decides, as in the model's own call
            output_hidden_states = bool(getattr(self.visual.config, "output_hidden_states", False))
        flags = {} if output_attentions is None else {"output_attentions": output_attentions}
        # a merger that reads hidden states needs all of them, whatever subset (a list of layers) the caller asked for
        output = self.visual(pixel_values.to(self.visual.dtype), grid_thw=grid_thw, return_dict=True,
                             output_hidden_states=True if self.reads_tower_hidden_states else output_hidden_states,
                             **flags)
        per_name = {name: self._to_grids(self.to_merge_order(rows, grid_thw), grids)
                    for name, rows in self._merger_inputs(output).items()}
        patches = per_name.pop("merger")
        extra = {"deepstack": [per_name[k] for k in sorted(per_name)]} if per_name else {}
        if self.reads_tower_hidden_states:
            output = _hidden_states_as_asked(output, output_hidden_states)
        return VisionFeatures(
            patches=patches, cls=None, items_per_image=[1] * len(patches), extra=extra, image_inputs=dict(image_inputs),
            tower_output=output,
        )

    # Reads the grids on the host: `torch.compile` runs it eagerly (one graph break rather than one per read).
    @torch.compiler.disable
    def _check_image_inputs(self, pixel_values: Any, grid_thw: Any) -> list[tuple[int, int]]:
        """Each image's patch grid `(h, w)`, once the inputs are known to be shaped as the processor makes them:
        `image_grid_thw` one row `(1, h, w)` per image, and `pixel_values` one row of `channels * temporal_patch *
        patch^2` values per patch. The tower itself would fail on anything else with a bare reshape error."""
        is_grid = isinstance(grid_thw, torch.Tensor) and grid_thw.dim() == 2 and grid_thw.shape[1] == 3
        if not is_grid or not len(grid_thw):
            got = tuple(grid_thw.shape) if isinstance(grid_thw, torch.Tensor) else grid_thw
            raise InputError(f"expected image_grid_thw of shape (images, 3) with at least one image next to "
                             f"pixel_values, got {got}: pass the processor's full output (pixel_values and "
                             f"image_grid_thw) to the model. {MAKE_INPUTS_WITH_PROCESSOR}")
        grids = [self.check_image_grid(g) for g in grid_thw.tolist()]
        vc = self.model.config.vision_config
        row = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        patches = sum(h * w for h, w in grids)
        # The tower views the pixels as rows of `row` values: any leading shape with that many values is accepted.
        if (not isinstance(pixel_values, torch.Tensor) or tuple(pixel_values.shape[-1:]) != (row,)
                or pixel_values.numel() != patches * row):
            got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise InputError(
                f"expected pixel_values of shape ({patches}, {row}) for image_grid_thw {grid_thw.tolist()}: one row "
                f"per patch of {vc.in_channels} channels x {vc.temporal_patch_size} frames x {vc.patch_size}x"
                f"{vc.patch_size} pixels; got {got}. {MAKE_INPUTS_WITH_PROCESSOR}"
            )
        return grids

    def check_image_grid(self, grid: list[int]) -> tuple[int, int]:
        t, h, w = grid
        if t != 1:
            raise InputError(f"an image grid_thw must have t=1, got {grid}: pass a video as pixel_values_videos with "
                             f"video_grid_thw. {MAKE_INPUTS_WITH_PROCESSOR}")
        m = self.merge_size
        if min(h, w) < 1 or h % m or w % m:
            raise InputError(f"an image grid_thw (1, h, w) needs h and w positive multiples of the merge size {m}, "
                             f"got {grid}. {MAKE_INPUTS_WITH_PROCESSOR}")
        return h, w

    def _to_grids(self, rows: torch.Tensor, grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Patch rows in merge-block order → one row-major `(h, w, d)` grid per image."""
        m, out = self.merge_size, []
        for chunk, (h, w) in zip(torch.split(rows, [h * w for h, w in grids]), grids):
            out.append(rearrange(chunk, "(gh gw mh mw) d -> (gh mh) (gw mw) d", gh=h // m, gw=w // m, mh=m, mw=m))
        return out

    @property
    def vision_feature_dim(self) -> int:
        vc = self.model.config.vision_config
        # Qwen2-VL names the tower width `embed_dim` (its `hidden_size` is the merger's output width).
        return getattr(vc, "embed_dim", None) or vc.hidden_size

    def apply_projector(self, projector: nn.Module, grid: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = grid.shape
        m = self.merge_size
        # row-major grids → patch rows in merge-block order `(n, h/m, w/m, m, m)`, which the merger consumes
        rows = rearrange(grid, "n (gh mh) (gw mw) d -> (n gh gw mh mw) d", mh=m, mw=m)
        return rearrange(projector(rows), "(n gh gw) c -> n gh gw c", n=n, gh=h // m, gw=w // m)

    def apply_projector_to_items(self, projector: nn.Module, grids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # The model runs its merger once over the merge blocks of every image: so do we, whatever the grid sizes.
        m = self.merge_size
        rows = torch.cat([rearrange(g, "(gh mh) (gw mw) d -> (gh gw mh mw) d", mh=m, mw=m) for g in grids])
        tokens = torch.split(projector(rows), [g.shape[0] // m * (g.shape[1] // m) for g in grids])
        return [t.unflatten(0, (g.shape[0] // m, g.shape[1] // m)) for t, g in zip(tokens, grids)]

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        return [t.flatten(0, 1) for t in self.apply_projector_to_items(self.projector, features.patches)]

    # ------------------------------------------------------------------------------------------------- PVTC
    @property
    def reference_token_grid(self) -> tuple[int, int]:
        # No tiles: each image has its own grid. PVTC stores its per-position global scale on this grid (that of a
        # 448 x 448 image at patch 14) and resizes it to each image's.
        return (16, 16)

    @property
    def fixed_token_grid(self) -> bool:
        return False

    def max_tokens_per_image(self, processor: Any) -> int | None:
        # `smart_resize` keeps every image within the image processor's `max_pixels` (`size["longest_edge"]`), cut into
        # blocks of `patch * merge` pixels a side, one native token each.
        try:
            max_pixels = int(processor.image_processor.size["longest_edge"])
        except (AttributeError, KeyError, TypeError):
            return None
        return max(1, max_pixels // self.rvtc_factor**2)

    def _pooled_grid_thw(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """`image_grid_thw` (patch units) of images whose merged grid is the language-token grid `item_template`
        gives them (PVTC's or `pool`'s pooled grid)."""
        m, rows = self.merge_size, []
        for t, h, w in grid_thw.tolist():
            gh, gw = self.item_template((h // m, w // m))[0].grid
            rows.append([t, gh * m, gw * m])
        return torch.tensor(rows, dtype=grid_thw.dtype, device=grid_thw.device).reshape(-1, 3)

    def pvtc_output(self, tokens: list[torch.Tensor], features: VisionFeatures) -> ModelOutput:
        return BaseModelOutputWithPooling(pooler_output=tuple(t.flatten(0, 1) for t in tokens))

    def patch_model_for_pvtc(self, ledger: PatchLedger) -> None:
        # The 3-axis positions of an image span its token grid: under PVTC the pooled grid. `image_grid_thw` itself
        # cannot change (the vision tower consumes it), so only the position index sees the pooled grid.
        ledger.replace_method(self.base_model, "get_rope_index", self.pvtc_rope_index)

    def _checked_pooled_grid_thw(self, grid_thw: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
        """The pooled grids, once the prompt's placeholders are known to match them. `generate` builds positions
        before the first forward: this is the first place a prompt processed without the patched processor shows,
        and the index would fail with an opaque shape error."""
        grid_thw = self._pooled_grid_thw(grid_thw)
        if input_ids is not None:
            placeholders = int((input_ids == self.image_token_id).sum())
            check_placeholder_count(placeholders, int(grid_thw.prod(-1).sum()) // self.merge_size**2)
        return grid_thw

    # The index loops over the batch on the host, and so does the placeholder check: one eager call under
    # `torch.compile` (one graph break, where tracing the index alone breaks twice and the check once more).
    @torch.compiler.disable
    def pvtc_rope_index(self, original, *args, **kwargs):
        """`get_rope_index` on the pooled grids (PVTC's, or `pool`'s)."""
        bound = inspect.signature(original).bind(*args, **kwargs)
        grid_thw = bound.arguments.get("image_grid_thw")
        if grid_thw is not None:
            bound.arguments["image_grid_thw"] = self._checked_pooled_grid_thw(grid_thw, bound.arguments.get("input_ids"))
        return original(*bound.args, **bound.kwargs)

    def patch_processor_for_pvtc(self, processor: Any, ledger: PatchLedger) -> None:
        placeholders = functools.partial(self.detached().image_placeholders, processor.image_token)
        ledger.set_attr(processor, "replace_image_token", placeholders)

    def image_placeholders(self, token: str, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        """The processor's `replace_image_token` under PVTC or pruning: one placeholder per token of the image's
        template (`image_templates`, from the one count function `item_template`)."""
        template, = self.image_templates({"image_grid_thw": image_inputs["image_grid_thw"][image_idx][None]}, 0)
        return token * max(span.end for span in template)

    # ------------------------------------------------------------------------------------------------- layout
    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        grid_thw = image_inputs.get("image_grid_thw")
        if grid_thw is None:
            raise PlaceholderMismatchError(
                "the prompt holds image placeholders but no `image_grid_thw` reached the model; pass the "
                "processor's full output (pixel_values and image_grid_thw) to the model"
            )
        m, templates = self.merge_size, []
        for t, h, w in grid_thw.tolist():
            template = self.item_template((h // m, w // m))
            length = max(span.end for span in template)
            templates.append(tuple(span for i in range(t) for span in shift_spans(template, i * length)))
        return templates

    def item_template(self, grid: tuple[int, int]) -> SampleLayout:
        # Every image has its own grid: an int `keep` above an image's tokens keeps all of them.
        template = super().item_template(grid)
        native = grid[0] * grid[1]
        if self.prune_config is not None and max(span.end for span in template) > native:
            return (VisualSpan(0, native, None),)
        return template

    # ------------------------------------------------------------------------------------------------- RVTC
    #: Language tokens per side of the default RVTC tile: 16 x 16 tokens, the tile of InternVL (448 px at patch 14
    #: and merge 2, as in Qwen2/2.5-VL; 512 px at patch 16 in Qwen3-VL).
    RVTC_TILE_TOKENS_PER_SIDE = 16

    @property
    def rvtc_factor(self) -> int:
        """Pixels per language token along each side: `patch_size * merge_size` (what `smart_resize` rounds to)."""
        return self.model.config.vision_config.patch_size * self.merge_size

    def rvtc_tile_size(self, config: RVTCConfig) -> int:
        """The tile side of the RVTC rule: `config.tile_size`, or `16 * patch_size * merge_size`."""
        return config.tile_size or self.RVTC_TILE_TOKENS_PER_SIDE * self.rvtc_factor

    def rvtc_install(self, state: Any) -> None:
        """Give every image a pixel budget of its planned tiles, so that `smart_resize` lands within them.

        There are no tiles: an image is resized, keeping its aspect ratio, to a multiple of `patch * merge` pixels
        per side with an area in `[min_pixels, max_pixels]`. Per image, RVTC lowers `max_pixels` to
        `plan.tiles * tile_size^2` (never above the processor's own) and `min_pixels` to at most that. The image
        then never gets more tokens than it would unpatched, nor more than `plan.tiles * (tile_size / (patch *
        merge))^2`, unless an extreme aspect ratio forces the short side up to one merge block. With
        `mode="budget"` the budget itself is checked on the exact resized grid (after any PVTC pooling) and
        `max_pixels` lowered until it fits. There is no thumbnail (`use_thumbnail` does not apply). The model
        needs no change: both sides read the resized grid from `image_grid_thw`.
        """
        config, ledger = state.config.rvtc, state.ledger
        image_processor = pixel_bounded_processor(state.processor, "RVTC")
        factor, tile_size = self.rvtc_factor, self.rvtc_tile_size(config)
        if tile_size % factor:
            lower, upper = tile_size // factor * factor or factor, (tile_size // factor + 1) * factor
            raise ConfigError("rvtc.tile_size", tile_size, f"a multiple of {factor} pixels (patch x merge) for this "
                              "model", hint=f"e.g. {lower} or {upper}.")
        gh, gw = tile_token_grid((tile_size // factor,) * 2, state.config.pvtc)
        check_budget(config, tile_size, gh * gw, thumbnail="never")
        window = 1 if state.config.pvtc is None else state.config.pvtc.window

        budget = _PixelBudget(config, factor, tile_size, gh * gw, window)
        ledger.replace_method(image_processor, "resize", budget.resize)
        ledger.replace_method(image_processor, "get_number_of_image_patches", budget.get_number_of_image_patches)

    # ------------------------------------------------------------------------------------------------- pruning
    # `keep` is per image (each has its own grid); `adapters/_qwen_prune.py` gives the positions and VisionZip.
    prune_methods = ("downsample", "pool", "random", "divprune", "visionzip")

    def check_prune(self, config: PruneConfig) -> None:
        # No grid is common to every image: an int `keep` above an image's tokens keeps all of them (`item_template`),
        # and one above the most the processor gives any image is refused where the processor is known.
        pass

    def patch_processor_for_prune(self, processor: Any, ledger: PatchLedger) -> None:
        check_downsample_keep(self.prune_config, self.max_tokens_per_image(processor))
        self.patch_processor_for_pvtc(processor, ledger)  # the same per-image count, from `item_template`

    def patch_model_for_prune(self, state: Any) -> None:
        method, ledger = state.config.prune.method, state.ledger
        if method == "pool":  # the pooled grids' positions, as under PVTC
            ledger.replace_method(self.base_model, "get_rope_index", self.pvtc_rope_index)
            return
        positions = PrunedRopeIndex(state)
        ledger.replace_method(self.base_model, "get_rope_index", positions.get_rope_index)
        if method != "random":  # a selection made from the features: `generate` makes positions before it
            ledger.add_forward_pre_hook(self.language_model, positions.before_language_model,
                                        "pruning: the kept tokens' positions once the selection is made",
                                        with_kwargs=True)
        if method == "visionzip":
            ledger.add_forward_pre_hook(self.visual.blocks[-1].attn,
                                        VisionZipInputs(state, "attention_inputs").attention_inputs,
                                        "VisionZip: the last block's segments and rotary embedding", with_kwargs=True)
            for k, merger in enumerate(self._deepstack_mergers()):
                ledger.add_forward_pre_hook(merger, VisionZipInputs(state, f"deepstack_{k}").merger_input,
                                            f"VisionZip: DeepStack merger {k}'s input")

    def feature_layer_attention(self) -> AttentionTaps:
        # The merger reads the last block; its attention computes queries and keys in one `qkv` projection (both
        # taps copy its output) and rotates them by the vision rotary embedding (`VisionZipInputs` copies it).
        attention = self.visual.blocks[-1].attn
        return AttentionTaps(attention.qkv, attention.qkv, attention.num_heads, attention.scaling)

    def _deepstack_mergers(self) -> list[nn.Module]:
        return list(getattr(self.visual, "deepstack_merger_list", ()))

    def prune_image_output(self, output: ModelOutput, arguments: Mapping[str, Any], reduce: Any
                           ) -> list[torch.Tensor] | None:
        return prune_images(self, output, arguments["image_grid_thw"], reduce)

    def downsample_install(self, state: Any) -> None:
        """Give every image a smaller `max_pixels` (`DownsamplePixels`); only the image processor changes."""
        config, ledger = state.config.prune, state.ledger
        image_processor = pixel_bounded_processor(state.processor, "prune method='downsample'")
        check_downsample_keep(config, self.max_tokens_per_image(state.processor))
        pixels = DownsamplePixels(config, self.rvtc_factor)
        ledger.replace_method(image_processor, "resize", pixels.resize)
        ledger.replace_method(image_processor, "get_number_of_image_patches", pixels.get_number_of_image_patches)


class _PixelBudget(PixelBounds):
    """Per image, the `(min_pixels, max_pixels)` RVTC allows it (see `Qwen2VLAdapter.rvtc_install`), applied to the
    image processor's `resize` and to its placeholder count alike."""

    def __init__(self, config: RVTCConfig, factor: int, tile_size: int, tokens_per_tile: int, window: int):
        self.config, self.factor, self.tile_size = config, factor, tile_size
        self.tokens_per_tile, self.window = tokens_per_tile, window

    def visual_tokens(self, height: int, width: int, min_pixels: int, max_pixels: int) -> int:
        factor = self.factor
        resized = smart_resize(height, width, factor, min_pixels=min_pixels, max_pixels=max_pixels)
        th, tw = pooled_grid((resized[0] // factor, resized[1] // factor), (self.window, self.window))
        return th * tw

    def pixels(self, height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
        config, factor, tile_size = self.config, self.factor, self.tile_size
        plan = plan_tiles(int(width), int(height), config, tile_size, self.tokens_per_tile, thumbnail="never")
        max_pixels = min(max_pixels, plan.tiles * tile_size * tile_size)
        while config.mode == "budget":
            tokens = self.visual_tokens(height, width, min(min_pixels, max_pixels), max_pixels)
            if tokens <= config.max_visual_tokens:
                break
            if max_pixels <= factor * factor:
                raise ConfigError("rvtc.max_visual_tokens", config.max_visual_tokens,
                                  f">= {tokens} for a {width}x{height} image on this model",
                                  hint="Its aspect ratio needs that many tokens even at the smallest size.")
            max_pixels = min(max_pixels - 1, max(factor * factor, max_pixels * config.max_visual_tokens // tokens))
        return min(min_pixels, max_pixels), max_pixels


def _hidden_states_as_asked(output: ModelOutput, asked: bool | Sequence[int]) -> ModelOutput:
    """A tower output that holds every hidden state, as the tower returns it for the caller's `output_hidden_states`:
    none (`False`), all (`True`), or only the listed layers, the others `None` (negative indices count from the end)."""
    if asked is True:
        return output
    if not asked:
        return output_without(output, "hidden_states")
    states = output.hidden_states
    kept = {i % len(states) for i in asked}
    output["hidden_states"] = tuple(state if i in kept else None for i, state in enumerate(states))
    return output


@register_adapter("qwen2_5_vl")
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    model_class_names = ("Qwen2_5_VLForConditionalGeneration",)

    def to_merge_order(self, rows: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        window_index, _ = get_vision_window_index(
            grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        unit = visual.spatial_merge_unit
        blocks = rows.reshape(-1, unit, rows.shape[-1])[torch.argsort(window_index.to(rows.device))]
        return blocks.reshape(rows.shape)

    def check_prune(self, config: PruneConfig) -> None:
        last = len(self.visual.blocks) - 1
        if config.method == "visionzip" and last not in self.visual.fullatt_block_indexes:
            raise ConfigError("prune.method", "visionzip", "another method for this model: its last vision block "
                              "attends within windows, not over each image",
                              hint=f"VisionZip scores each image's tokens at the last block; fullatt_block_indexes="
                                   f"{self.visual.fullatt_block_indexes} does not list block {last}.")


@register_adapter("qwen3_vl")
class Qwen3VLAdapter(Qwen2VLAdapter):
    model_class_names = ("Qwen3VLForConditionalGeneration",)
    reads_tower_hidden_states = True

    @property
    def deepstack_layers(self) -> int:
        """How many leading decoder layers receive DeepStack visual features."""
        return len(self.visual.deepstack_visual_indexes)

    @property
    def visual_injection_layers(self) -> int:
        return self.deepstack_layers

    def _merger_inputs(self, output: ModelOutput) -> dict[str, torch.Tensor]:
        # `hidden_states[i + 1]` is the output of block i, which DeepStack merger k reads for block index k.
        inputs = {"merger": output.last_hidden_state}
        for k, block in enumerate(self.visual.deepstack_visual_indexes):
            inputs[f"deepstack_{k:02d}"] = output.hidden_states[block + 1]
        return inputs

    def project_deepstack(self, features: VisionFeatures) -> list[list[torch.Tensor]]:
        """The DeepStack features per level and image, from `features.extra["deepstack"]`.

        Under PVTC each level is reduced like the main features' local query: the level's own merger applied to the
        window-averaged patches, so that every visual token still gets one feature per level.
        """
        m, side = self.merge_size, self.pvtc_side or 1
        return [
            [t.flatten(0, 1) for t in self.apply_projector_to_items(
                merger, [average_token_windows(p[None], (m, m), side)[0] for p in level])]
            for merger, level in zip(self.visual.deepstack_merger_list, features.extra["deepstack"])
        ]

    def pvtc_output(self, tokens: list[torch.Tensor], features: VisionFeatures) -> ModelOutput:
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(t.flatten(0, 1) for t in tokens),
            deepstack_features=[tuple(level) for level in self.project_deepstack(features)],
        )
