"""`vtc train`: a run of every family, the stages and objectives, the before/after table, resuming, and the command
lines it refuses before anything is built (the training library itself: tests/training/)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import vtc
from vtc import tasks
from vtc.cli import main
from vtc.training import WEIGHTS_NAME, VTCCollator, vtc_state_dict

#: Every family vtc trains: a reference model shipped with vtc where there is one, else a tiny random model.
FAMILIES = ["llava", "qwen2_vl", "internvl", "qwen2_5_vl", "qwen3_vl", "llava_next", "llava_onevision"]
TINY_ONLY = ["llava_next", "llava_onevision"]


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """`vtc make-tiny FAMILY FOLDER`, once per family and session."""
    folders = {}

    def make(family):
        if family not in folders:
            folders[family] = tmp_path_factory.mktemp("tiny") / family
            assert main(["make-tiny", family, str(folders[family])]) == 0
        return folders[family]

    return make


def model_argument(family, tiny_folder):
    return f"reference:{family}" if family not in TINY_ONLY else str(tiny_folder(family))


@pytest.fixture(scope="session")
def pvtc_json(tmp_path_factory):
    """A vtc config file: PVTC at ratio 4."""
    path = tmp_path_factory.mktemp("config") / "pvtc4.json"
    vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)).save(path)
    return str(path)


@pytest.fixture(scope="session")
def one_batch(tmp_path_factory):
    """A JSONL file of exactly one batch (4 grid-readout samples): every step trains on the same samples, so the loss
    of the first step and of the last compare like for like."""
    return str(tasks.save_jsonl(tasks.synthetic("grid-readout", "train", 4, seed=0),
                                tmp_path_factory.mktemp("data") / "grid4.jsonl"))


@pytest.fixture
def runs(monkeypatch):
    """The results of the `train_run` calls `vtc train` makes: the trained model, in memory, of each."""
    import vtc.training.run

    results, train_run = [], vtc.training.run.train_run

    def recording(*args, **kwargs):
        results.append(train_run(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(vtc.training.run, "train_run", recording)
    return results


def record_of(folder):
    return json.loads((folder / "vtc_training.json").read_text())


def logits(model, processor, samples):
    batch = VTCCollator(processor)(samples)
    batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch).logits


def assert_loads_as_trained(folder, run, samples):
    """`vtc.load_trained(folder)` is the trained model: compressed, the same vtc tensors, the same logits."""
    model, processor = vtc.load_trained(folder)
    assert vtc.is_compressed(vtc.training.unwrap(model))
    saved, loaded, trained = load_file(folder / WEIGHTS_NAME), vtc_state_dict(model), vtc_state_dict(run["model"])
    assert saved.keys() == loaded.keys() == trained.keys() and saved
    assert all(torch.equal(saved[name], loaded[name]) and torch.equal(saved[name], trained[name]) for name in saved)
    torch.testing.assert_close(logits(model, processor, samples), logits(run["model"], run["processor"], samples),
                               rtol=0, atol=1e-5)
    return model


def train(model, data, output, *options, stage="compressor", steps=6, lr="1e-2", eval_size="0"):
    """`vtc train` with tiny settings: batch 4, no warm-up, no progress bars."""
    argv = ["train", "--model", model, *(arg for item in data for arg in ("--data", item)), "--stage", stage,
            "--steps", str(steps), "--batch", "4", "--warmup", "0", "--lr", lr, "--eval-size", eval_size,
            "--no-progress", "--output", str(output), *options]
    return main(argv)


# ---------------------------------------------------------------------------------------------------------- families
@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_steps_of_the_compressor_lower_the_loss_and_load_back(family, tiny_folder, pvtc_json, one_batch, runs,
                                                                     tmp_path, capsys):
    out = tmp_path / "run"
    assert train(model_argument(family, tiny_folder), [one_batch], out, "--config", pvtc_json) == 0
    assert f'model, processor = vtc.load_trained("{out}")' in capsys.readouterr().out
    record = record_of(out)
    assert record["stage"] == "compressor" and record["steps"] == 6 and record["config"]["pvtc"]["ratio"] == 4
    first, last = record["loss_first_last"]
    assert last < 0.95 * first, record["loss_first_last"]  # the same batch every step: a clear drop, not noise
    model = assert_loads_as_trained(out, runs[0], tasks.load_jsonl(one_batch))
    assert model.config.model_type == family


# ------------------------------------------------------------------------------------------------ stages, objectives
def tensor_names(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def test_stage_full_writes_the_fine_tuned_backbone_beside_the_compressor(pvtc_json, one_batch, runs, tmp_path):
    out = tmp_path / "full"
    assert train("reference:llava", [one_batch], out, "--config", pvtc_json, stage="full", steps=3, lr="1e-3") == 0
    names = {path.name for path in out.iterdir()}
    assert {"config.json", "model.safetensors", "vtc_config.json", WEIGHTS_NAME, "vtc_training.json",
            "processor_config.json"} <= names
    backbone = tensor_names(out / "model.safetensors")
    assert backbone and not any("vtc_" in name for name in backbone)
    assert all("vtc_" in name for name in tensor_names(out / WEIGHTS_NAME))
    record = record_of(out)
    assert record["stage"] == "full" and record["base_model"] == "reference:llava"
    model = assert_loads_as_trained(out, runs[0], tasks.load_jsonl(one_batch))
    base, _ = tasks.reference_model("llava")  # the backbone trained: its weights moved
    moved = dict(model.named_parameters())
    assert any(not torch.equal(moved[name], parameter) for name, parameter in base.named_parameters()
               if name in moved)


def test_stage_lora_with_distillation_writes_the_adapter_beside_the_compressor(pvtc_json, one_batch, runs, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    assert train("reference:llava", [one_batch], out, "--config", pvtc_json, "--objective", "distill",
                 "--lm-weight", "0.5", "--temperature", "2", stage="lora", steps=3, lr="1e-3") == 0
    names = {path.name for path in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "vtc_config.json", WEIGHTS_NAME,
            "vtc_training.json"} <= names
    assert "model.safetensors" not in names  # the backbone is the base model's, unchanged
    record = record_of(out)
    assert record["stage"] == "lora" and record["objective"] == "distill" and record["loss_first_last"]
    model = assert_loads_as_trained(out, runs[0], tasks.load_jsonl(one_batch))
    assert isinstance(model, PeftModel)


# ------------------------------------------------------------------------------------------------------------- table
def test_the_table_shows_each_task_before_and_after_side_by_side(pvtc_json, tmp_path, capsys):
    out = tmp_path / "run"
    assert train("reference:llava", ["task:majority-colour", "task:more-red"], out, "--config", pvtc_json,
                 steps=2, lr="1e-3", eval_size="8") == 0
    stdout = capsys.readouterr().out
    record = record_of(out)
    assert record["before"].keys() == record["after"].keys() == {"majority-colour", "more-red"}
    assert re.search(r"^task +before +after +change$", stdout, re.MULTILINE), stdout
    for task in ("majority-colour", "more-red"):
        row = re.search(rf"^{task} +(\d\.\d{{3}}) +(\d\.\d{{3}}) +([+-]\d\.\d{{3}})$", stdout, re.MULTILINE)
        assert row, stdout
        before, after, change = map(float, row.groups())
        assert (before, after) == (round(record["before"][task], 3), round(record["after"][task], 3))
        assert change == pytest.approx(record["after"][task] - record["before"][task], abs=1e-3)
    assert re.search(r"^steps 2  seconds per step [\d.e+-]+  trainable parameters [\d,]+ ", stdout, re.MULTILINE)
    assert stdout.rstrip().endswith(f'wrote {out}\nload it with:  model, processor = vtc.load_trained("{out}")')
    # the default evaluation: the test split of each training task, --eval-size samples each
    assert record["eval_samples"] == 16 and record["data"] == ["task:majority-colour", "task:more-red"]


def test_only_the_main_process_prints_the_table(pvtc_json, one_batch, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("vtc.cli.train._is_main_process", lambda: False)
    assert train("reference:llava", [one_batch], tmp_path / "run", "--config", pvtc_json, steps=1) == 0
    assert "load_trained" not in capsys.readouterr().out


def test_train_destroys_the_process_group_it_ran_in_even_when_training_fails(pvtc_json, one_batch, tmp_path,
                                                                             monkeypatch):
    """Left to the interpreter's shutdown, Gloo's worker threads can abort a process whose run succeeded."""
    import torch.distributed as dist

    import vtc.training.run

    def failing_run(*args, **kwargs):
        dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
        raise RuntimeError("training failed")

    monkeypatch.setattr(vtc.training.run, "train_run", failing_run)
    barriers = _count_barriers(monkeypatch)
    try:
        assert train("reference:llava", [one_batch], tmp_path / "run", "--config", pvtc_json, steps=1) == 1
        assert not dist.is_initialized()
        assert barriers == []  # after a failure the peers may never arrive: no waiting for them
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_after_a_successful_run_every_process_waits_for_the_others_then_leaves_the_group(pvtc_json, one_batch,
                                                                                        tmp_path, monkeypatch):
    """Rank 0 still writes its report when the others are done; tearing connections down under a peer that still
    holds them open can abort the process too."""
    import torch.distributed as dist

    import vtc.training.run

    def succeeding_run(*args, **kwargs):
        dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
        return {}

    monkeypatch.setattr(vtc.training.run, "train_run", succeeding_run)
    monkeypatch.setattr("vtc.cli.train._is_main_process", lambda: False)  # no report to write from this record
    barriers = _count_barriers(monkeypatch)
    try:
        assert train("reference:llava", [one_batch], tmp_path / "run", "--config", pvtc_json, steps=1) == 0
        assert barriers == [True] and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _count_barriers(monkeypatch) -> list[bool]:
    """`dist.barrier` still runs; each call appends whether the group was up then."""
    import torch.distributed as dist

    calls, barrier = [], dist.barrier

    def counted(*args, **kwargs):
        calls.append(dist.is_initialized())
        return barrier(*args, **kwargs)

    monkeypatch.setattr(dist, "barrier", counted)
    return calls


def test_the_printed_line_of_python_loads_the_output_and_an_eval_file_gives_its_first_samples(
        pvtc_json, one_batch, tmp_path, capsys):
    red = tasks.save_jsonl(tasks.synthetic("more-red", "test", 5), tmp_path / "data" / "red.jsonl")
    out = tmp_path / "run"
    assert train("reference:llava", [one_batch], out, "--config", pvtc_json, "--eval-data", str(red), steps=1,
                 eval_size="3") == 0
    record = record_of(out)
    assert record["eval_data"] == [str(red)] and record["eval_samples"] == 3
    assert record["before"].keys() == record["after"].keys() == {"more-red"}
    line = capsys.readouterr().out.splitlines()[-1].removeprefix("load it with:").strip()
    namespace = {"vtc": vtc}
    exec(line, namespace)
    assert vtc.is_compressed(namespace["model"]) and namespace["processor"] is not None


def test_the_tasks_of_data_mix_evenly_and_a_file_gives_all_its_samples(pvtc_json, one_batch, tmp_path):
    from vtc.cli.parser import build_parser
    from vtc.training.data import training_samples

    args = build_parser().parse_args([
        "train", "--model", "reference:llava", "--config", pvtc_json, "--stage", "compressor", "--output",
        str(tmp_path / "out"), "--steps", "3", "--batch", "4", "--seed", "5",
        "--data", "task:grid-readout", "--data", "task:more-red", "--data", one_batch])
    samples = training_samples(args.data, task_size=args.steps * args.batch, seed=args.seed)  # what vtc train mixes
    assert len(samples) == 2 * 3 * 4 + 4  # steps x batch of each task, the whole file
    # one of each in turn while the file lasts, then the two tasks in turn
    assert samples[0:12:3] + samples[12::2] == tasks.synthetic("grid-readout", "train", 12, seed=5)
    assert samples[1:12:3] + samples[13::2] == tasks.synthetic("more-red", "train", 12, seed=5)
    assert [sample.answer for sample in samples[2:12:3]] == [sample.answer for sample in tasks.load_jsonl(one_batch)]


@pytest.mark.slow
def test_under_torchrun_each_process_trains_on_its_share_and_only_rank_0_prints(pvtc_json, one_batch, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vtc.cli",
               "train", "--model", "reference:llava", "--data", "task:more-red", "--config", pvtc_json, "--stage",
               "compressor", "--steps", "2", "--batch", "4", "--eval-size", "4", "--no-progress", "--output", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("load it with:") == 1 and len(re.findall(r"^task +before", run.stdout, re.MULTILINE)) == 1
    assert re.search(r"^more-red +\d\.\d{3} +\d\.\d{3} ", run.stdout, re.MULTILINE), run.stdout
    record = record_of(out)
    assert record["processes"] == 2 and record["steps"] == 2
    model, _ = vtc.load_trained(out)
    assert vtc.is_compressed(model)


# ------------------------------------------------------------------------------------------------------------ resume
def test_resume_continues_from_the_latest_checkpoint_or_the_one_given(pvtc_json, one_batch, tmp_path):
    first = tmp_path / "first"
    assert train("reference:llava", [one_batch], first, "--config", pvtc_json, "--save-steps", "2", steps=4) == 0
    assert {path.name for path in first.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    assert (first / "checkpoint-2" / WEIGHTS_NAME).is_file()
    # From checkpoint-2 of the same run into a new folder: the same two last steps, the same weights.
    resumed = tmp_path / "resumed"
    assert train("reference:llava", [one_batch], resumed, "--config", pvtc_json,
                 "--resume", str(first / "checkpoint-2"), steps=4) == 0
    assert record_of(resumed)["steps"] == 4
    final, again = load_file(first / WEIGHTS_NAME), load_file(resumed / WEIGHTS_NAME)
    assert final.keys() == again.keys()
    for name in final:
        torch.testing.assert_close(again[name], final[name], rtol=0, atol=1e-6)
    # --resume alone: the latest checkpoint of --output (checkpoint-4), on to step 6, in the folder that holds it.
    assert train("reference:llava", [one_batch], first, "--config", pvtc_json, "--resume", steps=6) == 0
    assert record_of(first)["steps"] == 6


# ------------------------------------------------------------------------------------------------------------- errors
@pytest.fixture
def nothing_is_built(refuse_calls):
    """Records every attempt to load a model or to train; each attempt fails."""
    return refuse_calls("vtc.training.run.train_run", "vtc.loading.load_checkpoint", "vtc.loading.load_model",
                        "vtc.tasks.reference_model")


@pytest.fixture
def paths(tmp_path, pvtc_json):
    """The paths that the bad command lines below name, by placeholder."""
    busy, empty_jsonl, file = tmp_path / "busy", tmp_path / "empty.jsonl", tmp_path / "file.txt"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    empty_jsonl.write_text("\n")
    file.write_text("")
    return {"{out}": str(tmp_path / "out"), "{busy}": str(busy), "{config}": pvtc_json, "{empty}": str(empty_jsonl),
            "{missing}": str(tmp_path / "missing"), "{file}": str(file)}


GOOD = ["train", "--model", "reference:llava", "--data", "task:more-red", "--config", "{config}", "--stage",
        "compressor", "--steps", "2", "--output", "{out}"]


def with_options(*options, drop=()):
    """GOOD with `options` added (an option already there takes the new value) and the options in `drop` left out."""
    argv, given = list(GOOD), dict(zip(options[::2], options[1::2]))
    for name in (*given, *drop):
        if name in argv:
            index = argv.index(name)
            del argv[index:index + 2]
    for name, value in given.items():
        argv += [name] if value is None else [name, value]
    return argv


def bad(options, fragment, drop=()):
    """GOOD changed by `options` (and without the options in `drop`), and a piece of the one-line error it gives."""
    label = " ".join(option for option in options if option is not None) or "without " + " ".join(drop)
    return pytest.param(with_options(*options, drop=drop), fragment, id=label)


BAD_COMMAND_LINES = [
    bad(["--stage", "bogus"], "argument --stage: invalid choice: 'bogus'"),
    bad(["--objective", "kl"], "argument --objective: invalid choice: 'kl'"),
    bad(["--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
    bad(["--batch", "6", "--grad-accum", "4"],
        "argument --batch: the global batch 6 does not split into 1 process(es) x 4 accumulation step(s); give a "
        "multiple of 4"),
    bad(["--output", "{busy}"], "is not empty; give a new or empty folder, add --force to write into it, or --resume"),
    bad(["--output", "{file}"], "argument --output: "),
    bad(["--data", "task:nope"], "argument --data: unknown task 'nope'"),
    bad(["--data", "{missing}"], "argument --data: "),
    bad(["--data", "{empty}"], "argument --data: "),
    bad(["--eval-data", "task:nope"], "argument --eval-data: unknown task 'nope'"),
    bad(["--config", "{missing}"], "argument --config: cannot read"),
    bad(["--config", "{file}"], "argument --config: "),
    bad([], "the following arguments are required: --config", drop=["--config"]),
    bad(["--model", "reference:nope"], "argument --model: no reference model 'nope'"),
    bad(["--model", "{missing}"], "argument --model: no such folder"),
    bad(["--eval-size", "-1"], "argument --eval-size: expected an integer >= 0, got '-1'"),
    bad(["--eval-size", "0", "--eval-data", "task:more-red"], "argument --eval-size: 0 skips"),
    bad(["--lr", "0"], "argument --lr: expected a positive number, got '0'"),
    bad(["--lm-weight", "0.5"], "argument --lm-weight: applies to --objective distill only"),
    bad(["--temperature", "2"], "argument --temperature: applies to --objective distill only"),
    bad(["--objective", "distill", "--temperature", "0"], "argument --temperature: expected a positive"),
    bad(["--objective", "distill", "--lm-weight", "-1"], "argument --lm-weight: expected a number >= 0"),
    bad(["--train-vision", None], "argument --train-vision: the compressor stage trains only"),
    bad(["--resume", None], "argument --resume: "),  # {out} holds no checkpoint
    bad(["--resume", "{missing}"], "argument --resume: "),
    bad(["--resume", "{busy}"], "has no trainer_state.json"),
    bad(["--save-steps", "-2"], "argument --save-steps: expected an integer >= 0"),
]


def assert_one_line_error(out, err, fragment):
    assert "Traceback" not in out + err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("vtc: error: ") and fragment in lines[0], lines[0]


@pytest.mark.parametrize(("argv", "fragment"), BAD_COMMAND_LINES)
def test_a_bad_command_line_is_one_line_and_builds_nothing(argv, fragment, paths, capsys, nothing_is_built,
                                                           tmp_path):
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    assert main([paths.get(arg, arg) for arg in argv]) == 2
    assert_one_line_error(*capsys.readouterr(), fragment)
    assert nothing_is_built == []
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before  # no output folder, nothing written


def test_the_batch_must_split_over_the_processes_of_a_distributed_run(paths, capsys, nothing_is_built, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main([paths.get(arg, arg) for arg in with_options("--batch", "6")]) == 2
    assert_one_line_error(*capsys.readouterr(), "the global batch 6 does not split into 4 process(es) x 1 "
                                                "accumulation step(s); give a multiple of 4")
    assert not Path(paths["{out}"]).exists()


def test_a_missing_training_extra_is_named_before_anything_is_built(paths, capsys, nothing_is_built, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "peft" else
                        find_spec(name, *args))
    assert main([paths.get(arg, arg) for arg in with_options("--stage", "lora")]) == 2
    assert_one_line_error(*capsys.readouterr(), "--stage lora needs peft, which is not installed: pip install "
                                                "'vtc[train]'")
    assert nothing_is_built == [] and not Path(paths["{out}"]).exists()


def test_samples_that_do_not_load_fail_in_one_line_before_training(paths, tmp_path, capsys, nothing_is_built):
    bad_sample = tmp_path / "bad.jsonl"
    bad_sample.write_text('{"question": "Which colour?"}\n')
    assert main([paths.get(arg, arg) for arg in with_options("--data", str(bad_sample))]) == 1
    assert_one_line_error(*capsys.readouterr(), "bad.jsonl, line 1: ")
    assert nothing_is_built == [] and not (tmp_path / "out").exists()
