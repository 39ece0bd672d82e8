"""The lmms-eval tasks vtc ships (vtc/lmms/tasks/), the data `write_tasks` writes for them, the functions they name,
the generation kwargs the model honours, and the entry point lmms-eval reads. No lmms-eval needed."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import vtc.tasks
from vtc.lmms.generation import DEFAULT_MAX_NEW_TOKENS, cut_at_stop, generation_options
from vtc.lmms.manifest import MODEL_CLASS, MODEL_ID
from vtc.lmms.task_functions import doc_to_text, doc_to_visual, process_results
from vtc.lmms.write_tasks import TASK_FILES, lmms_task_name, main, write_tasks

ROOT = Path(__file__).resolve().parents[2]
datasets = pytest.importorskip("datasets", reason="writing the tasks' data needs the datasets package")


def yaml_fields(path: Path) -> dict[str, str]:
    """The top-level `key: value` lines of a task YAML (its `!function` tags need lmms-eval's loader)."""
    return dict(re.findall(r"^(\w+): *(.+)$", path.read_text(), flags=re.M))


def test_every_synthetic_task_has_a_generation_task_and_with_choices_a_multiple_choice_task():
    shipped = {path.stem for path in TASK_FILES.glob("*.yaml")}
    expected = {lmms_task_name(task) for task in vtc.tasks.available()}
    expected |= {lmms_task_name(sample.task, choice=True) for task in vtc.tasks.available()
                 for sample in vtc.tasks.synthetic(task, size=1) if sample.choices}
    assert shipped == expected
    for name in shipped:
        fields = yaml_fields(TASK_FILES / f"{name}.yaml")
        assert fields["task"] == name
        task = name.removeprefix("vtc_").removesuffix("_choice").replace("_", "-")
        assert f"test: data/{task}.parquet" in (TASK_FILES / f"{name}.yaml").read_text()


def test_the_written_data_are_the_synthetic_samples(tmp_path):
    folder = write_tasks(tmp_path / "tasks", size=3, seed=1)
    assert sorted(p.name for p in folder.glob("*yaml")) == sorted(p.name for p in TASK_FILES.iterdir())
    for task in vtc.tasks.available():
        rows = datasets.load_dataset("parquet", data_files={"test": str(folder / "data" / f"{task}.parquet")},
                                     cache_dir=str(tmp_path / "cache"))["test"]
        for row, sample in zip(rows, vtc.tasks.synthetic(task, "test", 3, 1), strict=True):
            assert (row["question"], row["answer"], row["choices"], row["task"]) == (
                sample.question, sample.answer, sample.choices, sample.task)
            assert doc_to_text(row) == sample.question
            images = doc_to_visual(row)
            assert len(images) == len(sample.images)
            assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, sample.images))


def test_the_score_is_vtc_s():
    for task in vtc.tasks.available():
        sample = vtc.tasks.synthetic(task, size=1)[0]
        doc = {"question": sample.question, "answer": sample.answer, "choices": sample.choices, "task": task}
        for prediction in (sample.answer, "red " * 36, ""):
            assert process_results(doc, [prediction]) == {"accuracy": vtc.tasks.score(sample, prediction)}


def test_the_command_writes_the_folder_and_a_bad_size_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "ok"), "--size", "2"]) == 0
    assert (tmp_path / "ok" / "data" / "majority-colour.parquet").is_file()
    assert "--include_path" in capsys.readouterr().out
    assert main([str(tmp_path / "bad"), "--size", "0"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "size=0 is invalid" in error


def test_generation_kwargs_greedy_sampling_and_stop_strings():
    assert generation_options({}) == ({"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "do_sample": False, "num_beams": 1},
                                      [])
    assert generation_options({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "do_sample": False,
                               "until": "\n\n"}) == ({"max_new_tokens": 16, "do_sample": False, "num_beams": 1},
                                                     ["\n\n"])
    options, until = generation_options({"temperature": 0.7, "top_p": 0.9, "until": ["A", ""]})
    assert options == {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "do_sample": True, "num_beams": 1,
                       "temperature": 0.7, "top_p": 0.9} and until == ["A"]
    with pytest.warns(UserWarning, match="image_aspect_ratio"):
        generation_options({"image_aspect_ratio": "pad"})
    assert cut_at_stop("red.\n\nblue", ["\n\n", "."]) == "red"


def test_lmms_eval_finds_model_id_vtc_through_the_entry_point_and_the_extras():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'[project.entry-points."lmms_eval.models"]\n{MODEL_ID} = "vtc.lmms.manifest:manifest"' in text
    module, name = MODEL_CLASS.rsplit(".", 1)
    source = ROOT / Path(*module.split(".")).with_suffix(".py")
    assert name in {node.name for node in ast.parse(source.read_text()).body if isinstance(node, ast.ClassDef)}
    lmms, core = (re.search(rf"^{extra} = \[(.*?)\]$", text, flags=re.M | re.S).group(1)
                  for extra in ("lmms", "lmms-core"))
    assert '"vtc[lmms-core]"' in lmms and '"lmms-eval>=' in lmms
    assert "torchvision" not in core and '"filelock<4"' in core
