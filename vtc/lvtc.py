"""LVTC: pool the visual hidden states at decoder layer K, run layers K..L-1 short, restore them after layer L-1.

The outer sequence never changes (input ids, logits, positions and generation bookkeeping stay full length); only the
layers K..L-1 see the compressed sequence and keep shorter KV caches. Everything is done with hooks on the model's own
modules, so weights, `state_dict` keys, gradient checkpointing, `output_hidden_states` and every attention backend keep
working:

* language model, forward pre-hook: decides prefill or decode and reads the 2-D attention mask; a prefill (empty
  cache) takes the visual layout recorded for this forward;
* rotary embedding, forward pre-hook: the positions it is called with (1-D or M-RoPE), for the pooled groups' mean;
* layer K, forward pre-hook: pools the hidden states (prefill) and builds the compressed layers' mask and rotary
  embeddings. In decode it builds the mask *before* layer K appends the step's keys, when the cache length is right;
* layers K+1..L-1, forward pre-hooks: swap in that mask and those rotary embeddings;
* layer L-1, forward hook: restores the full length (prefill); decode steps never were compressed.

What one forward is doing lives in its thread's call state (`LVTCStep`), and what decode steps need from the
prefill that filled a KV cache travels with that cache (`LVTCPrefill`): nothing per-call is kept on the model, so
threads sharing one compressed model, and several generations interleaved on it, never see each other's state.

Nothing in the hooks waits for the device. What a prefill's structure determines (the group index, the compressed
mask, the cell mask: `PrefillStructure`) is built on the host from the ids and mask the instrumentation read when the
forward began, copied to the device once, and kept in a small cache keyed by that structure (`StructureCache`), so a
batch that repeats a structure skips the host work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from ._decoder_hooks import (
    ShortenedLayerSwap,
    appended_mask,
    cache_length,
    check_attention_mask,
    check_cache,
    check_cache_layers,
    hidden_argument,
    with_hidden_argument,
)
from ._state import ForwardArguments
from ._structure_cache import StructureCache
from .config import LVTCConfig
from .errors import ConfigError, UnsupportedModelError
from .layout import BatchLayout
from .ops import (
    GroupIndex,
    cell_mask,
    compact_mask,
    compact_positions,
    extend_mask,
    gather_groups,
    group_index,
    pool,
    unpool,
    unpool_bilinear,
)
from .seams import cache_argument, causal_mask

__all__ = ["COMPRESS_RANGE", "GATE_NAME", "RESTORE_RANGE", "LVTCPrefill", "LVTCStep", "install"]

#: The learnable residual gate of `restore="add"`, a scalar parameter on the language model.
GATE_NAME = "vtc_lvtc_gate"
#: `torch.profiler` ranges around LVTC's own work, so that a profile separates it from the decoder's.
COMPRESS_RANGE, RESTORE_RANGE = "vtc_lvtc_compress", "vtc_lvtc_restore"


#: The largest materialised prefill mask (`batch * g * g` elements) a cached structure keeps: 16 Mi elements,
#: 16 MiB as booleans (SDPA) or 32 MiB in half precision (eager); beyond it the mask is built in each prefill.
_MAX_CACHED_MASK_ELEMENTS = 2**24

#: Where a compressed prefill leaves its `LVTCPrefill` on the KV cache it filled.
PREFILL_ATTR = "_vtc_lvtc_prefill"


@dataclass
class LVTCPrefill:
    """What the decode steps extending one KV cache need from the compressed prefill that filled it."""

    full_length: int  # `s`, the prompt length every layer outside K..L-1 caches
    compressed_length: int  # `g`, what layers K..L-1 cache for the prompt
    compact_mask: torch.Tensor | None  # `(b, g)` 2-D mask of the compressed prompt, None for all ones


@dataclass(frozen=True, eq=False)
class PrefillStructure:
    """What a compressed prefill derives from its batch's structure alone (cached per structure, never mutated)."""

    groups: GroupIndex
    compact_mask: torch.Tensor | None  # `(b, g)` 2-D mask of the compressed prompt, None when every key is attended
    cells: torch.Tensor | None  # `(b, s)` bool, the pooled positions (only for `restore="add"`)
    # What layers K..L-1 receive as `attention_mask` in the prefill (the model's mask function on `compact_mask`, for
    # hidden states of `layer_mask_dtype`); `layer_mask_dtype` is None where it was not built (too large to keep).
    layer_mask: Any = None
    layer_mask_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return self.groups.index.device


@dataclass
class LVTCStep:
    """What one forward through the language model needs between its hooks (per thread, dropped at its end)."""

    prefill: bool = False
    layout: BatchLayout | None = None
    mask2d: torch.Tensor | None = None  # 2-D mask of the compressed layers' keys (prefill: of the full prompt)
    host_mask: torch.Tensor | None = None  # prefill: the CPU copy of `mask2d`, so the structure is read on the host
    prompt_dense: bool = False  # decode: the compressed prompt attends every key (its compact mask is None)
    rotary_positions: torch.Tensor | None = None
    groups: GroupIndex | None = None
    attention_mask: Any = None  # what layers K..L-1 receive as `attention_mask`
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
    residual: torch.Tensor | None = None  # `(b, s, d)` full-resolution term the restore adds back
    active: bool = False  # whether layers K..L-1 must get the swapped arguments in this forward


class _Controller(ShortenedLayerSwap):
    """The hooks of one compressed model. It holds no per-call state: each forward's lives in its thread's
    `state.call.lvtc`, each KV cache's prefill summary on the cache itself; `structures` memoises what a batch
    structure determines, keyed by the whole structure."""

    def __init__(self, state: Any, config: LVTCConfig, compress_layer: int, restore_layer: int | None,
                 gate: nn.Parameter | None, language_model: nn.Module):
        self.state, self.config, self.gate = state, config, gate
        self.forward_arguments = ForwardArguments(language_model)
        self.compress_layer, self.restore_layer = compress_layer, restore_layer
        self.structures = StructureCache()

    @property
    def _step(self) -> LVTCStep | None:
        return self.state.call.lvtc

    # -------------------------------------------------------------------------------------------- language model
    def begin_forward(self, _module, args, kwargs):
        bound = self.forward_arguments(args, kwargs)
        mask, cache = bound.get("attention_mask"), cache_argument(bound)
        check_attention_mask(mask, "LVTC")
        check_cache(cache, "LVTC")
        inputs = bound.get("inputs_embeds")
        if inputs is None:
            inputs = bound.get("input_ids")
        call = self.state.call
        if cache_length(cache) == 0:
            call.lvtc = self._begin_prefill(mask)
        else:
            call.lvtc = self._begin_decode(mask, cache, inputs.shape[0], inputs.shape[1])
        return None

    def _begin_prefill(self, mask: torch.Tensor | None) -> LVTCStep:
        record = self.state.call.recording
        layout = record.visual_layout if record is not None else None
        if layout is None or not any(layout):
            return LVTCStep()  # nothing visual to pool: layers K..L-1 run unchanged
        # The instrumentation read the mask to the host when the forward began, before any device work was queued;
        # a mask the language model got from elsewhere is read here (a device sync, but never a wrong structure).
        host_mask = record.host_attention_mask if mask is record.attention_mask else None
        if host_mask is None and mask is not None:
            host_mask = mask.cpu()
        return LVTCStep(prefill=True, active=True, layout=layout, mask2d=mask, host_mask=host_mask)

    def _begin_decode(self, mask: torch.Tensor | None, cache: Any, batch: int, new_tokens: int) -> LVTCStep:
        prefill: LVTCPrefill | None = getattr(cache, PREFILL_ATTR, None)
        if prefill is None:
            check_cache_layers(cache, None, {self.compress_layer: 0}, "compressed", "LVTC")
            return LVTCStep()  # a cache no compressed prefill wrote: every layer holds the full sequence
        appended = check_cache_layers(cache, prefill.full_length, {self.compress_layer: prefill.compressed_length},
                                      "compressed", "LVTC")
        new_mask = appended_mask(mask, prefill.full_length, appended, new_tokens)
        mask2d = extend_mask(prefill.compact_mask, new_mask, appended + new_tokens, batch,
                             compact_len=prefill.compressed_length)
        return LVTCStep(active=True, mask2d=mask2d, prompt_dense=prefill.compact_mask is None)

    def end_forward(self, _module, _args, _kwargs, _output):
        # Drop the per-forward tensors (hidden states with their autograd graph among them).
        self.state.call.lvtc = None
        return None

    # -------------------------------------------------------------------------------------------- rotary embedding
    def capture_positions(self, _module, args, kwargs):
        step = self._step
        # Only the language model's own call before the layers: our call at layer K comes after the capture.
        if step is not None and step.prefill and step.rotary_positions is None:
            step.rotary_positions = args[1] if len(args) > 1 else kwargs.get("position_ids")
        return None

    # -------------------------------------------------------------------------------------------- layer K
    def compress(self, _module, args, kwargs):
        step = self._step
        if step is None or not step.active:
            return None
        cache = cache_argument(kwargs)
        if not step.prefill:
            # The model's own mask for this layer is None only when it attends every key of the full sequence (in a
            # decode step: one query, no padding, an implementation that takes None for that); with a dense
            # compressed prompt, so does the compressed one, and None is what the mask builder would return: skip
            # its host work, a fair share of a decode step where the host is the bottleneck.
            if step.prompt_dense and kwargs.get("attention_mask") is None:
                step.attention_mask = None
            else:
                # Sized against layer K's own cache, before this layer appends the step's keys.
                with record_function(COMPRESS_RANGE):
                    step.attention_mask = self._mask(hidden_argument(args, kwargs), step.mask2d, cache)
            return args, {**kwargs, "attention_mask": step.attention_mask, "position_ids": None}
        with record_function(COMPRESS_RANGE):
            return self._compress_prefill(args, kwargs, step, cache)

    def _compress_prefill(self, args: tuple, kwargs: dict, step: LVTCStep, cache: Any) -> tuple[tuple, dict]:
        hidden = hidden_argument(args, kwargs)
        mask2d = step.mask2d
        if mask2d is not None and tuple(mask2d.shape) != tuple(hidden.shape[:2]):
            raise UnsupportedModelError(f"attention_mask has shape {tuple(mask2d.shape)} but the prompt is "
                                        f"{tuple(hidden.shape[:2])}: pass the processor's 2-D attention_mask")
        if self.config.ratio == 1 and self.config.restore != "add":
            # Nothing to pool: the layers run exactly as unpatched, with the model's own mask and positions, rather
            # than a shorter sequence (padding runs merged) whose rebuilt mask can take another attention kernel
            # and change the last bits of the real tokens.
            step.prefill = step.active = False
            return args, kwargs
        structure = self._structure(step, hidden)
        groups = structure.groups
        pooled = pool(hidden, groups)
        step.groups = groups
        step.residual = self._residual(hidden, pooled, step, structure)
        step.mask2d = structure.compact_mask
        if structure.layer_mask_dtype == pooled.dtype:  # built with the structure: a repeat builds nothing
            step.attention_mask = structure.layer_mask
        else:
            step.attention_mask = self._mask(pooled, step.mask2d, cache)
        step.position_embeddings = self._rotary(pooled, groups, kwargs["position_embeddings"], step)
        self._record_lengths(pooled.shape[1])
        if cache is not None:  # the decode steps that extend this cache continue from here
            setattr(cache, PREFILL_ATTR, LVTCPrefill(groups.seq_len, groups.max_groups, step.mask2d))
        return with_hidden_argument(args, self._swapped(kwargs, step), pooled)

    def _record_lengths(self, compressed_length: int) -> None:
        """Layers K..L-1 of this prefill see the pooled sequence (the record holds the prompt's length per layer)."""
        lengths = getattr(self.state.call.recording, "layer_seq_lens", None)
        if lengths:
            last = len(lengths) if self.restore_layer is None else self.restore_layer
            lengths[self.compress_layer:last] = [compressed_length] * (last - self.compress_layer)

    def _structure(self, step: LVTCStep, hidden: torch.Tensor) -> PrefillStructure:
        """The group index and masks of this batch's structure: the one the instrumentation built when the forward
        began, if it describes what layer K got (same mask, length and device), else built (or looked up) now."""
        record = self.state.call.recording
        structure = None if record is None else record.lvtc_structure
        if (structure is not None and step.mask2d is record.attention_mask
                and structure.groups.seq_len == hidden.shape[1] and structure.device == hidden.device):
            return structure
        return self._build_structure(step.layout, hidden.shape[1], step.host_mask, step.mask2d, hidden.device,
                                     hidden.dtype)

    def prefill_structure(self, record: Any, seq_len: int, mask: torch.Tensor | None,
                          device: torch.device) -> PrefillStructure | None:
        """The structure of a prefill, built by the instrumentation's host work when the forward begins (`None`
        where LVTC leaves the layers unchanged)."""
        if self.config.ratio == 1 and self.config.restore != "add":
            return None
        # The decoder's hidden states have its embedding's dtype (autocast aside: a mismatch is rebuilt at layer K);
        # an embedding without a `weight` leaves the mask to layer K.
        embeddings = self.state.adapter.language_model.get_input_embeddings()
        dtype = getattr(getattr(embeddings, "weight", None), "dtype", None)
        return self._build_structure(record.visual_layout, seq_len, record.host_attention_mask, mask, device, dtype)

    # Host work on host tensors: `torch.compile` calls it rather than tracing it (no graph break inside).
    @torch.compiler.disable
    def _build_structure(self, layout: BatchLayout, seq_len: int, host_mask: torch.Tensor | None,
                         mask2d: torch.Tensor | None, device: torch.device,
                         dtype: torch.dtype | None) -> PrefillStructure:
        """The structure of a batch, from the cache when the structure repeats."""
        padding = None if host_mask is None else host_mask == 0
        if padding is not None and not bool(padding.any()):  # a host tensor: no device sync
            padding = None
        key = (tuple(layout), seq_len, None if padding is None else padding.numpy().tobytes(),
               None if mask2d is None else mask2d.dtype, device, dtype)

        def build() -> PrefillStructure:
            # Normal tensors even inside `torch.inference_mode()`: a cached entry may serve a training forward next.
            with torch.inference_mode(False):
                groups = group_index(layout, seq_len, self.config.ratio, padding=padding, device=device)
                # The compressed mask is needed only where a key is masked: padding, or the slots of shorter samples.
                dense = padding is None and not groups.is_ragged
                compact = None if dense else compact_mask(mask2d, groups)
                cells = None
                if self.restore_layer is not None and self.config.restore == "add":
                    cells = cell_mask(layout, seq_len).to(device, non_blocking=True)
                layer_mask, layer_mask_dtype = self._prefill_layer_mask(groups, compact, device, dtype)
                return PrefillStructure(groups, compact, cells, layer_mask, layer_mask_dtype)

        return self.structures.get(key, build)

    def _prefill_layer_mask(self, groups: GroupIndex, compact: torch.Tensor | None, device: torch.device,
                            dtype: torch.dtype | None) -> tuple[Any, torch.dtype | None]:
        """The mask layers K..L-1 get in a prefill, and the hidden dtype it is for; `(None, None)` (build it at
        layer K) where the dtype is unknown or a materialised mask would hold more than `_MAX_CACHED_MASK_ELEMENTS`.
        The prefill's cache is empty at layer K, so the mask depends on the structure alone."""
        b, g = groups.batch_size, groups.max_groups
        if dtype is None or b * g * g > _MAX_CACHED_MASK_ELEMENTS:
            return None, None
        shape_only = torch.empty((b, g, 0), dtype=dtype, device=device)  # the mask function reads shape and dtype
        return self._mask(shape_only, compact, None), dtype

    def _residual(self, hidden: torch.Tensor, pooled: torch.Tensor, step: LVTCStep,
                  structure: PrefillStructure) -> torch.Tensor | None:
        """The full-resolution term the restore adds to the upsampled compressed output."""
        if self.restore_layer is None or self.config.restore == "upsample":
            return None
        if self.config.restore == "delta":
            # What pooling lost, per token: exactly zero for text, newline tokens and every singleton group, so
            # `upsample(H'_L) + residual` is the unpatched model at ratio=1, bit for bit.
            return hidden - self._upsample(pooled, step)
        return hidden * structure.cells[..., None].to(hidden.dtype)

    def _mask(self, hidden: torch.Tensor, mask2d: torch.Tensor | None, cache: Any):
        # position_ids=None: compressed positions have gaps, which the mask builder would read as packed sequences.
        # Callers pass None when every key is attended, so a mask given here masks a key (or is one the attention
        # implementation materialises anyway): the builder's check whether it could skip the mask, a host read of
        # the mask (a device sync), would only ever answer no, and is switched off.
        return causal_mask(config=self.state.adapter.text_config, inputs_embeds=hidden, attention_mask=mask2d,
                           cache=cache, layer_idx=self.compress_layer, allow_is_causal_skip=mask2d is None)

    def _rotary(self, pooled: torch.Tensor, groups: GroupIndex, full: tuple[torch.Tensor, torch.Tensor],
                step: LVTCStep) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary embeddings at each group's representative position (original numbering, never renumbered)."""
        if self.config.position == "first":
            cos, sin = full
            return gather_groups(cos, groups), gather_groups(sin, groups)
        positions = step.rotary_positions
        if positions is None:
            raise UnsupportedModelError(
                "the language model did not call its rotary embedding before the decoder layers, so LVTC cannot "
                "place pooled tokens at their mean position; use LVTCConfig(position=\"first\")."
            )
        # Mean per axis: 1-D positions stay 1-D, M-RoPE positions keep their (temporal, height, width) axes.
        return self.state.adapter.rotary_embedding(pooled, compact_positions(positions, groups, "mean"))

    # -------------------------------------------------------------------------------------------- layers K+1..L-1
    # `swap` (`ShortenedLayerSwap`): the compressed layers' mask and rotary embeddings

    # -------------------------------------------------------------------------------------------- layer L-1
    def restore(self, _module, _args, output):
        step = self._step
        if step is None or not step.prefill or step.groups is None:
            return None
        compressed = output[0] if isinstance(output, tuple) else output
        with record_function(RESTORE_RANGE):
            restored = self._upsample(compressed, step)
            if step.residual is not None:
                residual = step.residual
                if self.gate is not None:
                    residual = self.gate.to(residual.dtype) * residual
                restored = restored + residual
        # Layers after this one run on the full sequence: nothing of the compressed step is needed any more.
        step.prefill = step.active = False
        step.residual = step.groups = step.position_embeddings = None
        return (restored, *output[1:]) if isinstance(output, tuple) else restored

    def _upsample(self, compressed: torch.Tensor, step: LVTCStep) -> torch.Tensor:
        if self.config.upsample == "bilinear":
            return unpool_bilinear(compressed, step.groups, step.layout, self.config.ratio)
        return unpool(compressed, step.groups)


def _validate(config: LVTCConfig, adapter: Any) -> tuple[int, int | None]:
    """Resolve K and L for this model and refuse what LVTC cannot do correctly; changes nothing."""
    try:
        layers, rotary = adapter.decoder_layers, adapter.rotary_embedding
    except AttributeError as error:
        raise UnsupportedModelError(
            f"{type(adapter).__name__} does not expose the decoder layers and rotary embedding LVTC needs: {error}"
        ) from error
    if not isinstance(rotary, nn.Module):
        raise UnsupportedModelError(f"{type(adapter).__name__}.rotary_embedding must be an nn.Module")
    k, restore_layer = config.resolve_layers(len(layers))
    injected = adapter.visual_injection_layers
    if k < injected:
        raise ConfigError("compress_layer", config.compress_layer,
                          f"a layer index >= {injected} for this model",
                          hint=f"Its first {injected} decoder layers add visual features at the full-length visual "
                               "positions after they run, so pooling must start after them.")
    end = len(layers) if restore_layer is None else restore_layer
    layer_types = getattr(adapter.text_config, "layer_types", None) or []
    sliding = [i for i in range(k, end) if i < len(layer_types) and layer_types[i] != "full_attention"]
    if sliding:
        raise UnsupportedModelError(
            f"decoder layers {sliding} use {layer_types[sliding[0]]!r}, which LVTC does not support inside the "
            f"compressed layers {k}..{end - 1}: a window counted in pooled tokens would reach further back. Choose "
            "compress_layer/restore_layer around them, or disable the sliding window in the model config."
        )
    if restore_layer is None and config.restore == "add":
        raise ConfigError("restore", config.restore, "'delta' or 'upsample' with restore_layer=None",
                          hint="restore_layer=None never restores, so the 'add' gate would never be used.")
    return k, restore_layer


def install(model: nn.Module, state: Any) -> None:
    """Install LVTC as configured by `state.config.lvtc`, recording every change in `state.ledger`.

    Raises:
        ConfigError: K or L outside this model's decoder, K inside the layers that receive injected visual features,
            or `restore="add"` with no restore layer.
        UnsupportedModelError: the model lacks the seams LVTC hooks, or uses sliding-window attention in K..L-1.
    """
    config: LVTCConfig = state.config.lvtc
    adapter, ledger = state.adapter, state.ledger
    k, restore_layer = _validate(config, adapter)  # before anything is changed

    language_model, layers = adapter.language_model, adapter.decoder_layers
    gate = None
    if restore_layer is not None and config.restore == "add":
        reference = next(language_model.parameters())
        gate = nn.Parameter(torch.zeros((), dtype=reference.dtype, device=reference.device))
        ledger.set_attr(language_model, GATE_NAME, gate)
    controller = _Controller(state, config, k, restore_layer, gate, language_model)
    ledger.set_attr(state, "lvtc_prefill_structure", controller.prefill_structure)
    last = len(layers) if restore_layer is None else restore_layer

    # prepend=True: compress and restore before any hook installed earlier (e.g. output capture) sees the layer.
    ledger.add_forward_pre_hook(language_model, controller.begin_forward, "lvtc begin forward", with_kwargs=True,
                                prepend=True)
    ledger.add_forward_hook(language_model, controller.end_forward, "lvtc end forward", with_kwargs=True,
                            always_call=True)
    ledger.add_forward_pre_hook(adapter.rotary_embedding, controller.capture_positions, "lvtc rotary positions",
                                with_kwargs=True)
    ledger.add_forward_pre_hook(layers[k], controller.compress, f"lvtc compress at layer {k}", with_kwargs=True,
                                prepend=True)
    for index in range(k + 1, last):
        ledger.add_forward_pre_hook(layers[index], controller.swap, f"lvtc compressed layer {index}",
                                    with_kwargs=True, prepend=True)
    ledger.add_forward_hook(layers[last - 1], controller.restore, f"lvtc restore after layer {last - 1}",
                            prepend=True)
