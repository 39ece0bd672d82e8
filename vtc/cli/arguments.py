"""The argument types of the command line: each converts one value or raises `ArgumentTypeError`, which argparse
reports as a usage error naming the argument, so that every value is checked before anything is built. `UsageError`
is the same kind of mistake found by a command (options that do not go together, a folder that is not empty).

Only the command line imports this module; the library raises its own typed errors (`vtc.errors`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vtc.errors import VTCError

__all__ = ["ATTENTION_CHOICES", "REFERENCE_PREFIX", "TASK_PREFIX", "UsageError", "attention_backend", "budgets",
           "checkpoint_folder", "device", "eval_data", "eval_model", "grid_configs", "image_sizes", "non_negative_float",
           "non_negative_int", "output_folder", "positive_float", "positive_int", "reference_families",
           "tiny_family", "trained_run", "trainer_checkpoint", "vtc_config_file"]

REFERENCE_PREFIX, TASK_PREFIX = "reference:", "task:"
ATTENTION_CHOICES = ("sdpa", "eager", "flash_attention_2")


class UsageError(Exception):
    """A command line that is wrong in a way only the command can tell (e.g. a folder that is not empty)."""


# ------------------------------------------------------------------------------------------------------------ numbers
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


# ------------------------------------------------------------------------------------------------------------- names
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


def budgets(text: str) -> list[int | float]:
    """Comma-separated visual-token budgets per image: ints (`192,128,64`) or fractions of an image's native tokens
    (`1/3,2/9,1/9` or `0.25`)."""
    from fractions import Fraction

    out: list[int | float] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = Fraction(part)
        except (ValueError, ZeroDivisionError):
            value = None
        if value is None or value <= 0 or (value >= 1 and value.denominator != 1):
            raise argparse.ArgumentTypeError(f"{part!r} is not a budget: give visual tokens per image (an int >= 1, "
                                             "e.g. 64) or a fraction of them below 1 (e.g. 1/9 or 0.11)")
        out.append(int(value) if value.denominator == 1 else float(value))
    return list(dict.fromkeys(out))


def attention_backend(text: str) -> str:
    from .info import attention_backends

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


# ------------------------------------------------------------------------------------------------- files and folders
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
    from vtc.config import VTCConfig

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


def trained_run(text: str):
    """The output folder of a training run (`vtc train`; it holds `vtc_config.json`), as a
    `vtc.training.trained.TrainedRun`."""
    from vtc.training.trained import TrainedRun

    try:
        return TrainedRun.read(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
