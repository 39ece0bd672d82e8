"""Put a `PVTCProjector` into a loaded model: the model side, the position index and the processor, reversibly.

The projector lives on the inner multimodal model as `vtc_pvtc`. It takes over `get_image_features`, the one seam
through which both `forward` and `generate` obtain visual tokens (generate calls it before the prefill and never
passes pixels to `forward`); the original projector's weights are left untouched, so `unpatch` restores the model
bit for bit. While PVTC is installed the original projector is frozen (`requires_grad=False`, recorded in the ledger):
it takes no part in the forward pass, and a trainable parameter without a gradient stops a plain DDP training loop.
It stays frozen inside `vtc.disabled`, where it runs again for the uncompressed teacher, which is not trained.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ._state import VTCState, call_arguments
from .config import PVTCConfig
from .errors import ConfigError
from .pvtc import PVTCProjector
from .seams import TOWER_OUTPUT_FLAGS, returns_tuple

__all__ = ["build_projector", "install"]

PROJECTOR_ATTR = "vtc_pvtc"


def _global_query(config: PVTCConfig, adapter) -> str:
    if config.global_query == "auto":
        return "cls" if adapter.vision_has_cls else "mean"
    if config.global_query == "cls" and not adapter.vision_has_cls:
        raise ConfigError("pvtc.global_query", "cls",
                          "'auto', 'mean' or 'none' for a vision tower without a CLS token", hint=f"{type(adapter.model).__name__}'s vision tower has no CLS token.")
    return config.global_query


def validate(config: PVTCConfig, adapter, processor: Any = None) -> None:
    """Raise `ConfigError` if `config` cannot apply to the adapter's model (before anything is changed).

    The ratio may not exceed the native tokens of one tile (families with a fixed token grid) or the most native
    tokens the processor being patched gives one image (the others; without a processor only `PVTCConfig.MAX_RATIO`
    bounds it): a window larger than every image has nothing left to compress, and would only pad every image.
    """
    width = adapter.text_config.hidden_size
    if width % config.num_heads:
        divisors = [d for d in (1, 2, 4, 8, 16, 32) if width % d == 0]
        raise ConfigError("pvtc.num_heads", config.num_heads, f"a divisor of the language width {width}",
                          hint=f"e.g. {', '.join(map(str, divisors))}.")
    if round(width * config.mlp_ratio) < 1:  # the width `RegionCrossAttention` gives its MLP
        raise ConfigError("pvtc.mlp_ratio", config.mlp_ratio, f">= 1/{width} for the language width {width}",
                          hint="A smaller ratio leaves the MLP without a single unit.")
    if adapter.fixed_token_grid:
        h, w = adapter.reference_token_grid
        if config.ratio > h * w:
            raise ConfigError("pvtc.ratio", config.ratio, f"at most {h * w}: the model makes {h}x{w} tokens per tile",
                              hint="A window larger than the whole tile has nothing left to compress.")
    else:
        limit = adapter.max_tokens_per_image(processor)
        if limit is not None and config.ratio > limit:
            raise ConfigError("pvtc.ratio", config.ratio,
                              f"at most {limit}: the processor gives an image at most {limit} tokens",
                              hint="A window larger than the whole image has nothing left to compress.")
    _global_query(config, adapter)


def build_projector(config: PVTCConfig, adapter) -> PVTCProjector:
    """A `PVTCProjector` for the adapter's model, on the device and in the dtype of the model's projector."""
    reference = next(adapter.projector.parameters())
    native = copy.deepcopy(adapter.projector) if config.init == "warm" else None
    projector = PVTCProjector(
        adapter.vision_feature_dim,
        adapter.text_config.hidden_size,
        ratio=config.ratio,
        token_window=adapter.projector_window,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        drop_path=config.drop_path,
        global_query=_global_query(config, adapter),
        scale_grid=adapter.token_grid_under_pvtc(adapter.reference_token_grid),
        native_projector=native,
    )
    return projector.to(device=reference.device, dtype=reference.dtype).train(adapter.model.training)


def _project_items(projector: PVTCProjector, adapter, features) -> list[torch.Tensor]:
    """PVTC tokens `(gh, gw, d_text)` for every item; items with the same grid run as one batch.

    A warm projector's local queries come from the native projector, run over every item at once as the model runs
    it (`Adapter.apply_projector_to_items`): at ratio 1 each token then has the model's own bits.
    """
    dtype = projector.region_proj.weight.dtype
    local = None
    if projector.init == "warm":
        averaged = [projector.native_input(p[None].to(dtype))[0] for p in features.patches]
        local = adapter.apply_projector_to_items(projector.native_projector, averaged)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, patches in enumerate(features.patches):
        by_shape.setdefault(tuple(patches.shape), []).append(i)
    tokens: list[torch.Tensor | None] = [None] * len(features.patches)
    for indices in by_shape.values():
        patches = torch.stack([features.patches[i] for i in indices])
        cls = None if features.cls is None else features.cls[indices]
        queries = None if local is None else torch.stack([local[i] for i in indices])
        for i, out in zip(indices, projector(patches, cls, adapter.apply_projector, local=queries)):
            tokens[i] = out
    return tokens


class _PVTCImageFeatures:
    """`get_image_features` under PVTC: the vision features of the adapter, then the projector `vtc_pvtc`.

    It returns what the model's own method returns for the same call (its class; the tower's `last_hidden_state`
    and, when asked, `hidden_states` / `attentions`, from the one tower call PVTC makes; a tuple for
    `return_dict=False`), with PVTC's tokens in the fields the model consumes (`Adapter.pvtc_output`). A call made
    for a video (a model's `get_video_features` may call `get_image_features` on the frames) runs the original:
    videos are not compressed.
    """

    def __init__(self, state: VTCState):
        self.state = state

    def get_image_features(self, original, *args: Any, **kwargs: Any):
        if self.state.call.video_features:
            return original(*args, **kwargs)
        adapter = self.state.adapter
        arguments = call_arguments(original, *args, **kwargs)
        layer = arguments.get("vision_feature_layer")
        configured = getattr(adapter.model.config, "vision_feature_layer", None)
        if layer is not None and layer != configured:
            # the adapter reads the vision features at the configured layer: anything else would be ignored silently
            raise ConfigError("vision_feature_layer", layer, f"the model config's value {configured!r} under PVTC",
                              hint="Set model.config.vision_feature_layer before vtc.compress instead.")
        image_inputs = adapter.image_inputs_from(arguments)
        flags = {name: arguments[name] for name in TOWER_OUTPUT_FLAGS if arguments.get(name) is not None}
        features = adapter.vision_features(image_inputs.pop("pixel_values"), **image_inputs, **flags)
        projector = getattr(adapter.base_model, PROJECTOR_ATTR)
        output = adapter.pvtc_output(_project_items(projector, adapter, features), features)
        if features.tower_output is not None:
            compressed, output = output, features.tower_output
            for name, value in compressed.items():
                output[name] = value
        return output.to_tuple() if returns_tuple(adapter.base_model, arguments.get("return_dict")) else output


def install(model: nn.Module, state: VTCState) -> None:
    """Apply `state.config.pvtc` to `model` (and `state.processor`), recording every change in `state.ledger`."""
    config, adapter, ledger = state.config.pvtc, state.adapter, state.ledger
    validate(config, adapter, state.processor)
    ledger.set_attr(adapter, "pvtc_side", config.window)  # first: templates and token counts follow it
    base = adapter.base_model
    projector = build_projector(config, adapter)  # before the freeze: the copy a warm start makes keeps training
    ledger.set_attr(base, PROJECTOR_ATTR, projector)
    ledger.set_requires_grad(adapter.projector, False, "the native projector, which PVTC bypasses")

    ledger.replace_method(base, "get_image_features", _PVTCImageFeatures(state).get_image_features)
    adapter.patch_model_for_pvtc(ledger)
    if state.processor is not None:
        adapter.patch_processor_for_pvtc(state.processor, ledger)
