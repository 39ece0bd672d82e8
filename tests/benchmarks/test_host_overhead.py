"""benchmarks/host_overhead.py: every configuration is timed, and vtc's hooks do not grow with the decoder's depth."""

from __future__ import annotations


def test_the_script_times_every_configuration_and_counts_the_hooks(import_benchmark):
    host_overhead = import_benchmark("host_overhead")
    rows = host_overhead.main(["--ratios", "4", "--repeats", "1", "--prefills", "1", "--new-tokens", "3"])
    assert [row[0] for row in rows] == ["unpatched", "instrumented", "lvtc r=1", "lvtc r=4", "oracle r=4"]
    hooks = {row[0]: int(row[1]) for row in rows}
    # The recording every compressed model carries: one hook before and one after the forward, not one per layer.
    assert hooks["instrumented"] - hooks["unpatched"] == 2
    # LVTC: begin and end of the language model's forward, the rotary embedding, compress at layer K, one swap for
    # each of layers K+1..L-1 and restore after layer L-1 (K=2, L=layers-2).
    assert hooks["lvtc r=4"] - hooks["instrumented"] == 4 + (host_overhead.LAYERS - 2 - 2 - 1) + 1
    assert hooks["lvtc r=1"] == hooks["lvtc r=4"]
    for row in rows:
        assert float(row[2]) > 0  # prefill ms
    assert all(float(row[5]) > 0 for row in rows[:4])  # decode ms per step; the oracle shortens prefills only
    assert rows[0][3] == "+0.00" and rows[0][6] == "+0.000"  # the yardstick against itself
    # LVTC against the oracle of its own compressed length, and nothing else
    assert [row[4] != "-" for row in rows] == [False, False, False, True, False]
    assert 0 < float(rows[3][4].rstrip("%")) < 1000
    assert rows[4][5] == rows[4][6] == "-"
