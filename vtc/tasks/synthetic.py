"""Seeded synthetic tasks: coloured grids whose answers the project knows, with a scorer each.

Every image is a `GRID x GRID` grid of `CELL`-pixel cells in `len(COLOURS)` colours (48 x 48 pixels by default), so
that a model whose visual token covers one cell (a 4-pixel patch under a 2x2 merge or shuffle, or an 8-pixel patch)
sees one cell per token.

* `grid-readout` (fine): the colours of all cells in raster order. Every cell matters: pooling 2x2 cells into one
  token mixes four independent colours, so training-free compression collapses it.
* `majority-colour` (coarse): the colour of most cells. Pooling keeps it.
* `more-red` (several images): which of two images has more red cells, `first` or `second`.

`synthetic(name, split, size, seed)` is deterministic: the same arguments give the same samples on every machine,
and the `train` and `test` splits of one seed never share a stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .sample import Sample

__all__ = ["CELL", "COLOURS", "GRID", "available", "grid_image", "score", "synthetic", "vocabulary"]

GRID, CELL = 6, 8
#: The palette, by the name the answers use (one word each).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 200, 25),
    "blue": (25, 25, 230),
    "yellow": (240, 220, 30),
    "magenta": (220, 30, 220),
    "cyan": (30, 220, 220),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
_NAMES = list(COLOURS)
_RGB = np.array(list(COLOURS.values()), dtype=np.uint8)
SPLITS = ("train", "test")


def grid_image(cells: list[list[int]], cell: int = CELL) -> Image.Image:
    """The image of a grid of colour indices (rows of `_NAMES` indices), each cell `cell` pixels square."""
    indices = np.array(cells, dtype=np.int64)
    pixels = _RGB[indices].repeat(cell, axis=0).repeat(cell, axis=1)
    return Image.fromarray(pixels, mode="RGB")


def _grid_readout(rng: random.Random) -> Sample:
    cells = [[rng.randrange(len(_NAMES)) for _ in range(GRID)] for _ in range(GRID)]
    answer = " ".join(_NAMES[c] for row in cells for c in row)
    return Sample([grid_image(cells)], "Read the colours of the cells, row by row.", answer, task="grid-readout")


def _dominated_grid(rng: random.Random, colour: int, count: int) -> list[list[int]]:
    """A grid with exactly `count` cells of `colour`, the others drawn from the other colours."""
    others = [c for c in range(len(_NAMES)) if c != colour]
    flat = [colour] * count + [rng.choice(others) for _ in range(GRID * GRID - count)]
    rng.shuffle(flat)
    return [flat[i * GRID:(i + 1) * GRID] for i in range(GRID)]


def _majority_colour(rng: random.Random) -> Sample:
    colour = rng.randrange(len(_NAMES))
    # At least two thirds of the cells: the majority survives any pooling of neighbouring cells.
    cells = _dominated_grid(rng, colour, rng.randint(2 * GRID * GRID // 3, GRID * GRID))
    return Sample([grid_image(cells)], "Which colour covers most of the image?", _NAMES[colour],
                  choices=list(_NAMES), task="majority-colour")


def _more_red(rng: random.Random) -> Sample:
    red = _NAMES.index("red")
    many, few = rng.randint(GRID * GRID // 2, GRID * GRID), rng.randint(0, GRID * GRID // 6)
    first_has_more = rng.random() < 0.5
    counts = (many, few) if first_has_more else (few, many)
    images = [grid_image(_dominated_grid(rng, red, n)) for n in counts]
    return Sample(images, "Which image has more red cells, the first or the second?",
                  "first" if first_has_more else "second", choices=["first", "second"], task="more-red")


def _fraction_of_words(prediction: str, answer: str) -> float:
    """The fraction of the answer's words that the prediction has at the same position (case and a final full stop
    ignored, as by exact match)."""
    expected, predicted = _normalised(answer).split(), _normalised(prediction).split()
    return sum(p == e for p, e in zip(predicted, expected)) / max(len(expected), 1)


def _normalised(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def _exact_match(prediction: str, answer: str) -> float:
    return float(_normalised(prediction) == _normalised(answer))


_GENERATORS: dict[str, Callable[[random.Random], Sample]] = {
    "grid-readout": _grid_readout,
    "majority-colour": _majority_colour,
    "more-red": _more_red,
}
_SCORERS: dict[str, Callable[[str, str], float]] = {"grid-readout": _fraction_of_words}


def available() -> list[str]:
    """The ids of the synthetic tasks."""
    return list(_GENERATORS)


def synthetic(name: str, split: str = "test", size: int = 256, seed: int = 0) -> list[Sample]:
    """`size` samples of the synthetic task `name` (`available()`), deterministic per `(name, split, seed)`.

    Raises:
        ConfigError: an unknown task or split, or a size below 1.
    """
    if name not in _GENERATORS:
        raise ConfigError("task", name, f"one of {', '.join(available())}")
    if split not in SPLITS:
        raise ConfigError("split", split, f"one of {', '.join(SPLITS)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError("size", size, "a positive integer")
    rng = random.Random(f"vtc:{name}:{split}:{seed}")  # a string seed is hashed the same way on every machine
    return [_GENERATORS[name](rng) for _ in range(size)]


def score(sample: Sample, prediction: str) -> float:
    """The score in [0, 1] of `prediction` for `sample`: the fraction of cells right for `grid-readout`, exact match
    for every other task and for datasets; both ignore case, surrounding spaces and a final full stop."""
    return _SCORERS.get(sample.task, _exact_match)(prediction, sample.answer)


def vocabulary() -> list[str]:
    """Every word (as a whitespace-and-punctuation pre-tokenizer splits text) of the tasks' questions and answers, in
    a fixed order: the questions of one sample per task, then the colours, then the multiple-choice answers. The
    reference models' word-level tokenizers are built on it."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    words: list[str] = []
    texts = [synthetic(task, "train", 1, 0)[0].question for task in available()]
    texts += list(COLOURS) + ["first", "second"]
    for text in texts:
        for word, _ in split.pre_tokenize_str(text):
            if word not in words:
                words.append(word)
    return words
