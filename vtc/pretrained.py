"""Save and load a compressor: only what vtc added to a model (every name holding `vtc_`).

    vtc.mark_only_vtc_trainable(model)        # the backbone frozen, the compressor trainable
    vtc.save_pretrained(model, "ckpt/")       # vtc_config.json + vtc_weights.safetensors
    model = vtc.load_pretrained(model, "ckpt/", processor=processor)

The folder format lives in `vtc.checkpoint`; these are the verbs on top of it that compress and check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import compress, get_config, unpatch
from .checkpoint import read_checkpoint, unwrap, vtc_state_dict, write_checkpoint
from .errors import ConfigError

__all__ = ["load_pretrained", "save_pretrained"]


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

    Raises:
        UnsupportedModelError: `model` is not compressed by vtc.
    """
    model = unwrap(model)
    return write_checkpoint(model, get_config(model), path, tensors)


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
    config, saved = read_checkpoint(folder)
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
