"""Which parameters train: the stages of compressor training.

    model = prepare_stage(model, "compressor")   # only what vtc added (the paper's first stage)
    model = prepare_stage(model, "full")         # + the language model and the native projector; vision frozen
    model = prepare_stage(model, "lora")         # PEFT LoRA on the language model + the compressor in full

`lora` returns a `peft.PeftModel` around the compressed model (install the `train` extra); the others return the
model itself. Every stage keeps the vision tower frozen unless `train_vision=True`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..api import get_adapter_of, get_config, is_compressed
from ..checkpoint import is_vtc_name, mark_only_vtc_trainable, unwrap
from ..errors import ConfigError

__all__ = ["STAGES", "lora_target_modules", "prepare_stage", "trainable_parameter_names"]

STAGES = ("compressor", "full", "lora")


def _owned_names(model: nn.Module, module: nn.Module) -> set[str]:
    """The full parameter names (in `model`) of the parameters of `module`."""
    owned = {id(p) for p in module.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in owned}


def _sides(model: nn.Module) -> tuple[set[str], set[str]]:
    """The language side (the language model, the output head and, where the model still uses it, the native
    projector: what the paper's second stage trains) and the native projector's names where PVTC replaced it."""
    adapter = get_adapter_of(model)
    names = _owned_names(model, adapter.language_model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        names |= _owned_names(model, head)
    try:
        projector = _owned_names(model, adapter.projector)
    except NotImplementedError:
        projector = set()
    # PVTC projects with its own module (a copy of the projector for init="warm", trained as vtc's): the native
    # projector then takes no part in the forward pass, and a trainable parameter without a gradient stops DDP
    if get_config(model).pvtc is not None:
        return names, projector - names
    return names | projector, set()


def lora_target_modules(model: nn.Module) -> list[str]:
    """The full names of the language model's linear layers (what `lora` adapts), never a vtc module."""
    adapter = get_adapter_of(model)
    prefix = next(name for name, module in model.named_modules() if module is adapter.language_model)
    return [f"{prefix}.{name}" for name, module in adapter.language_model.named_modules()
            if isinstance(module, nn.Linear) and not is_vtc_name(name)]


def prepare_stage(model: nn.Module, stage: str, *, train_vision: bool = False, lora_config: Any = None) -> nn.Module:
    """Set which parameters of a compressed `model` train in `stage`; return the model to train.

    Args:
        model: a model compressed with `vtc.compress`.
        stage: `"compressor"`, `"full"` or `"lora"`.
        train_vision: also train the vision tower (every parameter of the model).
        lora_config: a `peft.LoraConfig` for `lora`; default: rank 16, alpha 32, dropout 0 on every linear layer of
            the language model (`lora_target_modules`).

    Returns:
        `model` itself, or for `lora` a `peft.PeftModel` wrapping it (save it with `save_pretrained`, merge it with
        `merge_and_unload()`; the compressed model stays compressed inside).

    Raises:
        ConfigError: an unknown stage, or a model that is not compressed.
    """
    if stage not in STAGES:
        raise ConfigError("stage", stage, f"one of {', '.join(STAGES)}")
    if not is_compressed(model):
        raise ConfigError("model", type(model).__name__, "a model compressed with vtc.compress",
                          hint="Call vtc.compress(model, config, processor=processor) before choosing a stage.")
    if stage == "compressor":
        if train_vision:
            raise ConfigError("train_vision", train_vision, "False for the compressor stage",
                              hint="The compressor stage trains only vtc's parameters; use stage='full'.")
        mark_only_vtc_trainable(model)
        return model
    language, unused = _sides(model)
    for name, parameter in model.named_parameters():
        vision = name not in language and name not in unused and not is_vtc_name(name)
        parameter.requires_grad_(is_vtc_name(name) or (stage == "full" and name in language)
                                 or (train_vision and vision))
    if stage == "full":
        return model
    return _wrap_lora(model, lora_config, train_vision)


def _wrap_lora(model: nn.Module, lora_config: Any, train_vision: bool) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # an optional extra
        raise ConfigError("stage", "lora", "PEFT installed", hint="pip install 'vtc[train]' (or pip install peft).") \
            from exc
    if lora_config is None:
        lora_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=lora_target_modules(model))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    peft_model = get_peft_model(model, lora_config)
    # PEFT freezes everything but its adapters: the compressor (and the vision tower if asked) train in full again.
    inner = unwrap(peft_model)
    for name, parameter in inner.named_parameters():
        if name in trainable:
            parameter.requires_grad_(True)
    return peft_model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """The names of the parameters that will train, as `model.named_parameters` gives them."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
