"""`benchmarks/first_sight.py` on the CPU: every SDPA backend either decodes twice at its own KV lengths, timed step
by step, or is listed as refused with torch's reason."""

import pytest


@pytest.fixture
def first_sight(import_benchmark):
    return import_benchmark("first_sight")


def test_each_backend_decodes_twice_at_lengths_of_its_own_or_says_why_not(first_sight):
    rows = first_sight.main(["--tiny", "--batch", "2", "--new-tokens", "4", "--prompt", "32"])
    assert [row["backend"] for row in rows] == list(first_sight.BACKENDS)
    prompts = [row["prompt"] for row in rows]
    assert all(b - a > 4 for a, b in zip(prompts, prompts[1:]))  # no two backends meet the same KV length
    measured = [row for row in rows if "refused" not in row]
    assert measured[0]["backend"] == "default" and {"math"} <= {row["backend"] for row in measured}
    for row in measured:
        assert row["first_ms"] > 0 and row["again_ms"] > 0 and row["first_max_ms"] >= row["first_ms"]
        assert row["first_allocs"] is None  # no allocator to count off CUDA
    for row in rows:
        if "refused" in row:
            assert row["refused"]
