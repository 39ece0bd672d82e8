"""PVTC at real widths: the prefill split into vision tower, projector and language model, side by side.

A LLaVA-1.5-shaped model with random weights (weights do not change the cost): a CLIP-L/14-336 vision tower (576
patches) and a Qwen2-0.5B-sized decoder, one image and 64 text tokens. For the original projector and for PVTC at
each ratio, every round runs one prefill per configuration (interleaved, so drifts hit all alike) and times each part
with forward hooks; medians over rounds are reported. Two yardsticks:

* projector cost / LM time saved: what PVTC's own compute costs against what its shorter sequence saves (target <= 20%);
* of oracle: the oracle feeds the same number of visual tokens to the unpatched decoder with no projector work at
  all, so its speedup is the most any projector can get; with the same baseline, the fraction of the oracle's
  speedup reached is oracle time / LM time at the same length, taken per round (the two run back to back) and
  reported as the median (target >= 95%).

    python benchmarks/pvtc_speed.py                                   # CPU, float32
    python benchmarks/pvtc_speed.py --device cuda --dtype bfloat16    # a GPU
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from common import describe_run, parser_with_common_options, print_table
from transformers import LlavaConfig, LlavaForConditionalGeneration

import vtc
from vtc.flops import prefill_flops
from vtc.ops import pooled_grid

PATCH_GRID = (24, 24)  # CLIP-L/14 at 336 px
TEXT_TOKENS = 64
IMAGE_TOKEN = 151_655


#: The decoder of LLaVA-1.5-7B (Vicuna-7B), for `build_model(text=...)`: 7B shapes with the same tower.
TEXT_7B = dict(hidden_size=4096, intermediate_size=11_008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32)


def build_model(device: str, dtype: torch.dtype, attn: str, vision_layers: int = 24,
                text_layers: int = 24, text: dict | None = None) -> LlavaForConditionalGeneration:
    """The benchmark's model; `text` overrides entries of the Qwen2-0.5B-sized decoder's config (e.g. `TEXT_7B`)."""
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=vision_layers, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768),
        text_config={**dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=text_layers,
                            num_attention_heads=14, num_key_value_heads=2, vocab_size=151_936,
                            max_position_embeddings=4096, tie_word_embeddings=True), **(text or {})},
        image_token_index=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=PATCH_GRID[0] * PATCH_GRID[1],
    )
    torch.manual_seed(0)
    with torch.device(device):  # a 7B decoder is made where it runs, not first in host memory
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation=attn, dtype=dtype)
    return model.eval()


def visual_tokens(ratio: int | None) -> int:
    side = 1 if ratio is None else int(ratio**0.5)
    h, w = pooled_grid(PATCH_GRID, (side, side))
    return h * w


def make_inputs(ratio: int | None, batch: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    text = torch.randint(1000, 100_000, (TEXT_TOKENS,), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([text[: TEXT_TOKENS // 2], torch.full((visual_tokens(ratio),), IMAGE_TOKEN), text[TEXT_TOKENS // 2:]])
    ids = ids[None].expand(batch, -1)
    pixels = torch.randn(batch, 3, 336, 336, generator=torch.Generator().manual_seed(2))
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids, device=device),
            "pixel_values": pixels.to(device, dtype)}


class PartTimer:
    """Wall time of named submodules inside one forward, from forward pre/post hooks."""

    #: Whether the start hook runs before the module's other pre-hooks (vtc's included), so they count in its time.
    first = False

    def __init__(self, device: torch.device):
        self.device, self.handles, self.elapsed, self._start = device, [], {}, {}

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def watch(self, name: str, module: torch.nn.Module) -> None:
        def before(*_):
            self._sync()
            self._start[name] = time.perf_counter()

        def after(*_):
            self._sync()
            self.elapsed[name] = self.elapsed.get(name, 0.0) + (time.perf_counter() - self._start[name]) * 1e3

        self.handles += [module.register_forward_pre_hook(before, prepend=self.first),
                         module.register_forward_hook(after)]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def timed_prefill(model, inputs, device) -> dict[str, float]:
    base = model.model
    timer = PartTimer(device)
    timer.watch("vision", base.vision_tower)
    timer.watch("projector", getattr(base, "vtc_pvtc", base.multi_modal_projector))
    timer.watch("language model", base.language_model)
    try:
        timer._sync()
        start = time.perf_counter()
        model(**inputs, use_cache=True, logits_to_keep=1)
        timer._sync()
        timer.elapsed["total"] = (time.perf_counter() - start) * 1e3
    finally:
        timer.remove()
    return timer.elapsed


def oracle_prefill(model, batch: int, length: int, device) -> float:
    """The unpatched decoder on `length` tokens: no vision, no projector, nothing but the sequence length."""
    embeds = torch.randn(batch, length, model.config.text_config.hidden_size, device=device, dtype=model.dtype)
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    args = parser_with_common_options(__doc__).parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = build_model(args.device, dtype, args.attn)
    configs = {"original": vtc.VTCConfig()}
    configs.update({f"pvtc r={r}": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=int(r))) for r in args.ratios.split(",")})
    ratios = {name: (cfg.pvtc.ratio if cfg.pvtc else None) for name, cfg in configs.items()}
    inputs = {name: make_inputs(ratios[name], args.batch, args.device, dtype) for name in configs}
    lengths = {name: TEXT_TOKENS + visual_tokens(r) for name, r in ratios.items()}

    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with torch.inference_mode():
        for round_ in range(args.repeats + 1):  # round 0 warms up every configuration
            for name, cfg in configs.items():
                vtc.compress(model, cfg)  # outside the timed region
                times = timed_prefill(model, inputs[name], device)
                times["oracle language model"] = oracle_prefill(model, args.batch, lengths[name], device)
                times["of oracle"] = times["oracle language model"] / times["language model"]
                if round_:
                    for part, ms in times.items():
                        parts[name][part].append(ms)
    vtc.unpatch(model)

    med = {name: {part: statistics.median(v) for part, v in p.items()} for name, p in parts.items()}
    text_config = model.config.text_config
    flops = {name: prefill_flops(text_config, [n] * text_config.num_hidden_layers).total for name, n in lengths.items()}
    base = med["original"]
    print(describe_run(args))
    header = ("config", "visual", "vision", "projector", "LM", "total", "oracle LM", "LM speedup", "oracle speedup",
              "of oracle", "LM FLOPs ratio", "proj cost / LM saved")
    rows = []
    for name in configs:
        m = med[name]
        saved = base["language model"] - m["language model"]
        extra = m["projector"] - base["projector"]
        rows.append((
            name, str(lengths[name] - TEXT_TOKENS), f"{m['vision']:.1f}", f"{m['projector']:.2f}",
            f"{m['language model']:.1f}", f"{m['total']:.1f}", f"{m['oracle language model']:.1f}",
            f"{base['language model'] / m['language model']:.2f}x",
            f"{base['oracle language model'] / m['oracle language model']:.2f}x",
            f"{m['of oracle']:.1%}",
            f"{flops['original'] / flops[name]:.2f}x",
            "-" if name == "original" else f"{extra / saved:.1%}" if saved > 0 else "n/a",
        ))
    print_table(header, rows)


if __name__ == "__main__":
    main()
