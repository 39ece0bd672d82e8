"""`vtc eval --model FOLDER|reference:FAMILY --data task:NAME|FILE.jsonl`: accuracy, visual tokens and prefill FLOPs
of a model on samples with answers (`vtc.evaluate`), written as `EvalResult.save` writes them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vtc.api import compress
from vtc.evaluate import evaluate

from .arguments import eval_data, output_folder, positive_int, vtc_config_file
from .common import add_model_option, environment, load_model_argument, load_samples, quiet_transformers

__all__ = ["EVAL_TASK_SIZE", "add_parser", "run"]

#: Samples of a synthetic task that `vtc eval` evaluates without `--size`.
EVAL_TASK_SIZE = 256


def run(args: argparse.Namespace) -> int:
    quiet_transformers()
    # The data first: a file that does not load fails before the model is read.
    samples = load_samples(args.data, args.size, EVAL_TASK_SIZE)
    model, processor = load_model_argument(args.model)
    if args.config is not None:
        compress(model, args.config, processor=processor)
    result = evaluate(model, processor, samples, batch_size=args.batch_size, progress=not args.quiet)
    print(f"accuracy {result.accuracy:.3f}  n {result.n}  visual tokens {result.visual_tokens:.1f}  "
          f"prefill FLOPs {result.prefill_flops:.4g}  {result.seconds:.1f} s")

    parameter = next(model.parameters())
    summary, per_sample = result.save(
        args.out or Path("vtc_results") / time.strftime("eval-%Y%m%d-%H%M%S"), samples,
        model=str(args.model), data=str(args.data), config=None if args.config is None else args.config.to_dict(),
        environment=environment(str(parameter.device), str(parameter.dtype).removeprefix("torch."),
                                model.config._attn_implementation),
    )
    print(f"wrote {summary} and {per_sample}")
    return 0


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser("eval", parents=parents,
                                   help="accuracy, visual tokens and prefill FLOPs of a model on samples with answers")
    add_model_option(evaluate, "a local checkpoint folder, or a reference model shipped with vtc")
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
    evaluate.set_defaults(func=run)
