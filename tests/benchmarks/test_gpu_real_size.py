"""`benchmarks/real_size.py`: its `--tiny` run writes every table on the CPU; its agreement rule judges flash against
the noise floor of the backends (default vs math); on a GPU, with the flash SDPA backend forced, every compressed
configuration's outputs agree with the default backend's (no padding, causal: the masks allow flash)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vtc

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "real_size.py"
FAMILIES = ("llava", "qwen2_vl")
PREFILL_ROWS = ["baseline", "pvtc r4", "pvtc r16", "lvtc r1", "lvtc r4", "lvtc r16", "rvtc", "pvtc r4 + lvtc r4"]
ORACLE_ROWS = ["baseline", "pvtc r4", "pvtc r16", "lvtc r4", "lvtc r16", "pvtc r4 + lvtc r4"]
GENERATION_ROWS = [row for row in PREFILL_ROWS if row != "lvtc r1"]  # the flash check's rows too


def run_script(out: Path, *options: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out), *options], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_tiny_run_writes_every_table(tmp_path):
    # the smallest setting that still runs every phase, configuration and oracle; a budget no machine load exceeds
    run_script(tmp_path, "--batches", "1", "--repeats", "1", "--new-tokens", "3", "--flash-repeats", "1",
               "--flash-batch", "1", "--budget-s", "3600")
    results = json.loads((tmp_path / "real_size.json").read_text())
    markdown = (tmp_path / "real_size.md").read_text()
    assert results["meta"]["finished"] and results["skipped"] == []
    assert list(results["families"]) == list(FAMILIES)
    for key, family in results["families"].items():
        prefill = family["prefill"]["1"]
        assert prefill["rounds"] == 1 and list(prefill["rows"]) == PREFILL_ROWS
        for name, row in prefill["rows"].items():
            if key == "llava" and name == "rvtc":  # one fixed resolution: said so, not measured
                assert "ConfigError" in row["na"] and "fixed input resolution" in row["na"]
                continue
            assert row["lm"] > 0 and row["total"] >= row["lm"] and row["speedup"] > 0 and row["flops_ratio"] >= 1
            assert len(row["layer_lens"]) == family["num_layers"]
            assert ("of_oracle" in row) == (name in ORACLE_ROWS)
        rows = prefill["rows"]
        assert rows["pvtc r4"]["visual"] == 16 and rows["pvtc r16"]["visual"] == 4 and rows["lvtc r4"]["visual"] == 64
        assert rows["pvtc r4"]["projector_cost"] is None or rows["pvtc r4"]["projector_cost"] > -10
        assert "overhead" in rows["lvtc r1"]
        if key == "qwen2_vl":  # RVTC's budget: the visual tokens of PVTC r4, from a smaller image
            assert rows["rvtc"]["visual"] == rows["pvtc r4"]["visual"]
            assert rows["rvtc"]["vision"] >= 0

        flash = family["flash"]["rows"]
        assert list(flash) == GENERATION_ROWS
        for name, row in flash.items():
            if "na" in row:
                continue
            assert row["masked_calls"] == 0 and row["decode_masked_calls"] == 0, (key, name, row)
            assert row["agree"] and row["decode_agree"], (key, name, row)
            assert len(row["agree_bound"]) == 2 and len(row["decode_default_vs_math"]) == 2, (key, name, row)

        decode = family["decode"]["1"]["rows"]
        assert list(decode) == GENERATION_ROWS
        for name, row in decode.items():
            if "na" in row:
                continue
            assert row["ttft"] > 0 and row["decode"] > 0 and row["kv_mib"] > 0
            assert (row["kv_ratio"] < 1) == (name != "baseline")
            assert row["first_decode"] > 0 and len(row["raw"]) == 1  # the first generation is not a timed round

    for heading in ("prefill, batch 1", "flash SDPA forced, batch 1", "generation, batch 1", "## Targets",
                    "## Phase times", "PVTC r4 >= 95% of oracle", "LVTC r1 overhead <= 2%"):
        assert heading in markdown
    assert "skipped" not in markdown.split("## Skipped")[0]


@pytest.fixture
def real_size(import_benchmark):
    return import_benchmark("real_size")


@pytest.fixture
def models(import_benchmark):
    return import_benchmark("real_size_models")


@pytest.fixture
def flash(import_benchmark):
    return import_benchmark("real_size_flash")


def test_time_guard_skips_what_does_not_fit_and_says_so(real_size, tmp_path):
    threads = torch.get_num_threads()
    try:
        real_size.main(["--tiny", "--out", str(tmp_path), "--budget-s", "0"])
    finally:
        torch.set_num_threads(threads)  # --tiny runs on one thread
    results = json.loads((tmp_path / "real_size.json").read_text())
    assert results["families"] == {} and results["meta"]["finished"]
    assert [s.split(":")[0] for s in results["skipped"]] == list(FAMILIES)
    assert "everything: skipped by the time guard" in (tmp_path / "real_size.md").read_text()


def test_the_plan_holds_only_the_phases_that_run(real_size):
    plan = real_size.main(["--plan", "--batches", "1,8", "--no-flash", "--no-decode"])["plan"]
    assert sorted(plan) == sorted((family, f"prefill batch {b}") for family in FAMILIES for b in (1, 8))
    plan = real_size.main(["--plan", "--batches", "1", "--no-flash"])["plan"]
    assert sorted(phase for _, phase in plan) == ["decode batch 1", "decode batch 1", "prefill batch 1",
                                                  "prefill batch 1"]


def test_projector_cost_is_not_judged_where_the_oracle_itself_gains_nothing(import_benchmark):
    """At batch 1 a 7B decoder on a GPU waits for kernel launches: the oracle's shorter sequence saves no LM time,
    so a projector cost over "LM time saved" would divide by noise (993% in one H200 run)."""
    prefill = import_benchmark("real_size_prefill")
    assert prefill.projector_cost(2.0, 40.0, 3.0) == (0.05, "")
    value, why = prefill.projector_cost(3.0, 0.3, 1.01)
    assert value is None and "bound by the host" in why and "1.01x" in why
    assert prefill.projector_cost(3.0, -0.5, None) == (None, "n/a (no LM time saved)")
    assert prefill.projector_cost(3.0, 1.0, prefill.HOST_BOUND_ORACLE_SPEEDUP)[0] == 3.0


def test_flash_agrees_within_the_noise_floor_of_the_backends(flash):
    bf16 = torch.bfloat16
    mean_tol, max_tol = flash.AGREE_TOLERANCE[bf16]
    # the H200 7B run: every backend differs from every other by ~7e-2 / 9e-2, beyond the fixed tolerance alone
    floor = (7.2e-2, 9.0e-2)
    assert not (7.1e-2 <= mean_tol and 8.9e-2 <= max_tol)
    assert flash.backends_agree((7.1e-2, 8.9e-2), floor, bf16)
    assert flash.backends_agree((7.2e-2, 9.0e-2), floor, bf16)
    # far outside the floor (a wrong mask changes the states by their own size), in either statistic
    assert not flash.backends_agree((0.9, 1.0), floor, bf16)
    assert not flash.backends_agree((7.1e-2, 0.5), floor, bf16)
    assert not flash.backends_agree((0.3, 8.9e-2), floor, bf16)
    # just past the bound: NOISE_FACTOR x floor + the fixed tolerance, each statistic on its own
    bound = flash.agree_bound(floor, bf16)
    assert bound == pytest.approx((flash.NOISE_FACTOR * 7.2e-2 + mean_tol, flash.NOISE_FACTOR * 9e-2 + max_tol))
    assert flash.backends_agree(bound, floor, bf16)
    assert not flash.backends_agree((bound[0] * 1.01, bound[1]), floor, bf16)
    assert not flash.backends_agree((bound[0], bound[1] * 1.01), floor, bf16)
    # a floor of ~0 (tiny models, where backends agree to 1e-6): only the fixed tolerance applies
    f32 = torch.float32
    tiny_floor = (1e-7, 1e-6)
    assert flash.backends_agree((2e-6, 2e-5), tiny_floor, f32)
    assert flash.backends_agree((1e-2, 5e-2), (0.0, 0.0), bf16)
    assert not flash.backends_agree((1e-4, 2e-5), tiny_floor, f32)
    assert not flash.backends_agree((2e-6, 1e-3), tiny_floor, f32)
    assert not flash.backends_agree((3e-2, 5e-2), (0.0, 0.0), bf16)


def check_flash_agrees(models, flash, family_key: str, device: torch.device, dtype: torch.dtype) -> None:
    """Every configuration of the script on the tiny model: no SDPA call gets a mask, and flash forced agrees with
    the default backend, prefill (final hidden states at every position) and decode (step logits), within the
    default-vs-math noise floor plus the fixed tolerance (`real_size_flash.backends_agree`)."""
    family = models.FAMILY_CLASSES[family_key](True, device, dtype, "sdpa")
    model = family.build()
    k, restore = vtc.LVTCConfig(compress_layer=2, restore_layer=-2, ratio=1).resolve_layers(
        model.config.text_config.num_hidden_layers)
    rows = models.make_rows(family, model, [4, 16], k, restore)
    one = {row.inputs_key: family.inputs_one(model, None if row.inputs_key == "native" else row.config)
           for row in rows}
    inputs = {key: models.expand(value, 2, device, dtype) for key, value in one.items()}
    checked = []
    for row in rows:
        if row.na is not None or row.name == "lvtc r1":
            continue
        result = flash.flash_check(model, family, row, inputs[row.inputs_key], repeats=1)
        where = f"{family_key} {row.name}: {result}"
        assert result["masked_calls"] == 0 and result["decode_masked_calls"] == 0, where  # no padding, causal
        assert "prefill_error" not in result and "decode_error" not in result, where
        assert result["agree"] and result["decode_agree"], where
        checked.append(row.name)
    assert checked == [name for name in GENERATION_ROWS if not (family_key == "llava" and name == "rvtc")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family_key", FAMILIES)
def test_flash_forced_agrees_with_default_backend_on_cuda(models, flash, family_key):
    check_flash_agrees(models, flash, family_key, torch.device("cuda"), torch.bfloat16)


def test_decode_times_first_generations_apart_and_fills_a_short_round_baseline_first(import_benchmark, models,
                                                                                      monkeypatch):
    """Each configuration's first generation is kept out of the decode figures; a round that does not fit whole
    runs as many generations as fit, the baseline first, and the time guard lists the rest."""
    clock = [0.0]
    fake_time = type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock[0]),
                                      "strftime": staticmethod(lambda fmt: "00:00:00")})
    generations = []

    def generate_once(model, family, row, inputs, new_tokens):
        generations.append(row.name)
        clock[0] += 10.0  # every generation takes 10 s of the guard's clock
        return {"ttft": 5.0, "decode": 100.0 + len(generations)}

    run, decode = import_benchmark("real_size_run"), import_benchmark("real_size_decode")
    monkeypatch.setattr(run, "time", fake_time)  # the guard's clock and the progress lines
    monkeypatch.setattr(decode, "time", fake_time)
    monkeypatch.setattr(decode, "generate_once", generate_once)
    family = models.FAMILY_CLASSES["llava"](True, torch.device("cpu"), torch.float32, "sdpa")
    model = family.build()
    rows = models.make_rows(family, model, [4], 2, 4)
    one = {row.inputs_key: family.inputs_one(model, None if row.inputs_key == "native" else row.config)
           for row in rows}
    inputs = {key: models.expand(value, 1, torch.device("cpu"), torch.float32) for key, value in one.items()}
    live = [row.name for row in rows if row.na is None and row.name != "lvtc r1"]
    guard = run.Guard(0.0)
    guard.deadline = 10.0 * len(live) + 25.0  # on the fake clock: the first generations, then room for two more
    result = decode.decode_phase(model, family, rows, inputs, 8, 2, guard, None, 1)

    assert generations == live + live[:2]  # first generations, then a short round: the baseline and the next
    assert result["rounds"] == 1
    entries = result["rows"]
    for position, name in enumerate(live):
        entry = entries[name]
        assert entry["first_decode"] == 100.0 + position + 1  # its own first generation, apart
        if position < 2:
            assert entry["decode"] == 100.0 + len(live) + position + 1 and len(entry["raw"]) == 1
        else:
            assert "decode" not in entry and entry["raw"] == []
    assert entries["pvtc r4"]["decode_speedup"] == pytest.approx(entries["pvtc r4"]["decode"] /
                                                                 entries["baseline"]["decode"])
    assert guard.skipped == [f"llava decode batch 1: round 1 of {', '.join(live[2:])}, rounds 2..2: skipped by the "
                             "time guard (25 s left)"]
    table = import_benchmark("real_size_tables").decode_table(result, cuda=False)
    assert table.count("| - ") >= 2 * (len(live) - 2)  # no decode figure where no round ran
