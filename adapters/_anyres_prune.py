"""Pruning before the language model (`vtc.PruneConfig`) on the any-resolution LLaVA families (NeXT, OneVision).

An image's native visual tokens are its packed sequence, in placeholder order: the base view's grid, then the
high-resolution crops joined into one grid, unpadded to the image's aspect ratio (on OneVision shrunk where the crops
are many), a newline token closing each of its rows; an image with the base view alone (several images in one
OneVision sample) is its grid and one newline token. `keep` counts the tokens of one image across all its views:

* `random`, `divprune`: the rule runs over the image's whole packed sequence, newline tokens included (they are
  visual tokens the language model reads; DivPrune finds them identical to each other and keeps at most one early);
  the image keeps `min(kept_count(n), n)` of its `n` tokens, so an int `keep` above a small image's count keeps it
  whole. The kept indices index the packed sequence.
* `pool`: the budget is split between the base grid and the joined grid (with its newline tokens) in proportion to
  their token counts, by largest remainder; the base grid is pooled to `vtc.prune.pool_grid(base, share)`, the
  joined grid to the grid `vtc.prune.joined_pool_grid` gives, a newline token closing each pooled row (the model's own layout,
  so that `keep` at the native count is the native sequence). A base-only image keeps its newline token. The image
  brings the sum of both, about `keep`.
* `downsample`: fewer crops (`DownsamplePinpoints`): the model itself makes fewer tokens.
* `visionzip`: scored per view from the feature layer's attention, carried through the packing
  (`adapters._anyres_visionzip`); newline tokens rank last and are never summarised.

`vtc.prune.pruned_image_template` is the one count function: the patched processor writes its length for every image, and the
model's reduced features follow its spans.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from transformers.models.llava_next.modeling_llava_next import unpad_image

from vtc.config import PruneConfig
from vtc.errors import ConfigError
from vtc.layout import SampleLayout
from vtc.patch import PatchLedger
from vtc.prune import pool_tokens, pruned_image_template

from ._anyres_visionzip import joined_is_resized, packed_view_features, visionzip_image, visionzip_item_shapes
from ._pinpoints import DownsamplePinpoints

__all__ = ["AnyResPruning"]


class AnyResPruning:
    """The pruning seams of `_AnyResAdapter` (a mixin: it reads the adapter's packing, crops and pinpoints)."""

    prune_methods: ClassVar[tuple[str, ...]] = ("downsample", "pool", "random", "divprune", "visionzip")

    def pruned_templates(self, image_sizes: Sequence[Any], crops: Sequence[int]) -> list[SampleLayout]:
        """Every image's template under pruning, from its size and crop count."""
        return [pruned_image_template(self.prune_config, self.native_template(size, n))
                for size, n in zip(image_sizes, crops)]

    def tokens_with_pinpoint(self, image_size: tuple[int, int], pinpoint: Sequence[int]) -> int:
        """The native tokens of an image of `image_size` `(height, width)` tiled to `pinpoint` `[height, width]`:
        the base grid, the joined crops unpadded (and shrunk as the family shrinks them), a newline per row."""
        h, w = self.patch_grid
        crop = self.model.config.vision_config.image_size
        joined = unpad_image(torch.zeros(1, pinpoint[0] // crop * h, pinpoint[1] // crop * w), image_size)
        _, rows, cols = self._shrink_joined(joined, h).shape
        return h * w + rows * (cols + 1)

    def most_native_tokens(self) -> int:
        """The most tokens the model makes for one image: an image of a pinpoint's own size, tiled to it whole."""
        return max(self.tokens_with_pinpoint(tuple(p), p) for p in self.model.config.image_grid_pinpoints)

    def check_prune(self, config: PruneConfig) -> None:
        if self.keeps_cls_token:
            raise ConfigError("prune", config, f"None for model_type {self.model.config.model_type!r} as it is "
                              "configured", hint="Pruning reads each image's packed token grids, and "
                              "vision_feature_select_strategy='full' adds each crop's CLS token to them.")
        most = self.most_native_tokens()
        if isinstance(config.keep, int) and config.keep > most:
            raise ConfigError("prune.keep", config.keep, f"at most {most}: the model makes at most {most} tokens "
                              "per image (its base view, its crops and their newline tokens)",
                              hint=f"keep={most} keeps every token of every image; a float keeps a fraction.")
        if config.method == "visionzip" and self.rvtc_pinpoints is not None:
            # RVTC runs the tower once per run of samples sharing their crops' candidates: the hooks would hold the
            # last run's attention only
            raise ConfigError("prune.method", "visionzip", "another method together with rvtc on this family",
                              hint="Use method='divprune' or 'random' with RVTC, or VisionZip without RVTC.")

    def patch_processor_for_prune(self, processor: Any, ledger: PatchLedger) -> None:
        placeholders = functools.partial(self.detached().prune_placeholders, processor.image_token)
        ledger.set_attr(processor, "replace_image_token", placeholders)

    def prune_placeholders(self, token: str, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        """The processor's `replace_image_token` under pruning: the length of `pruned_image_template`."""
        crops = self._crops_per_image(image_inputs)[image_idx]
        template = self.pruned_templates([image_inputs["image_sizes"][image_idx]], [crops])[0]
        return token * sum(span.length for span in template)

    def prune_image_output(self, output: Any, arguments: Mapping[str, Any], reduce: Any) -> list[torch.Tensor] | None:
        """Reduce each image's packed tokens (`pooler_output`, one tensor per image) to its pruned template."""
        inputs = {"image_sizes": self._image_sizes_on_host(arguments["image_sizes"])}
        if arguments.get("batch_num_images") is not None:
            inputs["batch_num_images"] = arguments["batch_num_images"]
        crops = self._crops_per_image(inputs)
        natives = [self.native_template(size, n) for size, n in zip(inputs["image_sizes"], crops)]
        packed = output.pooler_output
        if self.prune_config.method == "visionzip":
            rows, widths = packed_view_features(self, reduce.capture, inputs["image_sizes"], crops)
            dtype = reduce.capture["projector_input"].dtype
        reduced = []
        for index, (tokens, native) in enumerate(zip(packed, natives, strict=True)):
            template = pruned_image_template(self.prune_config, native)
            if self.prune_config.method == "visionzip":
                resized = joined_is_resized(self, inputs["image_sizes"][index], crops[index])
                reduced.append(visionzip_image(tokens, rows[index], widths, template[0].length, self.projector,
                                               resized, dtype))
            elif self.prune_config.method == "pool":
                reduced.append((self._pool_image(tokens, native, template), None))
            else:
                reduced.append(reduce(tokens, None, template[0].length, index))
        output.pooler_output = type(packed)(tokens for tokens, _ in reduced)
        return None if self.prune_config.method == "pool" else [kept for _, kept in reduced]

    @staticmethod
    def _pool_image(tokens: torch.Tensor, native: SampleLayout, template: SampleLayout) -> torch.Tensor:
        """`pool` on one image's packed tokens `(n, d)`: its base grid and its joined grid pooled to the grids of
        `template`, the model's newline token closing each pooled row of the joined grid."""
        (base, *rest), (pooled_base, *pooled_rest) = native, template
        parts = [pool_tokens(tokens[:base.length].reshape(*base.grid, -1), pooled_base.grid).flatten(0, 1)]
        if not rest or not rest[0].newline:  # the base view alone: its newline token(s) follow unchanged
            return torch.cat([*parts, tokens[base.length:]])
        rows, cols = rest[0].grid
        joined = tokens[base.length:].reshape(rows, cols + 1, tokens.shape[-1])
        oh, ow = pooled_rest[0].grid
        cells = pool_tokens(joined[:, :cols], (oh, ow))
        newlines = joined[:1, cols:].expand(oh, 1, -1)
        return torch.cat([*parts, torch.cat([cells, newlines], dim=1).flatten(0, 1)])

    def visionzip_item_shapes(self, image_inputs: Mapping[str, Any]) -> list[tuple[int, int, int]]:
        """Per image of `image_inputs`, `(tower tokens, queries per row, grid cells)`: what `vtc.flops.pruning_flops`
        counts VisionZip's work on."""
        inputs = {**image_inputs, "image_sizes": self._image_sizes_on_host(image_inputs["image_sizes"])}
        return visionzip_item_shapes(self, inputs["image_sizes"], self._crops_per_image(inputs))

    def downsample_install(self, state: Any) -> None:
        """Give every image the pinpoints `DownsamplePinpoints` allows it (RVTC's per-image pinpoints machinery)."""
        config = state.config.prune
        pinpoints = [list(p) for p in self.model.config.image_grid_pinpoints]
        (h, w), most = self.patch_grid, self.most_native_tokens()
        if len(pinpoints) < 2:
            raise ConfigError("prune.method", "downsample", "another method for this model: it has one "
                              "image_grid_pinpoints entry, so there are no fewer crops to give an image",
                              hint="Use method='pool' to average each image's token grids down to `keep` tokens.")
        if isinstance(config.keep, int) and not h * w <= config.keep <= most:
            raise ConfigError("prune.keep", config.keep, f"an int in {h * w}..{most} with method='downsample': the "
                              f"base view alone makes {h * w} tokens, and an image makes at most {most}",
                              hint="Below the base view, use method='pool'.")
        self.restrict_pinpoints(state, DownsamplePinpoints(config, pinpoints, self.detached().tokens_with_pinpoint))
