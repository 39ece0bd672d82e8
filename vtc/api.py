"""The public verbs: compress a loaded model in place, inspect it, undo it.

    model = vtc.compress(model, vtc.VTCConfig(...), processor=processor)
    vtc.last_stats(model)
    with vtc.disabled(model):      # this thread runs the uncompressed model (e.g. a distillation teacher)
        ...
    vtc.unpatch(model)

`compress` patches the given instances (never transformers' classes or modules) and records every change in a
ledger on `model._vtc_state`; `unpatch` replays the ledger backwards. A `compress` that fails rolls back whatever it
had already done, so the model is exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from torch import nn

from ._compile_guards import require_hook_guards
from ._state import STATE_ATTR, VTCState, install_instrumentation
from .checkpoint import CheckpointWriter
from .config import VTCConfig
from .errors import ConfigError, UnsupportedModelError
from .patch import PatchLedger
from .registry import get_adapter

__all__ = ["compress", "disabled", "get_adapter_of", "get_config", "is_compressed", "last_stats", "unpatch"]


#: Set on a processor that a compressed model patched: two models patching one processor could not be unpatched in
#: any order (the second would restore the first one's patches).
PROCESSOR_MARK = "_vtc_patched_by"


def _installers(config: VTCConfig):
    """The install function of every enabled component, in the order they must be applied.

    RVTC first (it decides how many tiles an image gets), then PVTC or pruning (how many tokens each tile becomes),
    then LVTC (what the decoder does with them). Each installer validates against the model before it changes
    anything and records every change in `state.ledger`.
    """
    from . import _install_prune, _install_pvtc, lvtc, rvtc

    if config.rvtc is not None:
        yield rvtc.install
    if config.pvtc is not None:
        yield _install_pvtc.install
    if config.prune is not None:
        yield _install_prune.install
    if config.lvtc is not None:
        yield lvtc.install


def _state(model: nn.Module) -> VTCState | None:
    return model.__dict__.get(STATE_ATTR)


def _require_state(model: nn.Module) -> VTCState:
    state = _state(model)
    if state is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not compressed by vtc; call vtc.compress(model, config) first"
        )
    return state


def compress(model: nn.Module, config: VTCConfig, processor: Any = None) -> nn.Module:
    """Patch `model` (and `processor`) in place with the components enabled in `config`; return the same model.

    Calling it on an already-compressed model first undoes the previous compression, so calling it twice equals
    calling it once.

    Args:
        model: a loaded `...ForConditionalGeneration` of a supported family (`vtc.supported_models()`).
        config: which components to apply; a component set to `None` is off.
        processor: the model's processor. Required whenever a component changes the number of visual tokens the
            model produces (PVTC, RVTC, pruning): the processor is patched to emit the matching number of
            placeholders.

    Under PVTC the model's own projector, which the compressed model no longer runs, is frozen (`requires_grad`
    False) until `unpatch`, so that a plain `DistributedDataParallel` over every trainable parameter trains.

    Raises:
        ConfigError: `config` is invalid, or invalid for this model.
        UnsupportedModelError: the model's family or class is not supported.
        UnsupportedVersionError: the installed transformers is outside the tested range.

    Under `torch.compile`: the first `compress` in a process sets `torch._dynamo.config.skip_nnmodule_hook_guards`
    to False and resets dynamo, so that code compiled for a module without vtc's hooks never runs one with them
    (see `vtc/_compile_guards.py`); compiled models recompile once.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"vtc.compress expects a torch nn.Module, got {type(model).__name__}")
    if not isinstance(config, VTCConfig):
        raise ConfigError("config", config, "a vtc.VTCConfig", hint="e.g. vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))")
    adapter = get_adapter(model)  # raises before anything is touched
    if is_compressed(model):
        unpatch(model)
    prunes_tokens = config.prune is not None and not config.prune.in_llm  # inside the decoder: no placeholder change
    changes_counts = config.pvtc is not None or config.rvtc is not None or prunes_tokens
    patches_processor = processor is not None and changes_counts
    if patches_processor and hasattr(processor, PROCESSOR_MARK):
        raise ConfigError(
            "processor", type(processor).__name__, "a processor no other compressed model has patched",
            hint=f"It is patched by {getattr(processor, PROCESSOR_MARK)}; give each compressed model its own "
                 "processor (load it again, or copy.deepcopy it before compressing any model), or vtc.unpatch the "
                 "other model first.",
        )

    ledger = PatchLedger()
    state = VTCState(config=config, adapter=adapter, ledger=ledger, processor=processor)
    try:
        ledger.set_attr(model, STATE_ATTR, state)
        if patches_processor:
            ledger.set_attr(processor, PROCESSOR_MARK, f"a compressed {type(model).__name__} (id {id(model):#x})")
        for install in _installers(config):
            install(model, state)
        # Last: the recording wrappers and hooks then observe what the components produce (compressed counts and
        # lengths), and the components' own hooks run first.
        install_instrumentation(model, state)
        if callable(getattr(model, "save_pretrained", None)):
            # not suspendable: saving inside `vtc.disabled` still writes a clean backbone and the vtc files
            ledger.replace_method(model, "save_pretrained", CheckpointWriter(state).save_pretrained,
                                  suspendable=False)
    except BaseException:
        ledger.rollback()
        raise
    require_hook_guards()  # compiled code that ignores the new hooks must not run this model
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo `compress`: the model and its processor are exactly as before (weights, submodules, hooks, attributes,
    each parameter's `requires_grad`).

    A model that is not compressed is returned unchanged.
    """
    state = _state(model)
    if state is not None:
        state.ledger.rollback()  # the first entry set `_vtc_state`, so the rollback also removes it
    return model


def is_compressed(model: nn.Module) -> bool:
    """Whether `model` currently carries a vtc compression."""
    return _state(model) is not None


def disabled(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Run a compressed model uncompressed inside the block, in the calling thread only; yields the model.

        teacher_inputs = plain_processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad(), vtc.disabled(model):
            teacher_logits = model(**teacher_inputs).logits      # exactly the unpatched model's logits

    Inside the block every hook and method override vtc installed on the model (or a module inside it) passes
    through, so `forward` and `generate` compute what the unpatched model computes, with the same weights (no
    second copy) and with or without gradients. The parameters vtc added (PVTC's projector, LVTC's gate) go unused
    (the model's own projector runs, still frozen as PVTC left it), and `vtc.last_stats` is not updated. Other threads sharing the model keep running it compressed; blocks nest;
    compression is back on when the block exits, also when it raises.

    The processor stays patched (its patched settings are shared by every thread): inputs for the uncompressed model
    must come from an unpatched processor, loaded again or `copy.deepcopy`-ed before `vtc.compress` patched it.
    Inputs from the patched processor carry the compressed placeholder count, and the uncompressed model refuses
    them with its own error about image tokens and features that do not match.

    Raises:
        UnsupportedModelError: `model` is not compressed by vtc (raised by the call itself, before any block).
    """
    return _suspended(_require_state(model).ledger, model)


@contextmanager
def _suspended(ledger: PatchLedger, model: nn.Module) -> Iterator[nn.Module]:
    with ledger.suspended():
        yield model


def get_config(model: nn.Module) -> VTCConfig:
    """The `VTCConfig` the model was compressed with."""
    return _require_state(model).config


def get_adapter_of(model: nn.Module):
    """The adapter a compressed model was patched through (for components and advanced users)."""
    return _require_state(model).adapter


def last_stats(model: nn.Module) -> dict[str, Any]:
    """What the calling thread's last prefill on a compressed model looked like (empty before its first forward).

    A prefill is a forward that starts with an empty cache: a plain forward, or the first step of `generate`.
    Decode steps do not overwrite it; they are counted in `decode_steps`. Each thread sees its own last prefill, so
    threads sharing one model (a server's request threads) never read each other's.

    Returns:
        `visual_tokens`: per sample, the visual tokens at the language model's input;
        `layer_seq_lens`: per decoder layer, the sequence length it processed;
        `sequence_length`: the prompt length; `visual_layout`: the per-sample visual layout (or `None` when the
        forward had no image inputs); `decode_steps`: cached decode steps since the prefill; `kept`: under a
        pruning method that selects tokens (`random`, `divprune`, `visionzip`), per sample, per image (per tile
        where the model sees tiles), the indices into its native visual tokens (row-major) that reached the
        language model, in placeholder order (VisionZip's contextual tokens by the token each is built on); under
        a method inside the decoder (`fastv`, `dart`, `pdrop`), those its pruned layers kept (a list per stage for
        `pdrop`), in order; else `None`; `pruned_items`: under a pruning method before the language model, per
        sample, per image (per tile where the model sees tiles), its `(native, kept)` visual token counts; else
        `None`.
    """
    return _require_state(model).stats()
