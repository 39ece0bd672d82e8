"""Seeded synthetic tasks: coloured images whose answers the project knows, with a scorer each.

Every image is 48 x 48 pixels, a `GRID x GRID` grid of `CELL`-pixel cells, so that a model whose visual token covers
one cell (a 4-pixel patch under a 2x2 merge or shuffle, or an 8-pixel patch) sees one cell per token. The grids'
cells are in `len(COLOURS)` colours.

* `grid-readout` (fine): the colours of all cells in raster order. Every cell matters: pooling 2x2 cells into one
  token mixes four independent colours, so training-free compression collapses it.
* `majority-colour` (coarse): the colour of most cells. Pooling keeps it.
* `more-red` (several images): which of two images has more red cells, `first` or `second`.
* `odd-one-out` (salient): the colour of one small square on a low-contrast grey texture. One token of 36 holds the
  answer: pooling dilutes it by the window size; a rule that keeps that token keeps the answer.
* `where-is-it` (salient and positional): the quadrant of the same kind of square, `top left` ... `bottom right`.
  The kept tokens must keep their positions.

The small square of the salient tasks is one cell wide; it sits on the cell grid (one 8-px token) in a third of the
samples and straddles two neighbouring cells (half in each) in the others, so that no method gains by alignment.
`available()` lists all five; `SALIENT` names the two salient ones.

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

__all__ = ["CELL", "COLOURS", "CONTRAST", "GRID", "QUADRANTS", "SALIENT", "SQUARE", "available", "grid_image", "score",
           "synthetic", "vocabulary"]

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
#: The side in pixels of the salient tasks' small square: one cell, so one visual token when on the cell grid.
SQUARE = CELL
#: The answers of `where-is-it`, indexed by `2 * row + column` of the quadrant.
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
#: The darker grey level of a salient task's background is drawn from this range; the lighter one is CONTRAST above.
#: Both stay well away from the palette's black (10) and white (250).
BACKGROUND_GREYS, CONTRAST = (64, 192), 24
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


def _square_corner(rng: random.Random) -> tuple[tuple[int, int], int]:
    """The top-left pixel (x, y) of the small square and its quadrant (`QUADRANTS` index). The square lies inside
    its quadrant; a third of the corners are on the cell grid, a third straddle two cells side by side, a third two
    cells one above the other."""
    half = GRID * CELL // 2
    straddle = rng.randrange(3)  # 0: on the grid, 1: across a vertical cell border, 2: across a horizontal one
    corner = []
    for axis in (0, 1):
        offset = CELL // 2 if straddle == axis + 1 else 0
        corner.append(rng.randrange(2) * half + rng.choice(range(offset, half - SQUARE + 1, CELL)))
    x, y = corner
    return (x, y), 2 * (y // half) + x // half


def _salient_image(rng: random.Random) -> tuple[Image.Image, int, int]:
    """One small square of a palette colour on a low-contrast texture of two greys (a grey level and one `CONTRAST`
    lighter, in half-cell blocks), so that the background is neither a palette colour nor one flat colour; returns
    the image, the square's colour (a `_NAMES` index) and its quadrant."""
    side, block = GRID * CELL, CELL // 2
    colour = rng.randrange(len(_NAMES))
    level = rng.randint(*BACKGROUND_GREYS)
    texture = np.array([[rng.random() < 0.5 for _ in range(side // block)] for _ in range(side // block)])
    texture = texture.repeat(block, axis=0).repeat(block, axis=1)
    pixels = np.where(texture, level + CONTRAST, level).astype(np.uint8)[..., None].repeat(3, axis=-1)
    (x, y), quadrant = _square_corner(rng)
    pixels[y:y + SQUARE, x:x + SQUARE] = _RGB[colour]
    return Image.fromarray(pixels, mode="RGB"), colour, quadrant


def _odd_one_out(rng: random.Random) -> Sample:
    image, colour, _ = _salient_image(rng)
    return Sample([image], "Which colour is the small square?", _NAMES[colour], choices=list(_NAMES),
                  task="odd-one-out")


def _where_is_it(rng: random.Random) -> Sample:
    image, _, quadrant = _salient_image(rng)
    return Sample([image], "Which quadrant is the small square in?", QUADRANTS[quadrant], choices=list(QUADRANTS),
                  task="where-is-it")


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
    "odd-one-out": _odd_one_out,
    "where-is-it": _where_is_it,
}
_SCORERS: dict[str, Callable[[str, str], float]] = {"grid-readout": _fraction_of_words}


#: The salient tasks: a few informative tokens on an uninformative background (what token selection is for).
SALIENT = ("odd-one-out", "where-is-it")


def available() -> list[str]:
    """The ids of the synthetic tasks: the ones `vtc ablate`, `vtc train` and `--data task:NAME` offer, and the
    shipped reference models' training mix and vocabulary."""
    return list(_GENERATORS)


def synthetic(name: str, split: str = "test", size: int = 256, seed: int = 0) -> list[Sample]:
    """`size` samples of the synthetic task `name` (one of `available()`), deterministic per
    `(name, split, seed)`.

    Raises:
        ConfigError: an unknown task or split, or a size below 1.
    """
    if name not in _GENERATORS:
        raise ConfigError("task", name, f"one of {', '.join(_GENERATORS)}")
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
    """Every word (as a whitespace-and-punctuation pre-tokenizer splits text) of the questions and answers of the
    tasks of `available()`, in a fixed order: the questions of one sample per task, then the colours, then the
    multiple-choice answers task by task. The reference models' word-level tokenizers are built on it."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    words: list[str] = []
    samples = [synthetic(task, "train", 1, 0)[0] for task in available()]
    texts = [sample.question for sample in samples] + list(COLOURS)
    texts += [choice for sample in samples for choice in sample.choices or ()]
    for text in texts:
        for word, _ in split.pre_tokenize_str(text):
            if word not in words:
                words.append(word)
    return words
