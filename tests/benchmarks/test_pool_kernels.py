"""benchmarks/pool_kernels.py: the candidate pooling by matrix product computes what `vtc.ops.pool` does."""

from __future__ import annotations

import torch
from hypothesis import given
from ops.strategies import RATIOS, batch_layouts

from vtc.ops import group_index, pool


@given(batch_layouts(), RATIOS)
def test_the_pooling_matrix_gives_every_group_its_mean(import_benchmark, case, ratio):
    pool_kernels = import_benchmark("pool_kernels")
    layout, seq_len = case
    gi = group_index(layout, seq_len, ratio)
    x = torch.randn(len(layout), seq_len, 5, generator=torch.Generator().manual_seed(seq_len))
    matrix = pool_kernels.pooling_matrix(gi, torch.float32)
    torch.testing.assert_close(pool_kernels.pool_by_matmul(x, matrix), pool(x, gi), atol=1e-5, rtol=1e-5)


def test_the_script_reports_both_kernels_for_every_batch_and_ratio(import_benchmark):
    rows = import_benchmark("pool_kernels").main(["--width", "16", "--batches", "1,2", "--ratios", "4,16",
                                                  "--repeats", "1"])
    assert [(batch, ratio) for batch, ratio, *_ in rows] == [(1, 4), (1, 16), (2, 4), (2, 16)]
    assert all(float(row[6]) < 1e-5 for row in rows)  # max |difference| between the two kernels
