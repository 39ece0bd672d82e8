"""Training a compressed model with the Hugging Face `Trainer`: the loss on the answers, distillation, checkpoints.

    trainer = VTCTrainer(model=model, args=TrainingArguments(...), train_dataset=samples,
                         data_collator=VTCCollator(processor), objective="lm")
    trainer.train()                    # every checkpoint folder and the output folder hold the vtc files

Everything else is the Trainer's own: `torchrun` / `accelerate launch` for several processes, gradient
accumulation, bf16, gradient checkpointing, logging, `resume_from_checkpoint`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..api import disabled
from ..checkpoint import WEIGHTS_NAME, is_vtc_name, load_vtc_weights, unwrap
from ..errors import ConfigError
from ..pretrained import save_pretrained
from .losses import distillation_loss, lm_loss
from .trained import write_training_record

__all__ = ["OBJECTIVES", "VTCCheckpointCallback", "VTCTrainer", "infer_stage"]

OBJECTIVES = ("lm", "distill")


class VTCCheckpointCallback(TrainerCallback):
    """Write the vtc checkpoint (`vtc.save_pretrained`) into every checkpoint folder and, at the end, the output
    folder with a `vtc_training.json` naming the backbone and the stage (so `vtc.load_trained` needs nothing
    else); only the main process writes."""

    def __init__(self, trainer: Trainer | None = None):
        self.trainer = trainer

    def _gathered(self) -> dict[str, torch.Tensor] | None:
        """The vtc tensors gathered from the shards, or `None` where the main process holds them whole.

        Called on every process: under FSDP or ZeRO-3 the gather is a collective all of them must join.
        """
        trainer = self.trainer
        if trainer is None:
            return None
        zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
        if not (trainer.is_fsdp_enabled or zero3):
            return None
        gathered = trainer.accelerator.get_state_dict(trainer.model_wrapped) or {}  # whole tensors on the main one
        return {name.removeprefix("base_model.model."): tensor for name, tensor in gathered.items()
                if is_vtc_name(name)}

    def on_save(self, args, state, control, model=None, **kwargs):
        tensors = self._gathered()
        if state.is_world_process_zero and model is not None:
            save_pretrained(model, Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}",
                            tensors=tensors)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        tensors = self._gathered()
        if state.is_world_process_zero and model is not None:
            save_pretrained(model, args.output_dir, tensors=tensors)
            # What `vtc.load_trained` needs to rebuild the model: where the backbone came from, and the stage.
            base = getattr(unwrap(model).config, "name_or_path", "")
            if base:
                write_training_record(args.output_dir, base_model=base, stage=infer_stage(model),
                                      steps=state.global_step)
        return control


def infer_stage(model) -> str:
    """The stage a model is set up for, told by what trains: a PEFT adapter, the backbone too, or vtc's alone."""
    if callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config"):
        return "lora"
    trains_backbone = any(p.requires_grad and not is_vtc_name(n) for n, p in unwrap(model).named_parameters())
    return "full" if trains_backbone else "compressor"


class VTCTrainer(Trainer):
    """A `transformers.Trainer` for compressed models: the answer-token loss or distillation, and vtc checkpoints.

    Args:
        objective: `"lm"`, cross-entropy on the labelled answer tokens; `"distill"`, KL from the same model with
            compression switched off (`vtc.disabled`; no second copy of the weights) at the answer positions, plus
            `lm_weight` times the LM loss. The teacher sees `teacher_inputs` when the batch has them (a
            `VTCCollator` with a `teacher_processor`, needed whenever the processor is patched: PVTC, RVTC), else
            the student's own inputs (LVTC alone).
        lm_weight: the LM loss's weight in `distill`.
        temperature: the distillation temperature.
        Every other argument is the `Trainer`'s.

    Losses are sums over answer tokens divided by the number of answer tokens in the whole optimizer step (across
    gradient accumulation and processes, as transformers counts them), so one process and many give the same
    gradients for the same global batch.
    """

    # The loss below is normalised by `num_items_in_batch`, the answer tokens of the whole optimizer step.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, objective: str = "lm", lm_weight: float = 0.0, temperature: float = 1.0,
                 **kwargs: Any):
        if objective not in OBJECTIVES:
            raise ConfigError("objective", objective, f"one of {', '.join(OBJECTIVES)}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError("temperature", temperature, "a positive number")
        if not (isinstance(lm_weight, (int, float)) and lm_weight >= 0):
            raise ConfigError("lm_weight", lm_weight, "a non-negative number")
        super().__init__(*args, **kwargs)
        self.objective, self.lm_weight, self.temperature = objective, float(lm_weight), float(temperature)
        # Count the answer tokens of every step (transformers does so only for models it knows accept loss kwargs).
        self.model_accepts_loss_kwargs = True
        if not any(isinstance(cb, VTCCheckpointCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(VTCCheckpointCallback(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        teacher_inputs = inputs.pop("teacher_inputs", None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        if self.objective == "lm":
            loss = lm_loss(outputs.logits, labels, num_items_in_batch)
        else:
            teacher = dict(teacher_inputs) if teacher_inputs is not None else dict(inputs, labels=labels)
            teacher_labels = teacher.pop("labels")
            with torch.no_grad(), disabled(unwrap(model)):
                teacher_logits = model(**teacher).logits
            loss = distillation_loss(outputs.logits, labels, teacher_logits, teacher_labels,
                                     temperature=self.temperature, num_items=num_items_in_batch)
            if self.lm_weight:
                loss = loss + self.lm_weight * lm_loss(outputs.logits, labels, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # The count spans every process, and DDP averages the gradients over the processes.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load the backbone through `from_pretrained`, then the vtc weights (the backbone files do not have them).

        transformers writes a checkpoint's backbone in the model's original key format (`save_original_format`, e.g.
        `language_model.model.*` in some families), which the Trainer's plain `load_state_dict` does not map back: every key
        would be missing and a fine-tuned backbone would silently restart from the weights it was loaded with.
        """
        target = model if model is not None else self.model
        inner = unwrap(target)
        backbone = any(os.path.isfile(os.path.join(resume_from_checkpoint, name))
                       for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
        if inner is target and backbone and not self.is_fsdp_enabled:  # PEFT and FSDP: the Trainer's own loading
            saved = type(inner).from_pretrained(resume_from_checkpoint, dtype=next(inner.parameters()).dtype)
            state = {name: tensor for name, tensor in saved.state_dict().items() if not is_vtc_name(name)}
            self._issue_warnings_after_load(inner.load_state_dict(state, strict=False))
            del saved, state
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        if os.path.isfile(os.path.join(resume_from_checkpoint, WEIGHTS_NAME)):
            load_vtc_weights(target, resume_from_checkpoint)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        # The vtc tensors are missing from the backbone's files by design; `_load_from_checkpoint` loads them.
        missing = [name for name in load_result.missing_keys if not is_vtc_name(name)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing)
                                           if hasattr(load_result, "_replace") else load_result)
