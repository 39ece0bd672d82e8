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
from torch.profiler import record_function

from . import _install_llm_prune
from ._state import VTCState, call_arguments
from .config import PruneConfig
from .errors import ConfigError
from .prune import (
    attention_received,
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

__all__ = ["REDUCE_RANGE", "install", "validate"]

#: The profiler range of the reduction of one call's items (what `benchmarks/prune_speed.py` reports as its own work).
REDUCE_RANGE = "vtc_prune_reduce"


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
    adapter.check_prune(config)
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
    with the reduced tokens where the model gave its own (`Adapter.prune_image_output`). A call made for a video runs
    the original: videos are not pruned.
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
        native = [item.shape[0] for item in output.pooler_output]
        with record_function(REDUCE_RANGE):
            call.pruned = adapter.prune_image_output(output, arguments, _ItemReducer(self.state, capture))
        call.pruned_counts = [(n, item.shape[0]) for n, item in zip(native, output.pooler_output)]
        return output.to_tuple() if returns_tuple(adapter.base_model, arguments.get("return_dict")) else output


class _ItemReducer:
    """The pruning rule applied to one item (an image, or a tile) at a time, for `Adapter.prune_image_output`.

    `reducer(tokens, grid, count, index)` returns the item's `count` reduced tokens and its kept indices (`None` for
    `pool`). `tokens` `(n, d)` are the item's projected tokens in placeholder order, `grid` their `(h, w)` token grid
    (`None` where they form none: `pool` then cannot apply), and `index` the item's row in the tower batch (VisionZip
    reads that row of the feature layer's attention and of the projector's input).
    """

    def __init__(self, state: VTCState, capture: dict[str, torch.Tensor] | None):
        self.state, self.capture = state, capture
        self._visionzip_inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, tokens: torch.Tensor, grid: tuple[int, int] | None, count: int, index: int
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        config = self.state.config.prune
        if config.method == "pool":
            if grid is None:
                raise ConfigError("prune.method", "pool", "a selection method for these images: their tokens form "
                                  "no 2-D grid to average", hint="Use method='random' or 'divprune'.")
            return pool_tokens(tokens.reshape(*grid, -1), pool_grid(grid, count)).flatten(0, 1), None
        if config.method == "visionzip":
            return self._visionzip(tokens, count, index)
        if config.method == "random":
            kept = random_selection(len(tokens), count, config.seed)
        else:
            kept = divprune_selection(tokens, count)
        return tokens[kept.to(tokens.device)], kept

    def _visionzip(self, tokens: torch.Tensor, count: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """VisionZip on one item: its dominant tokens as the model projected them, then its contextual tokens,
        merged from the projector's inputs and projected by the model's projector."""
        adapter = self.state.adapter
        scores, metric, inputs = self._visionzip_batch()
        dominant, contextual = visionzip_counts(count, len(tokens))
        selection = visionzip_selection(scores[index], metric[index], dominant, contextual)
        parts = [tokens[selection.dominant]]
        if contextual:
            merged = merge_contextual(inputs[index], selection)
            parts.append(adapter.projector(merged[None])[0].to(tokens.dtype))
        return torch.cat(parts), torch.cat([selection.dominant, selection.targets])

    def _visionzip_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per tower row, once per call: the attention each token received, the keys' head-mean (the merge
        metric), both reduced to projector windows, and the projector's inputs."""
        if self._visionzip_inputs is None:
            adapter, capture = self.state.adapter, self.capture
            taps = adapter.feature_layer_attention()
            queries, keys, inputs = capture["query"], capture["key"], capture["projector_input"]
            has_cls = adapter.vision_has_cls
            grid, window = adapter.reference_token_grid, adapter.projector_window
            patch_grid = (grid[0] * window[0], grid[1] * window[1])
            scores = window_reduce(attention_received(queries, keys, taps.num_heads, taps.scale, cls=has_cls),
                                   patch_grid, window, "sum")
            metric = keys.reshape(*keys.shape[:2], taps.num_heads, -1).mean(dim=2)[:, int(has_cls):]
            metric = window_reduce(metric, patch_grid, window, "mean")
            self._visionzip_inputs = scores, metric, inputs.reshape(len(scores), -1, inputs.shape[-1])
        return self._visionzip_inputs


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
    adapter.patch_model_for_prune(state)
    if state.processor is not None:
        adapter.patch_processor_for_prune(state.processor, ledger)
