"""benchmarks/host_overhead.py: every configuration is timed, and vtc's hooks do not grow with the decoder's depth."""

from __future__ import annotations


def test_the_script_times_every_configuration_and_counts_the_hooks(import_benchmark):
    host_overhead = import_benchmark("host_overhead")
    rows = host_overhead.main(["--ratios", "4", "--repeats", "1", "--prefills", "1", "--new-tokens", "3"])
    assert [row[0] for row in rows] == ["unpatched", "instrumented", "lvtc r=1", "lvtc r=4"]
    hooks = {row[0]: int(row[1]) for row in rows}
    # The recording every compressed model carries: one hook before and one after the forward, not one per layer.
    assert hooks["instrumented"] - hooks["unpatched"] == 2
    # LVTC: begin and end of the language model's forward, the rotary embedding, compress at layer K, one swap for
    # each of layers K+1..L-1 and restore after layer L-1 (K=2, L=layers-2).
    assert hooks["lvtc r=4"] - hooks["instrumented"] == 4 + (host_overhead.LAYERS - 2 - 2 - 1) + 1
    assert hooks["lvtc r=1"] == hooks["lvtc r=4"]
    for row in rows:
        assert float(row[2]) > 0 and float(row[4]) > 0  # prefill ms, decode ms per step
    assert rows[0][3] == "+0.00" and rows[0][5] == "+0.000"  # the yardstick against itself
