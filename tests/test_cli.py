"""The `vtc` console script: info, make-tiny, eval, and errors that are one line on stderr (`vtc ablate`:
tests/test_ablate.py)."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
import transformers
from transformers.utils import is_flash_attn_2_available

import vtc
from vtc.cli import main
from vtc.testing import TINY_FAMILIES


def test_info_lists_families_versions_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for text in ("transformers", "torch", "llava_next", "qwen3_vl", "sdpa (yes)", "flash_attention_2"):
        assert text in out


# ---------------------------------------------------------------------------------------------------------- make-tiny
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_make_tiny_writes_a_folder_that_loads_as_the_tiny_model_and_processor(family, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    from vtc.loading import load_processor
    from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

    folder = tmp_path / "tiny"
    assert main(["make-tiny", family, str(folder), "--seed", "3"]) == 0
    assert f"vtc ablate --model {folder}" in capsys.readouterr().out
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    reference = build_tiny_model(family, seed=3)
    assert type(model) is type(reference) and model.config.model_type == family
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))
    processor, built = load_processor(folder), build_tiny_processor(family)
    assert type(processor) is type(built)
    loaded_inputs, built_inputs = tiny_batch(family, processor, batch=2), tiny_batch(family, built, batch=2)
    assert loaded_inputs.keys() == built_inputs.keys()
    assert all(torch.equal(loaded_inputs[key], built_inputs[key]) for key in built_inputs)


def test_make_tiny_refuses_a_folder_that_is_not_empty_unless_forced(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["make-tiny", "llava", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"vtc: error: argument FOLDER: {tmp_path} is not empty; give a new or empty " \
                                      "folder, or add --force to write into it\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert main(["make-tiny", "llava", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "config.json").is_file() and (tmp_path / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def tiny_llava_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint") / "llava"
    assert main(["make-tiny", "llava", str(folder)]) == 0
    return folder


def read_eval(out_dir):
    summary = json.loads((out_dir / "eval.json").read_text())
    return summary, [json.loads(line) for line in (out_dir / "eval.jsonl").read_text().splitlines()]


def test_eval_scores_a_checkpoint_folder_on_a_task_compressed_or_not(tiny_llava_folder, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    command = ["eval", "--model", str(tiny_llava_folder), "--data", "task:majority-colour", "--size", "4", "--quiet"]
    assert main([*command, "--out", str(tmp_path / "plain")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("accuracy 0.") and "  n 4  visual tokens 64.0  prefill FLOPs " in out.splitlines()[0]
    summary, rows = read_eval(tmp_path / "plain")
    assert summary["n"] == 4 and summary["visual_tokens"] == 64 and summary["config"] is None
    assert summary["data"] == "majority-colour" and summary["environment"]["transformers"] == transformers.__version__
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    assert summary["accuracy"] == sum(row["score"] for row in rows) / 4
    assert {"task": "majority-colour", "question": "Which colour covers most of the image?"}.items() <= rows[0].items()
    assert rows[0].keys() == {"index", "task", "question", "prediction", "answer", "score"}

    config = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))
    config.save(tmp_path / "pvtc.json")
    assert main([*command, "--config", str(tmp_path / "pvtc.json"), "--out", str(tmp_path / "pvtc")]) == 0
    compressed, _ = read_eval(tmp_path / "pvtc")
    assert compressed["visual_tokens"] == 16 and compressed["config"] == config.to_dict()
    assert compressed["prefill_flops"] < summary["prefill_flops"]


def test_eval_reads_a_jsonl_file_and_takes_its_first_samples(tiny_llava_folder, tmp_path, capsys):
    from vtc.tasks import save_jsonl, synthetic

    data = save_jsonl(synthetic("more-red", "test", 3), tmp_path / "data" / "more-red.jsonl")
    assert main(["eval", "--model", str(tiny_llava_folder), "--data", str(data), "--size", "2", "--batch-size", "1",
                 "--quiet", "--out", str(tmp_path / "run")]) == 0
    summary, rows = read_eval(tmp_path / "run")
    assert summary["n"] == 2 and summary["visual_tokens"] == 128  # two images per sample
    assert [row["answer"] for row in rows] == [sample.answer for sample in synthetic("more-red", "test", 2)]


def test_eval_refuses_a_configuration_the_model_does_not_take_in_one_line(tiny_llava_folder, tmp_path, capsys):
    vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=9)).save(tmp_path / "deep.json")
    assert main(["eval", "--model", str(tiny_llava_folder), "--data", "task:majority-colour", "--size", "1",
                 "--config", str(tmp_path / "deep.json"), "--quiet", "--out", str(tmp_path / "run")]) == 1
    assert_one_line_error(*capsys.readouterr(), "compress_layer=9 is invalid")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif("llava" not in vtc.tasks.reference_families(), reason="no reference llava model shipped")
def test_eval_loads_a_reference_model(tmp_path, capsys):
    assert main(["eval", "--model", "reference:llava", "--data", "task:majority-colour", "--size", "2", "--quiet",
                 "--out", str(tmp_path)]) == 0
    summary, _ = read_eval(tmp_path)
    assert summary["n"] == 2 and summary["model"] == "llava"


# ------------------------------------------------------------------------------------------------------------- errors
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"vtc {vtc.__version__}\n"


@pytest.fixture
def nothing_is_built(refuse_calls):
    """Records every attempt to build a tiny model or to measure; each attempt fails."""
    return refuse_calls("vtc.testing.build_tiny_model", "vtc.bench.measure_configs", "vtc.cli.eval.evaluate",
                        "vtc.ablate.evaluate_grid", "vtc.tasks.reference_model")


@pytest.fixture(scope="module")
def tiny_config_json():
    from vtc.testing import build_tiny_model

    return build_tiny_model("qwen2_vl").config.to_json_string()


@pytest.fixture
def folders(tmp_path, tiny_config_json):
    """The paths that the bad command lines below name, by placeholder."""
    paths = {name: tmp_path / name for name in ("empty", "not_json", "bert", "no_weights", "busy")}
    for folder in paths.values():
        folder.mkdir()
    (paths["not_json"] / "config.json").write_text("{not json")
    (paths["bert"] / "config.json").write_text('{"model_type": "bert"}')
    (paths["no_weights"] / "config.json").write_text(tiny_config_json)
    (paths["busy"] / "notes.txt").write_text("")
    paths.update(missing=tmp_path / "missing", file=paths["not_json"] / "config.json",
                 no_samples=tmp_path / "no_samples.jsonl", bad_sample=tmp_path / "bad_sample.jsonl")
    paths["no_samples"].write_text("\n")
    paths["bad_sample"].write_text('{"question": "Which colour?"}\n')
    return {f"{{{name}}}": str(path) for name, path in paths.items()}


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
NO_FLASH = pytest.mark.skipif(is_flash_attn_2_available(), reason="flash-attn is installed here")
NO_LMMS = pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is not None, reason="lmms-eval is installed here")


def bad(argv, status, fragment, *marks):
    """A command line, the exit status it must give and a piece of its one-line error."""
    return pytest.param(argv, status, fragment, marks=marks, id=" ".join(argv) or "(no command)")


BAD_COMMAND_LINES = [
    bad(["ablate", "--model", "{missing}"], 2, "argument --model: no such folder"),
    bad(["ablate", "--model", "{empty}"], 2, "has no config.json"),
    bad(["ablate", "--model", "{file}"], 2, "is a file"),
    bad(["ablate", "--repeats", "0"], 2, "argument --repeats: expected a positive integer, got '0'"),
    bad(["ablate", "--batch", "0"], 2, "argument --batch: expected a positive integer, got '0'"),
    bad(["ablate", "--warmup", "-1"], 2, "argument --warmup: expected an integer >= 0"),
    bad(["ablate", "--families", "llava,foo"], 2, "argument --families: no reference model for family 'foo'"),
    bad(["ablate", "--configs", "pvtc-r3"], 2, "argument --configs: unknown configuration 'pvtc-r3'; choose from"),
    bad(["ablate", "--budgets", "1.5"], 2, "argument --budgets: '1.5' is not a budget"),
    bad(["ablate", "--budgets", "64,x"], 2, "argument --budgets: 'x' is not a budget"),
    bad(["ablate", "--budgets", "64", "--configs", "pvtc-r4"], 2, "argument --configs: not allowed with argument"),
    bad(["ablate", "--size", "0"], 2, "argument --size: expected a positive integer, got '0'"),
    bad(["ablate", "--batch-size", "x"], 2, "argument --batch-size: expected a positive integer, got 'x'"),
    bad(["ablate", "--data", "task:nope"], 2, "argument --data: unknown task 'nope'"),
    bad(["ablate", "--data", "task:more-red"], 2, "argument --data: applies to --model only"),
    bad(["ablate", "--repeats", "3"], 2, "argument --repeats: applies to --model only"),
    bad(["ablate", "--model", "{no_weights}"], 2, "argument --data: required with --model"),
    bad(["ablate", "--model", "{not_json}", "--data", "{no_samples}"], 2, "holds no samples"),
    bad(["ablate", "--model", "{not_json}", "--families", "llava"], 2, "not allowed with argument --model"),
    bad(["ablate", "--model", "{not_json}", "--image-sizes", "640by480"], 2, "expected WxH image sizes"),
    bad(["ablate", "--image-sizes", "64x64"], 2, "argument --image-sizes: applies to --model only"),
    bad(["ablate", "--device", "cuda"], 2, "torch sees no CUDA device", NO_CUDA),
    bad(["ablate", "--device", "gpu"], 2, "unknown device 'gpu'"),
    bad(["ablate", "--attn", "flash_attention_2"], 2, "flash_attention_2 is not available", NO_FLASH),
    bad(["ablate", "--attn", "flash"], 2, "unknown attention backend 'flash'"),
    bad(["ablate", "--dtype", "int8"], 2, "invalid choice: 'int8'"),
    bad(["ablate", "--out", "{file}"], 2, "argument --out:"),
    bad(["ablate", "--lmms", ","], 2, "argument --lmms: expected comma-separated lmms-eval task names"),
    bad(["ablate", "--lmms", "mme"], 2, "argument --lmms: lmms-eval is not installed here: pip install", NO_LMMS),
    bad(["make-tiny", "foo", "{missing}"], 2, "argument FAMILY: unknown family 'foo'"),
    bad(["make-tiny", "llava", "{busy}"], 2, "is not empty"),
    bad(["make-tiny", "llava", "{file}"], 2, "is a file"),
    bad(["eval", "--data", "task:majority-colour"], 2, "the following arguments are required: --model"),
    bad(["eval", "--model", "{missing}", "--data", "task:majority-colour"], 2, "argument --model: no such folder"),
    bad(["eval", "--model", "reference:nope", "--data", "task:majority-colour"], 2,
        "argument --model: no reference model 'nope'; choose from"),
    bad(["eval", "--model", "{not_json}", "--data", "task:nope"], 2,
        "argument --data: unknown task 'nope'; choose from task:grid-readout, task:majority-colour"),
    bad(["eval", "--model", "{not_json}", "--data", "{missing}"], 2, "missing: no such file; give a JSONL file"),
    bad(["eval", "--model", "{not_json}", "--data", "{empty}"], 2, "empty: is a folder; give a JSONL file"),
    bad(["eval", "--model", "{not_json}", "--data", "task:more-red", "--config", "{missing}"], 2,
        "argument --config: cannot read"),
    bad(["eval", "--model", "{not_json}", "--data", "task:more-red", "--config", "{file}"], 2,
        "is not a vtc configuration"),
    bad(["eval", "--model", "{not_json}", "--data", "task:more-red", "--size", "0"], 2, "argument --size:"),
    bad(["eval", "--model", "{not_json}", "--data", "task:more-red", "--batch-size", "x"], 2,
        "argument --batch-size: expected a positive integer, got 'x'"),
    bad(["eval", "--model", "{not_json}", "--data", "task:more-red", "--out", "{file}"], 2, "argument --out:"),
    bad(["eval", "--model", "{not_json}", "--data", "{no_samples}"], 2, "holds no samples"),
    bad(["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    bad([], 2, "the following arguments are required: command"),
    bad(["ablate", "--model", "{not_json}", "--data", "task:more-red"], 1, "does not load: It looks like the config file"),
    bad(["ablate", "--model", "{no_weights}", "--data", "task:more-red"], 1, "does not load: Error no file named model.safetensors"),
    bad(["ablate", "--model", "{bert}", "--data", "task:more-red"], 1, "no vtc adapter for model_type 'bert'"),  # a vtc.UnsupportedModelError
    bad(["eval", "--model", "{not_json}", "--data", "task:more-red"], 1, "does not load: It looks like the config"),
    bad(["eval", "--model", "{bert}", "--data", "task:more-red"], 1, "no vtc adapter for model_type 'bert'"),
    bad(["eval", "--model", "{not_json}", "--data", "{bad_sample}"], 1, "bad_sample.jsonl, line 1: "),  # a DataError
]


def assert_one_line_error(out, err, fragment=""):
    assert "Traceback" not in out + err
    assert out == ""  # no table: nothing was measured
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err  # one line: no progress bar, no usage block
    assert lines[0].startswith("vtc: error: ") and fragment in lines[0], lines[0]


@pytest.mark.parametrize(("argv", "status", "fragment"), BAD_COMMAND_LINES)
def test_a_bad_command_line_is_one_line_on_stderr(argv, status, fragment, folders, capsys, nothing_is_built):
    assert main([folders.get(arg, arg) for arg in argv]) == status
    assert_one_line_error(*capsys.readouterr(), fragment)
    assert nothing_is_built == []


def test_errors_from_the_console_entry_point_have_no_traceback(folders):
    # Started together: each costs an interpreter start-up and the imports of torch and transformers.
    cases = [(["ablate", "--model", folders["{missing}"]], 2),
             (["ablate", "--model", folders["{bert}"], "--data", "task:more-red"], 1)]
    runs = [subprocess.Popen([sys.executable, "-m", "vtc.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for argv, _ in cases]
    for (_, status), run in zip(cases, runs):
        out, err = run.communicate(timeout=120)
        assert run.returncode == status, err
        assert_one_line_error(out, err)


class Bug(Exception):
    """An error that no run is expected to meet."""


@pytest.mark.parametrize(("raised", "status", "line"), [
    (KeyboardInterrupt(), 130, None),
    (vtc.ConfigError("ratio", 3, "a perfect square"), 1, "vtc: error: ratio=3 is invalid: expected a perfect square."),
    (OSError("disk full\nwhile writing"), 1, "vtc: error: disk full while writing"),
    (Bug("boom"), 1, "vtc: error: Bug: boom (run again with --debug for the traceback)"),
])
def test_a_failing_run_is_one_line_or_quiet_after_ctrl_c(raised, status, line, capsys, monkeypatch):
    def fail(_args):
        raise raised

    monkeypatch.setattr("vtc.cli.info.run", fail)
    monkeypatch.delenv("VTC_DEBUG", raising=False)
    assert main(["info"]) == status
    out, err = capsys.readouterr()
    assert out == "" and err == ("" if line is None else line + "\n")


@pytest.mark.parametrize("argv", [["--debug", "info"], ["info", "--debug"], ["info"]])
def test_debug_shows_the_traceback(argv, monkeypatch):
    def fail(_args):
        raise vtc.UnsupportedModelError("no adapter")

    monkeypatch.setattr("vtc.cli.info.run", fail)
    if "--debug" in argv:
        monkeypatch.delenv("VTC_DEBUG", raising=False)
    else:
        monkeypatch.setenv("VTC_DEBUG", "1")
    with pytest.raises(vtc.UnsupportedModelError, match="no adapter"):
        main(argv)
