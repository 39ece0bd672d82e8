"""`report.md`, the report of one `vtc ablate` run: its table holds the numbers of `ablate.csv`, grouped by budget
with the best row marked; the setup, the picture, the skipped rows; written without matplotlib too. And the names and
numbers it shows: tasks from the samples' `task` field, budgets, relative accuracy."""

import csv
import json
import re
import sys

import pytest
import torch
import transformers

import vtc
from vtc.ablate import AblationRow, budget_grid, default_grid, format_table, split_by_task
from vtc.cli import main
from vtc.report import RunSetup, budget, budget_label, render_report
from vtc.tasks.reference import reference_path
from vtc.version import __version__

needs_llava = pytest.mark.skipif("llava" not in vtc.tasks.reference_families(), reason="no reference llava model")
NUMBERS = {"accuracy": ("accuracy", "{:.3f}"), "accuracy rel": ("accuracy_rel", "{:.3f}"),
           "visual tokens": ("visual_tokens", "{:.1f}"), "FLOPs rel": ("flops_rel", "{:.3f}"),
           "prefill ms": ("latency_ms", "{:.2f}"), "latency rel": ("latency_rel", "{:.3f}")}


def report_tables(text):
    """`{(task, config): {column: cell}}` of the results tables of a report, and each row's budget group order."""
    rows = {}
    for task, table in re.findall(r"^### (.+)\n\n((?:\|.*\n)+)", text, flags=re.M):
        header, _, *body = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in
                            table.splitlines()]
        for cells in body:
            record = dict(zip(header, cells))
            record["best"] = cells[-1]
            rows[task, record["config"]] = record
    return rows


def csv_rows(folder):
    with (folder / "ablate.csv").open() as f:
        return list(csv.DictReader(f))


@needs_llava
def test_the_report_holds_the_csv_numbers_the_setup_and_the_tasks_the_data_names(tmp_path, capsys):
    data, out_dir = tmp_path / "mine.jsonl", tmp_path / "out"
    samples = [*vtc.tasks.synthetic("majority-colour", "test", 4, seed=0),
               *vtc.tasks.synthetic("odd-one-out", "test", 4, seed=0)]
    vtc.tasks.save_jsonl(samples, data)  # every row names its task
    model = reference_path("llava")
    argv = ["ablate", "--model", str(model), "--data", str(data), "--configs", "pvtc-r4,divprune-0.25,rvtc-edge",
            "--repeats", "1", "--warmup", "0", "--quiet", "--out", str(out_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"wrote {out_dir / 'report.md'}" in out and f"wrote {out_dir / 'pareto.png'}" in out

    table = csv_rows(out_dir)
    assert {row["task"] for row in table} == {"majority-colour", "odd-one-out"}  # not the file's name
    text = (out_dir / "report.md").read_text()
    reported = report_tables(text)
    measured = [row for row in table if not row["skipped"]]
    assert set(reported) == {(row["task"], row["config_name"]) for row in measured}
    for row in measured:
        cells = reported[row["task"], row["config_name"]]
        assert cells["family"] == row["family"] == "llava"
        for column, (field, fmt) in NUMBERS.items():
            assert cells[column] == (fmt.format(float(row[field])) if row[field] else "n/a"), (column, row)
    baseline = {row["task"]: float(row["accuracy"]) for row in measured if row["config_name"] == "baseline"}
    for row in measured:  # relative accuracy: a fraction of the same task's uncompressed accuracy
        assert float(row["accuracy_rel"]) == pytest.approx(float(row["accuracy"]) / baseline[row["task"]])
    for task in baseline:  # one budget (1/4) holds PVTC r4 and DivPrune at 9 of 36 tokens: one of them is best
        assert {reported[task, name]["budget"] for name in ("pvtc-r4", "divprune-0.25")} == {"1/4"}
        assert "**best**" in {reported[task, name]["best"] for name in ("pvtc-r4", "divprune-0.25")}
        assert reported[task, "baseline"]["budget"] == "1" and reported[task, "baseline"]["best"] == ""

    # The setup, the picture and the skipped row with its reason.
    assert f"`vtc {' '.join(argv)}`" in text
    for name, value in (("vtc", __version__), ("torch", torch.__version__),
                        ("transformers", transformers.__version__), ("dtype", "float32"), ("attention", "sdpa")):
        assert f"| {name} | {value} |" in text
    assert f"| model | {model} (llava) |" in text and f"| data | {data}: 4 samples per task" in text
    assert "![accuracy against visual tokens and prefill FLOPs](pareto.png)" in text
    assert "| circle | pvtc | vtc components |" in text and "| plus | divprune | pruning before the LLM |" in text
    (reason,) = {row["skipped"] for row in table if row["config_name"] == "rvtc-edge"}
    assert f"| llava | rvtc-edge | {reason} |" in text
    assert "prefill ms     median prefill time" in text  # the columns' legend


@needs_llava
def test_without_matplotlib_the_report_is_written_and_one_line_says_the_picture_was_skipped(tmp_path, capsys,
                                                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out_dir = tmp_path / "out"
    assert main(["ablate", "--families", "llava", "--configs", "pvtc-r4", "--size", "2", "--quiet",
                 "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "pareto.png" in line]
    assert skipped == ['pareto.png skipped: matplotlib is not installed (pip install "vtc[plot]" draws pareto.png)']
    assert not (out_dir / "pareto.png").exists()
    text = (out_dir / "report.md").read_text()
    assert "No picture: matplotlib is not installed" in text and "![" not in text
    assert set(report_tables(text)) == {(row["task"], row["config_name"]) for row in csv_rows(out_dir)}


def test_tasks_come_from_the_samples_task_field_and_the_file_name_only_where_a_row_has_none(tmp_path):
    samples = [*vtc.tasks.synthetic("more-red", "test", 2, seed=0), *vtc.tasks.synthetic("grid-readout", "test", 1)]
    path = vtc.tasks.save_jsonl(samples, tmp_path / "test.jsonl")
    assert {task: len(rows) for task, rows in split_by_task(vtc.tasks.load_jsonl(path)).items()} == {
        "more-red": 2, "grid-readout": 1}
    records = [json.loads(line) for line in path.read_text().splitlines()]
    del records[0]["task"]  # one row without a task: it takes the file's name
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert list(split_by_task(vtc.tasks.load_jsonl(path))) == ["test", "more-red", "grid-readout"]


def row(name, config, accuracy, tokens, flops_rel, family="f", task="t"):
    return AblationRow(family, task, name, config.to_dict() if config is not None else {}, 8, accuracy, tokens,
                       flops_rel * 100, flops_rel=flops_rel)


def test_a_budget_is_the_share_of_visual_tokens_kept_before_or_inside_the_llm():
    grid, base = default_grid(), row("baseline", None, 1.0, 36.0, 1.0)
    assert budget(base, base) == 1.0
    for name, tokens in (("pvtc-r4", 9.0), ("lvtc-r4-delta", 36.0), ("pool-0.25", 9.0), ("fastv-0.25", 36.0),
                         ("pdrop-0.25", 36.0)):
        assert budget(row(name, grid[name], 0.5, tokens, 0.5), base) == 0.25, name
    assert budget(row("pvtc-r4+lvtc-r4", grid["pvtc-r4+lvtc-r4"], 0.5, 9.0, 0.4), base) == 1 / 16
    fastv = budget_grid([64], 576)["fastv-64"]  # an int keep: tokens of the uncompressed row
    assert budget(row("fastv-64", fastv, 0.5, 576.0, 0.4), row("baseline", None, 1.0, 576.0, 1.0)) == 1 / 9
    assert budget(AblationRow("f", "t", "rvtc-edge", {}, 8, None, None, None, skipped="no tiles"), base) is None
    assert [budget_label(share) for share in (1.0, 0.25, 1 / 9, 2 / 9, 1 / 3, 0.7231, None)] == [
        "1", "1/4", "1/9", "2/9", "1/3", "0.72", "-"]


def test_the_best_row_of_each_model_at_each_budget_is_marked_the_cheaper_of_equals():
    grid = default_grid()
    rows = [row("baseline", None, 1.0, 36.0, 1.0), row("pvtc-r4", grid["pvtc-r4"], 0.75, 9.0, 0.42),
            row("pool-0.25", grid["pool-0.25"], 0.75, 9.0, 0.42), row("fastv-0.25", grid["fastv-0.25"], 0.75, 36.0, 0.71),
            row("pvtc-r16", grid["pvtc-r16"], 0.25, 4.0, 0.3),
            AblationRow("f", "t", "rvtc-edge", {}, 8, None, None, None, skipped="rvtc expects tiles")]
    text = render_report(rows, RunSetup("vtc ablate", {"vtc": __version__}, "m", "d"), picture_note="not asked for")
    cells = report_tables(text)
    assert [cells["t", name]["best"] for name in ("pvtc-r4", "pool-0.25", "fastv-0.25")] == ["**best**"] * 2 + [""]
    assert cells["t", "pvtc-r16"]["best"] == "" and cells["t", "baseline"]["best"] == ""  # alone at its budget
    budgets = [cells[key]["budget"] for key in cells]
    assert budgets == ["1", "1/4", "1/4", "1/4", "1/9"]  # largest first
    assert "No picture: not asked for." in text and "| f | rvtc-edge | rvtc expects tiles |" in text
    assert "accuracy rel" in format_table(rows).splitlines()[0]
