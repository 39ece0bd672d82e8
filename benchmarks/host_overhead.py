"""vtc's host overhead per prefill and per decode step, where the host is the bottleneck.

`real_size.py` found a 7B prefill at batch 1 on an H200 bound by the host: the GPU waits for kernel launches, so every
microsecond of Python a compressed model adds shows in its latency. This script reproduces that regime on any device
with `lvtc_speed.py`'s LLaVA-shaped model made deep and narrow (32 decoder layers of width 64, a 2,048-word
vocabulary, random weights) and a short prompt (an 8 x 8 grid of visual tokens and 16 text tokens): its kernels take
microseconds, and the time differences between configurations are host work. Configurations:

* unpatched: the model without vtc (the yardstick);
* instrumented: `vtc.compress` with an empty config, the recording every compressed model carries;
* LVTC at ratio 1 and at each ratio of `--ratios` (`compress_layer=2`, `restore_layer=-2`);
* per ratio, `lvtc_speed.py`'s oracle: the unpatched model with two throwaway hooks that run layers K..L-1 on the
  first tokens of the hidden states, as many as LVTC keeps (prefill only). "prefill of oracle" (oracle time / LVTC
  time, median over rounds) is then the host-bound analogue of `real_size.py`'s batch-1 "of oracle".

Every round runs, per configuration (interleaved, in an order that rotates from round to round), `--prefills`
prefills (`use_cache=True`) and `--generations` greedy `generate`s of `--new-tokens` tokens (each timed by its mean
decode step, from the first token's logits to the last's, as in `decode_speed.py`), and keeps the fastest of each:
host work is what it measures, and a busy machine's interruptions only ever add to it. "hooks" counts the forward hooks on the model's
modules, each of which runs on every call of its module. The table reports medians over rounds, and the
overhead ("+ms"): the median over rounds of each round's difference to the unpatched model, which a drift of the
machine between rounds does not move. LVTC at a ratio above 1 also shortens layers K..L-1; at this size
that changes the host work little and the device work less.

    python benchmarks/host_overhead.py                         # CPU, about a minute
    python benchmarks/host_overhead.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import statistics
import sys

import torch
from common import describe_run, parser_with_common_options, print_table
from decode_speed import timed_generate
from lvtc_speed import Oracle, build_model, make_inputs, timed_prefill

import vtc

LAYERS, WIDTH = 32, 64
K = 2  # LVTC's compress layer; it restores at layer LAYERS - 2
GRID, TEXT_TOKENS, VOCAB = 8, 16, 2_048


def forward_hooks(model: torch.nn.Module) -> int:
    """Forward and forward pre-hooks on the model's modules: each runs on every call of its module, so on every
    prefill and decode step (transformers installs some of its own on first use)."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = parser_with_common_options(__doc__)
    parser.set_defaults(repeats=7)
    parser.add_argument("--new-tokens", type=int, default=33, help="greedy tokens per generation (default 33)")
    parser.add_argument("--prefills", type=int, default=10,
                        help="prefills per configuration and round, the fastest counts (default 10)")
    parser.add_argument("--generations", type=int, default=2,
                        help="generations per configuration and round, the fastest counts (default 2)")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2: a decode step needs a token after the prefill's")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = build_model(args.device, dtype, args.attn, width=WIDTH, layers=LAYERS, intermediate=WIDTH, grid=GRID,
                        vocab_size=VOCAB)
    inputs = make_inputs(args.batch, args.device, dtype, grid=GRID, text_tokens=TEXT_TOKENS, vocab_size=VOCAB)

    def lvtc(ratio: int) -> vtc.VTCConfig:
        return vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=K, restore_layer=-2, ratio=ratio))

    configs = {"unpatched": None, "instrumented": vtc.VTCConfig(), "lvtc r=1": lvtc(1)}
    configs.update({f"lvtc r={r}": lvtc(int(r)) for r in args.ratios.split(",")})
    with torch.inference_mode():
        oracles = {f"oracle r={r}": compressed_length(model, inputs, lvtc(int(r))) for r in args.ratios.split(",")}
    names = [*configs, *oracles]
    runs: dict[str, list[tuple[float, float | None]]] = {name: [] for name in names}
    hooks: dict[str, int] = {}
    with torch.inference_mode():
        for round_ in range(args.repeats + 1):  # round 0 warms every configuration up
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                if configs.get(name) is not None:
                    vtc.compress(model, configs[name])
                oracle = Oracle(model, K, LAYERS - 2, oracles[name]) if name in oracles else None
                hooks[name] = forward_hooks(model)
                try:
                    # The fastest of several: what the host work costs, without the interruptions of a busy machine.
                    prefill = min(timed_prefill(model, inputs, device) for _ in range(args.prefills))
                    step = (None if oracle else  # the oracle's hooks shorten prefills only
                            args.batch / max(timed_generate(model, inputs, args.new_tokens, device)["decode"]
                                             for _ in range(args.generations)) * 1e3)
                finally:
                    if configs.get(name) is not None:
                        vtc.unpatch(model)
                    if oracle is not None:
                        oracle.remove()
                if round_:
                    runs[name].append((prefill, step))

    def median(name: str, i: int) -> float:
        return statistics.median(run[i] for run in runs[name])

    def overhead(name: str, i: int) -> float:
        return statistics.median(run[i] - base[i] for run, base in zip(runs[name], runs["unpatched"]))

    def of_oracle(name: str) -> str:
        oracle = name.replace("lvtc", "oracle")
        if not name.startswith("lvtc") or oracle not in runs:
            return "-"
        return f"{statistics.median(o[0] / r[0] for o, r in zip(runs[oracle], runs[name])):.1%}"

    print(f"{describe_run(args)}; a {LAYERS}-layer, width-{WIDTH} decoder, {GRID * GRID} visual + {TEXT_TOKENS} text "
          f"tokens, {args.new_tokens} new tokens; LVTC K={K}, L={LAYERS - 2}")
    header = ["config", "hooks", "prefill ms", "prefill +ms", "prefill of oracle", "decode ms/step", "decode +ms/step"]
    rows = [[name, str(hooks[name]), f"{median(name, 0):.2f}", f"{overhead(name, 0):+.2f}", of_oracle(name),
             "-" if name in oracles else f"{median(name, 1):.3f}",
             "-" if name in oracles else f"{overhead(name, 1):+.3f}"] for name in names]
    print_table(header, rows)
    return rows


def compressed_length(model, inputs, config: vtc.VTCConfig) -> int:
    """The sequence length LVTC hands layers K..L-1 of this prompt."""
    vtc.compress(model, config)
    try:
        model(**inputs, use_cache=True, logits_to_keep=1)
        return vtc.last_stats(model)["layer_seq_lens"][K]
    finally:
        vtc.unpatch(model)


if __name__ == "__main__":
    main(sys.argv[1:])
