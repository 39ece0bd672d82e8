"""The `vtc` console script: info and the ablation harness."""

import csv
import json

import pytest

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


def test_ablate_rejects_an_unknown_family():
    import vtc

    with pytest.raises(vtc.UnsupportedModelError, match="llava"):
        main(["ablate", "--families", "not_a_family", "--repeats", "1", "--quiet"])


def test_format_table_aligns_columns():
    class Row:
        family, config_name, visual_tokens = "f", "baseline", [1, 2]
        mean_layer_seq_len, flops_rel, latency_ms, latency_rel, kv_cache_mb, peak_mem_mb = 3.0, 1, 2, 1, 0.5, None

    lines = format_table([Row()]).splitlines()
    assert len(lines) == 3 and "1/2" in lines[2] and "n/a" in lines[2]


def test_ablate_loads_a_local_checkpoint_without_network(tmp_path, monkeypatch):
    from vtc.adapters._tiny import build_tiny_model, build_tiny_processor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = tmp_path / "tiny-llava"
    build_tiny_model("llava").save_pretrained(checkpoint)
    build_tiny_processor("llava").save_pretrained(checkpoint)
    out_dir = tmp_path / "run"
    assert main(["ablate", "--model", str(checkpoint), "--repeats", "1", "--batch", "2", "--quiet",
                 "--image-sizes", "640x480,320x240", "--out", str(out_dir)]) == 0
    rows = {r["config_name"]: r for r in map(json.loads, (out_dir / "ablate.jsonl").read_text().splitlines())}
    assert rows["baseline"]["family"] == "llava" and rows["baseline"]["visual_tokens"] == [64, 64]
    assert rows["pvtc-r4"]["visual_tokens"] == [16, 16]  # the loaded processor was patched too


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
