"""`vtc ablate`: accuracy, visual tokens and FLOPs of every configuration of the grid side by side (`vtc.ablate`), on
the reference models shipped with vtc or on a checkpoint folder (then timed too), with trained runs as rows of their
own; the rows, the picture and the report (`vtc.report`) go to one folder."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .arguments import (
    ATTENTION_CHOICES,
    UsageError,
    attention_backend,
    budgets,
    checkpoint_folder,
    device,
    eval_data,
    grid_configs,
    image_sizes,
    non_negative_int,
    output_folder,
    positive_int,
    reference_families,
    trained_run,
)
from .common import environment, load_model_argument, load_samples, quiet_transformers

__all__ = ["ABLATE_TASK_SIZE", "add_parser", "run"]

#: The latency options: they apply to --model only, as the default reports no latency.
LATENCY_OPTIONS = ("batch", "repeats", "warmup", "image_sizes")
DEFAULT_REPEATS, DEFAULT_WARMUP = 5, 1
NO_LATENCY_REASON = "the default reports no latency: the reference models are too small to time"
#: Test samples per synthetic task that `vtc ablate` evaluates without `--size`.
ABLATE_TASK_SIZE = 64
PICTURE = "pareto.png"


def _check_arguments(args: argparse.Namespace) -> None:
    """What argparse cannot tell alone: which options go together."""
    if args.model is None:
        for name in LATENCY_OPTIONS:
            if getattr(args, name) is not None:
                raise UsageError(f"argument --{name.replace('_', '-')}: applies to --model only; {NO_LATENCY_REASON}")
        if args.data is not None:
            raise UsageError("argument --data: applies to --model only; the default evaluates the reference models "
                             "on every synthetic task")
    elif args.data is None and args.lmms is None:
        raise UsageError("argument --data: required with --model (or --lmms): the samples to score it on, "
                         "FILE.jsonl or task:NAME (e.g. task:majority-colour)")
    if args.lmms is not None:
        _check_lmms(args)
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


def _check_lmms(args: argparse.Namespace) -> None:
    import importlib.util

    if importlib.util.find_spec("lmms_eval") is None:
        raise UsageError("argument --lmms: lmms-eval is not installed here: pip install 'vtc[lmms]' (on a CPU-only "
                         "machine see docs/lmms.md)")
    if args.trained:
        raise UsageError("argument --lmms: not with --trained; score a run through lmms-eval with "
                         "python -m lmms_eval --model vtc --model_args trained=RUN")
    if args.lmms_include is not None and not args.lmms_include.is_dir():
        raise UsageError(f"argument --lmms-include: {args.lmms_include} is not a folder")


def _lmms_tasks(value: str) -> list[str]:
    tasks = [task.strip() for task in value.split(",") if task.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError("expected comma-separated lmms-eval task names, e.g. mme,gqa")
    return tasks


def _lmms_rows(args: argparse.Namespace, model, processor, grid, family: str) -> list:
    """The grid scored through lmms-eval on `--lmms` (`vtc.lmms.grid.evaluate_grid_lmms`)."""
    from vtc.lmms.grid import evaluate_grid_lmms

    return evaluate_grid_lmms(model, processor, grid, args.lmms, family=family, limit=args.size,
                              batch_size=args.batch_size,
                              include_path=None if args.lmms_include is None else str(args.lmms_include))


def _reference_models(args: argparse.Namespace, families: Sequence[str]):
    """Yield `(family, model, processor)` for the reference model of each family, one at a time."""
    import torch

    from vtc import tasks

    for family in families:
        model, processor = tasks.reference_model(family, attn_implementation=args.attn)
        yield family, model.to(device=args.device, dtype=getattr(torch, args.dtype)), processor


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from vtc import ablate, tasks
    from vtc.plots import plotting_available
    from vtc.report import RunSetup, write_report

    _check_arguments(args)
    quiet_transformers()
    torch.manual_seed(0)
    grid = {name: config for name, config in ablate.default_grid().items()
            if args.configs is None or name in {ablate.BASELINE, *args.configs}}
    if args.budgets:  # the same budgets mean the same grid on every model whose images make as many tokens
        def grid_of(model):
            from vtc.registry import get_adapter

            h, w = get_adapter(model).reference_token_grid
            return ablate.budget_grid(args.budgets, h * w)
    else:
        def grid_of(model):
            return grid
    runs = list({run.folder.resolve(): run for run in args.trained or ()}.values())  # a folder given twice: once
    # The data, then the checkpoint, before the progress bar is drawn: what does not load fails before anything runs.
    if args.model:  # the tasks the samples name (a file's rows without one: its name)
        data = ({} if args.data is None else
                ablate.split_by_task(load_samples(args.data, args.size, ABLATE_TASK_SIZE)))
        model, processor = load_model_argument(args.model, dtype=getattr(torch, args.dtype),
                                               attn_implementation=args.attn)
        model = model.to(args.device)
        models = [(model.config.model_type, model, processor)]
    else:
        # With --trained: the families of the runs, and those --families names.
        families = list(dict.fromkeys([*(args.families or ([] if runs else tasks.reference_families())),
                                       *(run.reference_family() for run in runs)]))
        data = ({} if args.lmms else  # --lmms scores the reference models on its tasks instead
                {task: load_samples(task, args.size, ABLATE_TASK_SIZE) for task in tasks.available()})
        models = _reference_models(args, families)
    rows = []
    with tqdm(total=0, desc="vtc ablate", unit="sample",
              disable=args.quiet, file=sys.stderr) as bar:
        for family, model, processor in models:
            bar.set_postfix_str(family)
            grid = grid_of(model)
            bar.total += len(grid) * sum(map(len, data.values()))
            bar.refresh()
            if data:
                rows += ablate.evaluate_grid(model, processor, grid, data, family=family,
                                             batch_size=args.batch_size, progress=bar.update)
            if args.lmms:
                rows += _lmms_rows(args, model, processor, grid, family)
    latency_setup = _measure_latency(args, model, processor, grid, rows) if args.model else None
    if runs:
        checkpoint_family = family if args.model else None
        del models, model, processor  # the trained models load with their own copy of the backbone
        rows = ablate.join_trained(rows, _evaluate_trained_runs(args, runs, data, checkpoint_family))
    print(ablate.format_table(rows))
    print()
    print(ablate.legend(rows, latency_setup))

    out_dir = args.out or Path("vtc_results") / time.strftime("ablate-%Y%m%d-%H%M%S")
    env = environment(args.device, args.dtype, args.attn)
    jsonl, csv_path = ablate.write_rows(rows, out_dir, env)
    print(f"\nwrote {jsonl} and {csv_path}")
    picture = picture_note = None
    if not plotting_available():
        picture_note = f'matplotlib is not installed (pip install "vtc[plot]" draws {PICTURE})'
    else:
        try:
            picture = ablate.write_pareto(rows, out_dir / PICTURE, relative=args.relative).name
            print(f"wrote {out_dir / picture}")
        except ValueError as error:  # nothing to draw: the rows and the report stand without it
            picture_note = str(error)
    if picture is None:
        print(f"{PICTURE} skipped: {picture_note}")
    setup = RunSetup(_command_line(args, out_dir), env, _model_words(args, rows), _data_words(args, data),
                     latency_setup)
    report = write_report(rows, out_dir, setup, picture=picture, picture_note=picture_note, relative=args.relative)
    print(f"wrote {report}")
    return 0


def _command_line(args: argparse.Namespace, out_dir: Path) -> str:
    """The command as typed (`vtc.cli.main` keeps it), with the output folder where it was left to the default."""
    words = list(getattr(args, "command_line", None) or ["vtc", "ablate"])
    if args.out is None:
        words += ["--out", str(out_dir)]
    return shlex.join(words)


def _model_words(args: argparse.Namespace, rows) -> str:
    families = ", ".join(dict.fromkeys(row.family for row in rows))
    if args.model is not None:
        return f"{args.model} ({families})"
    return f"the reference models shipped with vtc: {families}"


def _data_words(args: argparse.Namespace, data) -> str:
    parts = []
    if data:
        sizes = "/".join(map(str, dict.fromkeys(map(len, data.values()))))
        tasks = ", ".join(data)
        if args.model is not None and not isinstance(args.data, str):
            parts.append(f"{args.data}: {sizes} samples per task ({tasks})")
        else:
            parts.append(f"the test split (seed 0) of {tasks}: {sizes} samples per task")
    if args.lmms:
        limit = "every document" if args.size is None else f"the first {args.size} documents"
        include = "" if args.lmms_include is None else f", tasks included from {args.lmms_include}"
        parts.append(f"lmms-eval tasks {', '.join(args.lmms)}: {limit} of each{include}")
    return "; ".join(parts)


def _evaluate_trained_runs(args: argparse.Namespace, runs, data, family: str | None) -> list:
    """`vtc.ablate.evaluate_trained_runs` on `--device` in `--dtype`, under a progress bar."""
    import torch
    from tqdm.auto import tqdm

    from vtc import ablate

    with tqdm(total=len(runs) * sum(map(len, data.values())), desc="vtc ablate trained", unit="sample",
              disable=args.quiet, file=sys.stderr) as bar:
        try:
            return ablate.evaluate_trained_runs(runs, data, family=family, device=args.device,
                                                dtype=getattr(torch, args.dtype), attn_implementation=args.attn,
                                                batch_size=args.batch_size, progress=bar.update,
                                                starting=bar.set_postfix_str)
        except ablate.RunLoadError as error:  # say which argument it is about
            raise OSError(f"--trained {error}") from error


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


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    ablate = commands.add_parser("ablate", parents=parents,
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
    rows = ablate.add_mutually_exclusive_group()
    rows.add_argument("--configs", type=grid_configs, metavar="NAME,...",
                      help="only these rows of the grid, and the baseline they are relative to (default: all)")
    rows.add_argument("--budgets", type=budgets, metavar="N,...",
                      help="instead of the grid, every method at each budget of visual tokens per image, equal-token "
                           "rows together: ints (192,128,64) or fractions of an image's native tokens (1/3,2/9,1/9); "
                           "PVTC where a square ratio gives the budget, LVTC where an integer ratio does")
    ablate.add_argument("--trained", type=trained_run, nargs="+", action="extend", metavar="RUN",
                        help="output folders of training runs (vtc train): each is scored as a row of its own, right "
                             "after the training-free row of its configuration, with the model it started from (a "
                             "reference model; with --model, runs trained from --model). Without --families, only the "
                             "runs' families")
    ablate.add_argument("--lmms", type=_lmms_tasks, metavar="TASK,...",
                        help="score every configuration on these lmms-eval tasks too (needs vtc[lmms]; see "
                             "docs/lmms.md), through vtc's lmms-eval model; on the reference models, instead of the "
                             "synthetic tasks")
    ablate.add_argument("--lmms-include", type=Path, metavar="FOLDER",
                        help="a folder of extra lmms-eval task YAMLs (lmms-eval's --include_path), e.g. the one "
                             "python -m vtc.lmms.write_tasks FOLDER writes")
    ablate.add_argument("--size", type=positive_int, metavar="N",
                        help=f"test samples per task (default {ABLATE_TASK_SIZE}); of a file, its first N "
                             "(default all); of an lmms-eval task, its first N documents (default all)")
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
    ablate.add_argument("--relative", action="store_true",
                        help="draw pareto.png with each accuracy as a fraction of the same model's uncompressed "
                             "accuracy on the task (the table always has both)")
    ablate.add_argument("--out", type=output_folder, metavar="FOLDER",
                        help="output folder for ablate.jsonl, ablate.csv, pareto.png and report.md (default "
                             "vtc_results/ablate-<time>)")
    ablate.add_argument("--quiet", action="store_true", help="no progress bars")
    ablate.set_defaults(func=run)
