"""The synthetic tasks: deterministic per (name, split, seed), answers that the pixels confirm, and their scorers."""

from __future__ import annotations

from collections import Counter

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

import vtc
from vtc.tasks import available, score, synthetic
from vtc.tasks.synthetic import CELL, COLOURS, CONTRAST, GRID, QUADRANTS, SALIENT, SPLITS, SQUARE

NAMES = st.sampled_from(available())
SEEDS = st.integers(0, 2**32)
FEW = settings(max_examples=25)  # each example builds a handful of images: keep the suite fast
SIDE = GRID * CELL


def cells(image) -> list[str]:
    """The colour names of an image's cells in raster order, read from its pixels (every cell must be one colour)."""
    pixels = np.asarray(image).reshape(GRID, CELL, GRID, CELL, 3).transpose(0, 2, 1, 3, 4).reshape(GRID * GRID, -1, 3)
    assert (pixels == pixels[:, :1]).all(), "a cell of more than one colour"
    by_rgb = {rgb: name for name, rgb in COLOURS.items()}
    return [by_rgb[tuple(int(v) for v in cell[0])] for cell in pixels]


def red_pixels(image) -> int:
    return int((np.asarray(image) == COLOURS["red"]).all(axis=-1).sum())


def as_arrays(samples) -> list[np.ndarray]:
    return [np.asarray(image) for sample in samples for image in sample.images]


@FEW
@given(NAMES, st.sampled_from(SPLITS), SEEDS)
def test_same_name_split_and_seed_give_the_same_samples(name, split, seed):
    first, again = synthetic(name, split, size=3, seed=seed), synthetic(name, split, size=3, seed=seed)
    assert first == again  # images by PIL equality, question, answer, choices, task
    assert all(np.array_equal(a, b) for a, b in zip(as_arrays(first), as_arrays(again), strict=True))


@FEW
@given(NAMES, SEEDS)
def test_train_and_test_splits_differ(name, seed):
    train, test = synthetic(name, "train", size=4, seed=seed), synthetic(name, "test", size=4, seed=seed)
    assert [a.tobytes() for a in as_arrays(train)] != [a.tobytes() for a in as_arrays(test)]


@FEW
@given(NAMES, st.sampled_from(SPLITS), SEEDS)
def test_images_are_48_pixels_square_and_rgb(name, split, seed):
    for sample in synthetic(name, split, size=3, seed=seed):
        assert sample.images and sample.task == name
        assert all(image.size == (SIDE, SIDE) == (48, 48) and image.mode == "RGB" for image in sample.images)


@FEW
@given(SEEDS)
def test_grid_readout_answer_is_the_cells_colours(seed):
    for sample in synthetic("grid-readout", size=3, seed=seed):
        words = sample.answer.split()
        assert len(words) == GRID * GRID == 36 and set(words) <= set(COLOURS)
        assert words == cells(sample.images[0])


@FEW
@given(SEEDS)
def test_majority_colour_answer_covers_most_cells(seed):
    for sample in synthetic("majority-colour", size=3, seed=seed):
        counts = {name: cells(sample.images[0]).count(name) for name in COLOURS}
        assert sample.choices == list(COLOURS) and sample.answer in sample.choices
        assert counts[sample.answer] >= 2 * GRID * GRID // 3  # two thirds of the cells, as the generator promises
        assert all(counts[sample.answer] > n for name, n in counts.items() if name != sample.answer)


@FEW
@given(SEEDS)
def test_more_red_answer_names_the_image_with_more_red_pixels(seed):
    for sample in synthetic("more-red", size=3, seed=seed):
        first, second = (red_pixels(image) for image in sample.images)
        assert sample.choices == ["first", "second"] and first != second
        assert sample.answer == ("first" if first > second else "second")


def the_square(image) -> tuple[str, int, int]:
    """The small square of a salient task's image, read from its pixels: its colour and top-left x and y. It is the
    one palette colour in the image, SQUARE x SQUARE pixels in one solid square."""
    pixels = np.asarray(image)
    present = {name: (pixels == rgb).all(axis=-1) for name, rgb in COLOURS.items()}
    (colour, mask), = ((name, mask) for name, mask in present.items() if mask.any())
    ys, xs = np.nonzero(mask)
    assert mask.sum() == SQUARE * SQUARE and np.ptp(ys) == np.ptp(xs) == SQUARE - 1, "not one solid square"
    return colour, int(xs.min()), int(ys.min())


@FEW
@given(st.sampled_from(SALIENT), st.sampled_from(SPLITS), SEEDS)
def test_salient_background_is_a_low_contrast_grey_texture_never_the_square_colour(name, split, seed):
    for sample in synthetic(name, split, size=4, seed=seed):
        colour, x, y = the_square(sample.images[0])
        pixels = np.asarray(sample.images[0]).astype(int)
        background = np.delete(pixels.reshape(-1, 3), [r * SIDE + c for r in range(y, y + SQUARE)
                                                       for c in range(x, x + SQUARE)], axis=0)
        assert (background == background[:, :1]).all()  # grey: the three channels equal
        levels = set(background[:, 0].tolist())
        assert len(levels) <= 2 and max(levels) - min(levels) <= CONTRAST and 10 < min(levels) and max(levels) < 250
        assert COLOURS[colour] not in {(v, v, v) for v in levels}


@FEW
@given(SEEDS)
def test_odd_one_out_answer_is_the_square_colour(seed):
    for sample in synthetic("odd-one-out", size=4, seed=seed):
        assert sample.choices == list(COLOURS) and sample.question == "Which colour is the small square?"
        assert sample.answer == the_square(sample.images[0])[0]


@FEW
@given(SEEDS)
def test_where_is_it_answer_is_the_quadrant_holding_the_whole_square(seed):
    half = GRID * CELL // 2
    for sample in synthetic("where-is-it", size=4, seed=seed):
        _, x, y = the_square(sample.images[0])
        assert x // half == (x + SQUARE - 1) // half and y // half == (y + SQUARE - 1) // half  # never across a midline
        assert sample.choices == list(QUADRANTS)
        assert sample.answer == QUADRANTS[2 * (y // half) + x // half]


@pytest.mark.parametrize("name", SALIENT)
def test_salient_square_sits_on_the_token_grid_and_across_two_tokens(name):
    # One visual token covers one CELL-pixel cell: the square covers one token, or half of each of two neighbours.
    # Offsets from the cell grid: (0, 0) on it, (half a cell, 0) across a vertical border, (0, half) a horizontal one.
    placements = Counter((x % CELL, y % CELL) for _, x, y in (the_square(s.images[0]) for s in synthetic(name, size=300)))
    assert set(placements) == {(0, 0), (CELL // 2, 0), (0, CELL // 2)}, placements
    assert all(count >= 70 for count in placements.values()), placements  # a third each, of 300


# The sha256 of every task's samples in the test below: the shipped reference models are trained on these streams.
TASKS_DIGEST = "6608310e4474b7b32d59564360ec8cba3789ad784489ac73f6c05784067b7552"


def test_every_task_is_listed_and_its_words_are_in_the_vocabulary():
    # The reference models are trained on every listed task, with a word-level tokenizer of their words.
    assert available() == ["grid-readout", "majority-colour", "more-red", "odd-one-out", "where-is-it"]
    assert set(SALIENT) < set(available())
    assert {"square", "quadrant", "top", "bottom", "left", "right"} <= set(vtc.tasks.vocabulary())
    with pytest.raises(vtc.ConfigError, match="more-red, odd-one-out, where-is-it"):
        synthetic("no-such-task")


def test_tasks_samples_are_unchanged():
    # Other tests and the documented figures depend on these samples: a digest of their pixels and answers.
    import hashlib

    digest = hashlib.sha256()
    for name in available():
        for sample in synthetic(name, "test", size=8, seed=0) + synthetic(name, "train", size=8, seed=3):
            digest.update(sample.answer.encode())
            for image in sample.images:
                digest.update(np.asarray(image).tobytes())
    assert digest.hexdigest() == TASKS_DIGEST


@FEW
@given(NAMES, SEEDS)
def test_a_perfect_prediction_scores_1_and_an_empty_one_0(name, seed):
    for sample in synthetic(name, size=3, seed=seed):
        assert score(sample, sample.answer) == 1.0
        assert score(sample, "") == 0.0


@FEW
@given(SEEDS, st.sets(st.integers(0, GRID * GRID - 1)))
def test_grid_readout_with_k_wrong_cells_scores_the_fraction_right(seed, wrong):
    sample = synthetic("grid-readout", size=1, seed=seed)[0]
    words = sample.answer.split()
    for i in wrong:  # another colour: the next one in the palette
        words[i] = list(COLOURS)[(list(COLOURS).index(words[i]) + 1) % len(COLOURS)]
    assert score(sample, " ".join(words)) == pytest.approx((GRID * GRID - len(wrong)) / (GRID * GRID))


SPELLINGS = st.sampled_from([str.upper, str.title, lambda s: f"  {s} ", lambda s: f"{s}.", lambda s: f" {s.upper()}. "])


@FEW
@given(NAMES, SEEDS, SPELLINGS)
def test_scores_ignore_case_spaces_and_a_final_full_stop(name, seed, spell):
    sample = synthetic(name, size=1, seed=seed)[0]
    assert score(sample, spell(sample.answer)) == 1.0


@FEW
@given(st.sampled_from(["majority-colour", "more-red", "odd-one-out", "where-is-it"]), SEEDS)
def test_exact_match_gives_0_to_another_choice(name, seed):
    sample = synthetic(name, size=1, seed=seed)[0]
    other = next(choice for choice in sample.choices if choice != sample.answer)
    assert score(sample, other) == 0.0
    assert score(sample, f"{sample.answer} {other}") == 0.0


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"name": "no-such-task"}, "task"),
        ({"name": "grid-readout", "split": "validation"}, "split"),
        ({"name": "grid-readout", "size": 0}, "size"),
        ({"name": "grid-readout", "size": -3}, "size"),
        ({"name": "grid-readout", "size": 2.5}, "size"),
        ({"name": "grid-readout", "size": True}, "size"),
    ],
)
def test_unknown_task_split_or_size_raises_config_error(arguments, field):
    with pytest.raises(vtc.ConfigError) as error:
        synthetic(**arguments)
    assert error.value.field == field
