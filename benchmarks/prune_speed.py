"""The pruning baselines at equal budgets: prefill against the "shorter sequence" oracle, decode speed and KV cache.

The LLaVA-1.5-shaped model of `pvtc_speed.py` with random weights (weights do not change the cost): a CLIP-L/14-336
tower (576 visual tokens) and a Qwen2-0.5B-sized decoder (24 layers, width 896), one image and 64 text tokens per
prompt. Every method keeps `--keep` of the 576 visual tokens (default 144, a quarter):

* before the language model: `pool`, `random`, `divprune`, `visionzip` (every decoder layer sees 64 + keep tokens);
* inside the decoder: `fastv` and `dart` (K=2), `pdrop` (three stages from layer 2, `keep` the average over the
  layers),
  and LVTC at ratio 576 / keep with no restore (`restore_layer=None`), the same mechanism with pooling for a rule.

Each method runs next to its oracle: the unpatched model with throwaway hooks that hand every decoder layer the first
`n` hidden states, where `n` is the length the method gave that layer (`vtc.last_stats(model)["layer_seq_lens"]`),
with the mask and rotary embeddings sliced once: the same per-layer lengths with no ranking, selection or gathering at
all, the most a method can reach on this machine. Every round runs one prefill per configuration (interleaved, in an
order that rotates from round to round); the table reports medians over rounds and medians of per-round ratios:

* own ms: the CPU time of one prefill inside the method's profiler ranges (`vtc_prune_reduce` before the language
  model, `vtc_prune_select` inside it: scoring and choosing; `vtc_lvtc_compress` for LVTC);
* of oracle: oracle time / method time (target >= 95%);
* own / LM saved: own ms against what the shorter sequence saves (baseline - oracle);
* decode tok/s and KV MiB: greedy `generate` of `--new-tokens` tokens, and the KV cache one prefill leaves.

    python benchmarks/prune_speed.py                                   # CPU, float32: about 10 minutes
    python benchmarks/prune_speed.py --small --repeats 3               # 2-layer tower, 8-layer decoder: a smoke run
    python benchmarks/prune_speed.py --device cuda --dtype bfloat16 --batch 8 --7b   # a GPU, 7B shapes
"""

from __future__ import annotations

import statistics

import torch
from common import describe_run, parser_with_common_options, print_table
from decode_speed import timed_generate
from lvtc_speed import timed_prefill
from pvtc_speed import IMAGE_TOKEN, PATCH_GRID, TEXT_7B, build_model, make_inputs

import vtc
from vtc.bench import kv_cache_megabytes
from vtc.flops import prefill_flops
from vtc.seams import output_cache

PRE_LLM = ("pool", "random", "divprune", "visionzip")
IN_DECODER = ("fastv", "dart", "pdrop")


class LengthOracle:
    """Every decoder layer on the first `lengths[i]` hidden states, with the mask and rotary embeddings sliced once
    where the length changes (lengths never grow: nothing is restored)."""

    def __init__(self, model, lengths: list[int], full: int):
        self.handles, self.kwargs = [], None
        layers = model.model.language_model.layers
        for i, (layer, length) in enumerate(zip(layers, lengths)):
            previous = full if i == 0 else lengths[i - 1]
            hook = (lambda m, a, k, n=length: self.shorten(a, k, n)) if length < previous else self.swap
            if length < previous or self.handles:
                self.handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))

    def shorten(self, args, kwargs, length: int):
        cos, sin, mask = *kwargs["position_embeddings"], kwargs["attention_mask"]
        if isinstance(mask, torch.Tensor):  # eager's 4-D mask; a causal mask's top-left corner is the short one
            mask = mask[..., :length, :length]
        self.kwargs = {**kwargs, "position_embeddings": (cos[:, :length], sin[:, :length]),
                       "attention_mask": mask, "position_ids": None}
        return (args[0][:, :length], *args[1:]), self.kwargs

    def swap(self, _module, args, _kwargs):
        return args, self.kwargs

    def remove(self):
        for handle in self.handles:
            handle.remove()


def with_placeholders(inputs: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """`inputs` with the image's run of placeholders cut to `count` (the prompt a patched processor writes)."""
    ids = inputs["input_ids"]
    image = (ids[0] == IMAGE_TOKEN).nonzero().flatten()
    keep = torch.ones(ids.shape[1], dtype=torch.bool, device=ids.device)
    keep[image[count:]] = False
    return {**inputs, "input_ids": ids[:, keep], "attention_mask": inputs["attention_mask"][:, keep]}


def own_work_ms(model, inputs) -> float:
    """CPU time of one prefill inside vtc's pruning (and LVTC's compression) profiler ranges."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(**inputs, use_cache=True, logits_to_keep=1)
    return sum(e.cpu_time_total for e in profile.key_averages()
               if e.key.startswith(("vtc_prune_", "vtc_lvtc_compress"))) / 1e3


def configs(keep: int, num_layers: int) -> dict[str, vtc.VTCConfig | None]:
    native = PATCH_GRID[0] * PATCH_GRID[1]
    out: dict[str, vtc.VTCConfig | None] = {"baseline": None}
    out.update({m: vtc.VTCConfig(prune=vtc.PruneConfig(method=m, keep=keep)) for m in PRE_LLM + IN_DECODER})
    # PyramidDrop's official stages (the quarters) cannot average a quarter of the tokens but by dropping them all at
    # the first stage; three stages from layer 2 (as FastV and DART) give it a real pyramid at the same average.
    third = (num_layers - 2) // 3
    out["pdrop"] = vtc.VTCConfig(prune=vtc.PruneConfig(method="pdrop", keep=keep, layer=(2, 2 + third, 2 + 2 * third)))
    out[f"lvtc r{native // keep}"] = vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=2, restore_layer=None,
                                                                        ratio=native // keep))
    return out


def main() -> None:
    parser = parser_with_common_options(__doc__)
    parser.add_argument("--keep", type=int, default=144, help="visual tokens kept of 576 (default 144)")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens per timed generation (default 16)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="a 2-layer tower and an 8-layer decoder: a smoke run")
    size.add_argument("--7b", dest="seven_b", action="store_true",
                      help="LLaVA-1.5-7B's decoder (32 layers, width 4096) behind the same tower")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = dict(vision_layers=2, text_layers=8) if args.small else dict(text=TEXT_7B) if args.seven_b else {}
    model = build_model(args.device, dtype, args.attn, **shape)
    full_inputs = make_inputs(None, args.batch, args.device, dtype)
    full = full_inputs["input_ids"].shape[1]
    text_config = model.config.text_config
    methods = configs(args.keep, text_config.num_hidden_layers)
    lens: dict[str, list[int]] = {}
    kv_mib: dict[str, float] = {}
    own: dict[str, float] = {}

    # Methods before the language model take a prompt with `keep` placeholders (their processor writes that many).
    short_inputs = with_placeholders(full_inputs, args.keep)
    inputs = {name: short_inputs if name in PRE_LLM else full_inputs for name in methods}

    def apply(name: str) -> None:
        vtc.unpatch(model)
        if methods[name] is not None:
            vtc.compress(model, methods[name])

    def prefill(name: str) -> float:
        if not name.startswith("oracle "):
            apply(name)
            return timed_prefill(model, inputs[name], device)
        vtc.unpatch(model)
        oracle = LengthOracle(model, lens[name.removeprefix("oracle ")], full)
        try:
            return timed_prefill(model, full_inputs, device)
        finally:
            oracle.remove()

    with torch.inference_mode():
        for name in methods:  # warm-up; the per-layer lengths, the KV cache one prefill leaves, the own work
            apply(name)
            out = model(**inputs[name], use_cache=True, logits_to_keep=1)
            kv_mib[name] = kv_cache_megabytes(output_cache(out))
            del out
            if name == "baseline":
                lens[name] = [full] * text_config.num_hidden_layers
            else:
                lens[name], own[name] = vtc.last_stats(model)["layer_seq_lens"], own_work_ms(model, inputs[name])
            timed_generate(model, inputs[name], args.new_tokens, device)
        names = [n for name in methods for n in ((name,) if name == "baseline" else (name, f"oracle {name}"))]
        times: dict[str, list[float]] = {name: [] for name in names}
        decode: dict[str, list[float]] = {name: [] for name in methods}
        for round_ in range(args.repeats):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                times[name].append(prefill(name))
            for name in methods:
                apply(name)
                decode[name].append(timed_generate(model, inputs[name], args.new_tokens, device)["decode"])
    vtc.unpatch(model)

    def ratio(numerator: str, denominator: str) -> float:
        return statistics.median(n / d for n, d in zip(times[numerator], times[denominator]))

    def saved_share(name: str) -> str:
        saved = statistics.median(b - o for b, o in zip(times["baseline"], times[f"oracle {name}"]))
        return f"{own[name] / saved:.1%}" if saved > 0 else "-"

    flops = {name: prefill_flops(text_config, layer_lens).total for name, layer_lens in lens.items()}
    print(f"{describe_run(args)}; {text_config.num_hidden_layers}-layer decoder, keep {args.keep} of "
          f"{PATCH_GRID[0] * PATCH_GRID[1]} visual tokens, {args.new_tokens} new tokens")
    header = ("config", "layer lengths", "prefill ms", "own ms", "speedup", "oracle speedup", "of oracle",
              "own / LM saved", "LM FLOPs ratio", "decode tok/s", "KV MiB")
    rows = []
    for name in methods:
        layer_lens, baseline = lens[name], name == "baseline"
        changes = [f"{n} from {i}" for i, n in enumerate(layer_lens) if i == 0 or n != layer_lens[i - 1]]
        rows.append((
            name, ", ".join(changes), f"{statistics.median(times[name]):.0f}",
            "-" if baseline else f"{own[name]:.1f}", f"{ratio('baseline', name):.2f}x",
            "-" if baseline else f"{ratio('baseline', f'oracle {name}'):.2f}x",
            "-" if baseline else f"{ratio(f'oracle {name}', name):.1%}",
            "-" if baseline else saved_share(name), f"{flops['baseline'] / flops[name]:.2f}x",
            f"{statistics.median(decode[name]):.1f}", f"{kv_mib[name]:.2f}",
        ))
    print_table(header, rows)


if __name__ == "__main__":
    main()
