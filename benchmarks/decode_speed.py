"""Generation with compression: time to first token, decode speed, KV cache and peak memory, side by side.

The LLaVA-1.5-shaped model of `pvtc_speed.py` with random weights (weights do not change the cost): a CLIP-L/14-336
tower (576 patches) and a Qwen2-0.5B-sized decoder (24 layers, width 896), one image and 64 text tokens per prompt.
Configurations: the model without compression, PVTC at ratios 4 and 16, LVTC at ratios 4 and 16
(`compress_layer=2`, `restore_layer=-2`) and PVTC r4 + LVTC r4. Each one runs `generate` greedily for exactly
`--new-tokens` tokens (`min_new_tokens=max_new_tokens`), so every configuration decodes the same count.

Each configuration first generates once untimed (a warm-up at the timed KV lengths), then every round runs one
generation per configuration (interleaved, in an order that rotates from round to round); the table reports medians
over rounds:

* TTFT: from the call of `generate` to the first token's logits (the prefill, vision tower included);
* decode tok/s: batch x (new tokens - 1) over the time from the first token's logits to the last's (the cached
  decode steps only);
* KV MiB: the bytes of the KV cache a prefill of the prompt leaves (keys and values, every layer), with the per-layer
  lengths from `vtc.last_stats`;
* peak MiB (CUDA only): `torch.cuda.max_memory_allocated` during one generation above what was allocated before it
  (the weights), reset per configuration.

Ratios are to the baseline (medians of per-round ratios for the times).

    python benchmarks/decode_speed.py --small --new-tokens 16 --repeats 2    # CPU smoke run: a few minutes
    python benchmarks/decode_speed.py --device cuda --dtype bfloat16 --batch 16 --repeats 5
"""

from __future__ import annotations

import statistics
import time

import torch
from common import describe_run, parser_with_common_options, print_table
from pvtc_speed import build_model, make_inputs, visual_tokens
from transformers import LlavaForConditionalGeneration, LogitsProcessor, LogitsProcessorList

import vtc
from vtc.bench import kv_cache_megabytes
from vtc.seams import output_cache


def build_small_model(device: str, dtype: torch.dtype, attn: str) -> LlavaForConditionalGeneration:
    """`pvtc_speed.build_model` with a 2-layer tower and an 8-layer decoder (same widths, 576 patches): a CPU smoke run."""
    return build_model(device, dtype, attn, vision_layers=2, text_layers=8)


class StepClock(LogitsProcessor):
    """Records the time at which each generated token's logits are ready (after a device sync)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def timed_generate(model, inputs, new_tokens: int, device: torch.device, steps: bool = False) -> dict:
    """One greedy generation of exactly `new_tokens` tokens: TTFT ms, decode tok/s, on CUDA the peak MiB above what
    was allocated before, and with `steps` the ms of each decode step (`step_ms`)."""
    clock = StepClock(device)
    peak_before = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        peak_before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         logits_processor=LogitsProcessorList([clock]), pad_token_id=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens and len(clock.times) == new_tokens
    result = {"ttft": (clock.times[0] - start) * 1e3}
    if new_tokens > 1:
        result["decode"] = out.shape[0] * (new_tokens - 1) / (clock.times[-1] - clock.times[0])
    if peak_before is not None:
        result["peak"] = (torch.cuda.max_memory_allocated(device) - peak_before) / 2**20
    if steps:
        result["step_ms"] = [(b - a) * 1e3 for a, b in zip(clock.times, clock.times[1:])]
    return result


def main() -> None:
    parser = parser_with_common_options(__doc__)
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per generation (default 128)")
    parser.add_argument("--compress-layer", type=int, default=2)
    parser.add_argument("--restore-layer", type=int, default=-2)
    parser.add_argument("--small", action="store_true",
                        help="a 2-layer tower and an 8-layer decoder (same widths): a quick CPU smoke run")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = (build_small_model if args.small else build_model)(args.device, dtype, args.attn)

    def lvtc(ratio: int) -> vtc.LVTCConfig:
        return vtc.LVTCConfig(compress_layer=args.compress_layer, restore_layer=args.restore_layer, ratio=ratio)

    configs = {
        "baseline": vtc.VTCConfig(),
        "pvtc r=4": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)),
        "pvtc r=16": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=16)),
        "lvtc r=4": vtc.VTCConfig(lvtc=lvtc(4)),
        "lvtc r=16": vtc.VTCConfig(lvtc=lvtc(16)),
        "pvtc r=4 + lvtc r=4": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), lvtc=lvtc(4)),
    }
    names = list(configs)
    inputs = {name: make_inputs(cfg.pvtc.ratio if cfg.pvtc else None, args.batch, args.device, dtype)
              for name, cfg in configs.items()}
    num_layers = model.config.text_config.num_hidden_layers
    k, restore = lvtc(1).resolve_layers(num_layers)

    kv_mib: dict[str, float] = {}
    layer_lens: dict[str, list[int]] = {}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:  # warm-up, and the KV cache one prefill of the prompt leaves
            vtc.compress(model, configs[name])
            out = model(**inputs[name], use_cache=True, logits_to_keep=1)
            kv_mib[name] = kv_cache_megabytes(output_cache(out))
            layer_lens[name] = vtc.last_stats(model)["layer_seq_lens"]
            del out
            # a whole generation: no timed round then meets a KV length for the first time (on the H200 a first
            # decode step at a new length cost 2-4x a later one, whichever configuration happened to meet it)
            timed_generate(model, inputs[name], args.new_tokens, device)
        for round_ in range(args.repeats):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                vtc.compress(model, configs[name])  # outside the timed region
                runs[name].append(timed_generate(model, inputs[name], args.new_tokens, device))
    vtc.unpatch(model)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def per_round_ratio(name: str, key: str, inverse: bool = False) -> float:
        pairs = zip((r[key] for r in runs[name]), (r[key] for r in runs["baseline"]))
        return statistics.median(b / n if inverse else n / b for n, b in pairs)

    has_decode, has_peak = args.new_tokens > 1, device.type == "cuda"
    size = f"{'small: 2-layer tower, ' if args.small else ''}{num_layers}-layer decoder"
    print(f"{describe_run(args)}; {size}, {args.new_tokens} new tokens; LVTC K={k}, L={restore}")
    header = ["config", "visual", "layer lengths", "TTFT ms", "TTFT speedup"]
    header += ["decode tok/s", "decode speedup"] if has_decode else []
    header += ["KV MiB", "KV ratio"]
    header += ["peak MiB", "peak ratio"] if has_peak else []
    rows = []
    for name in names:
        lens = layer_lens[name]
        spans = f"{lens[0]}" if len(set(lens)) == 1 else f"{lens[0]} / {lens[k]} x{restore - k}"
        cfg = configs[name]
        row = [name, str(visual_tokens(cfg.pvtc.ratio if cfg.pvtc else None)), spans,
               f"{median(name, 'ttft'):.0f}", f"{per_round_ratio(name, 'ttft', inverse=True):.2f}x"]
        if has_decode:
            row += [f"{median(name, 'decode'):.1f}", f"{per_round_ratio(name, 'decode'):.2f}x"]
        row += [f"{kv_mib[name]:.2f}", f"{kv_mib[name] / kv_mib['baseline']:.3f}"]
        if has_peak:
            row += [f"{median(name, 'peak'):.0f}", f"{median(name, 'peak') / median('baseline', 'peak'):.3f}"]
        rows.append(row)
    print_table(header, rows)


if __name__ == "__main__":
    main()
