"""LVTC at real width: prefill latency against the uncompressed model and against an oracle, side by side.

A LLaVA-shaped model with random weights (weights do not change the cost): a Qwen2-0.5B-sized decoder (24 layers, width
896) behind a small CLIP tower that gives one 24x24 grid of 576 visual tokens, plus 64 text tokens. Configurations:

* baseline: the model without vtc;
* LVTC at ratio 1 (every hook, group index, pooling and restore at full length: the mechanism's own cost);
* LVTC at each ratio with `compress_layer=K`, `restore_layer=L` (through `vtc.compress`);
* per ratio, an oracle: the unpatched model with two throwaway hooks that run layers K..L-1 on a slice of the hidden
  states of the compressed length (mask and rotary embeddings sliced once) and hand layer L the layer-K input back.
  The same per-layer lengths with no compress or restore work at all: the most LVTC can reach on this machine.

Every round runs one prefill per configuration (interleaved, in an order that rotates from round to round, so slow
drifts of the machine hit all alike); the table reports median times, the median over rounds of each speedup (and
of oracle time / LVTC time, "of oracle"), next to the analytic FLOPs ratio from `vtc.flops`. "LVTC work" is the CPU
time one prefill spends in LVTC's own profiler ranges (`vtc_lvtc_compress`, `vtc_lvtc_restore`).

    python benchmarks/lvtc_speed.py                                   # CPU, float32: a few minutes
    python benchmarks/lvtc_speed.py --device cuda --dtype bfloat16 --batch 8
"""

from __future__ import annotations

import statistics
import time

import torch
from common import describe_run, parser_with_common_options, print_table
from transformers import LlavaConfig, LlavaForConditionalGeneration

import vtc
from vtc.flops import prefill_flops

GRID = 24  # visual tokens per side: 576 in all
TEXT_TOKENS = 64
PATCH = 4  # a small tower with one patch per visual token: its cost is the same for every configuration
VOCAB = 151_936  # Qwen2's
IMAGE_TOKEN = 1_000  # text tokens are drawn above it


def build_model(device: str, dtype: torch.dtype, attn: str, *, width: int = 896, layers: int = 24,
                intermediate: int | None = None, grid: int = GRID,
                vocab_size: int = VOCAB) -> LlavaForConditionalGeneration:
    """The benchmark's model; `width` (a multiple of 64), `layers`, `intermediate` (the MLP width, by default the
    Qwen2 proportion) and `vocab_size` shrink its decoder for measurements of host work, and `grid` its image (visual
    tokens per side)."""
    heads = width // 64
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, image_size=grid * PATCH, patch_size=PATCH, projection_dim=64),
        text_config=dict(model_type="qwen2", hidden_size=width, intermediate_size=intermediate or width * 38 // 7,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=min(2, heads),
                         vocab_size=vocab_size,
                         max_position_embeddings=4096, tie_word_embeddings=True),
        image_token_index=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=grid * grid,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation=attn, dtype=dtype)
    return model.to(device).eval()


def make_inputs(batch: int, device: str, dtype: torch.dtype, *, grid: int = GRID, text_tokens: int = TEXT_TOKENS,
                vocab_size: int = VOCAB) -> dict[str, torch.Tensor]:
    text = torch.randint(IMAGE_TOKEN + 1, vocab_size, (text_tokens,), generator=torch.Generator().manual_seed(1))
    image = torch.full((grid * grid,), IMAGE_TOKEN)
    ids = torch.cat([text[: text_tokens // 2], image, text[text_tokens // 2:]])[None].expand(batch, -1)
    pixels = torch.randn(batch, 3, grid * PATCH, grid * PATCH, generator=torch.Generator().manual_seed(2))
    return {"input_ids": ids.to(device), "pixel_values": pixels.to(device, dtype)}


class Oracle:
    """Layers K..L-1 on the first `length` hidden states, with kwargs prepared once: sequence lengths and no work.

    The unpatched model's own mask is None here (one unpadded batch under sdpa: causal), and it stays None for a
    shorter causal sequence, so the compressed layers get exactly what LVTC gives them.
    """

    def __init__(self, model, compress_layer: int, restore_layer: int, length: int):
        self.length, self.handles, self.full = length, [], None
        layers = model.model.language_model.layers
        self.handles.append(layers[compress_layer].register_forward_pre_hook(self.shorten, with_kwargs=True))
        for layer in layers[compress_layer + 1:restore_layer]:
            self.handles.append(layer.register_forward_pre_hook(self.swap, with_kwargs=True))
        self.handles.append(layers[restore_layer - 1].register_forward_hook(self.lengthen))

    def shorten(self, _module, args, kwargs):
        self.full = args[0]
        cos, sin, mask = *kwargs["position_embeddings"], kwargs["attention_mask"]
        if isinstance(mask, torch.Tensor):  # eager's 4-D mask; a causal mask's top-left corner is the short one
            mask = mask[..., :self.length, :self.length]
        self.kwargs = {**kwargs, "position_embeddings": (cos[:, :self.length], sin[:, :self.length]),
                       "attention_mask": mask, "position_ids": None}
        return (args[0][:, :self.length], *args[1:]), self.kwargs

    def swap(self, _module, args, _kwargs):
        return args, self.kwargs

    def lengthen(self, _module, _args, _output):
        full, self.full = self.full, None
        return full

    def remove(self):
        for handle in self.handles:
            handle.remove()


def timed_prefill(model, inputs, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model(**inputs, use_cache=True, logits_to_keep=1)  # generate's prefill: logits of the last position only
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def lvtc_own_work_ms(model, config: vtc.VTCConfig, inputs) -> float:
    """CPU time of one prefill spent inside LVTC's profiler ranges (compress at layer K, restore after layer L-1)."""
    vtc.compress(model, config)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(**inputs, use_cache=True, logits_to_keep=1)
    return sum(e.cpu_time_total for e in profile.key_averages() if e.key.startswith("vtc_lvtc_")) / 1e3


def main() -> None:
    parser = parser_with_common_options(__doc__)
    parser.add_argument("--compress-layer", type=int, default=2)
    parser.add_argument("--restore-layer", type=int, default=-2)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = build_model(args.device, dtype, args.attn)
    inputs = make_inputs(args.batch, args.device, dtype)
    text_config = model.config.text_config
    num_layers = text_config.num_hidden_layers

    def lvtc(ratio: int) -> vtc.VTCConfig:
        return vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=args.compress_layer,
                                                 restore_layer=args.restore_layer, ratio=ratio))

    ratios = [int(r) for r in args.ratios.split(",")]
    configs = {"baseline": None, "lvtc r=1": lvtc(1), **{f"lvtc r={r}": lvtc(r) for r in ratios}}
    layer_lens: dict[str, list[int]] = {"baseline": [inputs["input_ids"].shape[1]] * num_layers}
    k, restore = lvtc(1).lvtc.resolve_layers(num_layers)

    def run(name: str) -> float:
        vtc.unpatch(model)
        if name.startswith("oracle"):  # the lengths its LVTC configuration produced, which ran just before
            layer_lens[name] = layer_lens[name.replace("oracle", "lvtc")]
            oracle = Oracle(model, k, restore, layer_lens[name][k])
            try:
                return timed_prefill(model, inputs, device)
            finally:
                oracle.remove()
        if configs[name] is None:
            return timed_prefill(model, inputs, device)
        vtc.compress(model, configs[name])  # outside the timed region
        elapsed = timed_prefill(model, inputs, device)
        layer_lens[name] = vtc.last_stats(model)["layer_seq_lens"]
        return elapsed

    names = ["baseline", "lvtc r=1"] + [n for r in ratios for n in (f"lvtc r={r}", f"oracle r={r}")]
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:  # warm-up round, in this order: each oracle copies the lengths its LVTC run recorded
            run(name)
        for round_ in range(args.repeats):
            # Rotate the order every round so that no configuration always follows the same one.
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                times[name].append(run(name))
        own_work = {name: lvtc_own_work_ms(model, configs[name], inputs) for name in names if name.startswith("lvtc")}
    vtc.unpatch(model)

    med = {name: statistics.median(t) for name, t in times.items()}
    # Ratios are medians of per-round ratios: a slow spell of a shared machine then hits both sides of a ratio. Each
    # LVTC run and its oracle run back to back, so their ratio is the least noisy number here.
    def ratio(numerator: str, denominator: str) -> float:
        return statistics.median(n / d for n, d in zip(times[numerator], times[denominator]))

    speedup = {name: ratio("baseline", name) for name in names}
    flops = {name: prefill_flops(text_config, lens).total for name, lens in layer_lens.items()}
    print(f"{describe_run(args)}; K={k}, L={restore} of {num_layers} layers")
    header = ("config", "layer lengths", "prefill ms", "LVTC work ms", "speedup", "oracle speedup", "of oracle",
              "FLOPs ratio")
    rows = []
    for name in names:
        lens = layer_lens[name]
        spans = f"{lens[0]}" if len(set(lens)) == 1 else f"{lens[0]} / {lens[k]} x{restore - k}"
        oracle = name.replace("lvtc", "oracle")
        is_lvtc = name.startswith("lvtc") and oracle in med
        rows.append((
            name, spans, f"{med[name]:.0f}", f"{own_work[name]:.1f}" if name in own_work else "-",
            f"{speedup[name]:.2f}x",
            f"{speedup[oracle]:.2f}x" if is_lvtc else "-",
            f"{ratio(oracle, name):.1%}" if is_lvtc else "-",
            f"{flops['baseline'] / flops[name]:.2f}x",
        ))
    print_table(header, rows)
    print(f"\nratio=1 overhead (LVTC hooks at full length vs baseline): {ratio('lvtc r=1', 'baseline') - 1:+.1%}")


if __name__ == "__main__":
    main()
