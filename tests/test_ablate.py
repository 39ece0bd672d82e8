"""`vtc ablate`: accuracy against cost of the grid on the reference models, the table, legend and files it writes;
and the side-by-side latency measurement (`vtc.bench.measure_configs`) it adds on a checkpoint."""

import csv
import json

import pytest

import vtc
from vtc.ablate import (
    AblationRow,
    ConfigResult,
    budget_grid,
    components,
    config_label,
    default_grid,
    format_table,
    legend,
)
from vtc.cli import main

needs_llava = pytest.mark.skipif("llava" not in vtc.tasks.reference_families(), reason="no reference llava model")


@needs_llava
def test_ablate_scores_the_grid_on_a_reference_model_and_writes_rows_and_picture(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["ablate", "--families", "llava", "--configs", "pvtc-r4,rvtc-edge", "--size", "8", "--quiet",
                 "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "accuracy" in out.splitlines()[0] and "latency" not in out.splitlines()[0]
    assert "latency of models this small measures Python overhead, not compute" in out  # the legend
    assert "FLOPs rel      analytic prefill FLOPs" in out
    assert out.count("skipped llava rvtc-edge: ") == 1  # once, not once per task
    assert (out_dir / "pareto.png").stat().st_size > 10_000 and (out_dir / "report.md").is_file()

    rows = {(r["task"], r["config_name"]): r for r in map(json.loads, (out_dir / "ablate.jsonl").read_text().splitlines())}
    assert {task for task, _ in rows} == set(vtc.tasks.available())
    assert {name for _, name in rows} == {"baseline", "pvtc-r4", "rvtc-edge"}  # the baseline always
    assert rows["majority-colour", "baseline"]["accuracy"] >= 0.9  # a trained model reads the coarse task
    baseline, pooled = rows["grid-readout", "baseline"], rows["grid-readout", "pvtc-r4"]
    assert pooled["accuracy"] < baseline["accuracy"] - 0.5  # pooling 2x2 cells destroys the fine task
    assert baseline["visual_tokens"] == 36 and pooled["visual_tokens"] == 9
    assert baseline["flops_rel"] == 1.0 and pooled["flops_rel"] < 1.0 and pooled["n"] == 8
    assert baseline["accuracy_rel"] == 1.0 and pooled["accuracy_rel"] == pooled["accuracy"] / baseline["accuracy"]
    assert rows["grid-readout", "rvtc-edge"]["accuracy"] is None and rows["grid-readout", "rvtc-edge"]["skipped"]
    assert baseline["latency_ms"] is None
    with (out_dir / "ablate.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and all("accuracy" in row for row in table)


def test_ablate_scores_and_times_a_checkpoint_folder_on_its_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    checkpoint, out_dir = tmp_path / "llava", tmp_path / "run"
    assert main(["make-tiny", "llava", str(checkpoint)]) == 0
    assert main(["ablate", "--model", str(checkpoint), "--data", "task:majority-colour", "--size", "4",
                 "--configs", "pvtc-r4", "--repeats", "1", "--warmup", "0", "--quiet", "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "prefill ms" in out and "Python overhead" not in out
    rows = {r["config_name"]: r for r in map(json.loads, (out_dir / "ablate.jsonl").read_text().splitlines())}
    assert rows.keys() == {"baseline", "pvtc-r4"}
    columns = ["family", "task", "config_name", "config", "n", "accuracy", "accuracy_rel", "visual_tokens",
               "prefill_flops", "flops_rel", "latency_ms", "latency_rel", "kv_cache_mb", "peak_mem_mb", "skipped", "trained", "run"]
    assert all(list(row) == [*columns, "environment"] for row in rows.values())
    with (out_dir / "ablate.csv").open() as f:
        assert next(csv.reader(f)) == columns
    for row in rows.values():
        assert row["family"] == "llava" and row["task"] == "majority-colour" and 0 <= row["accuracy"] <= 1
        assert row["latency_ms"] > 0 and row["kv_cache_mb"] > 0
    assert rows["baseline"]["visual_tokens"] == 64 and rows["pvtc-r4"]["visual_tokens"] == 16
    assert rows["baseline"]["latency_rel"] == 1.0 and rows["pvtc-r4"]["flops_rel"] < 1.0


def test_default_grid_holds_the_training_free_rows():
    assert list(default_grid()) == [
        "baseline", "pvtc-r4", "pvtc-r16", *(f"lvtc-r{r}-{restore}" for r in (4, 16)
                                             for restore in ("delta", "add", "upsample")),
        "rvtc-edge", "rvtc-area", "pvtc-r4+lvtc-r4",
        "pool-0.25", "random-0.25", "divprune-0.25", "visionzip-0.25", "downsample-0.25",
        "fastv-0.25", "pdrop-0.25", "dart-0.25"]
    assert components(default_grid()["divprune-0.25"]) == ("divprune",)
    assert components(default_grid()["pvtc-r4+lvtc-r4"].to_dict()) == ("pvtc", "lvtc")


def test_budget_grid_puts_equal_token_rows_together():
    methods = ["pool", "random", "divprune", "visionzip", "downsample", "fastv", "pdrop", "dart"]
    # the literature's budgets of a 576-token image: only 64 (r9) has a square PVTC ratio; 128 has no LVTC ratio
    assert list(budget_grid([192, 128, 64], 576)) == [
        "baseline", "lvtc-r3-delta", *(f"{m}-192" for m in methods), *(f"{m}-128" for m in methods),
        "pvtc-r9", "lvtc-r9-delta", *(f"{m}-64" for m in methods)]
    grid = budget_grid([1 / 9], 36)  # the same budget as a fraction of a reference model's 36 tokens
    assert grid["pvtc-r9"].pvtc.ratio == 9 and grid["pool-0.11"].prune.kept_count(36) == 4
    assert config_label(grid["divprune-0.11"]) == "divprune-0.11"
    with pytest.raises(vtc.ConfigError, match="at most the 36 visual tokens"):
        budget_grid([64], 36)
    with pytest.raises(vtc.ConfigError, match="keep"):
        budget_grid([0], 36)


def test_table_and_legend_say_what_a_missing_cell_means():
    assert ConfigResult is AblationRow  # one row type, under the name it had in vtc.ablate too
    rows = [AblationRow("f", "t", "baseline", {}, 4, 1.0, 36.0, 10.0, flops_rel=1.0),
            AblationRow("f", "t", "rvtc-edge", {}, 4, None, None, None, skipped="rvtc expects None")]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and "skipped" in lines[3] and "prefill ms" not in lines[0]
    assert legend(rows).splitlines()[-1] == "skipped f rvtc-edge: rvtc expects None"
    rows[0].latency_ms, rows[0].latency_rel = 2.0, 1.0
    assert "n/a" in format_table(rows).splitlines()[2]  # peak memory: CUDA only
    assert "prefill ms     median" in legend(rows, "5 rounds on cpu")


# ------------------------------------------------------------------------------------------ latency: measure_configs
def measure_tiny(family, grid, batch=None):
    """`measure_configs` rows of the tiny random model of `family`, one sample per image size by default."""
    from vtc.bench import measure_configs
    from vtc.testing import ablation_image_sizes, build_tiny_model, build_tiny_processor, tiny_batch

    sizes = ablation_image_sizes(family)
    batch = batch or len(sizes)

    def inputs(processor):
        return tiny_batch(family, processor, batch=batch, image_sizes=[sizes[i % len(sizes)] for i in range(batch)])

    rows = measure_configs(build_tiny_model(family), build_tiny_processor(family), grid, inputs, family=family,
                           repeats=1, warmup=0)
    return {row.config_name: row for row in rows}


def test_measure_configs_reports_tokens_layer_lengths_and_relative_costs():
    grid = {name: config for name, config in default_grid().items()
            if name != "pvtc-r4+lvtc-r4" and (not name.endswith("-0.25") or name == "divprune-0.25")}
    llava, qwen = measure_tiny("llava", grid, batch=2), measure_tiny("qwen2_vl", grid, batch=2)
    assert llava["divprune-0.25"].sample_visual_tokens == [16, 16] and llava["divprune-0.25"].flops_rel < 1.0
    assert qwen["divprune-0.25"].sample_visual_tokens == [4, 9] and qwen["divprune-0.25"].skipped is None  # per image
    assert llava["baseline"].sample_visual_tokens == [64, 64] and llava["baseline"].n == 2
    assert llava["baseline"].visual_tokens == 64 and llava["baseline"].task is None  # the mean; no task, a batch
    assert qwen["baseline"].sample_visual_tokens == [16, 35]
    for rows in (llava, qwen):
        assert rows["baseline"].flops_rel == 1.0 and rows["baseline"].latency_rel == 1.0
        assert rows["baseline"].latency_ms > 0 and rows["baseline"].kv_cache_mb > 0
    assert llava["pvtc-r4"].sample_visual_tokens == [16, 16] and llava["pvtc-r16"].sample_visual_tokens == [4, 4]
    assert qwen["pvtc-r4"].sample_visual_tokens == [4, 12]  # 4x4 and 5x7 token grids, ragged edges padded
    assert llava["pvtc-r16"].flops_rel < llava["pvtc-r4"].flops_rel < 1.0
    for rows in (llava, qwen):
        for name in (n for n in rows if n.startswith("lvtc")):
            full, short, _, last = rows[name].layer_seq_lens  # layers 1 and 2 (K=1 .. L-1=2) run compressed
            assert full == last > short == rows[name].layer_seq_lens[2], name
            assert rows[name].flops_rel < 1.0
            assert rows[name].sample_visual_tokens == rows["baseline"].sample_visual_tokens
    assert llava["lvtc-r16-delta"].flops_rel < llava["lvtc-r4-delta"].flops_rel


def test_measure_configs_rvtc_tokens_per_image_and_skips_fixed_resolution_families():
    grid = {name: config for name, config in default_grid().items() if name in ("baseline", "rvtc-edge", "rvtc-area")}
    internvl, llava = measure_tiny("internvl", grid), measure_tiny("llava", grid)
    # one sample per image size: 1 tile | 2x1 | 2x2 | 3x1, each with a thumbnail past one tile
    assert internvl["baseline"].sample_visual_tokens == [16, 48, 80, 64]
    assert internvl["rvtc-edge"].sample_visual_tokens == [16, 48, 80, 48]
    assert internvl["rvtc-area"].sample_visual_tokens == [16, 48, 16, 16] and internvl["rvtc-area"].skipped is None
    for mode in ("edge", "area"):
        row = llava[f"rvtc-{mode}"]
        assert "one fixed input resolution" in row.skipped
        assert row.visual_tokens is None and row.latency_ms is None and row.flops_rel is None
