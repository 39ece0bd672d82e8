"""The `--model_args` of `python -m lmms_eval --model vtc`, checked before anything is loaded.

    ModelArgs.parse("pretrained=reference:FAMILY,config=pvtc4.json,batch_size=8")

Every mistake (an unknown key, a value that does not parse, a folder or file that does not exist, keys that do not
go together) is a `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import VTCConfig
from ..errors import ConfigError, VTCError
from ..training.trained import REFERENCE_PREFIX, TrainedRun, resolve_model

__all__ = ["DTYPES", "KEYS", "ModelArgs", "parse_arg_string"]

#: The `dtype=` values, by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: What each key of `--model_args` takes.
KEYS = {
    "pretrained": "a local checkpoint folder, or reference:FAMILY (a reference model shipped with vtc)",
    "trained": "the output folder of a vtc training run (vtc train)",
    "config": "a vtc configuration file (VTCConfig.save writes one); none: uncompressed",
    "batch_size": "requests per forward or generate call",
    "dtype": "one of " + ", ".join(DTYPES),
    "device": "a torch device, e.g. cpu, cuda, cuda:1 (default: cuda where available, else cpu)",
    "attn_implementation": "an attention implementation of transformers: sdpa (default), eager, flash_attention_2...",
    "stats": "a JSONL file for each request's visual tokens and prefill FLOPs",
}
# Passed by lmms-eval itself (from --max_batch_size); it only matters for `--batch_size auto`, which vtc does not take.
_HARNESS_KEYS = ("max_batch_size",)


def parse_arg_string(text: str) -> dict[str, str]:
    """`key=value,key=value` as a dict of strings (the values are converted by `ModelArgs.parse`).

    Raises:
        ConfigError: an item without `=`, or a key given twice.
    """
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("model_args", item, "key=value items separated by commas",
                              hint=f"The keys are {', '.join(KEYS)}.")
        if key in values:
            raise ConfigError(key, value, "one value", hint=f"{key} is given twice in --model_args.")
        values[key] = value.strip()
    return values


def _positive_int(key: str, value: Any) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        hint = "lmms-eval's batch_size=auto is not supported: give a number." if text.startswith("auto") else None
        raise ConfigError(key, value, "a positive integer", hint=hint)
    return int(text)


def _existing(key: str, value: Any, kind: str) -> Path:
    path = Path(str(value)).expanduser()
    exists = path.is_dir() if kind == "folder" else path.is_file()
    if not exists:
        raise ConfigError(key, str(value), KEYS[key], hint=f"There is no {kind} {path}.")
    return path


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ModelArgs:
    """What `--model_args` asks for, checked.

    Args:
        pretrained: the checkpoint folder or `reference:FAMILY`; for a `trained` run, the backbone it started from
            where its record names none (or another one).
        trained: a `vtc train` output folder (its configuration and trained weights come with it).
        config: the configuration to compress with, from the `config=` file; `None`: uncompressed.
        batch_size: requests per call of the model.
        dtype, device, attn_implementation: how the model is loaded.
        stats: where each request's visual tokens and prefill FLOPs are written (JSONL), or `None`.
    """

    pretrained: str | None = None
    trained: Path | None = None
    config: VTCConfig | None = None
    batch_size: int = 1
    dtype: torch.dtype = torch.float32
    device: str = field(default_factory=_default_device)
    attn_implementation: str = "sdpa"
    stats: Path | None = None

    @classmethod
    def parse(cls, values: str | Mapping[str, Any]) -> ModelArgs:
        """Check `values` (a `key=value,...` string or a dict, as lmms-eval passes them).

        Raises:
            ConfigError: an unknown key or a bad value; the message names the key, the value and what it takes.
        """
        if isinstance(values, str):
            values = parse_arg_string(values)
        values = {key: value for key, value in values.items() if key not in _HARNESS_KEYS}
        unknown = [key for key in values if key not in KEYS]
        if unknown:
            raise ConfigError("model_args", f"{unknown[0]}={values[unknown[0]]}", "a key among " + ", ".join(KEYS))
        options: dict[str, Any] = {}
        if values.get("pretrained") not in (None, ""):
            options["pretrained"] = cls._pretrained(str(values["pretrained"]))
        if values.get("trained") not in (None, ""):
            options["trained"] = cls._trained(values["trained"])
        if "trained" not in options and "pretrained" not in options:
            raise ConfigError("pretrained", None, KEYS["pretrained"],
                              hint="Give pretrained=FOLDER, pretrained=reference:FAMILY or trained=RUN_FOLDER.")
        if values.get("config") not in (None, ""):
            if "trained" in options:
                raise ConfigError("config", values["config"], "no config with trained=",
                                  hint="A trained run compresses with the configuration it was trained with.")
            options["config"] = cls._config(values["config"])
        if "batch_size" in values:
            options["batch_size"] = _positive_int("batch_size", values["batch_size"])
        if "dtype" in values:
            if str(values["dtype"]) not in DTYPES:
                raise ConfigError("dtype", values["dtype"], KEYS["dtype"])
            options["dtype"] = DTYPES[str(values["dtype"])]
        if values.get("device") not in (None, ""):
            options["device"] = cls._device(values["device"])
        if "attn_implementation" in values:
            options["attn_implementation"] = str(values["attn_implementation"])
        if values.get("stats") not in (None, ""):
            options["stats"] = Path(str(values["stats"])).expanduser()
        return cls(**options)

    @staticmethod
    def _pretrained(text: str) -> str:
        if text.startswith(REFERENCE_PREFIX):
            try:
                resolve_model(text)
            except ConfigError as error:
                raise ConfigError("pretrained", text, KEYS["pretrained"], hint=str(error)) from None
            return text
        return str(_existing("pretrained", text, "folder"))

    @staticmethod
    def _trained(value: Any) -> Path:
        try:
            return TrainedRun.read(str(value)).folder
        except ValueError as error:
            raise ConfigError("trained", str(value), KEYS["trained"], hint=" ".join(str(error).split())) from None

    @staticmethod
    def _config(value: Any) -> VTCConfig:
        path = _existing("config", value, "file")
        try:
            return VTCConfig.load(path)
        except (ValueError, TypeError, VTCError) as error:
            raise ConfigError("config", str(value), KEYS["config"], hint=" ".join(str(error).split())) from None

    @staticmethod
    def _device(value: Any) -> str:
        try:
            device = torch.device(str(value))
        except RuntimeError:
            raise ConfigError("device", value, KEYS["device"]) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", value, KEYS["device"], hint="This machine has no CUDA device.")
        return str(device)

    def load(self) -> tuple[torch.nn.Module, Any]:
        """The model (on `device`, in `dtype`, in eval mode, compressed with `config` or as its run trained it) and
        its processor (patched when the compression changes the number of visual tokens)."""
        from ..api import compress
        from ..loading import load_checkpoint
        from ..training.trained import load_trained

        load_options = {"dtype": self.dtype, "attn_implementation": self.attn_implementation}
        if self.trained is not None:
            model, processor = load_trained(self.trained, base_model=self.pretrained, merge_lora=True,
                                            **load_options)
            return model.to(self.device), processor
        try:
            model, processor = load_checkpoint(resolve_model(self.pretrained), **load_options)
        except (OSError, ValueError) as error:  # transformers' reasons; say which argument they are about
            raise OSError(f"pretrained={self.pretrained} does not load: {' '.join(str(error).split())}") from error
        model.to(self.device)
        if self.config is not None:
            compress(model, self.config, processor=processor)
        return model, processor
