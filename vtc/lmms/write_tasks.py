"""Write vtc's lmms-eval tasks and their data into a folder, for `--include_path`.

    python -m vtc.lmms.write_tasks lmms_tasks/ --size 256
    python -m lmms_eval --model vtc --model_args pretrained=reference:FAMILY \\
        --tasks vtc_majority_colour --include_path lmms_tasks/

The task YAMLs ship with vtc (`vtc/lmms/tasks/`): one generation task per synthetic task (`vtc_grid_readout`,
`vtc_majority_colour`, ...; tag `vtc_synthetic`) and one multiple-choice task per synthetic task with choices
(`vtc_majority_colour_choice`, ...; tag `vtc_synthetic_choice`). They are copied into the folder, and the test split
of every task (`vtc.tasks.synthetic(task, "test", size, seed)`) is written beside them as a Parquet file with the
images inside, `data/<task>.parquet`, which lmms-eval finds relative to the YAMLs: the folder can be moved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError, VTCError
from ..tasks import available, synthetic

__all__ = ["TASK_FILES", "lmms_task_name", "main", "write_tasks"]

#: The shipped task YAMLs (package data).
TASK_FILES = Path(__file__).parent / "tasks"


def lmms_task_name(task: str, choice: bool = False) -> str:
    """The lmms-eval task of a `vtc.tasks` task id: `majority-colour` -> `vtc_majority_colour` (generation) or
    `vtc_majority_colour_choice` (multiple choice)."""
    return "vtc_" + task.replace("-", "_") + ("_choice" if choice else "")


def write_tasks(folder: str | os.PathLike, size: int = 256, seed: int = 0) -> Path:
    """Copy the task YAMLs into `folder` (made if missing) and write each synthetic task's test split, `size`
    samples drawn with `seed`, into `folder/data/`; returns the folder (what `--include_path` takes).

    Raises:
        ConfigError: `size` is not a positive integer.
        DataError: the `datasets` package is missing.
    """
    try:
        import datasets
    except ImportError:
        raise DataError("writing the lmms-eval tasks' data needs the datasets package: pip install datasets") from None
    splits = {task: synthetic(task, "test", size, seed) for task in available()}  # checks size before writing
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for path in sorted(TASK_FILES.iterdir()):
        shutil.copyfile(path, folder / path.name)
    text = datasets.Value("string")
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()), "question": text, "answer": text,
                                  "choices": datasets.Sequence(text), "task": text})
    bars_were_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one bar per file for a file that takes milliseconds
    try:
        for task, samples in splits.items():
            columns = {
                "images": [list(sample.images) for sample in samples],
                "question": [sample.question for sample in samples],
                "answer": [sample.answer for sample in samples],
                "choices": [sample.choices for sample in samples],
                "task": [sample.task for sample in samples],
            }
            dataset = datasets.Dataset.from_dict(columns, features=features)
            dataset.to_parquet(str(folder / "data" / f"{task}.parquet"))
    finally:
        if not bars_were_disabled:
            datasets.enable_progress_bars()
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vtc.lmms.write_tasks FOLDER [--size N] [--seed S]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m vtc.lmms.write_tasks",
                                     description="Write vtc's lmms-eval tasks and their data into FOLDER.")
    parser.add_argument("folder", type=Path, help="where the task YAMLs and data/ go (--include_path FOLDER)")
    parser.add_argument("--size", type=int, default=256, help="test samples per task (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic tasks' seed (default 0)")
    args = parser.parse_args(argv)
    try:
        folder = write_tasks(args.folder, size=args.size, seed=args.seed)
    except (VTCError, OSError) as error:
        print(f"{parser.prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    names = [lmms_task_name(task) for task in available()]
    print(f"wrote {len(names)} tasks of {args.size} samples to {folder}: {', '.join(names)} (tag vtc_synthetic), "
          "and their _choice variants (tag vtc_synthetic_choice); run them with --include_path "
          f"{folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
