"""One training run, as `vtc train` does it: load, compress, choose the stage, train with the Trainer, evaluate
before and after, write an output folder that `vtc.load_trained` loads.

    result = train_run(RunSpec(model="reference:FAMILY", config=config, stage="full", steps=200, output="out/"),
                       train_samples, eval_samples)
    result["before"], result["after"]           # vtc.evaluate accuracies

Works unchanged under `torchrun` / `accelerate launch`: the Trainer splits every global batch over the processes,
and only the main process evaluates and writes.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..api import compress
from ..checkpoint import unwrap
from ..config import VTCConfig
from ..errors import ConfigError
from ..tasks import Sample
from .collator import VTCCollator
from .stages import STAGES, prepare_stage, trainable_parameter_names
from .trained import resolve_model, write_training_record

__all__ = ["DEFAULT_LR", "RunSpec", "train_run"]

#: The learning rate of each stage when none is given: a new compressor learns fast; a trained backbone is only
#: adjusted.
DEFAULT_LR = {"compressor": 1e-3, "full": 2e-4, "lora": 1e-3}


@dataclass
class RunSpec:
    """What to train and how. `batch_size` is the global batch (split over the processes of a distributed run)."""

    model: str
    config: VTCConfig
    stage: str
    output: str
    objective: str = "lm"
    steps: int = 100
    batch_size: int = 16
    gradient_accumulation: int = 1
    lr: float | None = None
    warmup_steps: int = 10
    schedule: str = "cosine"
    seed: int = 0
    save_steps: int = 0
    resume: str | bool | None = None
    lm_weight: float = 0.0
    temperature: float = 1.0
    train_vision: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    progress: bool = True
    eval_batch_size: int = 32
    extra: dict[str, Any] = field(default_factory=dict)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _evaluate(model, processor, samples: Sequence[Sample] | None, spec: RunSpec) -> dict[str, Any] | None:
    if not samples or not _is_main_process():
        return None
    from ..evaluate import evaluate

    by_task: dict[str, list[Sample]] = {}
    for sample in samples:
        by_task.setdefault(sample.task, []).append(sample)
    return {task: evaluate(unwrap(model), processor, group, batch_size=spec.eval_batch_size,
                           progress=spec.progress).accuracy
            for task, group in by_task.items()}


def _training_arguments(spec: RunSpec):
    from transformers import TrainingArguments

    world = _world_size()
    if spec.batch_size % (world * spec.gradient_accumulation):
        raise ConfigError("batch_size", spec.batch_size,
                          f"a multiple of processes x gradient accumulation ({world} x {spec.gradient_accumulation})")
    return TrainingArguments(
        output_dir=spec.output,
        max_steps=spec.steps,
        per_device_train_batch_size=spec.batch_size // (world * spec.gradient_accumulation),
        gradient_accumulation_steps=spec.gradient_accumulation,
        learning_rate=spec.lr if spec.lr is not None else DEFAULT_LR[spec.stage],
        lr_scheduler_type=spec.schedule,
        warmup_steps=min(spec.warmup_steps, spec.steps // 10),  # a short run is not all warm-up
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=max(1, min(10, spec.steps // 10)),
        save_strategy="steps" if spec.save_steps else "no",
        save_steps=spec.save_steps or 500,
        seed=spec.seed,
        data_seed=spec.seed,
        report_to="none",
        remove_unused_columns=False,  # the items are vtc.tasks.Samples, not dicts of columns
        dataloader_num_workers=0,
        bf16=spec.bf16,
        activation_checkpointing=spec.gradient_checkpointing,
        disable_tqdm=not spec.progress,
        use_cpu=not torch.cuda.is_available(),
        # Vision towers may hold parameters their model never uses (a final norm after the layer it reads): with the tower
        # trainable DDP must look for them, or it stops at the second step. Otherwise every trainable parameter
        # takes part (prepare_stage sees to it), and the search is skipped.
        ddp_find_unused_parameters=spec.train_vision,
    )


def train_run(spec: RunSpec, train_samples: Sequence[Sample], eval_samples: Sequence[Sample] | None = None
              ) -> dict[str, Any]:
    """Train `spec.model` compressed by `spec.config` on `train_samples`; evaluate on `eval_samples` before and
    after; write `spec.output`. Returns the record also written to `vtc_training.json`.

    Raises:
        ConfigError: an unknown stage, a batch that does not split over the processes, bad training options.
    """
    from ..loading import load_checkpoint
    from .trainer import VTCTrainer

    if spec.stage not in STAGES:
        raise ConfigError("stage", spec.stage, f"one of {', '.join(STAGES)}")
    args = _training_arguments(spec)
    torch.manual_seed(spec.seed)
    model, processor = load_checkpoint(resolve_model(spec.model))
    output = Path(spec.output)
    uncompressed_processor = copy.deepcopy(processor)  # the processor's own settings and placeholders
    teacher_processor = None
    if spec.objective == "distill" and (spec.config.pvtc is not None or spec.config.rvtc is not None):
        teacher_processor = uncompressed_processor
    compress(model, spec.config, processor=processor)
    model = prepare_stage(model, spec.stage, train_vision=spec.train_vision)  # LoRA starts at B=0: same outputs
    if _is_main_process():  # only once the run can start: a config the model refuses writes nothing
        output.mkdir(parents=True, exist_ok=True)
        uncompressed_processor.save_pretrained(output)
    before = _evaluate(model, processor, eval_samples, spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    trainer = VTCTrainer(
        model=model, args=args, train_dataset=list(train_samples),
        data_collator=VTCCollator(processor, teacher_processor=teacher_processor),
        objective=spec.objective, lm_weight=spec.lm_weight, temperature=spec.temperature,
    )
    if not spec.progress:  # no bar, and no per-step log lines printed in its place
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    start, cpu_start = time.perf_counter(), time.process_time()
    outcome = trainer.train(resume_from_checkpoint=spec.resume)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if spec.stage != "compressor":  # the fine-tuned backbone (full) or the LoRA adapter (lora), with the vtc files
        trainer.save_model(str(output))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    after = _evaluate(model, processor, eval_samples, spec)
    record = {
        "objective": spec.objective,
        "config": spec.config.to_dict(),
        "steps": trainer.state.global_step,
        "batch_size": spec.batch_size,
        "processes": _world_size(),
        "learning_rate": args.learning_rate,
        "trainable_parameters": trainable,
        "trainable_tensors": len(trainable_parameter_names(model)),
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,  # this process's CPU time: the cost on a machine shared with others
        "torch_threads": torch.get_num_threads(),
        "seconds_per_step": seconds / max(1, outcome.global_step),
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
        "before": before,
        "after": after,
        **spec.extra,
    }
    if _is_main_process():
        write_training_record(output, base_model=spec.model, stage=spec.stage, **_jsonable(record))
    return {**record, "stage": spec.stage, "model": model, "processor": processor, "trainer": trainer}


def end_distributed(*, wait_for_every_process: bool) -> None:
    """Destroy the process group a multi-process run set up, while the interpreter is still whole: Gloo's worker
    threads, left to the interpreter's shutdown, can abort a process whose run succeeded ("terminate called without
    an active exception"). Call it last, where the program owns its process (the CLI, a script under torchrun).

    After a successful run every process first waits for the others (rank 0 still writes its report while the rest
    are done): a process that tears its connections down while a peer still holds them open can abort the same way.
    After a failure it does not wait: the peers may never arrive.

    What still holds the group goes first: a DDP-wrapped model in a reference cycle (a Trainer and its model hold
    several) lives until the cyclic garbage collector runs, which may be during the interpreter's shutdown, and Gloo
    then aborts the same way when that model's reducer lets go of the group."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait_for_every_process:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(record, default=lambda value: asdict(value) if hasattr(value, "__dataclass_fields__")
                                 else str(value)))

