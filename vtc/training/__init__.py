"""Training the compressors, and their checkpoints.

    from vtc.training import VTCCollator, VTCTrainer, prepare_stage
    model = prepare_stage(vtc.compress(model, config, processor=processor), "compressor")
    VTCTrainer(model=model, args=args, train_dataset=samples, data_collator=VTCCollator(processor)).train()
    model, processor = vtc.load_trained("out/")

The Trainer integration (`VTCTrainer`, `VTCCheckpointCallback`) needs `accelerate`, and the `lora` stage `peft`:
`pip install 'vtc[train]'`. They are imported on first use, so `import vtc` never needs them.
"""

from __future__ import annotations

from typing import Any

from ..checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointWriter,
    is_vtc_name,
    load_vtc_weights,
    mark_only_vtc_trainable,
    unwrap,
    vtc_state_dict,
)
from ..pretrained import load_pretrained, save_pretrained
from .collator import IGNORE_INDEX, VTCCollator
from .data import evaluation_samples, evaluation_sources, interleave, training_samples
from .losses import distillation_loss, lm_loss
from .stages import STAGES, lora_target_modules, prepare_stage, trainable_parameter_names
from .trained import TRAINING_RECORD, TrainedRun, load_trained

__all__ = [
    "CONFIG_NAME",
    "IGNORE_INDEX",
    "OBJECTIVES",
    "STAGES",
    "TRAINING_RECORD",
    "WEIGHTS_NAME",
    "CheckpointWriter",
    "TrainedRun",
    "VTCCheckpointCallback",
    "VTCCollator",
    "VTCTrainer",
    "distillation_loss",
    "evaluation_samples",
    "evaluation_sources",
    "interleave",
    "is_vtc_name",
    "lm_loss",
    "load_pretrained",
    "load_trained",
    "load_vtc_weights",
    "lora_target_modules",
    "mark_only_vtc_trainable",
    "prepare_stage",
    "save_pretrained",
    "trainable_parameter_names",
    "training_samples",
    "unwrap",
    "vtc_state_dict",
]

_TRAINER_NAMES = ("OBJECTIVES", "VTCCheckpointCallback", "VTCTrainer")


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:  # transformers' Trainer needs accelerate: import it only when asked for
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
