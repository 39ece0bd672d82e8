"""LVTC's pooling kernel alone, at a 7B decoder's width: `vtc.ops.pool` (a row-wise `index_add`) against a candidate
without atomic adds (one batched matrix product with a pooling matrix built once per batch structure).

On a GPU, `index_add` accumulates with atomic adds: at ratio r every output row has r writers, which may serialise.
The candidate multiplies the hidden states by a `(b, g, s)` matrix holding `1 / size` where a position belongs to a
group; the matrix depends on the structure alone, so LVTC could build and cache it with the group index. Both run in
float32 as `pool` does for half-precision inputs (the matrix product without TF32). The layout is LLaVA-1.5's: one
24 x 24 grid of visual tokens after 32 text tokens, 32 more after it.

    python benchmarks/pool_kernels.py --device cuda --dtype bfloat16
    python benchmarks/pool_kernels.py --width 64 --batches 2 --repeats 3      # a CPU check of the script
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import print_table

from vtc.layout import VisualSpan
from vtc.ops import GroupIndex, group_index, pool

GRID, TEXT_BEFORE, TEXT_AFTER = (24, 24), 32, 32


def pooling_matrix(gi: GroupIndex, dtype: torch.dtype) -> torch.Tensor:
    """`(b, g, s)`: `1 / size` at (group, member), so that `matrix @ x` is every group's mean."""
    b, s, g = gi.batch_size, gi.seq_len, gi.max_groups
    matrix = torch.zeros(b, g, s, dtype=dtype, device=gi.index.device)
    weights = (1.0 / gi.size.clamp(min=1).to(dtype)).gather(1, gi.index)  # (b, s): each position's 1 / its size
    return matrix.scatter_(1, gi.index[:, None, :], weights[:, None, :])


def pool_by_matmul(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    return torch.bmm(matrix, x.float()).to(x.dtype)


def timed_ms(fn, args: tuple, device: torch.device, repeats: int) -> float:
    fn(*args)  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--ratios", default="4,16")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False  # the candidate's float32 product stays float32
    seq_len = TEXT_BEFORE + GRID[0] * GRID[1] + TEXT_AFTER
    layout_row = (VisualSpan(TEXT_BEFORE, GRID[0] * GRID[1], GRID),)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, seq_len, args.width, generator=torch.Generator().manual_seed(0)).to(device, dtype)
        for ratio in (int(r) for r in args.ratios.split(",")):
            gi = group_index([layout_row] * batch, seq_len, ratio, device=device)
            matrix = pooling_matrix(gi, torch.float32)
            reference = pool(x, gi)
            difference = (pool_by_matmul(x, matrix).float() - reference.float()).abs().max().item()
            index_add_ms = timed_ms(pool, (x, gi), device, args.repeats)
            matmul_ms = timed_ms(pool_by_matmul, (x, matrix), device, args.repeats)
            rows.append((batch, ratio, gi.max_groups, f"{index_add_ms:.3f}", f"{matmul_ms:.3f}",
                         f"{index_add_ms / matmul_ms:.2f}x", f"{difference:.1e}",
                         f"{matrix.numel() * matrix.element_size() / 2**20:.1f}"))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{device_name}, {args.dtype}, width {args.width}, sequence {seq_len} (a {GRID[0]}x{GRID[1]} grid), median "
          f"of {args.repeats} (ms)")
    print_table(("batch", "ratio", "groups", "index_add ms", "matmul ms", "matmul speedup", "max |diff|",
                 "matrix MiB"), rows)
    return rows


if __name__ == "__main__":
    main()
