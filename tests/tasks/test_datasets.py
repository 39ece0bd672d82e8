"""Local datasets: JSONL files round trip, image paths, one DataError per kind of bad line, and `datasets` folders."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

import vtc
from vtc.tasks import Sample, available, load_from_disk, load_jsonl, save_jsonl, score, synthetic


def assert_same_samples(loaded, expected):
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected):
        assert (got.question, got.answer, got.choices, got.task) == (want.question, want.answer, want.choices, want.task)
        assert len(got.images) == len(want.images)
        for got_image, want_image in zip(got.images, want.images):
            assert got_image.mode == "RGB"
            assert np.array_equal(np.asarray(got_image), np.asarray(want_image))


def write_lines(path, *lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("name", available())
def test_jsonl_round_trip_of_every_synthetic_task(tmp_path, name):
    samples = synthetic(name, size=4, seed=7)
    assert_same_samples(load_jsonl(save_jsonl(samples, tmp_path / "set.jsonl")), samples)


def test_two_files_in_one_folder_keep_their_images_apart(tmp_path):
    train, test = synthetic("grid-readout", "train", size=2), synthetic("grid-readout", "test", size=2)
    save_jsonl(train, tmp_path / "train.jsonl")
    save_jsonl(test, tmp_path / "test.jsonl")
    assert_same_samples(load_jsonl(tmp_path / "train.jsonl"), train)
    assert_same_samples(load_jsonl(tmp_path / "test.jsonl"), test)


def test_text_only_samples_and_the_default_task(tmp_path):
    samples = [Sample([], "What is two plus two?", "4", task="arithmetic"), Sample([], "Yes or no?", "yes", ["yes", "no"])]
    assert_same_samples(load_jsonl(save_jsonl(samples, tmp_path / "text.jsonl")), samples)

    path = write_lines(tmp_path / "quiz.jsonl", {"question": "Capital of France?", "answer": "Paris"}, b"", b"  ")
    [sample] = load_jsonl(path)  # blank lines carry no sample
    assert sample == Sample([], "Capital of France?", "Paris", task="quiz")
    assert score(sample, " paris. ") == 1.0  # the file's stem is no synthetic task: exact match


def test_image_paths_relative_to_the_file_or_absolute(tmp_path, monkeypatch):
    (tmp_path / "pictures").mkdir()
    red, blue = Image.new("RGB", (5, 3), "red"), Image.new("L", (4, 4), 128)
    red.save(tmp_path / "pictures" / "red.png")
    blue.save(tmp_path / "pictures" / "grey.png")
    (tmp_path / "data").mkdir()
    path = write_lines(
        tmp_path / "data" / "mixed.jsonl",
        {"image": "../pictures/red.png", "question": "q", "answer": "a"},
        {"images": [str(tmp_path / "pictures" / "grey.png"), "../pictures/red.png"], "question": "q", "answer": "a"},
    )
    monkeypatch.chdir(tmp_path / "pictures")  # relative to the file's folder, not to the working directory
    first, second = load_jsonl(path)
    assert_same_samples([first, second], [Sample([red], "q", "a", task="mixed"),
                                          Sample([blue.convert("RGB"), red], "q", "a", task="mixed")])


GOOD = {"question": "Which colour?", "answer": "red", "choices": ["red", "blue"]}
BAD_LINES = {
    "malformed JSON": (b'{"question": "q", "answer": ', "JSON"),
    "not an object": (["q", "a"], "not an object"),
    "not UTF-8": (b'{"question": "\xff", "answer": "a"}', "JSON"),
    "unknown field": ({"question": "q", "answer": "a", "answr": "a"}, "'answr'"),
    "missing question": ({"answer": "a"}, "'question'"),
    "missing answer": ({"question": "q"}, "'answer'"),
    "question not a string": ({"question": 3, "answer": "a"}, "'question' must be a string"),
    "answer not a string": ({"question": "q", "answer": ["a"]}, "'answer' must be a string"),
    "task not a string": ({**GOOD, "task": 1}, "'task' must be a string"),
    "image and images": ({**GOOD, "image": "red.png", "images": ["red.png"]}, "both"),
    "image not a string": ({**GOOD, "image": 5}, "'image' must be a path"),
    "images not a list": ({**GOOD, "images": "red.png"}, "'images' a list"),
    "missing image file": ({**GOOD, "image": "missing.png"}, "no image file"),
    "image is a folder": ({**GOOD, "images": ["red.png", "."]}, "no image file"),
    "not an image": ({**GOOD, "image": "notes.png"}, "cannot read the image"),
    "truncated image": ({**GOOD, "image": "truncated.png"}, "cannot read the image"),
    "choices not a list": ({**GOOD, "choices": "red blue"}, "'choices' must be a list of strings"),
    "choices not strings": ({**GOOD, "choices": ["red", 2]}, "'choices' must be a list of strings"),
    "answer not a choice": ({**GOOD, "answer": "green"}, "not one of the choices"),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_line_raises_data_error_naming_file_and_line(tmp_path, case):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "red.png").read_bytes()[:40])
    line, fix = BAD_LINES[case]
    path = write_lines(tmp_path / "set.jsonl", {**GOOD, "image": "red.png"}, b"", line, GOOD)
    with pytest.raises(vtc.DataError) as error:
        load_jsonl(path)
    assert (error.value.path, error.value.line) == (path, 3)  # 1-based, blank lines counted
    assert str(error.value).startswith(f"{path}, line 3: ") and fix in str(error.value)


def test_data_error_is_a_vtc_error_and_a_value_error(tmp_path):
    with pytest.raises(vtc.VTCError, match="cannot read the file"):
        load_jsonl(tmp_path / "absent.jsonl")
    assert issubclass(vtc.DataError, ValueError)


def test_save_refuses_a_sample_that_would_not_load_back(tmp_path):
    with pytest.raises(vtc.DataError, match="sample 1 .*not one of the choices"):
        save_jsonl([Sample([], "q", "a"), Sample([], "q", "a", choices=["b"])], tmp_path / "set.jsonl")


@pytest.fixture
def hf_datasets():
    datasets = pytest.importorskip("datasets", reason="the optional `datasets` package is not installed")
    datasets.disable_progress_bars()
    return datasets


def test_datasets_folder_round_trip(tmp_path, hf_datasets):
    one_image = synthetic("majority-colour", size=3, seed=1)
    dataset = hf_datasets.Dataset.from_dict({"picture": [s.images[0] for s in one_image],
                                             "prompt": [s.question for s in one_image],
                                             "label": [s.answer for s in one_image],
                                             "options": [s.choices for s in one_image]})
    dataset.save_to_disk(tmp_path / "majority-colour")
    loaded = load_from_disk(tmp_path / "majority-colour", "picture", "prompt", "label", choices_column="options")
    assert_same_samples(loaded, one_image)  # the task is the folder's name

    two_images = synthetic("more-red", size=3, seed=1)
    features = hf_datasets.Features({"images": hf_datasets.List(hf_datasets.Image()),
                                     "question": hf_datasets.Value("string"), "answer": hf_datasets.Value("string")})
    dataset = hf_datasets.Dataset.from_dict({"images": [s.images for s in two_images],
                                             "question": [s.question for s in two_images],
                                             "answer": [s.answer for s in two_images]}, features=features)
    hf_datasets.DatasetDict({"test": dataset}).save_to_disk(tmp_path / "splits")
    loaded = load_from_disk(tmp_path / "splits", "images", split="test", task="more-red")
    assert_same_samples(loaded, [Sample(s.images, s.question, s.answer, task="more-red") for s in two_images])


def test_datasets_folder_text_only_and_its_errors(tmp_path, hf_datasets):
    hf_datasets.Dataset.from_dict({"question": ["q1", "q2"], "answer": ["a", None]}).save_to_disk(tmp_path / "text")
    with pytest.raises(vtc.DataError, match="no column \\['image'\\]"):
        load_from_disk(tmp_path / "text")
    with pytest.raises(vtc.DataError, match="one dataset, not splits"):
        load_from_disk(tmp_path / "text", None, split="test")
    with pytest.raises(vtc.DataError) as error:
        load_from_disk(tmp_path / "text", image_column=None)
    assert error.value.row == 2 and "'answer' must be a string" in str(error.value)
    with pytest.raises(vtc.DataError, match="not a folder written by save_to_disk"):
        load_from_disk(tmp_path / "absent")


def test_datasets_missing_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, installed or not
    with pytest.raises(vtc.DataError, match="pip install datasets"):
        load_from_disk(tmp_path)
