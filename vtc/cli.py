"""The `vtc` console script.

    vtc info                          supported families, versions, attention backends
    vtc ablate                        accuracy, visual tokens and FLOPs of every configuration of the grid on the
                                      reference models shipped with vtc, on every synthetic task
    vtc ablate --model FOLDER --data task:NAME|FILE.jsonl
                                      the same on a local checkpoint folder (nothing is downloaded), with latency
    vtc ablate --trained RUN [RUN ...]
                                      the same, with trained runs (vtc train output folders) as rows of their own
                                      next to the training-free row of their configuration
    vtc make-tiny FAMILY FOLDER       write a tiny random model of FAMILY and its processor to FOLDER
    vtc eval --model FOLDER --data task:NAME|FILE.jsonl
                                      accuracy, visual tokens and prefill FLOPs of a model on samples with answers
    vtc train --model FOLDER|reference:FAMILY --data task:NAME|FILE.jsonl --config FILE.json --stage STAGE
              --steps N --output FOLDER
                                      train a compressed model (the compressor, the whole language side or LoRA),
                                      with accuracy before and after; `torchrun --nproc_per_node N -m vtc.cli train`
                                      for several processes
    vtc --version
    vtc COMMAND --help                the options of a command

Every argument is checked before a model is built or anything is measured. An error is one line on stderr,
`vtc: error: <what is wrong and what to do>`, with exit status 2 for a wrong command line and 1 for a failure while
running (a checkpoint folder that does not load, a vtc error); Ctrl-C exits with 130. `--debug` (or the environment
variable VTC_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import VTCError

__all__ = ["main"]


# ------------------------------------------------------------------------------------------------------------- info
def attention_backends() -> dict[str, bool]:
    """Which attention implementations transformers can use in this environment."""
    import torch
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return {
        "eager": True,
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "flash_attention_2": bool(is_flash_attn_2_available()),
        "flash_attention_3": bool(is_flash_attn_3_available()),
        "flex_attention": hasattr(torch.nn.attention, "flex_attention"),
    }


def cmd_info(_args: argparse.Namespace) -> int:
    import torch
    import transformers

    import vtc

    print(f"vtc {vtc.__version__}  python {platform.python_version()}  torch {torch.__version__}  "
          f"transformers {transformers.__version__}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"cuda device: {cuda}")
    print("supported model types: " + ", ".join(vtc.supported_models()))
    backends = attention_backends()
    print("attention backends: " + ", ".join(f"{k} ({'yes' if v else 'no'})" for k, v in backends.items()))
    return 0


# ------------------------------------------------------------------------------------------------------------- ablate
def _environment(device: str, dtype: str, attn: str) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "vtc": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "dtype": dtype, "attn_implementation": attn, "threads": torch.get_num_threads(),
    }


def _load_checkpoint(args: argparse.Namespace):
    """`(model, processor)` of the checkpoint folder `--model`, on `--device` in `--dtype`."""
    import torch

    from vtc.loading import load_checkpoint

    try:
        model, processor = load_checkpoint(args.model, dtype=getattr(torch, args.dtype),
                                           attn_implementation=args.attn)
    except (OSError, ValueError) as error:  # transformers' reasons; say which argument they are about
        raise OSError(f"--model {args.model} does not load: {error}") from error
    return model.to(args.device), processor


def _reference_models(args: argparse.Namespace, families: Sequence[str]):
    """Yield `(family, model, processor)` for the reference model of each family, one at a time."""
    import torch

    from vtc import tasks

    for family in families:
        model, processor = tasks.reference_model(family, attn_implementation=args.attn)
        yield family, model.to(device=args.device, dtype=getattr(torch, args.dtype)), processor


def _load_samples(data: Path | str, size: int | None, default_size: int):
    """The samples of `--data` (a JSONL file: its first `size`, default all; a task: `size` of its test split)."""
    from vtc import tasks

    if isinstance(data, Path):
        samples = tasks.load_jsonl(data)[:size]
    else:
        samples = tasks.synthetic(data, "test", size or default_size, seed=0)
    if not samples:
        raise UsageError(f"argument --data: {data} holds no samples")
    return samples


def _quiet_transformers() -> None:
    # transformers draws its own progress bars while it reads and writes weights; vtc draws one for the measurement.
    from transformers.utils import logging

    logging.disable_progress_bar()


#: The latency options: they apply to --model only, as the default reports no latency.
LATENCY_OPTIONS = ("batch", "repeats", "warmup", "image_sizes")
DEFAULT_REPEATS, DEFAULT_WARMUP = 5, 1
NO_LATENCY_REASON = "the default reports no latency: the reference models are too small to time"
#: Test samples per synthetic task that `vtc ablate` evaluates without `--size`.
ABLATE_TASK_SIZE = 64


def _check_ablate_arguments(args: argparse.Namespace) -> None:
    """What argparse cannot tell alone: which options go together."""
    if args.model is None:
        for name in LATENCY_OPTIONS:
            if getattr(args, name) is not None:
                raise UsageError(f"argument --{name.replace('_', '-')}: applies to --model only; {NO_LATENCY_REASON}")
        if args.data is not None:
            raise UsageError("argument --data: applies to --model only; the default evaluates the reference models "
                             "on every synthetic task")
    elif args.data is None:
        raise UsageError("argument --data: required with --model: the samples to score it on, FILE.jsonl or "
                         "task:NAME (e.g. task:majority-colour)")
    for run in args.trained or ():  # each joins the rows of the model it started from
        if run.base_model is None:
            raise UsageError(f"argument --trained: {run.folder} records no base model (its vtc_training.json is "
                             "missing or names none), so there are no rows of its model to join")
        if args.model is not None and run.base_folder() != args.model.resolve():
            raise UsageError(f"argument --trained: {run.folder} was trained from {run.base_model}, not from --model "
                             f"{args.model}; give runs trained from --model")
        if args.model is None and run.reference_family() is None:
            raise UsageError(f"argument --trained: {run.folder} was trained from {run.base_model}, not from a "
                             f"reference model shipped with vtc; compare it with its own base: vtc ablate --model "
                             f"{run.base_model} --data task:NAME --trained {run.folder}")


def cmd_ablate(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from vtc import ablate, tasks
    from vtc.plots import plotting_available

    _check_ablate_arguments(args)
    _quiet_transformers()
    torch.manual_seed(0)
    grid = {name: config for name, config in ablate.default_grid().items()
            if args.configs is None or name in {ablate.BASELINE, *args.configs}}
    runs = list({run.folder.resolve(): run for run in args.trained or ()}.values())  # a folder given twice: once
    # The data, then the checkpoint, before the progress bar is drawn: what does not load fails before anything runs.
    if args.model:  # the data is one task
        data = {str(args.data) if isinstance(args.data, str) else args.data.stem:
                _load_samples(args.data, args.size, ABLATE_TASK_SIZE)}
        model, processor = _load_checkpoint(args)
        models, num_models = [(model.config.model_type, model, processor)], 1
    else:
        # With --trained: the families of the runs, and those --families names.
        families = list(dict.fromkeys([*(args.families or ([] if runs else tasks.reference_families())),
                                       *(run.reference_family() for run in runs)]))
        data = {task: _load_samples(task, args.size, ABLATE_TASK_SIZE) for task in tasks.available()}
        models, num_models = _reference_models(args, families), len(families)
    rows = []
    with tqdm(total=num_models * len(grid) * sum(map(len, data.values())), desc="vtc ablate", unit="sample",
              disable=args.quiet, file=sys.stderr) as bar:
        for family, model, processor in models:
            bar.set_postfix_str(family)
            rows += ablate.evaluate_grid(model, processor, grid, data, family=family, batch_size=args.batch_size,
                                         progress=bar.update)
    latency_setup = _measure_latency(args, model, processor, grid, rows) if args.model else None
    if runs:
        checkpoint_family = family if args.model else None
        del models, model, processor  # the trained models load with their own copy of the backbone
        rows = ablate.join_trained(rows, _evaluate_trained_runs(args, runs, data, checkpoint_family))
    print(ablate.format_table(rows))
    print()
    print(ablate.legend(rows, latency_setup))

    out_dir = args.out or Path("vtc_results") / time.strftime("ablate-%Y%m%d-%H%M%S")
    jsonl, csv_path = ablate.write_rows(rows, out_dir, _environment(args.device, args.dtype, args.attn))
    print(f"\nwrote {jsonl} and {csv_path}")
    if plotting_available():
        print(f"wrote {ablate.write_pareto(rows, out_dir / 'pareto.png')}")
    else:
        print('for the accuracy-against-cost picture (pareto.png): pip install "vtc[plot]"')
    return 0


def _evaluate_trained_runs(args: argparse.Namespace, runs, data, checkpoint_family: str | None) -> list:
    """The rows of the trained runs, each loaded in turn (`vtc.training.load_trained`, LoRA merged) on `--device` in
    `--dtype` and scored on `data`; their family is `checkpoint_family` (--model's) or their reference model's."""
    import torch
    from tqdm.auto import tqdm

    from vtc import ablate

    rows = []
    with tqdm(total=len(runs) * sum(map(len, data.values())), desc="vtc ablate trained", unit="sample",
              disable=args.quiet, file=sys.stderr) as bar:
        for run in runs:
            name = ablate.trained_row_name(run, runs)
            bar.set_postfix_str(name)
            try:
                model, processor = run.load(dtype=getattr(torch, args.dtype), attn_implementation=args.attn)
            except (OSError, ValueError) as error:  # say which argument they are about
                raise OSError(f"--trained {run.folder} does not load: {error}") from error
            rows += ablate.evaluate_trained(model.to(args.device), processor, run, data,
                                            family=checkpoint_family or run.reference_family(), name=name,
                                            batch_size=args.batch_size, progress=bar.update)
            del model, processor
    return rows


def _measure_latency(args: argparse.Namespace, model, processor, grid, rows) -> str:
    """Time every configuration's prefill on the checkpoint (`vtc.bench.measure_configs`), join the timings to
    `rows`, and return what was timed, for the legend."""
    from tqdm.auto import tqdm

    from vtc import ablate
    from vtc.bench import example_inputs, measure_configs

    sizes = args.image_sizes or [(640, 480)]
    batch = args.batch or len(sizes)
    repeats = args.repeats or DEFAULT_REPEATS
    warmup = DEFAULT_WARMUP if args.warmup is None else args.warmup

    def real_inputs(proc):
        return example_inputs(proc, sizes, batch=batch)

    with tqdm(total=len(grid) * repeats, desc="vtc ablate latency", unit="prefill", disable=args.quiet,
              file=sys.stderr) as bar:
        ablate.add_latency(rows, measure_configs(model, processor, grid, real_inputs, family=model.config.model_type,
                                                 repeats=repeats, warmup=warmup, progress=bar.update))
    images = ",".join(f"{w}x{h}" for w, h in sizes)
    return f"{repeats} rounds of one prefill of {batch} synthetic image(s) {images} on {args.device}"


# ---------------------------------------------------------------------------------------------------------- make-tiny
def cmd_make_tiny(args: argparse.Namespace) -> int:
    from vtc.testing import build_tiny_model, build_tiny_processor

    folder: Path = args.folder
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"argument FOLDER: {folder} is a file; give the folder to write the checkpoint into")
    if folder.is_dir() and any(folder.iterdir()) and not args.force:
        raise UsageError(f"argument FOLDER: {folder} is not empty; give a new or empty folder, or add --force to "
                         "write into it")
    _quiet_transformers()
    build_tiny_model(args.family, seed=args.seed).save_pretrained(folder)
    build_tiny_processor(args.family).save_pretrained(folder)
    print(f"wrote a tiny random {args.family} model (seed {args.seed}) and its processor to {folder}")
    print(f"measure it with: vtc ablate --model {folder}")
    return 0


# ------------------------------------------------------------------------------------------------------------- eval
def _eval_model(source: Path | str):
    """`(model, processor)` for `--model`: a checkpoint folder, or the family of a shipped reference model."""
    from vtc import tasks
    from vtc.loading import load_checkpoint

    if not isinstance(source, Path):
        return tasks.reference_model(source)
    try:
        return load_checkpoint(source)
    except (OSError, ValueError) as error:  # transformers' reasons; say which argument they are about
        raise OSError(f"--model {source} does not load: {error}") from error


def cmd_eval(args: argparse.Namespace) -> int:
    import vtc

    _quiet_transformers()
    # The data first: a file that does not load fails before the model is read.
    samples = _load_samples(args.data, args.size, EVAL_TASK_SIZE)
    model, processor = _eval_model(args.model)
    if args.config is not None:
        vtc.compress(model, args.config, processor=processor)
    result = vtc.evaluate(model, processor, samples, batch_size=args.batch_size, progress=not args.quiet)
    print(f"accuracy {result.accuracy:.3f}  n {result.n}  visual tokens {result.visual_tokens:.1f}  "
          f"prefill FLOPs {result.prefill_flops:.4g}  {result.seconds:.1f} s")

    out_dir = args.out or Path("vtc_results") / time.strftime("eval-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, per_sample = out_dir / "eval.json", out_dir / "eval.jsonl"
    parameter = next(model.parameters())
    record = {key: value for key, value in result.to_dict().items() if key != "per_sample"}
    record.update(
        model=str(args.model), data=str(args.data),
        config=None if args.config is None else args.config.to_dict(),
        environment=_environment(str(parameter.device), str(parameter.dtype).removeprefix("torch."),
                                 model.config._attn_implementation),
    )
    summary.write_text(json.dumps(record, indent=2) + "\n")
    with per_sample.open("w") as f:
        for index, (sample, outcome) in enumerate(zip(samples, result.per_sample)):
            f.write(json.dumps({"index": index, "task": sample.task, "question": sample.question,
                                **outcome._asdict()}) + "\n")
    print(f"wrote {summary} and {per_sample}")
    return 0


# ------------------------------------------------------------------------------------------------------------- train
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


def _check_train_arguments(args: argparse.Namespace) -> None:
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


def _interleave(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """One item of each group in turn (a group that runs out drops out): the tasks mix evenly."""
    mixed, longest = [], max(map(len, groups), default=0)
    for index in range(longest):
        mixed += [group[index] for group in groups if index < len(group)]
    return mixed


def _train_samples(args: argparse.Namespace) -> list:
    """`--data`, interleaved: `--steps x --batch` samples of each task's train split (seeded by `--seed`), every
    sample of each file."""
    from vtc import tasks

    groups = []
    for data in args.data:
        if isinstance(data, Path):
            samples = tasks.load_jsonl(data)
            if not samples:
                raise UsageError(f"argument --data: {data} holds no samples")
        else:
            samples = tasks.synthetic(data, "train", args.steps * args.batch, seed=args.seed)
        groups.append(samples)
    return _interleave(groups)


def _spelling(data: Path | str) -> str:
    """A value of --data or --eval-data as the command line spells it."""
    return str(data) if isinstance(data, Path) else TASK_PREFIX + data


def _train_eval_sources(args: argparse.Namespace) -> list[Path | str]:
    """`--eval-data`, default the tasks of `--data` (their test splits), each once; none for `--eval-size 0`."""
    if args.eval_size == 0:
        return []
    return list(dict.fromkeys(args.eval_data or [data for data in args.data if not isinstance(data, Path)]))


def _train_eval_samples(args: argparse.Namespace, sources: Sequence[Path | str]) -> list:
    """`--eval-size` samples of each task's test split (default TRAIN_EVAL_SIZE), the first `--eval-size` of each
    file (default all of it)."""
    from vtc import tasks

    samples = []
    for data in sources:
        if isinstance(data, Path):
            loaded = tasks.load_jsonl(data)[:args.eval_size]
            if not loaded:
                raise UsageError(f"argument --eval-data: {data} holds no samples")
        else:
            loaded = tasks.synthetic(data, "test", args.eval_size or TRAIN_EVAL_SIZE, seed=0)
        samples += loaded
    return samples


def _format_accuracy_table(before: dict[str, float], after: dict[str, float]) -> str:
    """`task  before  after  change`, one row per task, the accuracies side by side."""
    width = max(len("task"), *map(len, before))
    lines = [f"{'task':<{width}}  before   after  change"]
    for task, accuracy in before.items():
        final = after.get(task, float("nan"))
        lines.append(f"{task:<{width}}  {accuracy:6.3f}  {final:6.3f}  {final - accuracy:+6.3f}")
    return "\n".join(lines)


def _train_report(args: argparse.Namespace, record: dict[str, Any], evaluated: bool) -> str:
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


def cmd_train(args: argparse.Namespace) -> int:
    _check_train_arguments(args)
    # The data before the model: a file that does not load fails before anything is built or written.
    train_samples = _train_samples(args)
    eval_sources = _train_eval_sources(args)
    eval_samples = _train_eval_samples(args, eval_sources)
    _quiet_transformers()

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
            print(_train_report(args, record, evaluated=bool(eval_samples)))
        finished = True
    finally:
        end_distributed(wait_for_every_process=finished)
    return 0


# ---------------------------------------------------------------------------------------------------------- arguments
# Each converts one command-line value or raises ArgumentTypeError, which argparse reports as a usage error naming the
# argument: every value is checked before anything is built.
def _number(text: str, convert, accept, expected: str):
    """`convert(text)` where `accept` takes it, else the usage error `expected ..., got ...`."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):  # NaN fails every comparison
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda value: value >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda value: value >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda value: 0 < value < float("inf"), "a positive number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda value: 0 <= value < float("inf"), "a number >= 0")


def trainer_checkpoint(text: str) -> Path:
    """A checkpoint folder the Trainer wrote (`checkpoint-N`, with its `trainer_state.json`)."""
    folder = Path(text)
    if not folder.is_dir():
        problem = "is a file" if folder.exists() else "no such folder"
        raise argparse.ArgumentTypeError(f"{text}: {problem}; give a checkpoint-N folder of an earlier run, or "
                                         "--resume alone for the latest one in --output")
    if not (folder / "trainer_state.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} has no trainer_state.json, so it is not a Trainer checkpoint; give "
                                         "a checkpoint-N folder written with --save-steps")
    return folder


def image_sizes(text: str) -> list[tuple[int, int]]:
    """`640x480,1280x720` -> `[(640, 480), (1280, 720)]`: (width, height) pairs."""
    sizes = []
    for size in text.split(","):
        width, _, height = size.strip().lower().partition("x")
        if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise argparse.ArgumentTypeError(
                f"expected WxH image sizes in pixels separated by commas, e.g. 640x480,1280x720; got {text!r}")
        sizes.append((int(width), int(height)))
    return sizes


def tiny_family(text: str) -> str:
    from vtc.testing import TINY_FAMILIES

    if text not in TINY_FAMILIES:
        raise argparse.ArgumentTypeError(f"unknown family {text!r}; choose from {', '.join(TINY_FAMILIES)}")
    return text


def reference_families(text: str) -> list[str]:
    """A comma-separated list of families with a shipped reference model, in the order given, without repeats."""
    from vtc import tasks

    shipped, names = tasks.reference_families(), list(dict.fromkeys(name.strip() for name in text.split(",")))
    for name in names:
        if name not in shipped:
            raise argparse.ArgumentTypeError(f"no reference model for family {name!r}; choose from "
                                             f"{', '.join(shipped) or '(none shipped)'}")
    return names


def grid_configs(text: str) -> list[str]:
    """A comma-separated list of row names of `vtc ablate`'s grid."""
    from vtc.ablate import default_grid

    grid, names = default_grid(), list(dict.fromkeys(name.strip() for name in text.split(",")))
    for name in names:
        if name not in grid:
            raise argparse.ArgumentTypeError(f"unknown configuration {name!r}; choose from {', '.join(grid)}")
    return names


def trained_run(text: str):
    """The output folder of a training run (`vtc train`; it holds `vtc_config.json`), as a `vtc.ablate.TrainedRun`."""
    from vtc.ablate import TrainedRun

    try:
        return TrainedRun.read(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


ATTENTION_CHOICES = ("sdpa", "eager", "flash_attention_2")


def attention_backend(text: str) -> str:
    if text not in ATTENTION_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown attention backend {text!r}; choose from "
                                         f"{', '.join(ATTENTION_CHOICES)}")
    if not attention_backends()[text]:  # sdpa and eager come with every torch vtc supports: this is flash-attn
        raise argparse.ArgumentTypeError(f"{text} is not available in this environment: install flash-attn "
                                         "(pip install -e '.[flash]', needs CUDA), or use sdpa")
    return text


def device(text: str) -> str:
    """A device that torch can use here, as torch spells it (`cpu`, `cuda`, `cuda:1`, `mps`)."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise argparse.ArgumentTypeError(f"{text}: torch sees no CUDA device here (torch {torch.__version__} is "
                                             f"{build}); use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: there are only {count} CUDA devices here, cuda:0 to "
                                             f"cuda:{count - 1}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available here; use --device cpu")
    return str(parsed)


def checkpoint_folder(text: str) -> Path:
    """A folder that holds a saved model (`config.json`)."""
    folder = Path(text)
    if not folder.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {text}; give the path of a local checkpoint folder "
                                         "(nothing is downloaded)")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give the checkpoint's folder")
    if not (folder / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} has no config.json, so it holds no saved model; give a folder "
                                         "written by save_pretrained (or by vtc make-tiny)")
    return folder


REFERENCE_PREFIX, TASK_PREFIX = "reference:", "task:"
#: Samples of a synthetic task that `vtc eval` evaluates without `--size`.
EVAL_TASK_SIZE = 256


def eval_model(text: str) -> Path | str:
    """`reference:FAMILY` (a reference model shipped with vtc): the family; else a checkpoint folder: its path."""
    if not text.startswith(REFERENCE_PREFIX):
        return checkpoint_folder(text)
    from vtc import tasks

    family, shipped = text[len(REFERENCE_PREFIX):], tasks.reference_families()
    if family not in shipped:
        raise argparse.ArgumentTypeError(f"no reference model {family!r}; choose from "
                                         f"{', '.join(REFERENCE_PREFIX + name for name in shipped) or '(none shipped)'}")
    return family


def eval_data(text: str) -> Path | str:
    """`task:NAME` (a synthetic task): its name; else a JSONL file: its path."""
    from vtc import tasks

    if text.startswith(TASK_PREFIX):
        name = text[len(TASK_PREFIX):]
        if name not in tasks.available():
            raise argparse.ArgumentTypeError(f"unknown task {name!r}; choose from "
                                             f"{', '.join(TASK_PREFIX + task for task in tasks.available())}")
        return name
    path = Path(text)
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "no such file"
        raise argparse.ArgumentTypeError(f"{text}: {problem}; give a JSONL file of samples or task:NAME, e.g. "
                                         "task:majority-colour")
    return path


def vtc_config_file(text: str):
    """A `vtc.VTCConfig` read from a JSON file (as `VTCConfig.save` writes it)."""
    from vtc import VTCConfig

    try:
        return VTCConfig.load(text)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror}") from None
    except (ValueError, TypeError, VTCError) as error:  # not JSON, or not a valid configuration
        raise argparse.ArgumentTypeError(f"{text} is not a vtc configuration: {' '.join(str(error).split())}"
                                         ) from None


def output_folder(text: str) -> Path:
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder for the results")
    return folder


# ------------------------------------------------------------------------------------------------------------- main
class UsageError(Exception):
    """A command line that is wrong in a way only the command can tell (e.g. a folder that is not empty)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """Prints a usage error as one line, `vtc: error: <message>`, and exits with status 2. (argparse would print the
    usage block first; `vtc COMMAND --help` shows it.)"""

    def error(self, message: str):
        self.exit(2, f"vtc: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before and after the command; SUPPRESS keeps the command's parser from overwriting a
    # --debug given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, show the traceback instead of one line (also: VTC_DEBUG=1)")

    parser = OneLineErrorParser(prog="vtc", description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                 parents=[debug])
    parser.add_argument("--version", action="version", version=f"vtc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="supported families, versions, attention backends",
                   parents=[debug]).set_defaults(func=cmd_info)

    ablate = sub.add_parser("ablate", parents=[debug],
                            help="accuracy against cost of every configuration of the grid, side by side")
    model = ablate.add_mutually_exclusive_group()
    model.add_argument("--model", type=checkpoint_folder, metavar="FOLDER",
                       help="a local checkpoint folder, scored on --data and timed (default: the reference models "
                            "shipped with vtc on every synthetic task, untimed)")
    model.add_argument("--families", type=reference_families, metavar="FAMILY,...",
                       help="comma-separated families of the reference models (default: all)")
    ablate.add_argument("--data", type=eval_data, metavar="FILE.jsonl|task:NAME",
                        help="with --model: a JSONL file of samples (vtc.tasks.load_jsonl), or a synthetic task's "
                             "test split")
    ablate.add_argument("--configs", type=grid_configs, metavar="NAME,...",
                        help="only these rows of the grid, and the baseline they are relative to (default: all)")
    ablate.add_argument("--trained", type=trained_run, nargs="+", action="extend", metavar="RUN",
                        help="output folders of training runs (vtc train): each is scored as a row of its own, right "
                             "after the training-free row of its configuration, with the model it started from (a "
                             "reference model; with --model, runs trained from --model). Without --families, only the "
                             "runs' families")
    ablate.add_argument("--size", type=positive_int, metavar="N",
                        help=f"test samples per task (default {ABLATE_TASK_SIZE}); of a file, its first N "
                             "(default all)")
    ablate.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                        help="samples per generate call while scoring (default 16)")
    latency = ablate.add_argument_group("latency, with --model only")
    latency.add_argument("--batch", type=positive_int, help="samples per timed prefill, one image each, cycling "
                                                           "through the image sizes (default: one per image size)")
    latency.add_argument("--repeats", type=positive_int,
                         help=f"timed rounds; the median is reported (default {DEFAULT_REPEATS})")
    latency.add_argument("--warmup", type=non_negative_int,
                         help=f"untimed prefills per configuration (default {DEFAULT_WARMUP})")
    latency.add_argument("--image-sizes", type=image_sizes, metavar="WxH,...",
                         help="the synthetic images of the timed prefills, one per sample, cycled (default 640x480)")
    ablate.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    ablate.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ablate.add_argument("--attn", type=attention_backend, default="sdpa",
                        help=f"attention backend: {', '.join(ATTENTION_CHOICES)} (default sdpa; `vtc info` lists "
                             "what this environment has)")
    ablate.add_argument("--out", type=output_folder, metavar="FOLDER",
                        help="output folder for ablate.jsonl, ablate.csv and pareto.png (default "
                             "vtc_results/ablate-<time>)")
    ablate.add_argument("--quiet", action="store_true", help="no progress bars")
    ablate.set_defaults(func=cmd_ablate)

    make_tiny = sub.add_parser("make-tiny", parents=[debug],
                               help="write a tiny random model of a family and its processor to a folder")
    make_tiny.add_argument("family", type=tiny_family, metavar="FAMILY",
                           help="a supported model type (`vtc info` lists them)")
    make_tiny.add_argument("folder", type=Path, metavar="FOLDER", help="where to save it (new or empty)")
    make_tiny.add_argument("--seed", type=non_negative_int, default=0, help="the random weights' seed (default 0)")
    make_tiny.add_argument("--force", action="store_true",
                           help="write into a folder that is not empty (files of the same names are replaced)")
    make_tiny.set_defaults(func=cmd_make_tiny)

    evaluate = sub.add_parser("eval", parents=[debug],
                              help="accuracy, visual tokens and prefill FLOPs of a model on samples with answers")
    evaluate.add_argument("--model", type=eval_model, required=True, metavar="FOLDER|reference:FAMILY",
                          help="a local checkpoint folder, or a reference model shipped with vtc")
    evaluate.add_argument("--data", type=eval_data, required=True, metavar="FILE.jsonl|task:NAME",
                          help="a JSONL file of samples (vtc.tasks.load_jsonl), or a synthetic task's test split")
    evaluate.add_argument("--config", type=vtc_config_file, metavar="FILE.json",
                          help="compress the model with this configuration (VTCConfig.save writes one; default: "
                               "uncompressed)")
    evaluate.add_argument("--size", type=positive_int, metavar="N",
                          help=f"samples of the task (default {EVAL_TASK_SIZE}); of a file, its first N (default all)")
    evaluate.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                          help="samples per generate call (default 16)")
    evaluate.add_argument("--out", type=output_folder, metavar="FOLDER",
                          help="output folder for eval.json and eval.jsonl (default vtc_results/eval-<time>)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_eval)

    train = sub.add_parser("train", parents=[debug],
                           help="train a compressed model; accuracy before and after, side by side")
    train.add_argument("--model", type=eval_model, required=True, metavar="FOLDER|reference:FAMILY",
                       help="the backbone: a local checkpoint folder, or a reference model shipped with vtc")
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
    train.set_defaults(func=cmd_train)
    return parser


def _error_line(error: Exception) -> str:
    message = " ".join(str(error).split())  # transformers' messages can span several lines
    if not isinstance(error, (UsageError, VTCError, OSError, ValueError)):
        # Not one of the errors a run is expected to meet: name it, and say how to see where it came from.
        message = f"{type(error).__name__}: {message} (run again with --debug for the traceback)"
    return f"vtc: error: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`) and return its exit status: 0, 1 when the run fails,
    2 for a wrong command line, 130 on Ctrl-C."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version or a usage error, already printed
        return stop.code
    debug = getattr(args, "debug", False) or os.environ.get("VTC_DEBUG") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        return 130
    except Exception as error:
        if debug:
            raise
        print(_error_line(error), file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
