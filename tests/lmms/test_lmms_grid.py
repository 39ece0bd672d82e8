"""`vtc.lmms.grid.evaluate_grid_lmms`: an ablation grid scored through lmms-eval gives the rows `vtc.evaluate` gives on
the same samples (accuracy, visual tokens, FLOPs and the relative columns), refused configurations as skipped rows,
and the model left uncompressed."""

import pytest
from test_lmms_harness import FAMILY, max_new_tokens, offline

import vtc
import vtc.tasks
from vtc.lmms.write_tasks import lmms_task_name, write_tasks

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed here; .ci/run runs tests/lmms in an environment "
                                        "that has it (.ci/lmms.sh)")

LIMIT, TASK = 16, "majority-colour"
GRID = {
    "baseline": vtc.VTCConfig(),
    "pvtc-r4": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)),
    "rvtc": vtc.VTCConfig(rvtc=vtc.RVTCConfig()),  # one fixed resolution: refused on LLaVA-1.5
}


def test_a_grid_through_lmms_eval_gives_the_rows_of_vtc_evaluate(tmp_path, monkeypatch):
    from vtc.lmms.grid import evaluate_grid_lmms

    for key, value in offline(tmp_path / "datasets").items():
        monkeypatch.setenv(key, value)
    folder = write_tasks(tmp_path / "tasks", size=LIMIT)
    model, processor = vtc.tasks.reference_model(FAMILY)
    seen = []
    rows = evaluate_grid_lmms(model, processor, GRID, [lmms_task_name(TASK)], family=FAMILY, limit=LIMIT,
                              batch_size=8, include_path=str(folder), progress=seen.append)
    assert seen == list(GRID) and not vtc.is_compressed(model)
    by_name = {row.config_name: row for row in rows}
    samples = vtc.tasks.synthetic(TASK, "test", LIMIT, 0)
    for name in ("baseline", "pvtc-r4"):
        vtc.compress(model, GRID[name], processor=processor)
        expected = vtc.evaluate(model, processor, samples, batch_size=8, max_new_tokens=max_new_tokens(TASK),
                                progress=False)
        vtc.unpatch(model)
        row = by_name[name]
        assert (row.task, row.n, row.accuracy) == (lmms_task_name(TASK), LIMIT, expected.accuracy)
        assert row.visual_tokens == expected.visual_tokens
        assert row.prefill_flops == pytest.approx(expected.prefill_flops)
    assert by_name["pvtc-r4"].flops_rel == pytest.approx(by_name["pvtc-r4"].prefill_flops
                                                         / by_name["baseline"].prefill_flops)
    assert by_name["baseline"].accuracy_rel == 1.0 and by_name["pvtc-r4"].visual_tokens == 9
    skipped = by_name["rvtc"]
    assert skipped.accuracy is None and "resolution" in skipped.skipped


def test_a_grid_without_a_baseline_is_refused():
    from vtc.lmms.grid import evaluate_grid_lmms

    with pytest.raises(vtc.ConfigError, match="baseline"):
        evaluate_grid_lmms(None, None, {"pvtc-r4": GRID["pvtc-r4"]}, ["vtc_majority_colour"], family=FAMILY)


def test_vtc_ablate_lmms_joins_the_harness_rows_to_the_table_and_the_report(tmp_path, monkeypatch):
    import csv

    from vtc.cli import main

    for key, value in offline(tmp_path / "datasets").items():
        monkeypatch.setenv(key, value)
    size = 8
    folder = write_tasks(tmp_path / "tasks", size=size)
    out = tmp_path / "out"
    status = main(["ablate", "--families", FAMILY, "--configs", "pvtc-r4", "--lmms", lmms_task_name(TASK),
                   "--lmms-include", str(folder), "--size", str(size), "--batch-size", "8", "--out", str(out),
                   "--quiet"])
    assert status == 0
    with open(out / "ablate.csv") as file:
        rows = {row["config_name"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"baseline", "pvtc-r4"}  # the harness's task only: no synthetic task rows
    model, processor = vtc.tasks.reference_model(FAMILY)
    samples = vtc.tasks.synthetic(TASK, "test", size, 0)
    for name, config in (("baseline", vtc.VTCConfig()), ("pvtc-r4", GRID["pvtc-r4"])):
        vtc.compress(model, config, processor=processor)
        expected = vtc.evaluate(model, processor, samples, batch_size=8, max_new_tokens=max_new_tokens(TASK),
                                progress=False)
        vtc.unpatch(model)
        assert rows[name]["task"] == lmms_task_name(TASK)
        assert float(rows[name]["accuracy"]) == pytest.approx(expected.accuracy)
        assert float(rows[name]["visual_tokens"]) == expected.visual_tokens
    report = (out / "report.md").read_text()
    assert f"lmms-eval tasks {lmms_task_name(TASK)}" in report and (out / "pareto.png").exists()
