"""The adapter protocol: everything the model-agnostic core needs to know about one model family.

An adapter *locates* things (the decoder layers, the rotary embedding, the projector, the vision tower) and
*describes* sequences (the visual layout of each sample). It never copies a `modeling_*.py`: every answer comes from
the loaded instance, its config and the seams documented in the design notes.

The core only calls the methods defined on `Adapter`. A new family subclasses it and registers with
`@vtc.register_adapter("model_type")`; `docs/adapters.md` lists what each hook must do. A family whose every image or
tile becomes one fixed grid of language tokens, in a contiguous run of placeholders, needs only the locating hooks,
`vision_features`, `apply_projector` and `patch_processor_for_pvtc`: `image_templates`, `project` and `pvtc_output`
have defaults for it (`examples/custom_adapter.py` is such an adapter).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from vtc.config import PruneConfig
from vtc.errors import (
    ConfigError,
    PlaceholderMismatchError,
    UnsupportedModelError,
    UnsupportedVersionError,
    UntestedVersionWarning,
)
from vtc.layout import BatchLayout, SampleLayout, VisualSpan
from vtc.ops import pooled_grid
from vtc.patch import PatchLedger
from vtc.prune import check_keep
from vtc.prune import item_template as prune_item_template

from ._attention_taps import AttentionTaps, DecoderAttention, decoder_attention, feature_layer_taps
from ._input_checks import MAKE_INPUTS_WITH_PROCESSOR, check_pixel_tiles, check_placeholder_count

__all__ = [
    "ALLOW_UNTESTED_ENV",
    "MAKE_INPUTS_WITH_PROCESSOR",
    "Adapter",
    "AttentionTaps",
    "DecoderAttention",
    "FixedPlaceholders",
    "VisionFeatures",
    "check_pixel_tiles",
    "check_placeholder_count",
    "shift_spans",
]

#: The way out of every malformed-input error: the processor makes what the model (and vtc's patch of it) expects.
#: Set to 1 to run on a transformers release newer than an adapter's tested range, with a warning instead of an error.
ALLOW_UNTESTED_ENV = "VTC_ALLOW_UNTESTED_TRANSFORMERS"

@dataclass
class VisionFeatures:
    """The vision tower's output, before the projector, per image or tile.

    Args:
        patches: one tensor `(h, w, d_vision)` per image or tile, the patch grid in row-major order, in the order
            the model consumes them (tiles/crops of one image are consecutive).
        cls: `(n_items, d_vision)` CLS token of each item where the tower has one, else `None`.
        items_per_image: how many consecutive entries of `patches` belong to each image.
        extra: family-specific companions that a compressor must reduce the same way (e.g. multi-level features
            injected into the language model), each a list of levels, each aligned with `patches`.
        image_inputs: the image inputs the features were computed from (sizes and grids the projector may need).
        tower_output: the vision tower's output as the model's own `get_image_features` returns it for the same
            call (its class, its `last_hidden_state` and, when the caller asked, `hidden_states` / `attentions`),
            before the projector's tokens replace its `pooler_output`; `None` where the adapter does not keep it (PVTC
            then returns only the fields `pvtc_output` sets).
    """

    patches: list[torch.Tensor]
    cls: torch.Tensor | None
    items_per_image: list[int]
    extra: dict[str, list[list[torch.Tensor]]] = field(default_factory=dict)
    image_inputs: dict[str, Any] = field(default_factory=dict)
    tower_output: ModelOutput | None = None


def shift_spans(spans: Sequence[VisualSpan], offset: int) -> SampleLayout:
    """The spans of an image template (starting at 0) moved to start at `offset`."""
    return tuple(VisualSpan(s.start + offset, s.length, s.grid, s.newline) for s in spans)


class FixedPlaceholders:
    """A processor's `replace_image_token` that writes the same number of placeholders for every image."""

    def __init__(self, token: str, count: int):
        self.token, self.count = token, count

    def __call__(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        return self.token * self.count


class _ConfigOnly:
    """Stands in for a model where only its config is read (see `Adapter.detached`)."""

    def __init__(self, config: Any):
        self.config = config


def _template_length(spans: Sequence[VisualSpan]) -> int:
    return max(s.end for s in spans)


def _per_image(tokens: Sequence[torch.Tensor], items_per_image: Sequence[int]) -> list[torch.Tensor]:
    """Token grids `(gh, gw, d)`, one per item, joined into one `(n_tokens, d)` tensor per image, in item order."""
    images, start = [], 0
    for count in items_per_image:
        images.append(torch.cat([grid.flatten(0, 1) for grid in tokens[start:start + count]]))
        start += count
    return images


class Adapter:
    """Base adapter. Subclasses set the class attributes and implement the methods that raise here.

    Class attributes:
        model_types: filled in by `register_adapter`.
        model_class_names: names of the transformers classes this adapter understands (checked through the MRO,
            so subclasses of them are accepted and transformers need not be imported to check).
        min_transformers / max_transformers: the tested version range, `[min, max)`.
        dynamic_resolution: whether the family chooses a per-image tiling or resolution (what RVTC changes).
        image_input_keys: the processor outputs (besides `input_ids`) that describe the images of a batch.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    model_class_names: ClassVar[tuple[str, ...]] = ()
    min_transformers: ClassVar[str] = "5.23.0"
    max_transformers: ClassVar[str] = "5.26.0"
    dynamic_resolution: ClassVar[bool] = False
    image_input_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def __init__(self, model: nn.Module):
        self.model = model

    def detached(self) -> Adapter:
        """A copy of this adapter that sees the model's config but not its modules or weights.

        What processor-side patches hold: transformers deep-copies a processor's attributes when it saves or copies
        it, and a patch that held the model would copy the whole model with it. Only methods that read the config
        (counts, templates, packing arithmetic) may be called on it.
        """
        view = copy.copy(self)
        view.model = _ConfigOnly(self.model.config)
        return view

    # ------------------------------------------------------------------------------------------------- checks
    def check_model(self) -> None:
        """Raise if the instance is not a class this adapter understands, or transformers is out of range."""
        names = {cls.__name__ for cls in type(self.model).__mro__}
        if self.model_class_names and not names.intersection(self.model_class_names):
            raise UnsupportedModelError(
                f"{type(self.model).__name__} is not supported by {type(self).__name__}: expected one of "
                f"{', '.join(self.model_class_names)} (load the model with its ...ForConditionalGeneration class)"
            )
        version, tested = Version(transformers.__version__), f">={self.min_transformers},<{self.max_transformers}"
        if Version(self.min_transformers) <= version < Version(self.max_transformers):
            return
        if version >= Version(self.max_transformers) and os.environ.get(ALLOW_UNTESTED_ENV) == "1":
            warnings.warn(f"{type(self).__name__} runs on transformers {transformers.__version__}, newer than the "
                          f"tested range {tested} ({ALLOW_UNTESTED_ENV}=1): check its results against the "
                          "unpatched model", UntestedVersionWarning, stacklevel=3)
            return
        newer = (f", or set {ALLOW_UNTESTED_ENV}=1 to try this newer release at your own risk"
                 if version >= Version(self.max_transformers) else "")
        raise UnsupportedVersionError(
            f"{type(self).__name__} was tested with transformers {tested}; found {transformers.__version__}. "
            f"Install a tested version: pip install 'transformers{tested}'{newer}"
        )

    # ------------------------------------------------------------------------------------------------- locate
    @property
    def base_model(self) -> nn.Module:
        """The inner multimodal model (`...Model`) that merges image features into the text embeddings."""
        return self.model.model

    @property
    def language_model(self) -> nn.Module:
        """The decoder-only text model (embeddings, decoder layers, final norm, rotary embedding)."""
        return self.base_model.language_model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def rotary_embedding(self) -> nn.Module:
        return self.language_model.rotary_emb

    @property
    def text_config(self):
        return self.language_model.config

    @property
    def final_norm(self) -> nn.Module:
        """The language model's norm after its last decoder layer."""
        return self.language_model.norm

    def decoder_attention(self, index: int) -> DecoderAttention:
        """The attention of decoder layer `index`: what the in-decoder pruning rules compute their attention rows and
        read their keys from (`vtc.PruneConfig` methods `fastv`, `pdrop`, `dart`)."""
        return decoder_attention(self.decoder_layers[index], self.text_config)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def projector(self) -> nn.Module:
        """The vision→language projector module the model applies to the vision tower's output."""
        raise NotImplementedError

    @property
    def projector_window(self) -> tuple[int, int]:
        """How many vision patches `(rows, cols)` the native projector turns into one language token."""
        raise NotImplementedError

    @property
    def vision_has_cls(self) -> bool:
        """Whether the vision tower emits a CLS token (used as PVTC's global query)."""
        raise NotImplementedError

    @property
    def uses_mrope(self) -> bool:
        """Whether positions are 3-axis (temporal, height, width) multimodal rotary positions."""
        return False

    @property
    def visual_injection_layers(self) -> int:
        """How many leading decoder layers have visual features added to their output at the visual positions.

        LVTC may only compress from this layer on: the injection indexes the full-length sequence.
        """
        return 0

    @property
    def vision_feature_dim(self) -> int:
        """The width of the vision features the projector consumes, per patch."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- vision
    def vision_features(self, pixel_values: torch.Tensor, **image_inputs: Any) -> VisionFeatures:
        """Run the vision tower and return its output before the projector, per image or tile.

        Under PVTC this replaces the model's `get_image_features`, and `image_inputs` also holds the output flags its
        caller set (`output_hidden_states`, `output_attentions`: `vtc.seams.TOWER_OUTPUT_FLAGS`). An adapter that
        keeps the model's contract passes them to the tower as the model does and returns the tower's output, as
        the model's own method would return it, in `VisionFeatures.tower_output`.
        """
        raise NotImplementedError

    def apply_projector(self, projector: nn.Module, grid: torch.Tensor) -> torch.Tensor:
        """Apply `projector` (the model's own, or a copy of it) to patch grids the way the model does.

        Args:
            grid: `(n, h, w, d)` patch grids, `h` and `w` multiples of `projector_window`.

        Returns:
            `(n, h / th, w / tw, d_text)`: the language tokens in row-major grid order.
        """
        raise NotImplementedError

    def apply_projector_to_items(self, projector: nn.Module, grids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """`apply_projector` on every item's patch grid `(h, w, d)`, batched as the model batches its projector, so
        that every token gets the bits the model gives it (a matrix product's last bits depend on how many rows it
        multiplies at once): one `(gh, gw, d_text)` per item, in order.

        The default runs the items of each grid size as one batch (the model's batch where every item has one size).
        """
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, grid in enumerate(grids):
            by_shape.setdefault(tuple(grid.shape), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(grids)
        for indices in by_shape.values():
            for i, tokens in zip(indices, self.apply_projector(projector, torch.stack([grids[i] for i in indices]))):
                out[i] = tokens
        return out

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """Apply the model's own projector to `features`: one `(n_tokens, d_text)` tensor per image, in sequence
        order. Equals the model's `get_image_features(...).pooler_output`, image by image.

        The core never calls it: it is the check that `vision_features` and `apply_projector` reproduce the model.
        The default projects every item with `apply_projector` and joins each image's items in order.
        """
        tokens = [self.apply_projector(self.projector, patches[None])[0] for patches in features.patches]
        return _per_image(tokens, features.items_per_image)

    # ------------------------------------------------------------------------------------------------- layout
    def image_templates(self, image_inputs: Mapping[str, Any], num_placeholders: int) -> list[SampleLayout]:
        """The span structure of every image of a batch, in batch order, each starting at position 0.

        Args:
            image_inputs: the processor outputs named in `image_input_keys` (a key may be missing when a value is
                implied by the config).
            num_placeholders: the total number of image placeholders in the batch, for families whose images all
                have the same size.

        The default serves families with a `fixed_token_grid` whose every image or tile fills its own contiguous run
        of placeholders (text may separate the tiles of one image): one grid span per tile, as many as the
        placeholders hold.
        """
        if not self.fixed_token_grid:
            raise NotImplementedError(f"{type(self).__name__} has no fixed token grid: it must implement "
                                      "image_templates")
        template = self.item_template(self.reference_token_grid)
        return [template] * (num_placeholders // _template_length(template))

    def visual_layout(self, input_ids: torch.Tensor, image_inputs: Mapping[str, Any]) -> BatchLayout:
        """Where each sample's visual tokens are and how they are arranged.

        Images fill the placeholders in batch order, exactly as the model's `masked_scatter` does; each image must
        occupy a contiguous run of placeholders. Samples without images get an empty layout.

        Raises:
            PlaceholderMismatchError: the placeholders do not match what the images produce.
        """
        # numpy on the host copy: a prefill lays out every row, and per-row torch calls and Python lists of every
        # placeholder position cost more host time than the rest of the layout
        is_image = (input_ids == self.image_token_id).cpu().numpy()
        total = int(is_image.sum())
        templates = self.image_templates(image_inputs, total) if total else []
        expected = sum(sum(s.length for s in t) for t in templates)
        check_placeholder_count(total, expected)
        layout: BatchLayout = []
        next_image = 0
        for row in is_image:
            positions = np.flatnonzero(row)
            spans: list[VisualSpan] = []
            cursor = 0
            while cursor < len(positions):
                template = templates[next_image]
                start, length = int(positions[cursor]), _template_length(template)
                if cursor + length > len(positions) or positions[cursor + length - 1] != start + length - 1:
                    raise PlaceholderMismatchError(
                        f"image {next_image} needs {length} consecutive placeholders starting at position {start}, "
                        "but the run of placeholders there is shorter: the prompt and the images disagree. Process "
                        "text and images together with the (vtc-patched) processor."
                    )
                spans.extend(shift_spans(template, start))
                cursor += length
                next_image += 1
            layout.append(tuple(spans))
        return layout

    # ------------------------------------------------------------------------------------------------- PVTC
    #: Native tokens per side of one PVTC output token, or `None` when PVTC is off; set by PVTC through the ledger.
    pvtc_side: int | None = None

    def token_grid_under_pvtc(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The language-token grid a native `(h, w)` token grid becomes under PVTC (itself when PVTC is off).

        The one count function of both sides: the model's output and the processor's placeholders come from it.
        """
        side = self.pvtc_side or 1
        return pooled_grid(grid, (side, side))

    def item_template(self, grid: tuple[int, int]) -> SampleLayout:
        """The span one image or tile with the native token grid `grid` fills at the language model's input: PVTC's
        pooled grid (`token_grid_under_pvtc`), the pruning budget (`vtc.prune.item_template`) or the native grid."""
        if self.prune_config is not None:
            return prune_item_template(self.prune_config, grid)
        h, w = self.token_grid_under_pvtc(grid)
        return (VisualSpan(0, h * w, (h, w)),)

    @property
    def reference_token_grid(self) -> tuple[int, int]:
        """The native token grid of one tile or crop (or, for families without tiles, of a typical image)."""
        raise NotImplementedError

    @property
    def fixed_token_grid(self) -> bool:
        """Whether every tile or crop has exactly `reference_token_grid` (False: each image has its own grid)."""
        return True

    def max_tokens_per_image(self, processor: Any) -> int | None:
        """For families without a fixed token grid: the most native tokens `processor` gives one image, or `None`
        when that is unknown (no processor, or one this adapter cannot read). PVTC's ratio may not exceed it."""
        return None

    def pvtc_output(self, tokens: list[torch.Tensor], features: VisionFeatures) -> ModelOutput:
        """What the model's `get_image_features` returns, built from PVTC's tokens.

        Args:
            tokens: one `(gh, gw, d_text)` token grid per item of `features.patches`.
            features: the vision features the tokens were made from.

        The default returns `pooler_output` as one `(n_tokens, d_text)` tensor per image (its items' grids row-major,
        in item order), which a model that concatenates `pooler_output` and scatters it into the placeholders reads.
        PVTC sets the fields returned here on `features.tower_output` (when the adapter kept it), so the caller gets
        the tower's own fields with the compressed ones.
        """
        return BaseModelOutputWithPooling(pooler_output=_per_image(tokens, features.items_per_image))

    def patch_model_for_pvtc(self, ledger: PatchLedger) -> None:
        """Patch whatever else in the model must see PVTC's token grids (e.g. a position index)."""

    def patch_processor_for_pvtc(self, processor: Any, ledger: PatchLedger) -> None:
        """Make `processor` emit one placeholder per PVTC token (`token_grid_under_pvtc`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- pruning
    #: The `vtc.PruneConfig` methods this family supports; `vtc.compress` refuses the others with a `ConfigError`.
    prune_methods: ClassVar[tuple[str, ...]] = ()
    #: The pruning config while pruning reduces the model's tokens, else `None`; set by pruning through the ledger.
    prune_config: PruneConfig | None = None

    def patch_processor_for_prune(self, processor: Any, ledger: PatchLedger) -> None:
        """Make `processor` emit one placeholder per token an image keeps under pruning (`item_template`).

        The default serves a family with a `fixed_token_grid` whose processor writes each image's placeholders with
        `replace_image_token`."""
        count = _template_length(self.item_template(self.reference_token_grid))
        ledger.set_attr(processor, "replace_image_token", FixedPlaceholders(processor.image_token, count))

    def check_prune(self, config: PruneConfig) -> None:
        """Raise `ConfigError` if `config` (a method before the language model other than `downsample`) cannot apply
        to this model as it is configured. The default serves a `fixed_token_grid` family: one grid per item."""
        h, w = self.reference_token_grid
        if self.image_templates({}, h * w) != [(VisualSpan(0, h * w, (h, w)),)]:
            raise ConfigError("prune", config, f"None for model_type {self.model.config.model_type!r} as it is "
                              "configured", hint=f"Pruning reads one {h}x{w} token grid per image or tile, and this "
                              "model's images bring other tokens (e.g. the CLS token of "
                              "vision_feature_select_strategy='full').")
        check_keep(config, (h, w), "image (per tile where the model sees tiles)")

    def prune_image_output(self, output: ModelOutput, arguments: Mapping[str, Any], reduce: Any
                           ) -> list[torch.Tensor] | None:
        """Reduce the visual tokens of `output` (the model's own `get_image_features` result for the call bound as
        `arguments`) in place with `reduce(tokens, grid, count, index)` per item (`_install_prune._ItemReducer`);
        return the items' kept indices, `None` for `pool`. The default serves a `fixed_token_grid` family: each entry
        of `pooler_output` (a list per image, or a tensor with a row per tile) is one item of `reference_token_grid`.
        """
        native, grid = output.pooler_output, self.reference_token_grid
        count = self.prune_config.kept_count(grid[0] * grid[1])
        reduced = [reduce(item, grid, count, index) for index, item in enumerate(native)]
        tokens = [tokens for tokens, _ in reduced]
        output.pooler_output = torch.stack(tokens) if isinstance(native, torch.Tensor) else type(native)(tokens)
        kept = [kept for _, kept in reduced]
        return None if not kept or kept[0] is None else kept

    def patch_model_for_prune(self, state: Any) -> None:
        """Patch whatever else in the model must see the pruned tokens (e.g. a position index), recording every change
        in `state.ledger`; called for the methods that reduce the model's tokens, after `get_image_features` is
        taken over."""

    def visionzip_item_shapes(self, image_inputs: Mapping[str, Any]) -> list[tuple[int, int, int]] | None:
        """Per image of `image_inputs`, `(tower tokens, queries per tower row, grid cells)`: what
        `vtc.flops.pruning_flops` counts VisionZip's work on, for a family whose images are several tower rows
        packed with tokens of no patch. The default `None`: every item is one tower row of its own tokens."""
        return None

    def downsample_install(self, state: Any) -> None:
        """Make `state.processor` give every image a lower resolution or fewer tiles, so that the model natively makes
        about `state.config.prune.keep` tokens for it, recording every change in `state.ledger`. Every family that
        lists `"downsample"` in `prune_methods` implements it."""
        raise NotImplementedError(f"{type(self).__name__} lists 'downsample' but does not implement downsample_install")

    def feature_layer_attention(self) -> AttentionTaps:
        """The modules whose outputs are the queries and keys of the vision layer whose output the model reads
        (`config.vision_feature_layer`): what VisionZip's attention row and keys are computed from.

        The default reads a transformers vision encoder at `base_model.vision_tower` (`feature_layer_taps`).
        """
        return feature_layer_taps(self.base_model.vision_tower, self.model.config.vision_feature_layer)

    # ------------------------------------------------------------------------------------------------- processor
    def image_inputs_from(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The image-describing entries of a processor output or of a forward call's keyword arguments."""
        return {k: inputs[k] for k in self.image_input_keys if inputs.get(k) is not None}

    # ------------------------------------------------------------------------------------------------- RVTC
    def rvtc_install(self, state: Any) -> None:
        """Make `state.processor` (and the model, where it recomputes an image's tiling from its size) give every
        image the tiles `vtc.rvtc.plan_tiles` plans for it, recording every change in `state.ledger`.

        Every family with `dynamic_resolution` implements it; `vtc.rvtc.install` refuses the others.
        """
        raise NotImplementedError(f"{type(self).__name__} has dynamic_resolution but does not implement rvtc_install")
