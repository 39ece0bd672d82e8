"""Local datasets as samples: JSONL files with their images beside them, and folders saved by Hugging Face `datasets`.

A JSONL file holds one JSON object per line:

    {"image": "images/cat.png", "question": "Which animal is this?", "answer": "cat", "choices": ["cat", "dog"]}

`image` (one path) or `images` (a list of paths; neither for a text-only sample), `question` and `answer` (strings),
optional `choices` (strings, the answer among them) and optional `task` (default: the file's stem; it selects the
scorer, `vtc.tasks.score`). Image paths are relative to the JSONL file's folder, or absolute. Every image is opened
and converted to RGB while loading, so that a bad file fails here, naming its line, and not in the middle of a run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ..errors import DataError
from .sample import Sample

__all__ = ["load_from_disk", "load_jsonl", "save_jsonl"]

_FIELDS = ("image", "images", "question", "answer", "choices", "task")
# What PIL raises for a file it cannot decode: an unknown format or a broken file (a truncated one, a bad PNG chunk).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class _Invalid(Exception):
    """A record that cannot become a sample; the loader adds where it is and raises `DataError`."""


def load_jsonl(path: str | os.PathLike) -> list[Sample]:
    """The samples of a JSONL file (the format is in this module's docstring).

    Raises:
        DataError: the file cannot be read, or a line is not a valid sample; the message names the file, the 1-based
            line and what to fix. No line is skipped but blank ones.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read the file ({error.strerror}); pass the path of a JSONL file", path=path) from None
    samples = []
    # Split the bytes, not decoded text: str.splitlines would also split at separators JSON allows inside strings.
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            samples.append(_jsonl_sample(line, path.parent, default_task=path.stem))
        except _Invalid as error:
            raise DataError(str(error), path=path, line=number) from None
    return samples


def save_jsonl(samples: Iterable[Sample], path: str | os.PathLike) -> Path:
    """Write `samples` as a JSONL file at `path`, each image as a PNG under `images/<file stem>/` in its folder (so that
    two files in one folder keep their images apart), and return the path: `load_jsonl` gives the samples back, with
    each image as `image.convert("RGB")`.

    Raises:
        DataError: a sample would not load back (a non-string field, an answer that is not among its choices).
    """
    path = Path(path)
    image_folder = Path("images") / path.stem
    lines = []
    for index, sample in enumerate(samples):
        try:
            _sample(sample.images, sample.question, sample.answer, sample.choices, sample.task)
        except _Invalid as error:
            raise DataError(f"sample {index} would not load back: {error}", path=path) from None
        names = [(image_folder / f"{index:06d}-{k}.png").as_posix() for k in range(len(sample.images))]
        if names:
            (path.parent / image_folder).mkdir(parents=True, exist_ok=True)
        for name, image in zip(names, sample.images):
            image.convert("RGB").save(path.parent / name)
        record = {"images": names} if len(names) > 1 else {"image": names[0]} if names else {}
        record.update(question=sample.question, answer=sample.answer)
        if sample.choices is not None:
            record["choices"] = list(sample.choices)
        record["task"] = sample.task
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def load_from_disk(
    path: str | os.PathLike,
    image_column: str | None = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    *,
    choices_column: str | None = None,
    split: str | None = None,
    task: str | None = None,
) -> list[Sample]:
    """The samples of a folder written by `datasets.Dataset.save_to_disk` (or `DatasetDict.save_to_disk`: pass
    `split`). The image column holds a PIL image or a list of them per row (`datasets.Image()` features);
    `image_column=None` for text only. `task` defaults to the folder's name.

    Raises:
        DataError: `datasets` is not installed, the folder is not a saved dataset, a column is missing, or a row is
            not a valid sample (the message names the 1-based row).
    """
    try:
        import datasets
    except ImportError:
        raise DataError("loading a `datasets` folder needs the datasets package: pip install datasets") from None
    path = Path(path)
    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise DataError(f"not a folder written by save_to_disk ({error})", path=path) from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"split={split!r}: the folder holds the splits {sorted(dataset)}; pass one", path=path)
        dataset = dataset[split]
    elif split is not None:
        raise DataError(f"split={split!r}: the folder holds one dataset, not splits; pass split=None", path=path)
    columns = [c for c in (image_column, question_column, answer_column, choices_column) if c is not None]
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"no column {missing}; the columns are {dataset.column_names}: name the right ones with "
                        "image_column=, question_column=, answer_column=, choices_column=", path=path)
    task = path.name if task is None else task
    samples = []
    for index in range(len(dataset)):
        try:
            row = dataset[index]  # `datasets` decodes the images here
            images = _dataset_images(row[image_column], image_column) if image_column is not None else []
            choices = row[choices_column] if choices_column is not None else None
            samples.append(_sample(images, row[question_column], row[answer_column], choices, task,
                                   names=(question_column, answer_column, choices_column)))
        except _Invalid as error:
            raise DataError(str(error), path=path, row=index + 1) from None
        except _DECODE_ERRORS as error:
            raise DataError(f"cannot decode an image ({error}); replace it", path=path, row=index + 1) from None
    return samples


def _jsonl_sample(line: bytes, folder: Path, default_task: str) -> Sample:
    try:
        record = json.loads(line)
    except ValueError as error:  # invalid JSON, or bytes that are not UTF-8
        raise _Invalid(f"not a JSON object ({error}); write one JSON object per line") from None
    if not isinstance(record, dict):
        raise _Invalid(f"a JSON {type(record).__name__}, not an object; write one JSON object per line")
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise _Invalid(f"unknown field(s) {unknown}; the fields are {list(_FIELDS)}")
    if "image" in record and "images" in record:
        raise _Invalid("both 'image' and 'images'; give one image path, or a list of them")
    for field in ("question", "answer"):
        if field not in record:
            raise _Invalid(f"no {field!r}; every line needs a string {field!r}")
    paths = [record["image"]] if "image" in record else record.get("images", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise _Invalid("'image' must be a path (a string) and 'images' a list of paths")
    images = [_open_image(folder / p) for p in paths]
    return _sample(images, record["question"], record["answer"], record.get("choices"),
                   record.get("task", default_task))


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise _Invalid(f"no image file {path}; image paths are relative to the JSONL file's folder, or absolute")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except _DECODE_ERRORS as error:
        raise _Invalid(f"cannot read the image {path} ({error}); replace it with a PNG or JPEG file") from None


def _dataset_images(value: object, column: str) -> list[Image.Image]:
    images = [] if value is None else [value] if isinstance(value, Image.Image) else value
    if not isinstance(images, list) or not all(isinstance(image, Image.Image) for image in images):
        raise _Invalid(f"column {column!r} holds a {type(value).__name__}, not a PIL image or a list of them; "
                       "cast it with datasets.Image() (or datasets.List(datasets.Image()))")
    return [image.convert("RGB") for image in images]


def _sample(
    images: list[Image.Image],
    question: object,
    answer: object,
    choices: object,
    task: object,
    names: tuple[str, str, str | None] = ("question", "answer", "choices"),
) -> Sample:
    """The sample of these values, checked; `names` are what the messages call the first three (a column's name)."""
    question_name, answer_name, choices_name = names
    for name, value in ((question_name, question), (answer_name, answer), ("task", task)):
        if not isinstance(value, str):
            raise _Invalid(f"{name!r} must be a string, not {type(value).__name__}")
    if choices is not None:
        if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
            raise _Invalid(f"{choices_name!r} must be a list of strings (or absent), not {choices!r}")
        if answer not in choices:
            raise _Invalid(f"the answer {answer!r} is not one of the choices {choices}; add it, or fix the answer")
    return Sample(list(images), question, answer, choices=choices, task=task)
