"""A decode step at a KV length the process meets for the first time, against the same step met again, per backend.

On the H200 the first generation of each configuration decoded 2-4x slower than later ones at the same lengths
(benchmarks/README.md, "Real sizes on a GPU"), whatever vtc did. This separates the cause, on the unpatched model:
`real_size.py`'s 7B-shaped model (`--family`), text-only prompts, `--batch` rows. Per SDPA backend (the default,
then each one forced with `sdpa_kernel`; one this machine refuses is listed as such) a prompt length of its own, so
that its KV lengths are new to the process, and two greedy generations of `--new-tokens` tokens at it: the median
decode step of each, their ratio, and on CUDA the allocator's device allocations (`cudaMalloc`) during each.

* Only the default (or cuDNN) backend's first generation slow: attention builds something per new length (cuDNN
  plans an execution graph per shape; `TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1` asks torch to reuse one across lengths).
* Every backend's first generation slow, with device allocations: the caching allocator growing with the cache.

    python benchmarks/first_sight.py --device cuda --batch 32
    TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 python benchmarks/first_sight.py --device cuda --batch 32
    python benchmarks/first_sight.py --tiny                      # a CPU check of the script
"""

from __future__ import annotations

import argparse
import os
import statistics
from contextlib import nullcontext

import real_size_models
import torch
from common import print_table
from decode_speed import timed_generate
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def device_allocations(device: torch.device) -> int | None:
    """The caching allocator's device allocations so far (None off CUDA)."""
    return torch.cuda.memory_stats(device).get("num_device_alloc") if device.type == "cuda" else None


def step_times(model, input_ids: torch.Tensor, new_tokens: int, device: torch.device) -> tuple[list[float], int | None]:
    """One greedy generation: the ms of each decode step and the device allocations it made."""
    before = device_allocations(device)
    result = timed_generate(model, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}, new_tokens,
                            device, steps=True)
    after = device_allocations(device)
    return result["step_ms"], None if before is None else after - before


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--family", default="qwen2_vl", choices=sorted(real_size_models.FAMILY_CLASSES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=640, help="the first backend's prompt tokens (default 640)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--tiny", action="store_true", help="real_size.py's tiny shapes: a CPU check")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    family = real_size_models.FAMILY_CLASSES[args.family](args.tiny, device, dtype, "sdpa")
    model = family.build()
    generator = torch.Generator().manual_seed(0)

    def prompt(length: int) -> torch.Tensor:  # ordinary words: ids below any image placeholder's
        one = torch.randint(10, 400, (1, length), generator=generator)
        return one.expand(args.batch, -1).contiguous().to(device)

    # each backend's KV lengths, and the warm-up's, lie apart: prompt .. prompt + new tokens, then a gap
    stride = args.new_tokens + 16
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    print(f"{family.sizes.title}, batch {args.batch}, {dtype}, {args.new_tokens} new tokens; torch "
          f"{torch.__version__}, cuDNN {cudnn}; TORCH_CUDNN_SDPA_AVOID_RECOMPILE="
          f"{os.environ.get('TORCH_CUDNN_SDPA_AVOID_RECOMPILE', '(unset)')}")
    rows = []
    with torch.inference_mode():
        # the process's first generation loads kernels and libraries: at lengths no backend below meets
        step_times(model, prompt(args.prompt + len(BACKENDS) * stride), args.new_tokens, device)
        for i, (name, backend) in enumerate(BACKENDS.items()):
            ids = prompt(args.prompt + i * stride)
            row = {"backend": name, "prompt": ids.shape[1]}
            try:
                with sdpa_kernel(backend) if backend is not None else nullcontext():
                    (first, first_allocs), (again, again_allocs) = (
                        step_times(model, ids, args.new_tokens, device) for _ in range(2))
            except RuntimeError as error:  # no kernel of this backend for these inputs here
                row["refused"] = str(error).strip().splitlines()[0][:100]
                rows.append(row)
                continue
            row.update(first_ms=statistics.median(first), again_ms=statistics.median(again),
                       first_max_ms=max(first), first_allocs=first_allocs, again_allocs=again_allocs)
            rows.append(row)
    header = ["backend", "prompt", "first gen step ms", "again step ms", "first / again", "first gen max step ms",
              "device allocs first / again"]
    table = []
    for row in rows:
        if "refused" in row:
            table.append([row["backend"], str(row["prompt"]), f"refused: {row['refused']}", "", "", "", ""])
            continue
        table.append([row["backend"], str(row["prompt"]), f"{row['first_ms']:.2f}", f"{row['again_ms']:.2f}",
                      f"{row['first_ms'] / row['again_ms']:.2f}x", f"{row['first_max_ms']:.2f}",
                      "n/a" if row["first_allocs"] is None else f"{row['first_allocs']} / {row['again_allocs']}"])
    print_table(header, table)
    return rows


if __name__ == "__main__":
    main()
