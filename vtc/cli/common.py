"""What more than one command does: read the samples of `--data`, load `--model`, describe the environment."""

from __future__ import annotations

import argparse
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vtc.version import __version__

from .arguments import UsageError, eval_model

__all__ = ["add_model_option", "empty_files_of", "environment", "load_model_argument", "load_samples",
           "quiet_transformers"]


def environment(device: str, dtype: str, attn: str) -> dict[str, Any]:
    """The versions and the machine a result was measured with, as the result files record them."""
    import torch
    import transformers

    return {
        "vtc": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "dtype": dtype, "attn_implementation": attn, "threads": torch.get_num_threads(),
    }


def quiet_transformers() -> None:
    # transformers draws its own progress bars while it reads and writes weights; vtc draws one for the measurement.
    from transformers.utils import logging

    logging.disable_progress_bar()


@contextmanager
def empty_files_of(option: str) -> Iterator[None]:
    """Turns a file without samples (`vtc.training.data.EmptySourceError`) into a usage error of `option`."""
    from vtc.training.data import EmptySourceError

    try:
        yield
    except EmptySourceError as error:
        raise UsageError(f"argument {option}: {error}") from None


def load_samples(data: Path | str, size: int | None, task_size: int):
    """The samples of `--data`: a JSONL file's first `size` (default all), or `size` (default `task_size`) of a task's
    test split."""
    from vtc.training.data import evaluation_samples

    with empty_files_of("--data"):
        return evaluation_samples([data], task_size=size or task_size, file_size=size)


def load_model_argument(source: Path | str, **options: Any):
    """`(model, processor)` of `--model`: a checkpoint folder (`vtc.loading.load_checkpoint(source, **options)`), or
    the family of a shipped reference model (`vtc.tasks.reference_model`)."""
    from vtc import tasks
    from vtc.loading import load_checkpoint

    if not isinstance(source, Path):
        return tasks.reference_model(source, **options)
    try:
        return load_checkpoint(source, **options)
    except (OSError, ValueError) as error:  # transformers' reasons; say which argument they are about
        raise OSError(f"--model {source} does not load: {error}") from error


def add_model_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The required `--model FOLDER|reference:FAMILY` of `vtc eval` and `vtc train` (`load_model_argument` loads it)."""
    parser.add_argument("--model", type=eval_model, required=True, metavar="FOLDER|reference:FAMILY", help=help)
