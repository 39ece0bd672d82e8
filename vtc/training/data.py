"""The samples of a training run and of its evaluation, from the sources `vtc train --data` and `--eval-data` name.

A source is the name of a synthetic task (`vtc.tasks.available()`) or the path of a JSONL file of samples
(`vtc.tasks.load_jsonl`):

    sources = ["grid-readout", "more-red", Path("mine.jsonl")]
    train = training_samples(sources, task_size=steps * batch, seed=0)   # the sources mixed evenly
    scored = evaluation_samples(evaluation_sources(sources), task_size=64)   # the tasks' test splits
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from ..errors import DataError
from ..tasks import Sample, load_jsonl, synthetic

__all__ = ["EmptySourceError", "Source", "evaluation_samples", "evaluation_sources", "interleave", "training_samples"]

#: A synthetic task's name, or a JSONL file's path.
Source = Path | str
Item = TypeVar("Item")


class EmptySourceError(DataError):
    """A JSONL file that holds no samples; `source` is its path."""

    def __init__(self, source: Path):
        super().__init__(f"{source} holds no samples")
        self.source = source


def interleave(groups: Sequence[Sequence[Item]]) -> list[Item]:
    """One item of each group in turn, a group that runs out dropping out: `[[a1, a2, a3], [b1]]` gives
    `[a1, b1, a2, a3]`. The sources of a training run mix evenly, so every stretch of it sees each of them."""
    mixed: list[Item] = []
    for index in range(max(map(len, groups), default=0)):
        mixed += [group[index] for group in groups if index < len(group)]
    return mixed


def _file_samples(path: Path, size: int | None = None) -> list[Sample]:
    samples = load_jsonl(path)[:size]
    if not samples:
        raise EmptySourceError(path)
    return samples


def training_samples(sources: Sequence[Source], *, task_size: int, seed: int = 0) -> list[Sample]:
    """The training samples of `sources`, interleaved (`interleave`): `task_size` samples of each task's train split
    (seeded by `seed`), every sample of each file.

    Raises:
        EmptySourceError: a file holds no samples.
        DataError: a file does not load.
    """
    return interleave([_file_samples(source) if isinstance(source, Path) else
                       synthetic(source, "train", task_size, seed=seed) for source in sources])


def evaluation_sources(train_sources: Sequence[Source], eval_sources: Sequence[Source] | None = None) -> list[Source]:
    """What a run scores before and after training: `eval_sources`, default the tasks of `train_sources` (a file of
    training samples is not scored), each once."""
    return list(dict.fromkeys(eval_sources or [source for source in train_sources if not isinstance(source, Path)]))


def evaluation_samples(sources: Sequence[Source], *, task_size: int, file_size: int | None = None) -> list[Sample]:
    """The samples of `sources` in turn: `task_size` samples of each task's test split (seed 0), the first
    `file_size` of each file (default all of it).

    Raises:
        EmptySourceError: a file holds no samples (or `file_size` is 0).
        DataError: a file does not load.
    """
    samples = []
    for source in sources:
        samples += (_file_samples(source, file_size) if isinstance(source, Path) else
                    synthetic(source, "test", task_size, seed=0))
    return samples
