"""`vtc train`: train a compressed model (`vtc.training.run.train_run`) on the samples `--data` names, mixed evenly
(`vtc.training.data`), with accuracy before and after, side by side. `torchrun --nproc_per_node N -m vtc.cli train`
for several processes."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .arguments import (
    REFERENCE_PREFIX,
    TASK_PREFIX,
    UsageError,
    eval_data,
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
    trainer_checkpoint,
    vtc_config_file,
)
from .common import add_model_option, empty_files_of, quiet_transformers

__all__ = ["TRAIN_EVAL_SIZE", "add_parser", "run"]

#: Test samples per synthetic task that `vtc train` evaluates before and after training without `--eval-size`.
TRAIN_EVAL_SIZE = 64
STAGE_CHOICES = ("compressor", "full", "lora")  # vtc.training.STAGES, spelled here so that --help imports nothing
OBJECTIVE_CHOICES = ("lm", "distill")  # vtc.training.OBJECTIVES (importing it needs the Trainer)
CHECKPOINT_PREFIX = "checkpoint-"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


def _is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` run, or a run of one process."""
    return int(os.environ.get("RANK", "0")) == 0


def _latest_checkpoint(folder: Path) -> Path | None:
    """The `checkpoint-N` folder of `folder` with the highest N (what the Trainer resumes from), or None."""
    steps = [(int(path.name[len(CHECKPOINT_PREFIX):]), path) for path in folder.glob(CHECKPOINT_PREFIX + "*")
             if path.is_dir() and path.name[len(CHECKPOINT_PREFIX):].isdigit()] if folder.is_dir() else []
    return max(steps)[1] if steps else None


def _check_arguments(args: argparse.Namespace) -> None:
    """What argparse cannot tell alone: options that go together, the batch split, the output folder, the extras."""
    import importlib.util

    if args.objective != "distill":
        for name in ("lm_weight", "temperature"):
            if getattr(args, name) is not None:
                raise UsageError(f"argument --{name.replace('_', '-')}: applies to --objective distill only")
    if args.train_vision and args.stage == "compressor":
        raise UsageError("argument --train-vision: the compressor stage trains only vtc's parameters; use --stage "
                         "full or lora to train the vision tower too")
    if args.eval_size == 0 and args.eval_data:
        raise UsageError("argument --eval-size: 0 skips the evaluation, but --eval-data names samples to evaluate")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch % (processes * args.grad_accum):
        unit = processes * args.grad_accum
        raise UsageError(f"argument --batch: the global batch {args.batch} does not split into {processes} "
                         f"process(es) x {args.grad_accum} accumulation step(s); give a multiple of {unit}")
    # Under torchrun every process checks the output folder before the Trainer forms the process group, and the main
    # process writes into it only after that: no process sees another's files.
    output: Path = args.output
    if args.resume is True:
        if _latest_checkpoint(output) is None:
            raise UsageError(f"argument --resume: {output} holds no {CHECKPOINT_PREFIX}* folder to resume from; give "
                             "the checkpoint's folder (--resume FOLDER), or train with --save-steps N to write some")
    elif output.is_dir() and any(output.iterdir()) and not args.force and args.resume is None:
        raise UsageError(f"argument --output: {output} is not empty; give a new or empty folder, add --force to write "
                         "into it, or --resume to continue its latest checkpoint")
    needed = [("accelerate", "the Trainer")] + ([("peft", "--stage lora")] if args.stage == "lora" else [])
    for package, what in needed:
        if importlib.util.find_spec(package) is None:
            raise UsageError(f"{what} needs {package}, which is not installed: pip install 'vtc[train]' (or pip "
                             f"install {package})")


def _spelling(data: Path | str) -> str:
    """A value of --data or --eval-data as the command line spells it."""
    return str(data) if isinstance(data, Path) else TASK_PREFIX + data


def _format_accuracy_table(before: dict[str, float], after: dict[str, float]) -> str:
    """`task  before  after  change`, one row per task, the accuracies side by side."""
    width = max(len("task"), *map(len, before))
    lines = [f"{'task':<{width}}  before   after  change"]
    for task, accuracy in before.items():
        final = after.get(task, float("nan"))
        lines.append(f"{task:<{width}}  {accuracy:6.3f}  {final:6.3f}  {final - accuracy:+6.3f}")
    return "\n".join(lines)


def _report(args: argparse.Namespace, record: dict[str, Any], evaluated: bool) -> str:
    before, after = record.get("before"), record.get("after")
    if before and after:
        table = _format_accuracy_table(before, after)
    elif not evaluated:
        table = ("no evaluation: --eval-size 0" if args.eval_size == 0 else
                 "no evaluation: --data names no task:NAME; give --eval-data FILE.jsonl|task:NAME")
    else:
        table = "no evaluation"
    loss = record.get("loss_first_last")
    loss_text = f"  loss {loss[0]:.4g} -> {loss[1]:.4g}" if loss else ""
    lines = [
        table,
        "",
        f"steps {record['steps']}  seconds per step {record['seconds_per_step']:.3g}  trainable parameters "
        f"{record['trainable_parameters']:,}  (stage {args.stage}, objective {args.objective}){loss_text}",
        f"wrote {args.output}",
        f"load it with:  model, processor = vtc.load_trained({json.dumps(str(args.output))})",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from vtc.training.data import evaluation_samples, evaluation_sources, training_samples

    _check_arguments(args)
    # The data before the model: a file that does not load fails before anything is built or written.
    with empty_files_of("--data"):
        train_samples = training_samples(args.data, task_size=args.steps * args.batch, seed=args.seed)
    eval_sources = [] if args.eval_size == 0 else evaluation_sources(args.data, args.eval_data)
    with empty_files_of("--eval-data"):
        eval_samples = evaluation_samples(eval_sources, task_size=args.eval_size or TRAIN_EVAL_SIZE,
                                          file_size=args.eval_size)
    quiet_transformers()

    from vtc.training.run import RunSpec, end_distributed, train_run

    spec = RunSpec(
        model=str(args.model) if isinstance(args.model, Path) else REFERENCE_PREFIX + args.model,
        config=args.config, stage=args.stage, output=str(args.output), objective=args.objective,
        steps=args.steps, batch_size=args.batch, gradient_accumulation=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup, seed=args.seed, save_steps=args.save_steps,
        resume=str(args.resume) if isinstance(args.resume, Path) else args.resume,
        lm_weight=0.0 if args.lm_weight is None else args.lm_weight,
        temperature=1.0 if args.temperature is None else args.temperature,
        train_vision=args.train_vision, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.no_progress,
        extra={"data": [_spelling(data) for data in args.data], "eval_data": list(map(_spelling, eval_sources)),
               "eval_samples": len(eval_samples), "seed": args.seed},
    )
    finished = False
    try:
        record = train_run(spec, train_samples, eval_samples)
        if _is_main_process():
            print(_report(args, record, evaluated=bool(eval_samples)))
        finished = True
    finally:
        end_distributed(wait_for_every_process=finished)
    return 0


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    train = commands.add_parser("train", parents=parents,
                                help="train a compressed model; accuracy before and after, side by side")
    add_model_option(train, "the backbone: a local checkpoint folder, or a reference model shipped with vtc")
    train.add_argument("--data", type=eval_data, required=True, action="append", metavar="FILE.jsonl|task:NAME",
                       help="training samples, repeatable (mixed evenly): a synthetic task gives --steps x --batch "
                            "samples of its train split (seeded by --seed); a JSONL file (vtc.tasks.load_jsonl) "
                            "gives all of its samples")
    train.add_argument("--config", type=vtc_config_file, required=True, metavar="FILE.json",
                       help="the compression to train (VTCConfig.save writes one)")
    train.add_argument("--stage", choices=STAGE_CHOICES, required=True,
                       help="what trains: compressor (only vtc's parameters), full (also the language model and "
                            "the projector) or lora (LoRA on the language model, the compressor in full)")
    train.add_argument("--objective", choices=OBJECTIVE_CHOICES, default="lm",
                       help="lm: cross-entropy on the answer tokens; distill: KL from the same model uncompressed "
                            "(default lm)")
    train.add_argument("--steps", type=positive_int, required=True, metavar="N", help="optimizer steps")
    train.add_argument("--output", type=output_folder, required=True, metavar="FOLDER",
                       help="where the trained model goes (new or empty); vtc.load_trained loads it")
    train.add_argument("--eval-data", type=eval_data, action="append", metavar="FILE.jsonl|task:NAME",
                       help="samples scored before and after training, repeatable (default: the test split of "
                            "every task:NAME of --data)")
    train.add_argument("--eval-size", type=non_negative_int, metavar="N",
                       help=f"test samples per task (default {TRAIN_EVAL_SIZE}); of a file, its first N (default "
                            "all); 0: no evaluation")
    train.add_argument("--batch", type=positive_int, default=16, metavar="N",
                       help="the global batch: samples per optimizer step over all processes and accumulation "
                            "steps (default 16)")
    train.add_argument("--grad-accum", type=positive_int, default=1, metavar="N",
                       help="gradient accumulation steps per optimizer step (default 1)")
    train.add_argument("--lr", type=positive_float, metavar="X",
                       help="peak learning rate of the cosine schedule (default: 1e-3 for compressor and lora, "
                            "2e-4 for full)")
    train.add_argument("--warmup", type=non_negative_int, default=10, metavar="N",
                       help="linear warm-up steps (default 10, at most --steps)")
    train.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                       help="the seed of the training samples, the data order and the new weights (default 0)")
    train.add_argument("--save-steps", type=non_negative_int, default=0, metavar="N",
                       help="write a checkpoint-N folder into --output every N steps (default 0: only the end)")
    train.add_argument("--resume", type=trainer_checkpoint, nargs="?", const=True, metavar="CHECKPOINT",
                       help="continue from the latest checkpoint-N in --output, or from the folder given (a "
                            "checkpoint-N folder); --steps counts from the start of the run")
    train.add_argument("--lm-weight", type=non_negative_float, metavar="X",
                       help="with --objective distill: add X times the LM loss (default 0)")
    train.add_argument("--temperature", type=positive_float, metavar="X",
                       help="with --objective distill: the distillation temperature (default 1)")
    train.add_argument("--train-vision", action="store_true",
                       help="also train the vision tower (stages full and lora)")
    train.add_argument("--bf16", action="store_true", help="train in bfloat16 mixed precision")
    train.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in the backward pass: less memory, more time")
    train.add_argument("--force", action="store_true",
                       help="write into an --output that is not empty (files of the same names are replaced)")
    train.add_argument("--no-progress", action="store_true",
                       help="no progress bars (the Trainer still prints its log lines)")
    train.set_defaults(func=run)
