"""The checkpoint format of the compressors: only what vtc added to a model (every name holding `vtc_`).

A vtc checkpoint is a folder with `vtc_config.json` (the `VTCConfig`) and `vtc_weights.safetensors` (the tensors vtc
added, by their `state_dict` name in the compressed model). This module reads and writes it; the public verbs
`vtc.save_pretrained` / `vtc.load_pretrained` (`vtc.pretrained`) compress and load on top of it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ._state import STATE_ATTR
from .config import VTCConfig
from .errors import ConfigError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "CheckpointWriter", "is_vtc_name", "load_vtc_weights",
           "mark_only_vtc_trainable", "read_checkpoint", "unwrap", "vtc_state_dict", "write_checkpoint"]

CONFIG_NAME = "vtc_config.json"
WEIGHTS_NAME = "vtc_weights.safetensors"
_VTC_MARK = "vtc_"


def is_vtc_name(name: str) -> bool:
    """Whether a parameter, buffer or module name is (inside) something vtc added."""
    return any(part.startswith(_VTC_MARK) for part in name.split("."))


def _is_compressed(model: nn.Module) -> bool:
    return STATE_ATTR in model.__dict__


def unwrap(model: nn.Module) -> nn.Module:
    """The model `vtc.compress` patched, inside the wrappers training puts around it.

    Follows `torch.compile` (`_orig_mod`), DDP and FSDP (`module`) and PEFT (`get_base_model()`) until it reaches a
    compressed model; a model without any of them is returned as it is.
    """
    seen = set()
    while not _is_compressed(model) and id(model) not in seen:
        seen.add(id(model))
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
    return model


def mark_only_vtc_trainable(model: nn.Module) -> list[str]:
    """Freeze every parameter of `model` except those vtc added; return the names left trainable.

    Raises:
        ConfigError: the model carries no vtc parameter (nothing would train).
    """
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_vtc_name(name))
        if parameter.requires_grad:
            trainable.append(name)
    if not trainable:
        raise ConfigError("model", type(model).__name__, "a model compressed with a trainable component (e.g. PVTC)",
                          hint="Call vtc.compress(model, config) with a component that adds tensors first (PVTC, "
                               "or LVTC restore='add'); no component, a pruning baseline or LVTC's delta or "
                               "upsample restore add none: train the language model itself (the full or lora "
                               "stage).")
    return trainable


def vtc_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors vtc added to `model` (or to the compressed model inside a training wrapper), by their
    `state_dict` name in the compressed model."""
    model = unwrap(model)
    return {name: tensor for name, tensor in model.state_dict().items() if is_vtc_name(name)}


def write_checkpoint(model: nn.Module, config: VTCConfig, path: str | os.PathLike,
                     tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `config` and the vtc tensors of a compressed (possibly wrapped) model to the folder `path`; return the
    folder. `vtc.save_pretrained` documents the arguments."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / CONFIG_NAME)
    # safetensors refuses views and shared storage: store each tensor as its own contiguous copy
    if tensors is None:  # the live model holds them whole (one process, DDP, ZeRO-1/2)
        tensors = vtc_state_dict(model)
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def read_checkpoint(path: str | os.PathLike) -> tuple[VTCConfig, dict[str, torch.Tensor]]:
    """The config and the tensors of the vtc checkpoint folder `path` (no tensors when it holds no weights file).

    Raises:
        FileNotFoundError: `path` lacks `vtc_config.json`.
    """
    folder = Path(path)
    config = VTCConfig.load(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    return config, (load_file(str(weights)) if weights.exists() else {})


class CheckpointWriter:
    """`model.save_pretrained` of a compressed model: a clean backbone checkpoint plus the vtc files beside it.

    The backbone is written by transformers' own `save_pretrained` without any `vtc_` tensor, so
    `Cls.from_pretrained(folder)` loads the plain model; `vtc_config.json` and `vtc_weights.safetensors` in the same
    folder compress it again: `vtc.load_pretrained(Cls.from_pretrained(folder), folder, processor=processor)`.
    """

    def __init__(self, state: Any):
        self.state = state

    def save_pretrained(self, original, save_directory, *args, state_dict=None, **kwargs):
        model = self.state.adapter.model
        if state_dict is None:
            state_dict = model.state_dict()
        backbone = {name: tensor for name, tensor in state_dict.items() if not is_vtc_name(name)}
        result = original(save_directory, *args, state_dict=backbone, **kwargs)
        if kwargs.get("is_main_process", True):
            # The Trainer passes the state dict it gathered from the shards (FSDP FULL_STATE_DICT): vtc's come from it
            given = {name: tensor for name, tensor in state_dict.items() if is_vtc_name(name)}
            write_checkpoint(model, self.state.config, save_directory, tensors=given or None)
        return result


def load_vtc_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy the vtc tensors saved in the folder `path` into an already compressed (possibly wrapped) `model`, in
    place (an optimizer holding the parameters keeps training them); return the names loaded."""
    inner = unwrap(model)
    saved = load_file(str(Path(path) / WEIGHTS_NAME), device=str(next(inner.parameters()).device))
    inner.load_state_dict(saved, strict=False)
    return sorted(saved)
