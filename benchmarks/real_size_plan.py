"""The plan of `real_size.py`: the seconds each phase should take, estimated before anything runs, which the time
guard shares the budget by."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

from real_size_models import TEXT_TOKENS, Family

import vtc
from vtc.flops import prefill_flops

#: a decode step at a KV length the process meets for the first time, in later steps' time (H200, 7B: 2-4x)
FIRST_SIGHT_STEP_FACTOR = 3


def vision_flops(family: Family, patches: int) -> float:
    """One image's tower FLOPs, roughly: the linear layers (2 x params x patches) plus attention."""
    v = family.sizes.vision
    d = v.get("embed_dim") or v["hidden_size"]
    d_ff = v.get("intermediate_size") or int(d * v.get("mlp_ratio", 4))
    layers = v.get("depth") or v["num_hidden_layers"]
    return layers * (2 * patches * (4 * d * d + 2 * d * d_ff) + 4 * patches * patches * d)


def plan(families: Sequence[Family], args) -> list[dict]:
    """The seconds each phase should take at `--assume-tflops` (dense bf16 throughput) and `--assume-step-ms`
    (one decode step, with the per-step sync of the clock), with a floor of ~0.5 ms per decoder layer and 0.3 ms per
    tower layer for every forward (kernel launches). An estimate for the budget, printed before anything runs."""
    return [row for family in families for row in _plan_family(family, args)]


def _plan_family(family: Family, args) -> list[dict]:
    out, rate = [], args.assume_tflops * 1e12
    text = family.sizes.text
    dims = argparse.Namespace(**{k: v for k, v in text.items() if not isinstance(v, dict)})
    n, grid = text["num_hidden_layers"], family.sizes.token_grid
    k, restore = vtc.LVTCConfig(compress_layer=args.compress_layer, restore_layer=args.restore_layer,
                                ratio=1).resolve_layers(n)
    qwen = family.key == "qwen2_vl"
    patches = (grid * (2 if qwen else 1)) ** 2
    tower_layers = family.sizes.vision.get("depth") or family.sizes.vision["num_hidden_layers"]

    def pooled(tokens_side: int, ratio: int) -> int:
        side = math.isqrt(ratio)
        return math.ceil(tokens_side / side) ** 2

    def lm(full: int, short: int | None = None) -> float:
        lens = [full] * n if short is None else [full] * k + [short] * (restore - k) + [full] * (n - restore)
        return prefill_flops(dims, lens).total

    def forward_s(batch: int, lm_flops: float, tower_patches: int | None) -> float:
        flops = batch * (lm_flops + (vision_flops(family, tower_patches) if tower_patches else 0))
        floor = n * 0.5e-3 + (tower_layers * 0.3e-3 * (batch if qwen else 1) if tower_patches else 0)
        return max(flops / rate, floor)

    full, r0 = TEXT_TOKENS + grid * grid, args.ratios[0]
    runs = [(lm(full), patches), (lm(full), None), (lm(full), patches)]  # baseline + oracle, lvtc r1
    for r in args.ratios:
        p = TEXT_TOKENS + pooled(grid, r)
        runs += [(lm(p), patches), (lm(p), None)]  # pvtc + its oracle
        runs += [(lm(full, p), patches)] * 2  # lvtc + its oracle
    p0 = TEXT_TOKENS + pooled(grid, r0)
    runs += [(lm(p0, TEXT_TOKENS + pooled(math.isqrt(p0 - TEXT_TOKENS), r0)), patches),
             (lm(p0, TEXT_TOKENS + pooled(math.isqrt(p0 - TEXT_TOKENS), r0)), None)]
    if qwen:
        runs.append((lm(TEXT_TOKENS + (grid // 2) ** 2), patches // 4))  # rvtc
    for batch in args.batches:
        round_s = sum(forward_s(batch, f, t) for f, t in runs) + len(runs) * 0.05  # + compress, hooks, syncs
        # the timed rounds, the warm-up round, and one prefill per configuration that reads its layer lengths
        out.append({"family": family.key, "phase": f"prefill batch {batch}",
                    "seconds": (args.repeats + 1) * round_s + sum(forward_s(batch, f, t) for f, t in runs if t) / 2})
    configs = len(args.ratios) * 2 + 2 + (1 if qwen else 0)  # pvtc, lvtc, pvtc+lvtc, baseline, rvtc
    fb = args.flash_batch
    # per configuration: 3 checked prefills (default, math, flash), 2 x (repeats + 1) timed ones, 3 generations of
    # 4 tokens (default, math, flash; the last under the call-counting mode, which costs host time)
    if not args.no_flash:
        out.append({"family": family.key, "phase": f"flash batch {fb}", "seconds": configs * (
            (2 * args.flash_repeats + 8) * forward_s(fb, lm(full) * 0.6, patches)
            + 3 * (3 * args.assume_step_ms / 1e3) + 0.5)})
    for batch in sorted(args.batches, reverse=True) if not args.no_decode else ():
        ttft = forward_s(batch, lm(full) * 0.6, patches)
        gen = ttft + (args.new_tokens - 1) * args.assume_step_ms / 1e3
        first = ttft + (args.new_tokens - 1) * FIRST_SIGHT_STEP_FACTOR * args.assume_step_ms / 1e3
        out.append({"family": family.key, "phase": f"decode batch {batch}",  # a prefill for the KV cache first
                    "seconds": configs * (ttft + first + args.decode_repeats * gen)})
    return out
