"""Checkpoints of the compressors: only what vtc added to a model (every name holding `vtc_`).

    vtc.mark_only_vtc_trainable(model)        # the backbone frozen, the compressor trainable
    vtc.save_pretrained(model, "ckpt/")       # vtc_config.json + vtc_weights.safetensors
    model = vtc.load_pretrained(model, "ckpt/", processor=processor)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..api import compress, get_config, is_compressed, unpatch
from ..config import VTCConfig
from ..errors import ConfigError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "CheckpointWriter", "is_vtc_name", "load_pretrained", "load_vtc_weights",
           "mark_only_vtc_trainable", "save_pretrained", "unwrap", "vtc_state_dict"]

CONFIG_NAME = "vtc_config.json"
WEIGHTS_NAME = "vtc_weights.safetensors"
_VTC_MARK = "vtc_"


def is_vtc_name(name: str) -> bool:
    """Whether a parameter, buffer or module name is (inside) something vtc added."""
    return any(part.startswith(_VTC_MARK) for part in name.split("."))


def unwrap(model: nn.Module) -> nn.Module:
    """The model `vtc.compress` patched, inside the wrappers training puts around it.

    Follows `torch.compile` (`_orig_mod`), DDP and FSDP (`module`) and PEFT (`get_base_model()`) until it reaches a
    compressed model; a model without any of them is returned as it is.
    """
    seen = set()
    while not is_compressed(model) and id(model) not in seen:
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
                          hint="Call vtc.compress(model, config) first; with every component off nothing trains.")
    return trainable


def vtc_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors vtc added to `model` (or to the compressed model inside a training wrapper), by their
    `state_dict` name in the compressed model."""
    model = unwrap(model)
    return {name: tensor for name, tensor in model.state_dict().items() if is_vtc_name(name)}


def save_pretrained(model: nn.Module, path: str | os.PathLike,
                    tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the compression config and the vtc tensors of a compressed model to the folder `path`.

    Only vtc's tensors are written (the backbone stays where it was loaded from), as `vtc_weights.safetensors`,
    next to `vtc_config.json`.

    `model` may be wrapped for training (PEFT, DDP, FSDP, `torch.compile`): the names are those of the compressed
    model inside, so the checkpoint loads into the plain model. `tensors`: the vtc tensors by those names, where the
    live model does not hold them whole (gathered from FSDP or ZeRO-3 shards); default: the model's own.

    Returns:
        The folder.
    """
    model = unwrap(model)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    get_config(model).save(folder / CONFIG_NAME)
    # safetensors refuses views and shared storage: store each tensor as its own contiguous copy
    if tensors is None:  # the live model holds them whole (one process, DDP, ZeRO-1/2)
        tensors = vtc_state_dict(model)
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


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
            save_pretrained(model, save_directory, tensors=given or None)
        return result


def load_pretrained(model: nn.Module, path: str | os.PathLike, processor: Any = None) -> nn.Module:
    """Compress `model` with the config saved in `path` and load the saved vtc tensors into it.

    Args:
        model: the same kind of model the checkpoint was saved from, uncompressed or compressed (it is re-compressed).
        path: a folder written by `save_pretrained`.
        processor: the model's processor, patched as by `compress`.

    Raises:
        FileNotFoundError: `path` lacks `vtc_config.json`.
        ConfigError: the saved tensors do not fit the model (missing, unexpected or wrongly shaped); the model is
            left uncompressed-as-before in that case.
    """
    folder = Path(path)
    config = VTCConfig.load(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    saved = load_file(str(weights)) if weights.exists() else {}
    compress(model, config, processor=processor)
    try:
        expected = vtc_state_dict(model)
        missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        wrong = sorted(n for n in set(expected) & set(saved) if expected[n].shape != saved[n].shape)
        if missing or unexpected or wrong:
            problems = [f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
                        if names]
            raise ConfigError("path", str(folder), "a vtc checkpoint saved from this kind of model",
                              hint="; ".join(problems) + ".")
        model.load_state_dict(saved, strict=False)
    except BaseException:
        unpatch(model)
        raise
    return model


def load_vtc_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy the vtc tensors saved in the folder `path` into an already compressed (possibly wrapped) `model`, in
    place (an optimizer holding the parameters keeps training them); return the names loaded."""
    inner = unwrap(model)
    saved = load_file(str(Path(path) / WEIGHTS_NAME), device=str(next(inner.parameters()).device))
    inner.load_state_dict(saved, strict=False)
    return sorted(saved)
