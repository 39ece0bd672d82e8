"""Where a decode step's time goes, per configuration: step time, the top kernels, allocator and sync calls.

`real_size.py`'s Qwen2-VL-7B-shaped model (or `--family llava`), random weights, one prompt repeated `--batch` times.
Rows: the model without vtc, PVTC r4, RVTC (the same number of visual tokens as PVTC r4, through the processor) and
LVTC r4. First every row's decode step is timed: greedy `generate` of `--new-tokens` tokens, each step synchronised,
in `--rounds` interleaved rounds after a warm-up round (median ms per step). Then, once all timing is done, each row
runs `--profile-steps` decode steps under `torch.profiler`: the kernels with the most device time (and the total),
and the CUDA allocator, launch and synchronisation calls per step. A configuration whose decode steps are slower than
its KV length explains shows here what it spends the difference on.

    python benchmarks/decode_anatomy.py --device cuda --batch 32
    python benchmarks/decode_anatomy.py --tiny                       # a CPU check of the script
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

import real_size_models
import torch
from decode_speed import timed_generate
from torch.profiler import ProfilerActivity, profile

import vtc

ROWS = ("baseline", "pvtc r4", "rvtc", "lvtc r4")
CUDA_CALLS = ("cudaMalloc", "cudaFree", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync",
              "cudaLaunchKernel")


def step_ms(model, inputs, new_tokens: int, device: torch.device) -> float:
    result = timed_generate(model, inputs, new_tokens, device)
    return inputs["input_ids"].shape[0] / result["decode"] * 1e3  # ms per decode step (batch tokens per step)


def profiled(model, inputs, steps: int, device: torch.device) -> tuple[Counter, Counter, Counter]:
    """Per decode step, over `steps` steps: ms by kernel (on CUDA) or by operator (on CPU, self time), how often each
    operator ran, and the CUDA runtime calls. A generation of `steps + 1` tokens minus a generation of 1 (its
    prefill): what is left is the decode steps."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        timed_generate(model, inputs, steps + 1, device)
    with profile(activities=activities) as prefill_prof:
        timed_generate(model, inputs, 1, device)
    times, counts, calls = Counter(), Counter(), Counter()
    for sign, run in ((1, prof), (-1, prefill_prof)):
        for event in run.key_averages():
            if device.type == "cuda" and event.device_type == torch.autograd.DeviceType.CUDA:
                times[event.key] += sign * event.device_time_total / 1e3
            elif device.type == "cpu" and event.key.startswith("aten::"):
                times[event.key] += sign * event.self_cpu_time_total / 1e3
            if event.key.startswith("aten::"):
                counts[event.key] += sign * event.count
            if event.key in CUDA_CALLS:
                calls[event.key] += sign * event.count
    return tuple(Counter({k: v / steps for k, v in c.items()}) for c in (times, counts, calls))


def main(argv=None) -> list[tuple[str, int, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--family", default="qwen2_vl", choices=sorted(real_size_models.FAMILY_CLASSES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--profile-steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="timed interleaved rounds after a warm-up round")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    family = real_size_models.FAMILY_CLASSES[args.family](args.tiny, device, dtype, "sdpa")
    model = family.build()
    num_layers = model.config.text_config.num_hidden_layers
    k, restore = vtc.LVTCConfig(compress_layer=2, restore_layer=-2, ratio=1).resolve_layers(num_layers)
    rows = [row for row in real_size_models.make_rows(family, model, [4], k, restore) if row.name in ROWS and row.na is None]
    one = {row.inputs_key: family.inputs_one(model, None if row.inputs_key == "native" else row.config)
           for row in rows}
    print(f"{family.sizes.title}, batch {args.batch}, {dtype}, {args.new_tokens} new tokens; torch {torch.__version__}")
    batches = {key: real_size_models.expand(value, args.batch, device, dtype) for key, value in one.items()}
    step_times: dict[str, list[float]] = {row.name: [] for row in rows}
    with torch.inference_mode():
        # Timed first, in interleaved rounds, before any profiler runs: a profiler session can leave the CUDA
        # runtime slower to launch kernels afterwards, which would charge the rows profiled later.
        for round_ in range(args.rounds + 1):  # round 0: the warm-up
            for row in rows[round_ % len(rows):] + rows[:round_ % len(rows)]:
                family.apply(model, row.config)
                ms = step_ms(model, batches[row.inputs_key], args.new_tokens, device)
                if round_:
                    step_times[row.name].append(ms)
        summary = [(row.name, batches[row.inputs_key]["input_ids"].shape[1], statistics.median(step_times[row.name]))
                   for row in rows]
        for row, (name, prompt, ms) in zip(rows, summary):
            family.apply(model, row.config)
            times, _, calls = profiled(model, batches[row.inputs_key], args.profile_steps, device)
            print(f"\n## {name}: prompt {prompt} tokens, decode step {ms:.2f} ms")
            print("calls per step: " + ", ".join(f"{call} {n:.1f}" for call, n in sorted(calls.items())))
            for kernel, kernel_ms in times.most_common(8):
                print(f"  {kernel_ms:8.3f} ms  {kernel[:110]}")
            print(f"  {sum(times.values()):8.3f} ms  in all")
    family.apply(model, None)
    print("\n| config | prompt | decode step ms (median of rounds) |\n|---|---|---|")
    for name, prompt, ms in summary:
        print(f"| {name} | {prompt} | {ms:.2f} |")
    return summary


if __name__ == "__main__":
    main()
