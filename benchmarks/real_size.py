"""Real sizes on a GPU: LLaVA-1.5-7B- and Qwen2-VL-7B-shaped models, every compressor, one run, tables under --out.

Two models with random weights (weights do not change the cost), built one at a time on the device and freed before
the next:

* `llava`: LLaVA-1.5-7B-shaped: CLIP-L/14-336 tower (24 layers, width 1024, 576 patches), the 2-layer MLP projector
  and a Vicuna-7B-shaped Llama decoder (32 layers, width 4096, 32 heads, MLP 11008, vocabulary 32064);
* `qwen2_vl`: Qwen2-VL-7B-shaped: the 32-layer, 1280-wide ViT with its 2x2 merger and a Qwen2-7B-shaped decoder
  (28 layers, width 3584, 28 query and 4 key/value heads, MLP 18944, vocabulary 152064, M-RoPE sections 16/24/24);
  its inputs come from the real `Qwen2VLProcessor` (Qwen2-VL's pixel limits, a small word-level tokenizer: the
  placeholder ids differ from the checkpoint's, which changes no cost), one 672x672 image = 576 visual tokens.

Every prompt is one image and 64 text tokens; the batch repeats the prompt (no padding). Configurations: the model
without vtc, PVTC r4 and r16, LVTC r1, r4 and r16 (`compress_layer=2`, `restore_layer=-2`), RVTC and PVTC r4 +
LVTC r4. RVTC on Qwen2-VL is `mode="budget"` with the visual tokens of PVTC r4 (144) and 336-pixel tiles: the
processor resizes the image to 336x336 (cheaper for the tower too); LLaVA-1.5 has one fixed resolution and no
tiles, so its RVTC row is n/a with the `ConfigError` that `vtc.compress` raises.

Phases, per model (a global time guard, `--budget-s`, skips what would not fit and says so in the tables):

1. prefill, at every `--batches` size: interleaved rounds (a warm-up round first, the order rotating every round),
   medians. Each configuration's prefill is split by forward hooks into vision tower, projector and language model
   (LM), and right after it runs its oracle: PVTC's is the unpatched decoder on the same number of tokens with no
   projector (`pvtc_speed.oracle_prefill`); LVTC's is the unpatched model whose layers K..L-1 run on a slice of the
   compressed length (`lvtc_speed.Oracle`, sliced on the sequence axis so that M-RoPE's 3-axis cos/sin work too);
   PVTC + LVTC's is both. "of oracle" is the median over rounds of oracle LM time / LM time; "of FLOPs" is the LM
   speedup over the analytic LM FLOPs ratio (`vtc.flops`); "proj cost / LM saved" is the projector time beyond the
   native projector's over the LM time saved.
2. flash, at `--flash-batch`: each configuration's prefill with the default SDPA backend, with
   `sdpa_kernel(SDPBackend.FLASH_ATTENTION)` forced and with the math backend: the final hidden states at every
   position compared, the default and flash prefills timed, and the SDPA calls given a mask counted (flash takes
   none on a GPU, where it then refuses and the row says so; a CPU's flash kernel takes masks, so there only the
   count tells); then a short greedy `generate` under flash and one under math, their step logits compared with the
   default backend's while the tokens agree. Flash agrees when it differs from the default backend no more than
   `NOISE_FACTOR` times the default backend differs from math, plus a small fixed tolerance (`backends_agree`).
3. decode, at every `--batches` size, largest first: greedy `generate` of exactly `--new-tokens` tokens
   (`decode_speed.timed_generate`), each configuration's first generation timed apart ("first tok/s": KV lengths met
   for the first time cost more), then `--decode-repeats` interleaved rounds: time to first token, decode tokens/s,
   the KV cache a prefill of the prompt leaves, and on CUDA `torch.cuda.max_memory_allocated` during the generation
   (absolute and above what was allocated before it, i.e. the weights).

Targets (7B): PVTC and LVTC at r4 and r16 reach >= 95% of the oracle at every batch size, LVTC ratio-1 overhead
(LM time) <= 2%, projector cost <= 10% of the LM time it saves: the `targets` table.

Writes `real_size.md` and `real_size.json` to `--out` (default `real_size_results/`) after every phase,
so a run cut short still leaves its tables.

    python benchmarks/real_size.py --device cuda --out results/real_size   # under 5 min (--budget-s 250)
    python benchmarks/real_size.py --device cuda --plan            # the estimated seconds per phase, nothing run
    python benchmarks/real_size.py --tiny                          # every dimension shrunk: a CPU check, ~20 s
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from common import markdown_table
from real_size_decode import decode_phase
from real_size_flash import flash_phase
from real_size_models import FAMILIES, FAMILY_CLASSES, expand, make_rows
from real_size_plan import plan
from real_size_prefill import prefill_phase
from real_size_run import Guard, log, sync
from real_size_tables import format_params, render, write

import vtc


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--batches", default=None, help="comma-separated (default 1,8,32; --tiny 1,2)")
    parser.add_argument("--ratios", default="4,16")
    parser.add_argument("--repeats", type=int, default=None, help="timed prefill rounds (default 4; --tiny 2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per generation (default 128; --tiny 8)")
    parser.add_argument("--decode-repeats", type=int, default=1, help="timed generation rounds (default 1)")
    parser.add_argument("--flash-batch", type=int, default=None, help="batch of the flash check (default 8; --tiny 2)")
    parser.add_argument("--flash-repeats", type=int, default=2, help="timed prefills per backend (default 2)")
    parser.add_argument("--no-flash", action="store_true")
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--compress-layer", type=int, default=2)
    parser.add_argument("--restore-layer", type=int, default=-2)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no work that would end after this many seconds from the start (default 250; "
                        "--tiny 150); what is left out is listed in the tables")
    parser.add_argument("--assume-tflops", type=float, default=400.0, help="for the printed plan only")
    parser.add_argument("--assume-step-ms", type=float, default=25.0, help="for the printed plan only")
    parser.add_argument("--tiny", action="store_true", help="every dimension shrunk: a quick CPU check")
    parser.add_argument("--plan", action="store_true", help="print the estimated seconds per phase and exit")
    parser.add_argument("--out", default="real_size_results")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.batches = [int(b) for b in (args.batches or ("1,2" if tiny else "1,8,32")).split(",")]
    args.ratios = [int(r) for r in args.ratios.split(",")]
    args.repeats = args.repeats if args.repeats is not None else (2 if tiny else 4)
    args.new_tokens = args.new_tokens if args.new_tokens is not None else (8 if tiny else 128)
    args.flash_batch = args.flash_batch if args.flash_batch is not None else (min(2, max(args.batches)) if tiny else 8)
    args.budget_s = args.budget_s if args.budget_s is not None else (150.0 if tiny else 250.0)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.families = [f for f in args.families.split(",") if f]
    unknown = set(args.families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # matrices this small gain nothing from threads, and lose a lot on a busy machine
    out = Path(args.out)
    guard = Guard(args.budget_s)
    families = [FAMILY_CLASSES[key](args.tiny, device, dtype, args.attn) for key in args.families]
    results: dict[str, Any] = {
        "meta": {"device": args.device, "device_name": torch.cuda.get_device_name(device) if torch.cuda.is_available() and device.type == "cuda"
                 else f"CPU ({platform.processor() or platform.machine()})", "dtype": args.dtype, "attn": args.attn,
                 "torch": torch.__version__, "transformers": transformers.__version__, "vtc": vtc.__version__,
                 "threads": torch.get_num_threads(), "batches": args.batches, "ratios": args.ratios,
                 "repeats": args.repeats, "decode_repeats": args.decode_repeats, "new_tokens": args.new_tokens,
                 "compress_layer": args.compress_layer, "restore_layer": args.restore_layer,
                 "budget_s": args.budget_s, "tiny": args.tiny, "argv": sys.argv[1:], "finished": False},
        "families": {}, "phases": [], "skipped": guard.skipped,
    }
    planned = {(p["family"], p["phase"]): p["seconds"] for p in plan(families, args)}
    log(f"plan at {args.assume_tflops:.0f} TFLOP/s and {args.assume_step_ms:.0f} ms per decode step (model builds "
        f"not included): total {sum(planned.values()):.0f} s of a {args.budget_s:.0f} s budget")
    print(markdown_table(("model", "phase", "planned s"), [(f, p, f"{s:.1f}") for (f, p), s in planned.items()]),
          flush=True)
    if args.plan:
        return {"plan": planned}

    def phase(family: str, name: str, took: float, note: str = "") -> None:
        results["phases"].append({"family": family, "phase": name, "planned": planned.get((family, name)),
                                  "took": took, "note": note})
        write(results, out)

    def planned_s(key: str, kind: str = "") -> float:
        return sum(s for (f, p), s in planned.items() if f == key and p.startswith(kind))

    for index, family in enumerate(families):
        if guard.left() <= 0:
            guard.skip(f"{family.key}: everything", "the global budget is spent")
            continue
        end = guard.family_end(planned_s(family.key), sum(planned_s(f.key) for f in families[index:]))
        log(f"{family.key}: building {family.sizes.title} on {device} in {args.dtype}")
        start = time.perf_counter()
        model = family.build()
        sync(device)
        build_s = time.perf_counter() - start
        num_layers = model.config.text_config.num_hidden_layers
        k, restore = vtc.LVTCConfig(compress_layer=args.compress_layer, restore_layer=args.restore_layer,
                                    ratio=1).resolve_layers(num_layers)
        fam: dict[str, Any] = results["families"].setdefault(family.key, {
            "title": family.sizes.title, "params": sum(p.numel() for p in model.parameters()),
            "build_s": build_s, "k": k, "restore": restore, "num_layers": num_layers})
        if device.type == "cuda":
            fam["weights_mib"] = torch.cuda.memory_allocated(device) / 2**20
        log(f"{family.key}: built in {build_s:.1f} s ({format_params(fam['params'])} parameters)")
        phase(family.key, "build", build_s)
        deadlines = guard.phase_deadlines(end, {kind: planned_s(family.key, kind)
                                                for kind in ("prefill", "flash", "decode")})

        rows = make_rows(family, model, args.ratios, k, restore)
        keys = {row.inputs_key: row.config for row in rows}
        one = {key: family.inputs_one(model, None if key == "native" else cfg) for key, cfg in keys.items()}

        fam["prefill"] = {}
        for batch in args.batches:
            start = time.perf_counter()
            inputs = {key: expand(v, batch, device, dtype) for key, v in one.items()}
            if guard.left(deadlines["prefill"]) <= 0:
                fam["prefill"][str(batch)] = {"batch": batch, "rounds": 0, "skipped": True, "rows": {}}
                guard.skip(f"{family.key} prefill batch {batch}", "no time left for the prefill")
                continue
            log(f"{family.key} prefill batch {batch}: warm-up round")
            fam["prefill"][str(batch)] = prefill_phase(model, family, rows, inputs, k, restore, args.repeats, guard,
                                                       deadlines["prefill"], batch)
            del inputs
            phase(family.key, f"prefill batch {batch}", time.perf_counter() - start)

        if not args.no_flash:
            start = time.perf_counter()
            inputs = {key: expand(v, args.flash_batch, device, dtype) for key, v in one.items()}
            flash_rows = [row for row in rows if row.name != "lvtc r1"]  # the baseline's attention calls, plus hooks
            fam["flash"] = flash_phase(model, family, flash_rows, inputs, args.flash_repeats, guard,
                                       deadlines["flash"], args.flash_batch)
            del inputs
            phase(family.key, f"flash batch {args.flash_batch}", time.perf_counter() - start)

        if not args.no_decode:
            fam["decode"] = {}
            for batch in sorted(args.batches, reverse=True):
                start = time.perf_counter()
                if guard.left(deadlines["decode"]) <= 0:
                    fam["decode"][str(batch)] = {"batch": batch, "rounds": 0, "rows": {
                        row.name: {"skipped": "time guard"} for row in rows if row.name != "lvtc r1"}}
                    guard.skip(f"{family.key} decode batch {batch}", "no time left for decode")
                    continue
                inputs = {key: expand(v, batch, device, dtype) for key, v in one.items()}
                log(f"{family.key} decode batch {batch}: KV caches and first generations")
                fam["decode"][str(batch)] = decode_phase(model, family, rows, inputs, args.new_tokens,
                                                         args.decode_repeats, guard, deadlines["decode"], batch)
                del inputs
                phase(family.key, f"decode batch {batch}", time.perf_counter() - start)

        vtc.unpatch(model)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log(f"{family.key}: done, model freed")

    results["meta"]["finished"] = True
    write(results, out)
    log(f"tables written to {out / 'real_size.md'} and {out / 'real_size.json'}")
    print(render(results))
    return results


if __name__ == "__main__":
    main()
