"""The `vtc` console script: info, the ablation harness, make-tiny, and errors that are one line on stderr."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from transformers.utils import is_flash_attn_2_available

import vtc
from vtc.adapters._tiny import TINY_FAMILIES
from vtc.cli import default_grid, format_table, main


def test_info_lists_families_versions_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for text in ("transformers", "torch", "llava_next", "qwen3_vl", "sdpa (yes)", "flash_attention_2"):
        assert text in out


def test_ablate_writes_jsonl_and_csv_with_a_baseline_row(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["ablate", "--families", "llava,qwen2_vl", "--repeats", "2", "--batch", "2", "--quiet",
                 "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "FLOPs rel" in printed
    all_rows = [json.loads(line) for line in (out_dir / "ablate.jsonl").read_text().splitlines()]
    assert {r["config_name"] for r in all_rows} == set(default_grid())
    rows = [r for r in all_rows if r["config_name"] == "baseline"]
    assert [r["family"] for r in rows] == ["llava", "qwen2_vl"]
    llava, qwen = rows
    assert llava["visual_tokens"] == [64, 64] and llava["batch_size"] == 2
    assert qwen["visual_tokens"] == [16, 35]
    for row in rows:
        assert row["flops_rel"] == 1.0 and row["latency_rel"] == 1.0
        assert len(row["latency_ms_all"]) == 2 and row["latency_ms"] > 0
        assert row["flops"] > 0 and row["kv_cache_mb"] > 0
        assert len(row["layer_seq_lens"]) == 4
        assert row["environment"]["transformers"].startswith("5.23")
    with (out_dir / "ablate.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(all_rows) and json.loads(table[0]["config"]) == {"pvtc": None, "lvtc": None, "rvtc": None}

    pvtc = {(r["family"], r["config_name"]): r for r in all_rows if r["config_name"].startswith("pvtc")}
    assert pvtc["llava", "pvtc-r1"]["visual_tokens"] == [64, 64] and pvtc["llava", "pvtc-r1"]["flops_rel"] == 1.0
    assert pvtc["llava", "pvtc-r4"]["visual_tokens"] == [16, 16]
    assert pvtc["llava", "pvtc-r16"]["visual_tokens"] == [4, 4]
    assert pvtc["qwen2_vl", "pvtc-r4"]["visual_tokens"] == [4, 12]  # 4x4 and 5x7 token grids, ragged edges padded
    assert pvtc["llava", "pvtc-r16"]["flops_rel"] < pvtc["llava", "pvtc-r4"]["flops_rel"] < 1.0

    lvtc = {(r["family"], r["config_name"]): r for r in all_rows if r["config_name"].startswith("lvtc")}
    assert len(lvtc) == 2 * 6  # ratios 4 and 16 x restore delta, add, upsample, for each family
    for (family, name), row in lvtc.items():
        full, short, _, last = row["layer_seq_lens"]  # layers 1 and 2 (K=1 .. L-1=2) run compressed
        assert full == last > short == row["layer_seq_lens"][2], (family, name)
        assert row["flops_rel"] < 1.0 and row["visual_tokens"] == rows[0 if family == "llava" else 1]["visual_tokens"]
    assert lvtc["llava", "lvtc-r16-delta"]["flops_rel"] < lvtc["llava", "lvtc-r4-delta"]["flops_rel"]


def test_format_table_aligns_columns():
    class Row:
        family, config_name, visual_tokens = "f", "baseline", [1, 2]
        mean_layer_seq_len, flops_rel, latency_ms, latency_rel, kv_cache_mb, peak_mem_mb = 3.0, 1, 2, 1, 0.5, None

    lines = format_table([Row()]).splitlines()
    assert len(lines) == 3 and "1/2" in lines[2] and "n/a" in lines[2]


@pytest.mark.parametrize(("family", "tokens", "pooled"), [
    ("llava", [64, 64], [16, 16]),  # one 32 px crop per image
    ("qwen2_vl", [16, 48], [4, 12]),  # 4x4 and 8x6 merged grids
])
def test_ablate_measures_a_checkpoint_folder_written_by_make_tiny(family, tokens, pooled, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    grid = {name: config for name, config in default_grid().items() if name in ("baseline", "pvtc-r4")}
    monkeypatch.setattr("vtc.cli.default_grid", lambda: grid)  # only the rows under test, to keep it quick
    checkpoint, out_dir = tmp_path / family, tmp_path / "run"
    assert main(["make-tiny", family, str(checkpoint)]) == 0
    assert main(["ablate", "--model", str(checkpoint), "--repeats", "1", "--warmup", "0", "--batch", "2", "--quiet",
                 "--image-sizes", "32x32,64x48", "--out", str(out_dir)]) == 0
    assert capsys.readouterr().err == ""
    rows = {r["config_name"]: r for r in map(json.loads, (out_dir / "ablate.jsonl").read_text().splitlines())}
    assert rows["baseline"]["family"] == family and rows["baseline"]["visual_tokens"] == tokens
    assert rows["pvtc-r4"]["visual_tokens"] == pooled  # the loaded processor was patched too


def test_ablate_rvtc_rows_report_tokens_per_image_and_skip_fixed_resolution_families(tmp_path, capsys, monkeypatch):
    grid = {name: config for name, config in default_grid().items() if name in ("baseline", "rvtc-edge", "rvtc-area")}
    assert len(grid) == 3
    monkeypatch.setattr("vtc.cli.default_grid", lambda: grid)  # only the rows under test, to keep it quick
    out_dir = tmp_path / "run"
    assert main(["ablate", "--families", "llava,internvl", "--repeats", "1", "--warmup", "0", "--quiet",
                 "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    lines = (out_dir / "ablate.jsonl").read_text().splitlines()
    rows = {(r["family"], r["config_name"]): r for r in map(json.loads, lines)}
    # by default one sample per image size: 1 tile | 2x1 | 2x2 | 3x1, each with a thumbnail past one tile
    assert rows["internvl", "baseline"]["visual_tokens"] == [16, 48, 80, 64]
    assert rows["internvl", "rvtc-edge"]["visual_tokens"] == [16, 48, 80, 48]
    assert rows["internvl", "rvtc-area"]["visual_tokens"] == [16, 48, 16, 16]
    assert rows["internvl", "rvtc-area"]["latency_ms"] > 0 and rows["internvl", "rvtc-area"]["skipped"] is None
    for mode in ("edge", "area"):
        row = rows["llava", f"rvtc-{mode}"]
        assert "one fixed input resolution" in row["skipped"]
        assert row["visual_tokens"] is None and row["latency_ms"] is None and row["flops_rel"] is None
        assert f"skipped llava rvtc-{mode}: " in printed
    assert rows["llava", "baseline"]["skipped"] is None and rows["llava", "baseline"]["visual_tokens"] == [64, 64]


# ---------------------------------------------------------------------------------------------------------- make-tiny
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_make_tiny_writes_a_folder_that_loads_as_the_tiny_model_and_processor(family, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    from vtc.adapters._tiny import build_tiny_model, build_tiny_processor, tiny_batch
    from vtc.bench import load_processor

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


# ------------------------------------------------------------------------------------------------------------- errors
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"vtc {vtc.__version__}\n"


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Records every attempt to build a tiny model or to measure; each attempt fails."""
    attempts = []

    def refuse(name):
        def record(*args, **kwargs):
            attempts.append(name)
            raise RuntimeError(f"{name} was called")
        return record

    monkeypatch.setattr("vtc.adapters._tiny.build_tiny_model", refuse("build_tiny_model"))
    monkeypatch.setattr("vtc.bench.measure_configs", refuse("measure_configs"))
    return attempts


@pytest.fixture(scope="module")
def tiny_config_json():
    from vtc.adapters._tiny import build_tiny_model

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
    paths.update(missing=tmp_path / "missing", file=paths["not_json"] / "config.json")
    return {f"{{{name}}}": str(path) for name, path in paths.items()}


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
NO_FLASH = pytest.mark.skipif(is_flash_attn_2_available(), reason="flash-attn is installed here")


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
    bad(["ablate", "--families", "llava,foo"], 2, "unknown family 'foo'; choose from internvl, llava"),
    bad(["ablate", "--model", "{not_json}", "--families", "llava"], 2, "not allowed with argument --model"),
    bad(["ablate", "--model", "{not_json}", "--image-sizes", "640by480"], 2, "expected WxH image sizes"),
    bad(["ablate", "--image-sizes", "64x64"], 2, "argument --image-sizes: applies to --model only"),
    bad(["ablate", "--device", "cuda"], 2, "torch sees no CUDA device", NO_CUDA),
    bad(["ablate", "--device", "gpu"], 2, "unknown device 'gpu'"),
    bad(["ablate", "--attn", "flash_attention_2"], 2, "flash_attention_2 is not available", NO_FLASH),
    bad(["ablate", "--attn", "flash"], 2, "unknown attention backend 'flash'"),
    bad(["ablate", "--dtype", "int8"], 2, "invalid choice: 'int8'"),
    bad(["ablate", "--out", "{file}"], 2, "argument --out:"),
    bad(["make-tiny", "foo", "{missing}"], 2, "argument FAMILY: unknown family 'foo'"),
    bad(["make-tiny", "llava", "{busy}"], 2, "is not empty"),
    bad(["make-tiny", "llava", "{file}"], 2, "is a file"),
    bad(["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    bad([], 2, "the following arguments are required: command"),
    bad(["ablate", "--model", "{not_json}"], 1, "does not load: It looks like the config file"),
    bad(["ablate", "--model", "{no_weights}"], 1, "does not load: Error no file named model.safetensors"),
    bad(["ablate", "--model", "{bert}"], 1, "no vtc adapter for model_type 'bert'"),  # a vtc.UnsupportedModelError
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
    cases = [(["ablate", "--model", folders["{missing}"]], 2), (["ablate", "--model", folders["{bert}"]], 1)]
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

    monkeypatch.setattr("vtc.cli.cmd_info", fail)
    monkeypatch.delenv("VTC_DEBUG", raising=False)
    assert main(["info"]) == status
    out, err = capsys.readouterr()
    assert out == "" and err == ("" if line is None else line + "\n")


@pytest.mark.parametrize("argv", [["--debug", "info"], ["info", "--debug"], ["info"]])
def test_debug_shows_the_traceback(argv, monkeypatch):
    def fail(_args):
        raise vtc.UnsupportedModelError("no adapter")

    monkeypatch.setattr("vtc.cli.cmd_info", fail)
    if "--debug" in argv:
        monkeypatch.delenv("VTC_DEBUG", raising=False)
    else:
        monkeypatch.setenv("VTC_DEBUG", "1")
    with pytest.raises(vtc.UnsupportedModelError, match="no adapter"):
        main(argv)
