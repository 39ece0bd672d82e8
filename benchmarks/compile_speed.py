"""torch.compile with compression: compiled against eager prefill and decode, side by side.

The LLaVA-1.5-shaped model of `decode_speed.py` (`pvtc_speed.build_model`: a CLIP-L/14-336 tower, 576 patches, and a
Qwen2-0.5B-sized decoder, random weights), one image and 64 text tokens per prompt; `--vision-layers` and
`--text-layers` shrink it for a CPU run. Configurations: the instrumented model without compression (`baseline`),
then for each ratio in `--ratios` PVTC, LVTC (`compress_layer=2`, `restore_layer=-2`) and PVTC + LVTC.

Each configuration is a deep copy of the model, compressed once, compiled and timed on its own (dynamo reset
before it): configurations of one model class compiled in one process would share dynamo's cache, and each call would
first test the other configurations' compiled code, a cost that a process with one compiled model does not pay. Its
compiled variant has `forward = torch.compile(forward)` (default mode, `--backend`, inductor unless told), which
`generate` calls too; its eager variant is the same copy without it. Warm-up: a prefill and a `generate` of
`--warmup-tokens` tokens compile what the timed rounds need (the prefill, the first decode step, then the growing
cache length made dynamic); then an eager `generate` of `--new-tokens` tokens, so that no timed round meets a KV
length for the first time (a first decode step at a new length costs more on some GPUs). The `late compiles` column
counts the frames compiled by decode steps 3 and later of the warm-up generation (0 for a model that does not
recompile per step). The timed rounds run under `torch.compiler.set_stance("fail_on_recompile")`: a timed call that
would compile stops the run with dynamo's reasons instead of timing a compilation.

Each of `--repeats` rounds runs a prefill and a generation eagerly and compiled (which first alternates from round
to round); the table reports medians over rounds:

* prefill ms: one forward over the prompt (vision tower included), `use_cache=True, logits_to_keep=1`;
* decode tok/s: greedy `generate` of `--new-tokens` tokens, batch x (new tokens - 1) over the time from the first
  token's logits to the last's (the cached decode steps only), as in `decode_speed.py`;
* speedup: eager time / compiled time of the same configuration (median of per-round ratios);
* graphs: graphs dynamo compiled for the prefill (breaks = graphs - 1); compile s: the warm-up's wall time;
* max |dlogit|: compiled against eager prefill logits, largest absolute difference.

A configuration with more graphs than the baseline's is followed by the graph breaks dynamo counted for it; dynamo
logs every recompilation with its reason as it happens.

    python benchmarks/compile_speed.py --vision-layers 1 --text-layers 4 --compress-layer 1 --restore-layer -1 \
        --new-tokens 8 --repeats 3                                                                  # CPU smoke
    python benchmarks/compile_speed.py --device cuda --dtype bfloat16 --repeats 5
"""

from __future__ import annotations

import collections
import copy
import statistics
import time

import torch
import torch._dynamo
from common import describe_run, parser_with_common_options, print_table
from decode_speed import timed_generate
from pvtc_speed import build_model, make_inputs, visual_tokens
from torch._dynamo.testing import CompileCounterWithBackend
from transformers import LogitsProcessor, LogitsProcessorList

import vtc


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_prefill(model, inputs, device: torch.device) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    logits = model(**inputs, use_cache=True, logits_to_keep=1).logits
    sync(device)
    return (time.perf_counter() - start) * 1e3, logits


class Variant:
    """One compressed copy of the model, run eagerly or through its compiled `forward`."""

    def __init__(self, model, config: vtc.VTCConfig, backend: str):
        self.model = vtc.compress(copy.deepcopy(model), config)
        self.counter = CompileCounterWithBackend(backend)
        self.compiled_forward = torch.compile(self.model.forward, backend=self.counter)

    def compiled(self, on: bool) -> None:
        if on:
            self.model.forward = self.compiled_forward
        elif "forward" in vars(self.model):
            del self.model.forward


class StepFrames(LogitsProcessor):
    """The compiled-frame count after each generated token's logits (the prefill's, then each decode step's)."""

    def __init__(self, counter: CompileCounterWithBackend):
        self.counter, self.frames = counter, []

    def __call__(self, input_ids, scores):
        self.frames.append(self.counter.frame_count)
        return scores


def warmup_generate(variant: Variant, inputs, new_tokens: int) -> list[int]:
    """A greedy generation through the compiled forward; the compiled-frame count after each token."""
    steps = StepFrames(variant.counter)
    variant.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           logits_processor=LogitsProcessorList([steps]), pad_token_id=0)
    return steps.frames


def warm_up(variant: Variant, inputs, args, device: torch.device) -> dict:
    """Compile the configuration (its prefill, checked against eager, and a generation's decode steps), then meet
    the timed generations' KV lengths eagerly once (a first decode step at a new length costs more on some GPUs)."""
    breaks_before = collections.Counter(torch._dynamo.utils.counters["graph_break"])
    _, eager_logits = timed_prefill(variant.model, inputs, device)
    start = time.perf_counter()
    variant.compiled(True)
    _, compiled_logits = timed_prefill(variant.model, inputs, device)
    graphs = variant.counter.frame_count
    frames = warmup_generate(variant, inputs, args.warmup_tokens)  # compiles the decode steps
    variant.compiled(False)
    warm = {
        "graphs": graphs, "compile s": time.perf_counter() - start, "late compiles": frames[-1] - frames[2],
        "diff": (compiled_logits.float() - eager_logits.float()).abs().max().item(),
        "breaks": collections.Counter(torch._dynamo.utils.counters["graph_break"]) - breaks_before,
    }
    timed_generate(variant.model, inputs, args.new_tokens, device)
    return warm


def timed_rounds(variant: Variant, inputs, args, device: torch.device) -> dict[str, list[dict[str, float]]]:
    """`--repeats` rounds of a prefill and a generation, eager and compiled in turn (which first alternates).

    Under `fail_on_recompile`: a timed call that would compile stops the run with dynamo's reasons, rather than
    timing a compilation or, under `eager_on_recompile`, silently timing eager code as compiled."""
    runs: dict[str, list[dict[str, float]]] = {"eager": [], "compiled": []}
    with torch.compiler.set_stance("fail_on_recompile"):
        for round_ in range(args.repeats):
            for mode in ("eager", "compiled") if round_ % 2 == 0 else ("compiled", "eager"):
                variant.compiled(mode == "compiled")
                try:
                    prefill_ms, _ = timed_prefill(variant.model, inputs, device)
                    decode = timed_generate(variant.model, inputs, args.new_tokens, device)
                finally:
                    variant.compiled(False)
                runs[mode].append({"prefill": prefill_ms, "decode": decode["decode"]})
    return runs


def parse_args(argv=None):
    """The command line, checked: the LVTC layers must exist in a decoder of `--text-layers` layers."""
    parser = parser_with_common_options(__doc__)
    parser.set_defaults(ratios="4", repeats=3)
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per timed generation (default 32)")
    parser.add_argument("--warmup-tokens", type=int, default=5,
                        help="tokens of the warm-up generation (at least 5: steps 3.. show recompiles; default 5)")
    parser.add_argument("--compress-layer", type=int, default=2)
    parser.add_argument("--restore-layer", type=int, default=-2)
    parser.add_argument("--vision-layers", type=int, default=24, help="CLIP layers (default 24, the real tower)")
    parser.add_argument("--text-layers", type=int, default=24, help="decoder layers (default 24, the real decoder)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    args = parser.parse_args(argv)
    if args.warmup_tokens < 5 or args.new_tokens < 2:
        parser.error("--warmup-tokens must be >= 5 and --new-tokens >= 2")
    try:  # before minutes of building and compiling
        vtc.LVTCConfig(compress_layer=args.compress_layer, restore_layer=args.restore_layer,
                       ratio=1).resolve_layers(args.text_layers)
    except vtc.ConfigError as error:
        parser.error(f"--text-layers {args.text_layers} with --compress-layer / --restore-layer: {error}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    # A configuration's prefill, first decode step and dynamic decode steps each take cache entries; keep them all.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._logging.set_logs(recompiles=True)  # a graph count above the baseline's may be a recompile, not a break
    model = build_model(args.device, dtype, args.attn, vision_layers=args.vision_layers, text_layers=args.text_layers)

    def lvtc(ratio: int) -> vtc.LVTCConfig:
        return vtc.LVTCConfig(compress_layer=args.compress_layer, restore_layer=args.restore_layer, ratio=ratio)

    configs = {"baseline": vtc.VTCConfig()}
    for ratio in (int(r) for r in args.ratios.split(",")):
        configs[f"pvtc r={ratio}"] = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=ratio))
        configs[f"lvtc r={ratio}"] = vtc.VTCConfig(lvtc=lvtc(ratio))
        configs[f"pvtc r={ratio} + lvtc r={ratio}"] = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=ratio), lvtc=lvtc(ratio))
    names = list(configs)
    pvtc_ratio = {name: cfg.pvtc.ratio if cfg.pvtc else None for name, cfg in configs.items()}
    inputs = {name: make_inputs(pvtc_ratio[name], args.batch, args.device, dtype) for name in names}

    warm: dict[str, dict] = {}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    with torch.inference_mode():
        for name in names:
            # Alone: configurations of one model class compiled in one process share dynamo's cache, so each call
            # would first test the others' entries, a cost a process with one compiled model does not pay.
            torch._dynamo.reset()
            variant = Variant(model, configs[name], args.backend)
            warm[name] = warm_up(variant, inputs[name], args, device)
            for mode, rounds in timed_rounds(variant, inputs[name], args, device).items():
                runs[name, mode] = rounds
            del variant
        del model

    def median(name: str, mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name, mode])

    def speedup(name: str, key: str) -> float:
        pairs = zip((r[key] for r in runs[name, "eager"]), (r[key] for r in runs[name, "compiled"]))
        return statistics.median(e / c if key == "prefill" else c / e for e, c in pairs)

    num_layers = args.text_layers
    k, restore = lvtc(1).resolve_layers(num_layers)
    print(f"{describe_run(args)}; {args.vision_layers}-layer tower, {num_layers}-layer decoder, backend "
          f"{args.backend}, {args.new_tokens} new tokens; LVTC K={k}, L={restore}")
    header = ["config", "visual", "prefill eager ms", "prefill compiled ms", "prefill speedup", "decode eager tok/s",
              "decode compiled tok/s", "decode speedup", "graphs", "late compiles", "compile s", "max |dlogit|"]
    rows = []
    for name in names:
        w = warm[name]
        rows.append([
            name, str(visual_tokens(pvtc_ratio[name])),
            f"{median(name, 'eager', 'prefill'):.1f}", f"{median(name, 'compiled', 'prefill'):.1f}",
            f"{speedup(name, 'prefill'):.2f}x",
            f"{median(name, 'eager', 'decode'):.1f}", f"{median(name, 'compiled', 'decode'):.1f}",
            f"{speedup(name, 'decode'):.2f}x",
            str(w["graphs"]), str(w["late compiles"]), f"{w['compile s']:.0f}", f"{w['diff']:.1e}",
        ])
    print_table(header, rows)
    for name in names:  # where a configuration's graphs part, when it has more than the baseline's
        if warm[name]["graphs"] > warm["baseline"]["graphs"]:
            print(f"\n{name}: {warm[name]['graphs']} graphs against the baseline's {warm['baseline']['graphs']}; "
                  "graph breaks dynamo counted while it compiled:")
            for reason, count in warm[name]["breaks"].most_common():
                print(f"  {count} x {reason.splitlines()[0][:160]}")


if __name__ == "__main__":
    main()
