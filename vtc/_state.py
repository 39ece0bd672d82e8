"""Per-model state of a compressed model, stored on `model._vtc_state`, and the instrumentation that fills its stats.

Nothing here is global, and nothing about one forward is kept on a shared object: the configuration, the adapter
and the ledger live on the model's `VTCState`; what one forward (or one `generate`) is doing lives in its thread's
`CallState` (`state.call`), so threads sharing one compressed model never see each other's inputs.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import VTCConfig
from .errors import PlaceholderMismatchError
from .layout import BatchLayout
from .patch import PatchLedger
from .seams import cache_argument

__all__ = ["STATE_ATTR", "CallState", "ForwardArguments", "VTCState", "call_arguments", "install_instrumentation"]

STATE_ATTR = "_vtc_state"


def _counter(device: torch.device | str | None = None) -> torch.Tensor:
    # A normal tensor even inside `torch.inference_mode()`, so that decode steps outside it can count on it. On the
    # model's device: a compiled decode step counts inside its own graph, with no host-side (CPU) kernel in it.
    with torch.inference_mode(False):
        return torch.zeros((), dtype=torch.long, device=device)


@dataclass
class ForwardRecord:
    """What the last prefill (a forward that began with an empty cache) looked like."""

    visual_tokens: list[int] = field(default_factory=list)
    layer_seq_lens: list[int] = field(default_factory=list)
    sequence_length: int = 0
    visual_layout: BatchLayout | None = None
    # A 0-d tensor, not an int: compiled code guards on the value of an int attribute it reads, which would
    # recompile every decode step.
    decode_steps: torch.Tensor = field(default_factory=_counter)
    lvtc_structure: Any = None  # LVTC's structure of this prefill (`vtc.lvtc.PrefillStructure`), built with the layout
    # While the prefill runs: the 2-D attention mask it was given and that mask's CPU copy, read when the forward
    # began, so that a compressor can build its structure on the host without waiting for the device mid-forward.
    attention_mask: torch.Tensor | None = None
    host_attention_mask: torch.Tensor | None = None
    # Pruning's selection methods: per sample, per image (tile where the model sees tiles), the indices into its
    # native tokens that reached the language model (inside the decoder: that its pruned layers kept, per stage for
    # PyramidDrop); `None` when no selection ran.
    kept: list[list[Any]] | None = None
    # Pruning before the language model: per sample, per image (tile where the model sees tiles), its (native, kept)
    # visual token counts; `None` when no such pruning ran.
    pruned_items: list[list[tuple[int, int]]] | None = None
    llm_prune_plan: Any = None  # pruning's plan of this prefill inside the decoder (`vtc._llm_prune_plan.PrunePlan`)


@dataclass
class CallState:
    """One thread's view of a compressed model: the forward it is running and the last prefill it ran."""

    last: ForwardRecord | None = None
    recording: ForwardRecord | None = None  # the prefill in progress
    # image inputs seen by `get_image_features` outside a forward (generate routes them there before prefill)
    pending_image_inputs: dict[str, Any] | None = None
    in_forward: bool = False
    lvtc: Any = None  # LVTC's state of the forward in progress (`vtc.lvtc.LVTCStep`)
    # Inside the model's `get_video_features`: a `get_image_features` call made from there (some models encode the
    # frames that way) is for video frames, which vtc passes through uncompressed and never lays out as images.
    video_features: bool = False
    # Pruning: while its `get_image_features` runs, what its hooks copy out of the tower (else `None`); afterwards the
    # kept indices of every item of the image features it returned last, in batch order (`None` for no selection).
    prune_capture: dict[str, torch.Tensor] | None = None
    pruned: list[torch.Tensor] | None = None
    pruned_counts: list[tuple[int, int]] | None = None  # and every item's (native, kept) token counts
    # Pruning: the adapter's record of positions it gave the prompt before the selection was known (M-RoPE under a
    # data-dependent selection), which it corrects once the selection is made.
    prune_positions: Any = None
    llm_prune: Any = None  # pruning's state inside the decoder for the forward in progress (`PruneStep`)


@dataclass(eq=False)
class VTCState:
    """Everything vtc keeps on a compressed model; per-call state is per thread (`call`)."""

    config: VTCConfig
    adapter: Any
    ledger: PatchLedger
    processor: Any = None
    num_decoder_layers: int = 0  # set by `install_instrumentation`

    def __post_init__(self) -> None:
        self._threads = threading.local()

    @property
    def call(self) -> CallState:
        """The calling thread's `CallState` (created on first use)."""
        call = getattr(self._threads, "call", None)
        if call is None:
            call = self._threads.call = CallState()
        return call

    # Copies and pickles start with no call in progress in any thread (a thread-local cannot be copied anyway).
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_threads"}

    def __setstate__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self._threads = threading.local()

    def stats(self) -> dict[str, Any]:
        record = self.call.last
        if record is None:
            return {}
        return {
            "visual_tokens": list(record.visual_tokens),
            "layer_seq_lens": list(record.layer_seq_lens),
            "sequence_length": record.sequence_length,
            "visual_layout": record.visual_layout,
            "decode_steps": int(record.decode_steps),
            "kept": _as_lists(record.kept),
            "pruned_items": None if record.pruned_items is None else [list(items) for items in record.pruned_items],
        }


def _as_lists(value: Any) -> Any:
    """Nested lists of tensors as nested lists of numbers (`None` stays `None`)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return None if value is None else [_as_lists(v) for v in value]


def call_arguments(function: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Every argument of the call `function(*args, **kwargs)` by parameter name, `**kwargs` flattened in."""
    bound = inspect.signature(function).bind_partial(*args, **kwargs).arguments
    return {**bound.pop("kwargs", {}), **bound}


class ForwardArguments:
    """The arguments of a forward hook's call on one module by parameter name, `**kwargs` flattened in: the
    positional ones named after the module's `forward` (read once, when the hook is installed), then the keyword ones.

    A hook runs on every forward and decode step: zipping names into a dict costs a microsecond where binding a
    signature costs tens. The names live with the hook, not in a module-level cache: `torch.compile` guards on a
    global dict's length, so one that grows when another model is hooked would recompile every compiled model."""

    def __init__(self, module: torch.nn.Module):
        forward = type(module).forward
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        parameters = list(inspect.signature(forward).parameters.values())[1:]  # `self` excluded
        self.positional = tuple(p.name for p in parameters if p.kind in positional)

    def __call__(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        return {**dict(zip(self.positional, args)), **kwargs}


def _cache_is_empty(cache: Any) -> bool:
    return cache is None or not hasattr(cache, "get_seq_length") or cache.get_seq_length() == 0


def _placeholder_ids(adapter: Any, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Stand-in `input_ids` for an `inputs_embeds`-only forward: the image token id where the embedding is the image
    token's embedding (how the model's own `get_placeholder_mask` finds placeholders then), -1 elsewhere."""
    token = torch.tensor(adapter.image_token_id, dtype=torch.long, device=inputs_embeds.device)
    with torch.no_grad():
        image_embedding = adapter.base_model.get_input_embeddings()(token).to(inputs_embeds.dtype)
    is_image = (inputs_embeds == image_embedding).all(-1)
    return torch.where(is_image, token, torch.full_like(token, -1))


def _visual_layout(adapter: Any, input_ids: torch.Tensor, image_inputs: dict[str, Any]) -> BatchLayout:
    """The adapter's layout, also for a batch that `generate` expanded after computing the image features.

    Beam search and `num_return_sequences` repeat every row `k` times (`repeat_interleave`) but the image inputs
    still describe the original rows: lay out every `k`-th row and repeat. The copies may differ in the tokens they
    generated (each step is a new prefill when use_cache=False), never in their placeholders. A real mismatch still
    raises.
    """
    try:
        return adapter.visual_layout(input_ids, image_inputs)
    except PlaceholderMismatchError:
        batch = input_ids.shape[0]
        is_image = input_ids == adapter.image_token_id
        for copies in (k for k in range(batch, 1, -1) if batch % k == 0):
            groups = is_image.reshape(batch // copies, copies, -1)
            if not bool((groups == groups[:, :1]).all()):
                continue
            try:
                layout = adapter.visual_layout(input_ids[::copies], image_inputs)
            except PlaceholderMismatchError:
                continue
            return [sample for sample in layout for _ in range(copies)]
        raise


def _kept_per_sample(items: list[torch.Tensor] | None, layout: BatchLayout | None) -> list[list[torch.Tensor]] | None:
    """The kept indices of every item (in batch order) grouped by sample: one span per item in the layout. A batch
    that `generate` expanded (every row repeated) lays out each original row's items once per copy."""
    if items is None or layout is None:
        return None
    counts = [len(spans) for spans in layout]
    if not items or sum(counts) % len(items):
        return None
    copies, grouped, start = sum(counts) // len(items), [], 0
    for row in range(0, len(layout), copies):
        sample = list(items[start:start + counts[row]])
        start += counts[row]
        grouped += [sample] * copies
    return grouped


def _items_per_sample(counts: list[tuple[int, int]] | None, visual_tokens: list[int]
                      ) -> list[list[tuple[int, int]]] | None:
    """Every item's `(native, kept)` counts (in batch order) grouped by sample: a sample's items are the next ones
    whose kept tokens add up to its visual tokens. A batch that `generate` expanded (every row repeated) has each
    original row's items once per copy. `None` where they do not add up (features of another forward)."""
    if counts is None:
        return None
    total = sum(kept for _, kept in counts)
    if not total or sum(visual_tokens) % total:
        return None
    copies, grouped, start = sum(visual_tokens) // total, [], 0
    for row in range(0, len(visual_tokens), copies):
        sample, tokens = [], 0
        while tokens < visual_tokens[row] and start < len(counts):
            sample.append(counts[start])
            tokens += counts[start][1]
            start += 1
        if tokens != visual_tokens[row]:
            return None
        grouped += [sample] * copies
    return grouped if start == len(counts) else None


@torch.compiler.disable
def _record_prefill(state, bound, image_inputs) -> ForwardRecord:
    """The record of a prefill, and the structures compressors build from it: all host work, done once when the
    forward begins. `torch.compile` runs it eagerly rather than tracing it: one graph break instead of one for every
    host read inside."""
    adapter = state.adapter
    input_ids = bound.get("input_ids")
    if input_ids is None and bound.get("inputs_embeds") is not None:
        input_ids = _placeholder_ids(adapter, bound["inputs_embeds"])
    device = next((t.device for t in (input_ids, bound.get("inputs_embeds")) if isinstance(t, torch.Tensor)), None)
    record = ForwardRecord(decode_steps=_counter(device))
    if input_ids is not None:
        # One read of the ids (and the mask) to the host, before the forward queues any device work: the layout
        # needs the placeholder positions, and nothing later in the forward waits for the device.
        input_ids = input_ids.cpu()
        is_image = input_ids == adapter.image_token_id
        record.visual_tokens = is_image.sum(dim=1).tolist()
        record.sequence_length = input_ids.shape[1]
        record.layer_seq_lens = [input_ids.shape[1]] * state.num_decoder_layers
        if bool(is_image.any()) and image_inputs:
            record.visual_layout = _visual_layout(adapter, input_ids, image_inputs)
            mask = bound.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                record.attention_mask, record.host_attention_mask = mask, mask.cpu()
            else:
                mask = None
            builder = getattr(state, "lvtc_prefill_structure", None)
            if builder is not None:
                record.lvtc_structure = builder(record, input_ids.shape[1], mask, device)
            planner = getattr(state, "llm_prune_plan", None)
            if planner is not None:
                record.llm_prune_plan = planner(record, image_inputs, device)
    return record


class _Instrumentation:
    """The recording wrapper and hooks of one compressed model (bound methods: copyable and picklable)."""

    def __init__(self, state: VTCState, base: torch.nn.Module):
        self.state = state
        self.forward_arguments = ForwardArguments(base)

    def get_image_features(self, original, *args, **kwargs):
        call = self.state.call
        if not call.in_forward and not call.video_features:
            call.pending_image_inputs = self.state.adapter.image_inputs_from(call_arguments(original, *args, **kwargs))
        return original(*args, **kwargs)

    def get_video_features(self, original, *args, **kwargs):
        call = self.state.call
        outer, call.video_features = call.video_features, True
        try:
            return original(*args, **kwargs)
        finally:
            call.video_features = outer

    def before_forward(self, _module, args, kwargs):
        adapter, call = self.state.adapter, self.state.call
        bound = self.forward_arguments(args, kwargs)
        # generate passes the features it computed before the prefill as `mm_encoder_outputs` to every forward that
        # reads them (each step when use_cache=False); the inputs it computed them from describe all those forwards.
        # Anything else ends them (written, not read, here: under torch.compile a read would be guarded on, and a
        # decode step that meets them left over from its prefill would compile apart from the steps after it).
        keeps_pending = bound.get("mm_encoder_outputs") is not None
        if not keeps_pending:  # the features of another forward, or none: their kept indices are not this one's
            call.pruned = call.pruned_counts = None
        if not _cache_is_empty(cache_argument(bound)):
            if not keeps_pending:
                call.pending_image_inputs = None
            if call.last is not None:
                call.last.decode_steps.add_(1)
            call.recording = None
            call.in_forward = True
            return None
        # A layout only where pixels are given: `image_sizes` alone (e.g. an `inputs_embeds` forward) is text-only,
        # as it is to the model itself.
        given = bound.get("pixel_values") is not None
        image_inputs = adapter.image_inputs_from(bound) if given else (call.pending_image_inputs or {})
        if not keeps_pending:
            call.pending_image_inputs = None
        record = _record_prefill(self.state, bound, image_inputs)
        call.recording = record
        call.in_forward = True  # set last: a pre-hook that raised never reaches the always-called closing hook
        return None

    def after_forward(self, _module, _args, _kwargs, _output):
        call = self.state.call
        call.in_forward = False
        if call.recording is not None:
            if call.recording.kept is None:  # pruning inside the decoder records its own
                call.recording.kept = _kept_per_sample(call.pruned, call.recording.visual_layout)
            call.recording.pruned_items = _items_per_sample(call.pruned_counts, call.recording.visual_tokens)
            call.recording.attention_mask = call.recording.host_attention_mask = None
            call.recording.lvtc_structure = call.recording.llm_prune_plan = None
            call.last, call.recording = call.recording, None


def install_instrumentation(model: torch.nn.Module, state: VTCState) -> None:
    """Record, for every prefill, the visual tokens per sample, the visual layout and each decoder layer's length.

    Every decoder layer sees the prompt's length unless a compressor shortens it (LVTC writes the lengths it hands
    layers K..L-1 into the record), so no hook runs per layer: one per decoder layer would cost every forward and
    every decode step a few microseconds of host time per layer.

    Hooks only observe: outputs are unchanged. The image inputs that `generate` hands to `get_image_features` before
    the prefill (it does not pass them to `forward`) are caught by a wrapper with the original signature, because
    `generate` routes its keyword arguments by `inspect.signature(get_image_features)`. A wrapper of
    `get_video_features` marks the calls made for videos (`CallState.video_features`): their frames are not images.
    """
    adapter, ledger = state.adapter, state.ledger
    base = adapter.base_model
    state.num_decoder_layers = len(adapter.decoder_layers)
    instrumentation = _Instrumentation(state, base)
    ledger.replace_method(base, "get_image_features", instrumentation.get_image_features)
    if callable(getattr(base, "get_video_features", None)):
        ledger.replace_method(base, "get_video_features", instrumentation.get_video_features)
    ledger.add_forward_pre_hook(base, instrumentation.before_forward, "record image inputs", with_kwargs=True)
    ledger.add_forward_hook(base, instrumentation.after_forward, "close forward record", with_kwargs=True,
                            always_call=True)
