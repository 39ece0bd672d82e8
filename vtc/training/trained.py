"""Load what a training run wrote, in one call: the backbone, the compression, the trained weights, the processor.

    model, processor = vtc.load_trained("runs/pvtc-r4/")

A run's output folder (`vtc train`, or a `VTCTrainer` run given `write_training_record`) holds:

* `vtc_config.json` + `vtc_weights.safetensors`: the compression and its trained tensors (every stage);
* `config.json` + `model.safetensors`: the fine-tuned backbone, for the `full` stage;
* `adapter_config.json` + `adapter_model.safetensors`: the PEFT LoRA adapter, for the `lora` stage;
* the processor's files, saved before compression (uncompressed settings);
* `vtc_training.json`: the stage, the objective, the base model it started from, and what the run measured.

`TrainedRun.read(folder)` reads what a run folder holds without loading a model (`vtc ablate --trained`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CONFIG_NAME
from ..config import VTCConfig
from ..errors import ConfigError, VTCError
from ..pretrained import load_pretrained

__all__ = ["REFERENCE_PREFIX", "TRAINING_RECORD", "TrainedRun", "load_trained", "resolve_model", "run_stage",
           "write_training_record"]

TRAINING_RECORD = "vtc_training.json"
#: A base model given as `reference:FAMILY`: the reference model shipped with vtc.
REFERENCE_PREFIX = "reference:"
_PEFT_CONFIG = "adapter_config.json"


def resolve_model(spec: str | os.PathLike) -> Path:
    """The checkpoint folder of a model given as a folder or as `reference:FAMILY`."""
    text = str(spec)
    if text.startswith(REFERENCE_PREFIX):
        from ..tasks.reference import reference_path

        return reference_path(text[len(REFERENCE_PREFIX):])
    return Path(text)


def write_training_record(folder: str | os.PathLike, *, base_model: str | os.PathLike, stage: str,
                          **details: Any) -> Path:
    """Write `vtc_training.json`: what `load_trained` needs (the base model, the stage) and any `details`."""
    base = str(base_model)
    if not base.startswith(REFERENCE_PREFIX):
        base = str(Path(base).resolve())
    path = Path(folder) / TRAINING_RECORD
    path.write_text(json.dumps({"base_model": base, "stage": stage, **details}, indent=2) + "\n")
    return path


def run_stage(folder: Path, record: dict[str, Any]) -> str:
    """The stage a run folder was trained in: its record's, else told by the files it holds."""
    if "stage" in record:
        return record["stage"]
    if (folder / _PEFT_CONFIG).is_file():
        return "lora"
    return "full" if (folder / "config.json").is_file() else "compressor"


def _has_processor(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def load_trained(folder: str | os.PathLike, *, processor: Any = None, base_model: str | os.PathLike | None = None,
                 merge_lora: bool = False, dtype: torch.dtype = torch.float32,
                 attn_implementation: str = "sdpa") -> tuple[nn.Module, Any]:
    """The trained, compressed model of a run's output folder, and its (patched) processor.

    Args:
        folder: the run's output folder.
        processor: the processor to patch; default: the one saved in `folder`, else the base model's.
        base_model: the folder (or `reference:FAMILY`) of the backbone the run started from; default: the one its
            `vtc_training.json` names. Not needed for a `full` run, whose folder holds the fine-tuned backbone.
        merge_lora: for a `lora` run, merge the adapter into the weights (`merge_and_unload`) and return the plain
            compressed model instead of a `peft.PeftModel`.
        dtype, attn_implementation: as for `from_pretrained`.

    Raises:
        FileNotFoundError: `folder` holds no vtc checkpoint.
        ConfigError: a compressor or lora run whose base model is neither recorded nor given.
    """
    from ..loading import load_model, load_processor

    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME}: not the output folder of a vtc training run")
    record_path = folder / TRAINING_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    stage = run_stage(folder, record)
    base = base_model if base_model is not None else record.get("base_model")
    if stage != "full" and base is None:
        raise ConfigError("base_model", None, "the backbone the run started from",
                          hint=f"{folder} has no {TRAINING_RECORD} naming it; pass base_model=FOLDER.")
    model = load_model(folder if stage == "full" else resolve_model(base), dtype=dtype,
                       attn_implementation=attn_implementation)
    if processor is None:
        if _has_processor(folder):
            processor = load_processor(folder)
        elif base is not None:
            processor = load_processor(resolve_model(base))
        else:
            raise ConfigError("processor", None, "the model's processor",
                              hint=f"{folder} holds no processor files (give the Trainer processing_class=, an "
                                   "unpatched processor, to save one) and no base model is recorded; pass "
                                   "processor=.")
    load_pretrained(model, folder, processor=processor)
    if stage == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder)
        if merge_lora:
            model = model.merge_and_unload()
    return model.eval(), processor


@dataclass(frozen=True)
class TrainedRun:
    """A training run's output folder (`vtc train`, `vtc.training.train_run`), as read without loading a model:
    its compression (`vtc_config.json`) and what its `vtc_training.json` records.

    Args:
        folder: the run's output folder.
        config: the configuration it compresses with.
        stage: `compressor`, `full` or `lora`.
        steps: the optimizer steps it ran, if recorded.
        objective: `lm` or `distill`, if recorded.
        base_model: the backbone it started from as recorded: `reference:FAMILY` or a folder; `None` if not recorded.
    """

    folder: Path
    config: VTCConfig
    stage: str
    steps: int | None = None
    objective: str | None = None
    base_model: str | None = None

    @classmethod
    def read(cls, folder: str | os.PathLike) -> TrainedRun:
        """Read the run folder `folder`.

        Raises:
            ValueError: it is not a run folder (no `vtc_config.json`), or a file in it does not parse; the message
                says which and what to give instead.
        """
        folder = Path(folder)
        if not folder.exists():
            raise ValueError(f"no such folder: {folder}; give the output folder of a training run (vtc train)")
        if not folder.is_dir():
            raise ValueError(f"{folder} is a file; give the output folder of a training run (vtc train)")
        if not (folder / CONFIG_NAME).is_file():
            raise ValueError(f"{folder} has no {CONFIG_NAME}, so it is not the output folder of a training run; give "
                             "a folder written by vtc train (or vtc.save_pretrained)")
        try:
            config = VTCConfig.load(folder / CONFIG_NAME)
        except (ValueError, TypeError, VTCError) as error:
            raise ValueError(f"{folder / CONFIG_NAME} is not a vtc configuration: {' '.join(str(error).split())}"
                             ) from None
        record_path = folder / TRAINING_RECORD
        try:
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        except ValueError as error:
            raise ValueError(f"{record_path} is not JSON: {error}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{record_path} is not a training record (a JSON object)")
        stage = run_stage(folder, record)
        needed = {"full": ("config.json", "the fine-tuned backbone"), "lora": (_PEFT_CONFIG, "the LoRA adapter")}
        if stage in needed and not (folder / needed[stage][0]).is_file():
            raise ValueError(f"{folder} is a {stage} run but has no {needed[stage][0]} ({needed[stage][1]}); give the "
                             "complete output folder of the run")
        steps = record.get("steps")
        return cls(folder, config, stage, steps if isinstance(steps, int) else None, record.get("objective"),
                   record.get("base_model"))

    @property
    def trained(self) -> str:
        """How it was trained, for the table: e.g. `compressor, 7 steps, lm`."""
        parts = [self.stage]
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.objective:
            parts.append(str(self.objective))
        return ", ".join(parts)

    @property
    def suffix(self) -> str:
        """What its row name adds to the configuration's: e.g. `+full 1500 steps`."""
        return f"+{self.stage}" + ("" if self.steps is None else f" {self.steps} steps")

    def base_folder(self) -> Path | None:
        """The folder of the backbone it started from (a reference model's for `reference:FAMILY`), resolved; `None`
        where the record names none or an unknown reference family."""
        if self.base_model is None:
            return None
        try:
            return resolve_model(self.base_model).resolve()
        except ConfigError:  # reference:FAMILY of a family without a reference model
            return None

    def reference_family(self) -> str | None:
        """The family whose reference model it started from (`reference:FAMILY`, or that model's folder); else
        `None`."""
        from ..tasks.reference import reference_families, reference_path

        base = self.base_folder()
        return next((family for family in reference_families() if reference_path(family).resolve() == base), None)

    def load(self, **options: Any) -> tuple[nn.Module, Any]:
        """`load_trained(folder, merge_lora=True, **options)`: the trained, compressed model (a LoRA adapter merged
        into the weights) and its processor."""
        return load_trained(self.folder, merge_lora=True, **options)
