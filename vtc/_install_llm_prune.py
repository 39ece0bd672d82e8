"""Pruning inside the decoder (`vtc.PruneConfig` methods `fastv`, `pdrop`, `dart`): from each stage's first decoder
layer on, the sequence no longer holds the visual tokens the stage's rule dropped.

It is LVTC's mechanism (`vtc.lvtc`) with a selection instead of pooling and no restore of the dropped tokens: hooks on
the model's own modules, each shortened layer with its own mask built by transformers' mask function for that length,
the kept tokens with their own rotary embeddings (original positions, 1-D or M-RoPE: nothing is renumbered), shorter KV
caches in the shortened layers and cached decoding that continues from them. The outer sequence never changes: after
the last layer every kept token's state goes back to its place, and a dropped token keeps the state it had when it
was dropped (the logits of the prompt's text positions, and every decode step, are those of the pruned model).

* language model, forward pre-hook: prefill or decode; a prefill takes the `PrunePlan` the instrumentation made when
  the forward began (host work); a decode step reads the stages' lengths and masks from the KV cache;
* FastV and DART: forward hooks on the query and key projections of the layer before the first stage copy out that
  layer's queries and keys (SDPA stays on; no layer runs twice);
* each stage's first layer, forward pre-hook: ranks the item's tokens (prefill) and shortens the sequence; builds the
  mask of the stage's layers (prefill and decode, before the layer appends the step's keys);
* the other layers after the first stage, forward pre-hooks: swap in that mask and those rotary embeddings;
* the last layer, forward hook: the full-length sequence again (prefill).

What one forward is doing lives in its thread's call state (`state.call.llm_prune`), what decode steps need on the
cache the prefill filled: threads sharing one model never see each other's state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
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
from ._llm_prune_plan import PrunePlan, item_counts, plan_prefill
from ._state import ForwardArguments
from .config import PruneConfig
from .errors import ConfigError, PlaceholderMismatchError, UnsupportedModelError
from .llm_prune import dart_selection, last_token_attention, top_indices
from .ops import Selection, extend_mask, keep_selection, scatter_selected, select_positions, selected_mask
from .seams import cache_argument, causal_mask

__all__ = ["PREFILL_ATTR", "SELECT_RANGE", "PruneStep", "PrunedPrefill", "install", "validate"]

#: Where a pruned prefill leaves its `PrunedPrefill` on the KV cache it filled.
PREFILL_ATTR = "_vtc_prune_prefill"
#: The profiler range of a stage's ranking and selection (what `benchmarks/prune_speed.py` reports as its own work).
SELECT_RANGE = "vtc_prune_select"


@dataclass(frozen=True)
class PrunedStage:
    """One stage of a pruned prefill, as the decode steps extending its cache need it."""

    layer: int  # the stage's first decoder layer
    length: int  # what the stage's layers cache for the prompt
    mask: torch.Tensor | None  # `(b, length)` 2-D mask of the prompt in those layers, None for all ones


@dataclass
class PrunedPrefill:
    """What the decode steps extending one KV cache need from the pruned prefill that filled it."""

    full_length: int  # the prompt length the layers before the first stage cache
    stages: tuple[PrunedStage, ...] = ()


@dataclass
class PruneStep:
    """What one forward through the language model needs between its hooks (per thread, dropped at its end)."""

    prefill: bool = False
    active: bool = False  # whether the stages' layers get swapped arguments in this forward
    plan: PrunePlan | None = None
    mask2d: torch.Tensor | None = None  # prefill: 2-D mask of the current sequence
    stage_masks: list[torch.Tensor | None] = field(default_factory=list)  # decode: each stage's 2-D mask
    dense: list[bool] = field(default_factory=list)  # decode: whether each stage's prompt attends every key
    taps: dict[str, torch.Tensor] = field(default_factory=dict)  # the layer before the first stage's q / k
    attention_mask: Any = None  # what the current stage's layers receive as `attention_mask`
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
    selection: Selection | None = None  # prefill: the positions of the full sequence the current one keeps
    full: torch.Tensor | None = None  # prefill: `(b, s, d)` every token's latest state, for the restore
    positions: list[torch.Tensor] = field(default_factory=list)  # each item's positions in the current sequence
    native: list[torch.Tensor] = field(default_factory=list)  # each item's current tokens as native indices
    kept: list[list[torch.Tensor]] = field(default_factory=list)  # each item's native indices kept, per stage


class _Tap:
    """Copies a module's output into the prefill's taps before the first stage (else does nothing)."""

    def __init__(self, state: Any, name: str):
        self.state, self.name = state, name

    def __call__(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        step = self.state.call.llm_prune
        if step is not None and step.prefill and step.selection is None:
            step.taps[self.name] = output


class _Controller(ShortenedLayerSwap):
    """The hooks of one pruned model; it holds no per-call state (see the module docstring)."""

    def __init__(self, state: Any, config: PruneConfig, stage_layers: tuple[int, ...]):
        self.state, self.config, self.stage_layers = state, config, stage_layers
        self.adapter = state.adapter
        self.num_layers = len(self.adapter.decoder_layers)
        self.forward_arguments = ForwardArguments(self.adapter.language_model)

    @property
    def _step(self) -> PruneStep | None:
        return self.state.call.llm_prune

    # -------------------------------------------------------------------------------------------- host work
    def plan(self, record: Any, image_inputs: dict[str, Any], device: torch.device | None) -> PrunePlan:
        """The plan of a prefill, made by the instrumentation's host work when the forward begins."""
        return plan_prefill(self.config, self.stage_layers, self.num_layers, self.adapter, record.visual_layout,
                            image_inputs, record.host_attention_mask, record.sequence_length, device)

    # -------------------------------------------------------------------------------------------- language model
    def begin_forward(self, _module, args, kwargs):
        bound = self.forward_arguments(args, kwargs)
        mask, cache = bound.get("attention_mask"), cache_argument(bound)
        check_attention_mask(mask, self.config.method)
        check_cache(cache, self.config.method)
        call = self.state.call
        if cache_length(cache) == 0:
            record = call.recording
            plan = None if record is None else record.llm_prune_plan
            pruning = plan is not None and plan.active
            # An unpadded prompt's mask attends everywhere: the stages build their masks from the selection alone
            # (none where every row keeps as many tokens), as the model would for the unpruned prompt.
            mask2d = mask if pruning and plan.padded else None
            call.llm_prune = PruneStep(prefill=True, active=True, plan=plan, mask2d=mask2d) if pruning else PruneStep()
            return None
        inputs = bound.get("inputs_embeds")
        inputs = bound.get("input_ids") if inputs is None else inputs
        call.llm_prune = self._begin_decode(mask, cache, inputs.shape[0], inputs.shape[1])
        return None

    def _begin_decode(self, mask: torch.Tensor | None, cache: Any, batch: int, new_tokens: int) -> PruneStep:
        prefill: PrunedPrefill | None = getattr(cache, PREFILL_ATTR, None)
        component = "pruning inside the decoder"
        if prefill is None:
            check_cache_layers(cache, None, dict.fromkeys(self.stage_layers, 0), "pruned", component)
            return PruneStep()  # a cache no pruned prefill wrote: every layer holds the full sequence
        shortened = {stage.layer: stage.length for stage in prefill.stages}
        appended = check_cache_layers(cache, prefill.full_length, shortened, "pruned", component)
        new_mask = appended_mask(mask, prefill.full_length, appended, new_tokens)
        masks = [extend_mask(stage.mask, new_mask, appended + new_tokens, batch, compact_len=stage.length)
                 for stage in prefill.stages]
        return PruneStep(active=True, stage_masks=masks, dense=[stage.mask is None for stage in prefill.stages])

    def end_forward(self, _module, _args, _kwargs, _output):
        self.state.call.llm_prune = None  # drop the per-forward tensors (and their autograd graph)
        return None

    # -------------------------------------------------------------------------------------------- stage layers
    def stage(self, index: int, _module, args, kwargs):
        step = self._step
        if step is None or not step.active:
            return None
        layer, cache = self.stage_layers[index], cache_argument(kwargs)
        if not step.prefill:
            # Sized against this layer's own cache, before it appends the step's keys; None where the model's own
            # mask is None (one query, no padding) and the prompt attends every key, as the mask builder would say.
            mask = step.stage_masks[index]
            step.attention_mask = (None if step.dense[index] and kwargs.get("attention_mask") is None else
                                   self._mask(hidden_argument(args, kwargs), mask, cache, layer))
            return args, {**kwargs, "attention_mask": step.attention_mask, "position_ids": None}
        hidden = hidden_argument(args, kwargs)
        shortened = self._shorten(index, hidden, kwargs, step)
        step.attention_mask = self._mask(shortened, step.mask2d, cache, layer)
        length = shortened.shape[1]
        recording = self.state.call.recording
        if recording is not None and recording.layer_seq_lens:
            end = (self.stage_layers + (self.num_layers,))[index + 1]
            recording.layer_seq_lens[layer:end] = [length] * (end - layer)
        if cache is not None:  # the decode steps that extend this cache continue from here
            previous = getattr(cache, PREFILL_ATTR, None) if index else None
            stages = (previous.stages if previous is not None else ()) + (PrunedStage(layer, length, step.mask2d),)
            setattr(cache, PREFILL_ATTR, PrunedPrefill(step.plan.seq_len, stages))
        return with_hidden_argument(args, self._swapped(kwargs, step), shortened)

    def _shorten(self, index: int, hidden: torch.Tensor, kwargs: dict, step: PruneStep) -> torch.Tensor:
        """Rank every item's current tokens, keep the stage's count, and return the shortened hidden states; the
        step then describes the shortened sequence."""
        plan = step.plan
        if index == 0:
            if hidden.shape[1] != plan.seq_len or (step.mask2d is not None and
                                                   tuple(step.mask2d.shape) != tuple(hidden.shape[:2])):
                raise UnsupportedModelError(
                    f"the decoder got {tuple(hidden.shape[:2])} hidden states and an attention_mask of shape "
                    f"{tuple(getattr(step.mask2d, 'shape', ()))} for a prompt of {plan.seq_len} tokens: pass the "
                    "processor's input_ids and 2-D attention_mask"
                )
            step.full, step.position_embeddings = hidden, kwargs["position_embeddings"]
            step.positions = [item.positions for item in plan.items]
            step.native = [torch.arange(item.native, device=hidden.device) for item in plan.items]
            step.kept = [[] for _ in plan.items]
        else:
            step.full = scatter_selected(step.full, hidden, step.selection)
        with torch.no_grad():
            with record_function(SELECT_RANGE):
                chosen = self._choose(index, hidden, step)
        step.taps = {}  # read once, at the first stage
        keep = (torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if step.selection is None
                else step.selection.valid.clone())
        rows = [torch.full_like(positions, item.row) for item, positions in zip(plan.items, step.positions)]
        if rows:
            keep[torch.cat(rows), torch.cat(step.positions)] = False
            kept_rows = torch.cat([r[c] for r, c in zip(rows, chosen)])
            keep[kept_rows, torch.cat([p[c] for p, c in zip(step.positions, chosen)])] = True
        selection = keep_selection(keep, plan.lengths[index])
        new_position = keep.long().cumsum(dim=1) - 1  # where each kept token lands in the shortened sequence
        for i, (item, c) in enumerate(zip(plan.items, chosen)):
            step.positions[i] = new_position[item.row, step.positions[i][c]]
            step.native[i] = step.native[i][c]
            step.kept[i].append(step.native[i])
        cos, sin = step.position_embeddings
        step.position_embeddings = (select_positions(cos, selection), select_positions(sin, selection))
        step.mask2d = selected_mask(step.mask2d, selection)
        total = selection.index if step.selection is None else step.selection.index.gather(1, selection.index)
        step.selection = Selection(total, selection.valid, selection.lengths, plan.seq_len)
        return select_positions(hidden, selection)

    def _choose(self, index: int, hidden: torch.Tensor, step: PruneStep) -> list[torch.Tensor]:
        """Per item, the indices of its current tokens that this stage keeps (ascending)."""
        plan, method = step.plan, self.config.method
        counts = [item.counts[index] for item in plan.items]
        current = [positions.shape[0] for positions in step.positions]
        if all(c >= n for c, n in zip(counts, current)):
            return [torch.arange(n, device=hidden.device) for n in current]
        last = torch.tensor(plan.last[index]).to(hidden.device, non_blocking=True)
        if method == "dart":
            keys = self._keys(self.stage_layers[0] - 1, step.taps["key"], step.position_embeddings)
            key_norms = keys.flatten(2).float().norm(p=1, dim=-1)
            states = self.adapter.final_norm(hidden)
            return [dart_selection(states[item.row], key_norms[item.row], positions, item.text, count)
                    for item, positions, count in zip(plan.items, step.positions, counts)]
        scores = self._attention_row(index, hidden, step, last)
        return [top_indices(scores[item.row, positions], count) if count < positions.shape[0]
                else torch.arange(positions.shape[0], device=hidden.device)
                for item, positions, count in zip(plan.items, step.positions, counts)]

    def _attention_row(self, index: int, hidden: torch.Tensor, step: PruneStep, last: torch.Tensor) -> torch.Tensor:
        """`(b, s)` the attention the last prompt token gives every key, averaged over heads: FastV's from the layer
        before the stage (its own queries and keys, tapped), PyramidDrop's from the stage's first layer on its input
        (that layer's norm and projections, as the official code computes it)."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.config.method == "fastv":
            layer = self.stage_layers[0] - 1
            queries, keys = step.taps["query"][rows, last], step.taps["key"]
        else:
            layer = self.stage_layers[index]
            attention = self.adapter.decoder_attention(layer)
            normed = attention.input_norm(hidden)
            queries, keys = attention.query(normed[rows, last]), attention.key(normed)
        attention = self.adapter.decoder_attention(layer)
        cos, sin = step.position_embeddings
        b = hidden.shape[0]
        cos, sin = cos.expand(b, *cos.shape[1:]), sin.expand(b, *sin.shape[1:])
        query = queries.reshape(b, 1, attention.num_heads, attention.head_dim)
        if attention.query_norm is not None:
            query = attention.query_norm(query)
        query = attention.rotary(query, cos[rows, last][:, None], sin[rows, last][:, None])[:, 0]
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        key_mask = positions[None, :] <= last[:, None]
        if step.mask2d is not None:
            key_mask = key_mask & step.mask2d.bool()
        return last_token_attention(query, self._keys(layer, keys, (cos, sin)), key_mask, attention.scale)

    def _keys(self, layer: int, keys: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
              ) -> torch.Tensor:
        """A layer's key projections `(b, s, k * d)` as its attention uses them: `(b, s, k, d)` after its key norm
        and the rotary embedding."""
        attention = self.adapter.decoder_attention(layer)
        keys = keys.reshape(*keys.shape[:2], attention.num_key_value_heads, attention.head_dim)
        if attention.key_norm is not None:
            keys = attention.key_norm(keys)
        return attention.rotary(keys, *position_embeddings)

    def _mask(self, hidden: torch.Tensor, mask2d: torch.Tensor | None, cache: Any, layer: int):
        # position_ids=None: kept positions have gaps, which the mask builder would read as packed sequences.
        return causal_mask(config=self.adapter.text_config, inputs_embeds=hidden, attention_mask=mask2d, cache=cache,
                           layer_idx=layer, allow_is_causal_skip=mask2d is None)

    # -------------------------------------------------------------------------------------------- other layers
    # `swap` (`ShortenedLayerSwap`): the stage's mask and rotary embeddings

    # -------------------------------------------------------------------------------------------- the last layer
    def restore(self, _module, _args, output):
        step = self._step
        if step is None or not step.prefill or step.selection is None:
            return None
        shortened = output[0] if isinstance(output, tuple) else output
        restored = scatter_selected(step.full, shortened, step.selection)
        self._record_kept(step)
        step.prefill = step.active = False
        step.full = step.selection = step.position_embeddings = None
        return (restored, *output[1:]) if isinstance(output, tuple) else restored

    def _record_kept(self, step: PruneStep) -> None:
        """`last_stats()["kept"]`: per sample, per item, its kept native indices (per stage for PyramidDrop)."""
        recording = self.state.call.recording
        if recording is None:
            return
        kept: list[list[Any]] = [[] for _ in range(len(step.plan.lengths[0]))]
        for item, stages in zip(step.plan.items, step.kept):
            kept[item.row].append(stages if self.config.method == "pdrop" else stages[-1])
        recording.kept = kept


def validate(config: PruneConfig, adapter: Any) -> tuple[int, ...]:
    """The first decoder layer of each stage, after refusing what the method cannot do exactly on this model
    (`ConfigError`, or `UnsupportedModelError` for a model without the seams); changes nothing."""
    try:
        layers, text_config = adapter.decoder_layers, adapter.text_config
        attention, norm = adapter.decoder_attention(0), adapter.final_norm  # what the hooks read
    except (AttributeError, NotImplementedError) as error:
        raise UnsupportedModelError(f"{type(adapter).__name__} does not expose the decoder layers, their attention "
                                    f"and the final norm that method={config.method!r} needs: {error}") from error
    if not isinstance(norm, nn.Module) or not isinstance(attention.query, nn.Module):
        raise UnsupportedModelError(f"{type(adapter).__name__}.final_norm and the decoder attention's projections "
                                    "must be nn.Modules")
    n = len(layers)
    stages = config.resolve_stage_layers(n)
    injected = adapter.visual_injection_layers
    first = max(1, injected)
    if stages[0] < first:
        raise ConfigError("prune.layer", config.layer, f"an index in {first}..{n - 1} (or {first - n}..-1) for this "
                          f"model's {n} decoder layers", hint=f"Its first {injected} decoder layers add visual "
                          "features at every visual position after they run (DeepStack), so pruning starts after "
                          f"them: layer {first} or later." if injected else None)
    # FastV's and DART's scores come from the layer before the first stage: its attention must see every key too.
    reads = stages[0] - 1 if config.method in ("fastv", "dart") else stages[0]
    layer_types = getattr(text_config, "layer_types", None) or []
    sliding = [i for i in range(reads, n) if i < len(layer_types) and layer_types[i] != "full_attention"]
    if sliding:
        valid = [k for k in range(first, n) if all(t == "full_attention" for t in layer_types[k - 1:])]
        raise ConfigError("prune.layer", config.layer, f"stages from a layer in {valid or 'none'}",
                          hint=f"Decoder layers {sliding} use {layer_types[sliding[0]]!r}: a window counted in kept "
                               "tokens would reach further back than the unpatched model's.")
    _validate_keep(config, adapter, stages, n)
    return stages


def _fixed_item_length(adapter: Any) -> int | None:
    """The tokens of every item where all items have the same (an image of one token grid, or a tile), else `None`
    (images of several crops, or of their own size: an item with fewer tokens than `keep` keeps them all)."""
    if not adapter.fixed_token_grid:
        return None
    template = adapter.item_template(adapter.reference_token_grid)
    length = max(span.end for span in template)
    try:
        return length if adapter.image_templates({}, length) == [template] else None
    except PlaceholderMismatchError:  # the layout of an image needs its size: images differ
        return None


def _validate_keep(config: PruneConfig, adapter: Any, stages: tuple[int, ...], num_layers: int) -> None:
    native = _fixed_item_length(adapter)
    if native is not None:
        if isinstance(config.keep, int) and config.keep > native:
            raise ConfigError("prune.keep", config.keep, f"at most {native}: the model makes {native} tokens per "
                              "image (per tile where the model sees tiles)",
                              hint=f"keep={native} keeps every token; a float keeps a fraction.")
    if config.method != "pdrop":
        return
    # The layers before the first stage see every token: no schedule averages below that share.
    share = f"{stages[0]}/{num_layers}"
    if isinstance(config.keep, float) and config.keep * num_layers < stages[0]:
        raise ConfigError("prune.keep", config.keep, f"at least {share} of the native tokens with stages from "
                          f"layer {stages[0]} of {num_layers}", hint="Start the stages earlier, or keep more.")
    if isinstance(config.keep, int) and native is not None and config.keep * num_layers < stages[0] * native:
        raise ConfigError("prune.keep", config.keep, f"at least {share} of {native} tokens with stages from layer "
                          f"{stages[0]} of {num_layers}", hint="Start the stages earlier, or keep more.")
    if native is not None:
        item_counts(config, native, stages, num_layers)  # the solver runs once here, cached for the forwards


def install(model: nn.Module, state: Any) -> None:
    """Install the in-decoder method of `state.config.prune`, recording every change in `state.ledger`."""
    config, adapter, ledger = state.config.prune, state.adapter, state.ledger
    stages = validate(config, adapter)  # before anything is changed
    layers, language_model = adapter.decoder_layers, adapter.language_model
    controller = _Controller(state, config, stages)
    ledger.set_attr(state, "llm_prune_plan", controller.plan)
    ledger.add_forward_pre_hook(language_model, controller.begin_forward, f"{config.method} begin forward",
                                with_kwargs=True, prepend=True)
    ledger.add_forward_hook(language_model, controller.end_forward, f"{config.method} end forward",
                            with_kwargs=True, always_call=True)
    if config.method in ("fastv", "dart"):
        attention = adapter.decoder_attention(stages[0] - 1)
        for name, module in (("query", attention.query), ("key", attention.key)):
            ledger.add_forward_hook(module, _Tap(state, name), f"{config.method}: layer {stages[0] - 1}'s {name}s")
    # prepend=True: shorten and restore before any hook installed earlier (e.g. output capture) sees the layer.
    for index, layer in enumerate(stages):
        ledger.add_forward_pre_hook(layers[layer], functools.partial(controller.stage, index),
                                    f"{config.method} stage {index} at layer {layer}", with_kwargs=True,
                                    prepend=True)
    for layer in range(stages[0] + 1, len(layers)):
        if layer not in stages:
            ledger.add_forward_pre_hook(layers[layer], controller.swap, f"{config.method} shortened layer {layer}",
                                        with_kwargs=True, prepend=True)
    ledger.add_forward_hook(layers[-1], controller.restore, f"{config.method} full length after the last layer",
                            prepend=True)
