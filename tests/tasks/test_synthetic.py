"""The synthetic tasks: deterministic per (name, split, seed), answers that the pixels confirm, and their scorers."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

import vtc
from vtc.tasks import available, score, synthetic
from vtc.tasks.synthetic import CELL, COLOURS, GRID, SPLITS

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
@given(st.sampled_from(["majority-colour", "more-red"]), SEEDS)
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
