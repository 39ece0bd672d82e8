"""`vtc ablate --trained RUN`: trained runs as rows of their own, right after the training-free row of their
configuration, in the table, the files and the picture; and the command lines it refuses before building anything.

The run folders are made without training: the reference model compressed with PVTC r4, its compressor perturbed
(so that the row shows the run's weights, not the warm start's), saved as `vtc train` saves a compressor run."""

import json

import pytest
import torch

import vtc
from vtc.ablate import (
    AblationRow,
    RunLoadError,
    TrainedRun,
    config_label,
    evaluate_trained_runs,
    format_table,
    join_trained,
    legend,
    pareto_points,
    trained_row_name,
)
from vtc.cli import main
from vtc.training.trained import load_trained, write_training_record

needs_llava = pytest.mark.skipif("llava" not in vtc.tasks.reference_families(), reason="no reference llava model")
PVTC_R4 = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))
SIZE, BATCH_SIZE = 8, 16  # vtc ablate's --batch-size default
BIAS = "model.vtc_pvtc.native_projector.linear_2.bias"


def make_run(folder, model, processor, base_model, *, stage="compressor", steps=7, config=PVTC_R4, perturb=True):
    """A run folder as `vtc train` writes one: the compressor's files and `vtc_training.json`."""
    vtc.compress(model, config, processor=processor)
    if perturb:  # seeded: a fixed, visible change of the answers (more-red 7/8 -> 6/8 on llava)
        with torch.no_grad():
            bias = dict(model.named_parameters())[BIAS]
            bias.add_(3 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(0)))
    vtc.save_pretrained(model, folder)
    vtc.unpatch(model)
    write_training_record(folder, base_model=base_model, stage=stage, steps=steps, objective="lm",
                          config=config.to_dict(), train_seconds=0.0)
    return folder


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory):
    model, processor = vtc.tasks.reference_model("llava")
    return make_run(tmp_path_factory.mktemp("llava-run"), model, processor, "reference:llava")


def read_rows(out_dir):
    return [json.loads(line) for line in (out_dir / "ablate.jsonl").read_text().splitlines()]


@needs_llava
def test_a_trained_run_joins_its_reference_family_right_after_its_configuration(llava_run, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["ablate", "--trained", str(llava_run), "--configs", "pvtc-r4", "--size", str(SIZE), "--quiet",
                 "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    name = "pvtc-r4 +compressor 7 steps"

    # The table: a `trained` column; each task's trained row right after its pvtc-r4 row.
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["family", "task", "config", "trained"] and "accuracy" in header and "FLOPs" in header
    table = lines[2:lines.index("")]
    tasks = vtc.tasks.available()
    assert len(table) == 3 * len(tasks)  # only llava: the run's family, no --families
    for task in tasks:
        index = next(i for i, line in enumerate(table) if line.split()[:3] == ["llava", task, "pvtc-r4"])
        assert table[index].split()[3] == "-"  # training-free
        assert table[index + 1].split()[:2] == ["llava", task] and name in table[index + 1]
        assert "compressor, 7 steps, lm" in table[index + 1]
    assert f"trained llava {name}: {llava_run}" in out  # the legend names the run's folder
    assert "trained        a trained run (--trained)" in out

    # The files: the trained row's own scores are those of vtc.evaluate on the run's model, same samples.
    rows = read_rows(out_dir)
    by = {(row["task"], row["config_name"]): row for row in rows}
    assert {row["family"] for row in rows} == {"llava"}
    model, processor = load_trained(llava_run)
    changed = False
    for task in tasks:
        trained, free = by[task, name], by[task, "pvtc-r4"]
        result = vtc.evaluate(model, processor, vtc.tasks.synthetic(task, "test", SIZE, seed=0),
                              batch_size=BATCH_SIZE, progress=False)
        assert trained["accuracy"] == result.accuracy and trained["n"] == SIZE
        assert trained["visual_tokens"] == free["visual_tokens"] == result.visual_tokens
        assert trained["flops_rel"] == pytest.approx(free["flops_rel"]) and trained["flops_rel"] < 1.0
        assert trained["trained"] == "compressor, 7 steps, lm" and trained["run"] == str(llava_run)
        assert trained["config"] == free["config"] == PVTC_R4.to_dict() and free["trained"] is None
        changed |= trained["accuracy"] != free["accuracy"]
    assert changed  # the run's weights, not the warm start's

    # The picture: written, and drawn from both kinds of point.
    assert (out_dir / "pareto.png").stat().st_size > 10_000
    points = pareto_points([AblationRow(**{k: v for k, v in row.items() if k != "environment"}) for row in rows])
    assert len(points) == len(rows)
    trained_points = [p for p in points if p.trained]
    assert {p.trained for p in trained_points} == {name} and len(trained_points) == len(tasks)
    assert all(p.components == ("pvtc",) for p in trained_points)
    assert {p.config_name for p in points if not p.trained} == {"baseline", "pvtc-r4"}


def test_a_run_trained_from_a_checkpoint_joins_that_checkpoint_untimed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from vtc.loading import load_checkpoint
    from vtc.testing import build_tiny_model, build_tiny_processor

    checkpoint, out_dir = tmp_path / "tiny-llava", tmp_path / "out"
    build_tiny_model("llava").save_pretrained(checkpoint)
    build_tiny_processor("llava").save_pretrained(checkpoint)
    model, processor = load_checkpoint(checkpoint)
    run = make_run(tmp_path / "run", model, processor, checkpoint, stage="compressor", steps=3, perturb=False)
    assert main(["ablate", "--model", str(checkpoint), "--data", "task:majority-colour", "--size", "4",
                 "--configs", "pvtc-r4", "--repeats", "1", "--warmup", "0", "--quiet", "--out", str(out_dir),
                 "--trained", str(run)]) == 0
    out = capsys.readouterr().out
    assert "prefill ms" in out.splitlines()[0] and "; not timed" in out
    rows = {row["config_name"]: row for row in read_rows(out_dir)}
    assert list(rows) == ["baseline", "pvtc-r4", "pvtc-r4 +compressor 3 steps"]  # in the table's order
    trained, free = rows["pvtc-r4 +compressor 3 steps"], rows["pvtc-r4"]
    assert trained["family"] == "llava" and trained["latency_ms"] is None and free["latency_ms"] > 0
    # Not perturbed: the saved warm start is the training-free configuration, scored alike.
    assert trained["accuracy"] == free["accuracy"] and trained["visual_tokens"] == free["visual_tokens"] == 16


# ------------------------------------------------------------------------------------------- refused command lines
def run_folder(folder, base_model, config=PVTC_R4, stage="compressor"):
    """A run folder's files without weights: enough for what is checked before anything is built."""
    folder.mkdir(parents=True)
    config.save(folder / "vtc_config.json")
    if base_model is not None:
        write_training_record(folder, base_model=base_model, stage=stage, steps=1)
    return folder


@pytest.fixture
def refuse_to_build(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("built a model for a command line that is wrong")

    for target in ("vtc.tasks.reference_model", "vtc.loading.load_checkpoint", "vtc.training.trained.load_trained"):
        monkeypatch.setattr(target, refuse)


REFUSED = [
    ("empty", "argument --trained: {empty} has no vtc_config.json, so it is not the output folder of a training run"),
    ("missing", "argument --trained: no such folder: {missing}; give the output folder of a training run"),
    ("file", "argument --trained: {file} is a file"),
    ("bad_config", "argument --trained: {bad_config}/vtc_config.json is not a vtc configuration"),
    ("no_record", "argument --trained: {no_record} records no base model"),
    ("no_backbone", "argument --trained: {no_backbone} is a full run but has no config.json (the fine-tuned backbone)"),
    ("from_folder", "argument --trained: {from_folder} was trained from {checkpoint}, not from a reference model "
                    "shipped with vtc; compare it with its own base: vtc ablate --model {checkpoint}"),
    ("with_model", "argument --trained: {with_model} was trained from reference:llava, not from --model "
                   "{checkpoint}"),
]


@pytest.mark.parametrize("case, message", REFUSED, ids=[case for case, _ in REFUSED])
def test_a_folder_that_is_not_a_fitting_run_is_a_one_line_usage_error(case, message, tmp_path, capsys,
                                                                      refuse_to_build):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    folders = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "file": tmp_path / "file.txt",
               "checkpoint": checkpoint.resolve()}
    folders["empty"].mkdir()
    folders["file"].write_text("x")
    folders["bad_config"] = tmp_path / "bad_config"
    folders["bad_config"].mkdir()
    (folders["bad_config"] / "vtc_config.json").write_text('{"pvtc": {"ratio": 0}}')
    folders["no_record"] = run_folder(tmp_path / "no_record", None)
    folders["no_backbone"] = run_folder(tmp_path / "no_backbone", "reference:llava", stage="full")
    folders["from_folder"] = run_folder(tmp_path / "from_folder", checkpoint)
    folders["with_model"] = run_folder(tmp_path / "with_model", "reference:llava")
    argv = ["ablate", "--trained", str(folders[case]), "--out", str(tmp_path / "out")]
    if case == "with_model":
        argv += ["--model", str(checkpoint), "--data", "task:more-red"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("vtc: error: " + message.format(**folders))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ names and order
def test_a_trained_row_is_named_by_the_grid_row_of_its_configuration_or_by_its_settings(tmp_path):
    def run(name, config, steps=1500, stage="full"):
        return TrainedRun(tmp_path / name, config, stage, steps)

    grid_config = run("a", PVTC_R4)
    assert trained_row_name(grid_config) == "pvtc-r4 +full 1500 steps"
    assert trained_row_name(run("b", vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=9)), 200, "lora")) == \
        "pvtc-r9 +lora 200 steps"
    other_heads = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4, num_heads=8))  # spelled like pvtc-r4, not pvtc-r4
    assert config_label(other_heads) == "pvtc-r4-custom"
    assert config_label(vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4, init="paper"))) == "pvtc-r4-paper"  # not the grid's
    assert trained_row_name(TrainedRun(tmp_path / "c", PVTC_R4, "compressor")) == "pvtc-r4 +compressor"
    twin = run("d", PVTC_R4)  # same configuration, stage and steps: the folders tell them apart
    assert trained_row_name(grid_config, [grid_config, twin]) == "pvtc-r4 +full 1500 steps (a)"


def test_trained_rows_sit_after_their_configuration_with_flops_relative_to_the_same_baseline():
    def row(task, name, config, flops, trained=None, accuracy=0.5):
        return AblationRow("f", task, name, config, 4, accuracy, 9.0, flops, flops_rel=None if trained else flops / 10,
                           trained=trained, run="runs/x" if trained else None)

    pvtc, other = PVTC_R4.to_dict(), vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=9)).to_dict()
    free = [row(task, name, config, flops) for task in ("t1", "t2") for name, config, flops in
            (("baseline", {}, 10.0), ("pvtc-r4", pvtc, 4.0), ("pvtc-r16", {"pvtc": {}}, 2.0))]
    trained = [row("t2", "pvtc-r4 +full 9 steps", pvtc, 4.0, "full, 9 steps", accuracy=0.4),
               row("t1", "pvtc-r9 +full 9 steps", other, 3.0, "full, 9 steps"),
               row("t2", "pvtc-r4 +lora 9 steps", pvtc, 4.0, "lora, 9 steps")]
    rows = join_trained(free, trained)
    assert [(r.task, r.config_name) for r in rows] == [
        ("t1", "baseline"), ("t1", "pvtc-r4"), ("t1", "pvtc-r16"), ("t1", "pvtc-r9 +full 9 steps"),
        ("t2", "baseline"), ("t2", "pvtc-r4"), ("t2", "pvtc-r4 +full 9 steps"), ("t2", "pvtc-r4 +lora 9 steps"),
        ("t2", "pvtc-r16")]
    assert [r.flops_rel for r in trained] == [0.4, 0.3, 0.4]
    assert [r.accuracy_rel for r in trained] == [0.8, 1.0, 1.0]  # against the same task's baseline accuracy, 0.5
    table = format_table(rows).splitlines()
    assert table[0].split()[:4] == ["family", "task", "config", "trained"] and table[3].split()[3] == "-"
    assert "trained f pvtc-r4 +full 9 steps: runs/x" in legend(rows)
    assert "trained" not in format_table(free).splitlines()[0]  # no trained rows: the table as before



def test_a_run_whose_model_does_not_load_is_named_by_its_folder(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{not json")
    run = TrainedRun.read(run_folder(tmp_path / "run", checkpoint))
    with pytest.raises(RunLoadError, match=f"^{run.folder} does not load: ") as raised:
        evaluate_trained_runs([run], {"more-red": vtc.tasks.synthetic("more-red", "test", 1)}, family="llava")
    assert raised.value.run is run
