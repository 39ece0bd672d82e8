"""benchmarks/decode_anatomy.py on the tiny Qwen2-VL shape: every row runs, and the profile of its decode steps holds
the work of decode steps only (the prefill subtracted)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def anatomy(import_benchmark):
    return import_benchmark("decode_anatomy")


def test_every_row_runs_and_the_prompt_lengths_follow_the_config(anatomy, capsys):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        summary = anatomy.main(["--tiny", "--batch", "2", "--new-tokens", "4", "--profile-steps", "2"])
    finally:
        torch.set_num_threads(threads)
    rows = {name: (prompt, ms) for name, prompt, ms in summary}
    assert list(rows) == ["baseline", "pvtc r4", "lvtc r4", "rvtc"]
    assert all(ms > 0 for _, ms in rows.values())
    # PVTC and RVTC shorten the prompt by the same visual tokens; LVTC keeps the full prompt
    assert rows["pvtc r4"][0] == rows["rvtc"][0] < rows["baseline"][0] == rows["lvtc r4"][0]
    printed = capsys.readouterr().out
    # a decode step of the tiny model runs matrix products: the top ops per step name them, with positive times
    for name in rows:
        section = printed.split(f"## {name}:")[1].split("##")[0]
        assert "aten::" in section and " ms  aten::" in section


def test_profile_subtracts_the_prefill(anatomy, import_benchmark):
    """What only the prefill runs (the vision tower's patch convolution) is gone from the decode steps' profile; what
    every step runs (the matrix products) is left, once or more per step."""
    models = import_benchmark("real_size_models")
    device = torch.device("cpu")
    family = models.FAMILY_CLASSES["llava"](True, device, torch.float32, "sdpa")
    model = family.build()
    inputs = models.expand(family.inputs_one(model, None), 1, device, torch.float32)
    with torch.inference_mode():
        times, counts, calls = anatomy.profiled(model, inputs, 2, device)
    assert counts["aten::_convolution"] == 0
    assert counts["aten::mm"] + counts["aten::addmm"] >= model.config.text_config.num_hidden_layers
    assert times.most_common(1)[0][1] > 0
    assert not calls  # no CUDA runtime on a CPU run
