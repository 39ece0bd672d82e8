"""Put a pruning baseline (`vtc.PruneConfig`) into a loaded model and its processor, reversibly.

The model side takes over `get_image_features`, the one seam through which both `forward` and `generate` obtain
visual tokens. It runs the model's own method (vision tower, layer selection, projector: every native token has the
model's own bits and every other field of its output is the model's) and then reduces each item's tokens (an image,
or a tile where the model sees tiles) with the rule of `vtc.prune`, to the count `Adapter.item_template` gives. The
processor writes that many placeholders (`Adapter.patch_processor_for_prune`, from the same count function).

VisionZip needs the attention of the layer the model takes its features from, that layer's keys, and the
projector's input (it merges the contextual tokens before the projector, as the official code does). Hooks on that
layer's query and key modules and on the projector copy them out during the model's one tower call, in the calling
thread only: the tower keeps its attention implementation (SDPA stays on) and no layer runs twice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import _install_llm_prune
from ._state import VTCState, call_arguments
from .config import PruneConfig
from .errors import ConfigError
from .layout import VisualSpan
from .prune import (
    attention_received,
    check_keep,
    divprune_selection,
    merge_contextual,
    pool_grid,
    pool_tokens,
    random_selection,
    visionzip_counts,
    visionzip_selection,
    window_reduce,
)
from .seams import returns_tuple

__all__ = ["install", "validate"]


def validate(config: PruneConfig, adapter: Any) -> None:
    """Raise `ConfigError` if `config` cannot apply to the adapter's model (before anything is changed)."""
    from .registry import get_adapter_class, supported_models

    if config.in_llm:
        _install_llm_prune.validate(config, adapter)
        return
    model_type = adapter.model.config.model_type
    if config.method not in adapter.prune_methods:
        if config.method == "downsample" and not adapter.dynamic_resolution:
            raise ConfigError("prune.method", "downsample", f"another method for model_type {model_type!r}: it has "
                              "one fixed input resolution, so there is no lower resolution to feed it",
                              hint="Use method='pool' to average its token grid down to `keep` tokens.")
        families = [t for t in supported_models() if config.method in get_adapter_class(t).prune_methods]
        allowed = (f"one of {', '.join(map(repr, adapter.prune_methods))} for model_type {model_type!r}"
                   if adapter.prune_methods else f"no pruning for model_type {model_type!r} (set prune=None)")
        raise ConfigError("prune.method", config.method, allowed,
                          hint=f"method={config.method!r} is supported on: {', '.join(families) or 'no family'}.")
    if config.method == "downsample":  # its `keep` is per image, checked by the adapter against its tiling
        return
    h, w = adapter.reference_token_grid
    if adapter.image_templates({}, h * w) != [(VisualSpan(0, h * w, (h, w)),)]:
        raise ConfigError("prune", config, f"None for model_type {model_type!r} as it is configured",
                          hint=f"Pruning reads one {h}x{w} token grid per image or tile, and this model's images "
                               "bring other tokens (e.g. the CLS token of vision_feature_select_strategy='full').")
    check_keep(config, (h, w), "image (per tile where the model sees tiles)")
    if config.method == "visionzip":
        adapter.feature_layer_attention()  # raises where the model reads no single attention layer


class _Tap:
    """A hook that copies a module's output (a forward hook) or its first input (a forward pre-hook) into the calling
    thread's capture, while pruning's `get_image_features` runs; otherwise it does nothing."""

    def __init__(self, state: VTCState, name: str):
        self.state, self.name = state, name

    def __call__(self, module: nn.Module, args: tuple, output: Any = None) -> None:
        capture = self.state.call.prune_capture
        if capture is not None:
            capture[self.name] = args[0] if output is None else output


class _PrunedImageFeatures:
    """`get_image_features` under pruning: the model's own method, then each item's tokens reduced.

    It returns what the model's own method returns (its class, every tower field, a tuple for `return_dict=False`),
    with the reduced tokens in `pooler_output` in the structure the model gave (a list per image, or one tensor with
    a row per tile). A call made for a video runs the original: videos are not pruned.
    """

    def __init__(self, state: VTCState):
        self.state = state

    def get_image_features(self, original, *args: Any, **kwargs: Any):
        call = self.state.call
        if call.video_features:
            return original(*args, **kwargs)
        adapter, config = self.state.adapter, self.state.config.prune
        arguments = call_arguments(original, *args, **kwargs)
        layer = arguments.get("vision_feature_layer")
        configured = getattr(adapter.model.config, "vision_feature_layer", None)
        if config.method == "visionzip" and layer is not None and layer != configured:
            # the hooks read the attention of the configured layer: another layer's features would not match it
            raise ConfigError("vision_feature_layer", layer, f"the model config's value {configured!r} under "
                              "VisionZip", hint="Set model.config.vision_feature_layer before vtc.compress instead.")
        capture: dict[str, torch.Tensor] | None = {} if config.method == "visionzip" else None
        outer, call.prune_capture = call.prune_capture, capture
        try:
            output = original(*args, **{**kwargs, "return_dict": True})
        finally:
            call.prune_capture = outer
        native = output.pooler_output
        tokens, kept = self._reduce(list(native), capture)
        output.pooler_output = torch.stack(tokens) if isinstance(native, torch.Tensor) else type(native)(tokens)
        call.pruned = kept
        return output.to_tuple() if returns_tuple(adapter.base_model, arguments.get("return_dict")) else output

    def _reduce(self, items: list[torch.Tensor], capture: dict[str, torch.Tensor] | None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Each item's reduced tokens `(count, d)`, and its kept indices (`None` for `pool`)."""
        adapter, config = self.state.adapter, self.state.config.prune
        grid = adapter.reference_token_grid
        native = grid[0] * grid[1]
        count = config.kept_count(native)
        if config.method == "pool":
            shape = pool_grid(grid, count)
            return [pool_tokens(item.reshape(*grid, -1), shape).flatten(0, 1) for item in items], None
        if config.method == "visionzip":
            return self._visionzip(items, capture, count)
        if config.method == "random":
            selected = random_selection(native, count, config.seed)
            kept = [selected] * len(items)
        else:
            kept = [divprune_selection(item, count) for item in items]
        return [item[index.to(item.device)] for item, index in zip(items, kept)], kept

    def _visionzip(self, items: list[torch.Tensor], capture: dict[str, torch.Tensor], count: int):
        """VisionZip on every item: the dominant tokens as the model projected them, then the contextual tokens,
        merged from the projector's inputs and projected by the model's projector."""
        adapter = self.state.adapter
        taps = adapter.feature_layer_attention()
        queries, keys, inputs = capture["query"], capture["key"], capture["projector_input"]
        has_cls = adapter.vision_has_cls
        grid, window = adapter.reference_token_grid, adapter.projector_window
        patch_grid = (grid[0] * window[0], grid[1] * window[1])
        scores = window_reduce(attention_received(queries, keys, taps.num_heads, taps.scale, cls=has_cls),
                               patch_grid, window, "sum")
        metric = keys.reshape(*keys.shape[:2], taps.num_heads, -1).mean(dim=2)[:, int(has_cls):]
        metric = window_reduce(metric, patch_grid, window, "mean")
        inputs = inputs.reshape(len(items), -1, inputs.shape[-1])
        dominant, contextual = visionzip_counts(count, grid[0] * grid[1])
        tokens, kept = [], []
        for i, item in enumerate(items):
            selection = visionzip_selection(scores[i], metric[i], dominant, contextual)
            parts = [item[selection.dominant]]
            if contextual:
                merged = merge_contextual(inputs[i], selection)
                parts.append(adapter.projector(merged[None])[0].to(item.dtype))
            tokens.append(torch.cat(parts))
            kept.append(torch.cat([selection.dominant, selection.targets]))
        return tokens, kept


def install(model: nn.Module, state: VTCState) -> None:
    """Apply `state.config.prune` to `model` (and `state.processor`), recording every change in `state.ledger`."""
    config, adapter, ledger = state.config.prune, state.adapter, state.ledger
    if config.in_llm:  # inside the decoder: the processor and the model's visual tokens stay as they are
        _install_llm_prune.install(model, state)
        return
    validate(config, adapter)
    if config.method == "downsample":  # the model makes its native tokens from a smaller input: only the processor
        if state.config.rvtc is not None:
            raise ConfigError("prune.method", "downsample", "another method together with rvtc",
                              hint="RVTC and downsample both choose how many tiles an image gets: use one of them.")
        if state.processor is None:
            raise ConfigError("processor", None, "the model's processor with method='downsample'",
                              hint="downsample changes how the processor tiles images; pass processor=processor.")
        adapter.downsample_install(state)
        return
    ledger.set_attr(adapter, "prune_config", config)  # first: templates and token counts follow it
    base = adapter.base_model
    ledger.replace_method(base, "get_image_features", _PrunedImageFeatures(state).get_image_features)
    if config.method == "visionzip":
        taps = adapter.feature_layer_attention()
        ledger.add_forward_hook(taps.query, _Tap(state, "query"), "VisionZip: the feature layer's queries")
        ledger.add_forward_hook(taps.key, _Tap(state, "key"), "VisionZip: the feature layer's keys")
        ledger.add_forward_pre_hook(adapter.projector, _Tap(state, "projector_input"), "VisionZip: the projector input")
    if state.processor is not None:
        adapter.patch_processor_for_prune(state.processor, ledger)
