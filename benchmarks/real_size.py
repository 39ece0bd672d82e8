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
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from decode_speed import timed_generate
from lvtc_speed import Oracle
from pvtc_speed import PartTimer, oracle_prefill
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode
from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2VLConfig, Qwen2VLForConditionalGeneration

import vtc
from vtc.testing import processor_without_video, tiny_images, tiny_tokenizer
from vtc.bench import kv_cache_megabytes
from vtc.errors import ConfigError
from vtc.flops import prefill_flops
from vtc.ops import pooled_grid

TEXT_TOKENS = 64
FAMILIES = ("llava", "qwen2_vl")
# The targets of the issue, at 7B.
OF_ORACLE_TARGET, LVTC_R1_OVERHEAD_TARGET, PROJECTOR_COST_TARGET = 0.95, 0.02, 0.10
#: an oracle LM speedup below this means the LM's time is the host's (kernel launches), not the sequence's
HOST_BOUND_ORACLE_SPEEDUP = 1.1

#: a decode step at a KV length the process meets for the first time, in later steps' time (H200, 7B: 2-4x)
FIRST_SIGHT_STEP_FACTOR = 3

# Flash against the default backend, per dtype: the fixed part of the (mean |difference| / mean |value|,
# max |difference| / max |value|) allowed, of the final hidden states at every position (prefill) and of the step
# logits (decode). bfloat16 keeps 8 bits of mantissa: two kernels that sum in another order differ by about 1e-2
# after a few dozen layers, while a wrong mask (a padded or non-causal position) changes the states by their own size.
AGREE_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 1e-1), torch.float16: (5e-3, 5e-2)}
# ... plus NOISE_FACTOR times the noise floor measured in the same run: how much the default backend differs from the
# math backend. A fixed tolerance alone does not fit every model: random-weight 7B-shaped models in bfloat16 amplify
# rounding across 32 layers until any two SDPA backends differ by ~7e-2 / 9e-2, the unpatched baseline included.
# Flash is one more backend, so it should land within that spread; 1.5 leaves room for flash summing in an order of
# its own (it may differ from both a little more than they differ from each other) while a wrong mask, which changes
# the states by their own size (~1), stays far outside.
NOISE_FACTOR = 1.5

_START = time.perf_counter()


def log(message: str) -> None:
    """A progress line with the seconds since the start and the wall-clock time."""
    print(f"[{time.perf_counter() - _START:7.1f} s | {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------- time guard
class Guard:
    """The global time budget, and the deadline of the phase running now.

    Each model gets the share of what is left when it starts that its planned seconds are of all the models still to
    run (`plan`); after its build, its prefill may run until the prefill's planned share of what is left of that,
    the flash check likewise, and decode takes the rest. Time a phase does not use flows to the next one; a phase
    that would overrun its deadline runs fewer rounds or skips rows, and says so.
    """

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.deadline = _START + budget_s
        self.skipped: list[str] = []

    def left(self, deadline: float | None = None) -> float:
        return min(self.deadline, deadline or self.deadline) - time.perf_counter()

    def family_end(self, planned_family: float, planned_left: float) -> float:
        now = time.perf_counter()
        return now + max(0.0, self.deadline - now) * planned_family / max(planned_left, 1e-9)

    @staticmethod
    def phase_deadlines(end: float, planned: dict[str, float]) -> dict[str, float]:
        """`planned`: the seconds of prefill, flash and decode."""
        now, total = time.perf_counter(), max(sum(planned.values()), 1e-9)
        span = max(0.0, end - now)
        prefill = now + span * planned["prefill"] / total
        flash = prefill + span * planned["flash"] / total
        return {"prefill": prefill, "flash": flash, "decode": end}

    def skip(self, what: str, why: str) -> str:
        note = f"{what}: skipped by the time guard ({why})"
        self.skipped.append(note)
        log(note)
        return note


# ------------------------------------------------------------------------------------------------- model shapes
@dataclass(frozen=True)
class Sizes:
    """One model's dimensions: the real 7B shape, or the `--tiny` one (every dimension shrunk)."""

    title: str
    vision: dict
    text: dict
    image_size: int  # pixels a side
    token_grid: int  # language tokens a side of one image (576 = 24 x 24 at full size)


def llava_sizes(tiny: bool) -> Sizes:
    if tiny:
        return Sizes(
            "LLaVA-1.5-shaped, tiny (CLIP 2 x 64 at 112 px / 14; Llama 6 x 128)",
            vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                        image_size=112, patch_size=14, projection_dim=64),
            text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=512, max_position_embeddings=1024),
            image_size=112, token_grid=8)
    return Sizes(
        "LLaVA-1.5-7B-shaped (CLIP-L/14-336: 24 x 1024; Llama/Vicuna-7B: 32 x 4096, 32 heads, MLP 11008)",
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu"),
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5),
        image_size=336, token_grid=24)


def qwen_sizes(tiny: bool) -> Sizes:
    if tiny:
        return Sizes(
            "Qwen2-VL-shaped, tiny (ViT 2 x 64, patch 14, merge 2; Qwen2 6 x 128, M-RoPE)",
            vision=dict(depth=2, embed_dim=64, hidden_size=128, num_heads=2, mlp_ratio=2),
            text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, bos_token_id=1,
                      eos_token_id=2, rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6])),
            image_size=224, token_grid=8)
    return Sizes(
        "Qwen2-VL-7B-shaped (ViT 32 x 1280, patch 14, merge 2; Qwen2-7B: 28 x 3584, 28/4 heads, MLP 18944, M-RoPE)",
        vision=dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4),
        text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])),
        image_size=672, token_grid=24)


def random_model(cls, config, device: torch.device, dtype: torch.dtype, attn: str):
    """A randomly initialised model built directly on `device` in `dtype` (on a GPU the init runs there: seconds)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, attn_implementation=attn, dtype=dtype)
    return model.eval()


class Family:
    """What the benchmark needs from one model family: the model, its inputs per configuration, its parts."""

    key = ""

    def __init__(self, tiny: bool, device: torch.device, dtype: torch.dtype, attn: str):
        self.tiny, self.device, self.dtype, self.attn = tiny, device, dtype, attn
        self.processor = None
        self.compress_on_device = True

    sizes: Sizes

    def build(self):
        raise NotImplementedError

    def parts(self, model) -> dict[str, torch.nn.Module]:
        """The tower and the native projector to time."""
        raise NotImplementedError

    #: whether the native projector runs inside the tower (its time is then taken out of the tower's)
    projector_in_tower = False

    def rvtc_config(self) -> vtc.RVTCConfig:
        raise NotImplementedError

    def inputs_one(self, model, config: vtc.VTCConfig | None) -> dict[str, torch.Tensor]:
        """The inputs of one prompt (batch 1, on the CPU) for the visual-token count of `config`."""
        raise NotImplementedError

    def apply(self, model, config: vtc.VTCConfig | None) -> None:
        """Compress `model` with `config` (None: unpatched), outside any timed region.

        PVTC builds its projector (half a billion parameters at width 4096) on every `compress`: under the device's
        default-device context it is created and initialised on the GPU, in milliseconds instead of seconds.
        """
        if config is None:
            vtc.unpatch(model)
            return
        if self.device.type == "cuda" and self.compress_on_device:
            try:
                with torch.device(self.device):
                    vtc.compress(model, config, processor=self.processor)
                return
            except RuntimeError as error:  # compress is atomic: the model is as it was
                self.compress_on_device = False
                log(f"vtc.compress under torch.device({self.device}) failed ({_error_line(error)}); compressing "
                    "without it from now on (PVTC's projector is then initialised on the CPU: seconds per compress)")
        vtc.compress(model, config, processor=self.processor)


class Llava(Family):
    key = "llava"

    def __init__(self, *args):
        super().__init__(*args)
        self.sizes = llava_sizes(self.tiny)
        vocab = self.sizes.text["vocab_size"]
        # LLaVA-1.5's <image> is 32000 of 32064; the tiny vocabulary keeps the same layout
        self.image_token = 32000 if vocab == 32064 else vocab - 12
        self.text_range = (1000, 30000) if vocab == 32064 else (20, vocab - 20)

    def build(self):
        s = self.sizes
        config = LlavaConfig(
            vision_config=dict(model_type="clip_vision_model", **s.vision),
            text_config=dict(model_type="llama", **s.text),
            image_token_index=self.image_token, projector_hidden_act="gelu", vision_feature_layer=-2,
            vision_feature_select_strategy="default", image_seq_length=s.token_grid**2,
        )
        return random_model(LlavaForConditionalGeneration, config, self.device, self.dtype, self.attn)

    def parts(self, model):
        return {"tower": model.model.vision_tower, "native projector": model.model.multi_modal_projector}

    def rvtc_config(self):
        return vtc.RVTCConfig(mode="area", max_tiles=6)  # refused: one fixed resolution

    def inputs_one(self, model, config):
        grid = self.sizes.token_grid
        side = config.pvtc.window if config is not None and config.pvtc is not None else 1
        h, w = pooled_grid((grid, grid), (side, side))
        text = torch.randint(*self.text_range, (TEXT_TOKENS,), generator=torch.Generator().manual_seed(1))
        ids = torch.cat([text[: TEXT_TOKENS // 2], torch.full((h * w,), self.image_token), text[TEXT_TOKENS // 2:]])
        size = self.sizes.image_size
        pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
        return {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                "pixel_values": pixels}


class Qwen2VL(Family):
    key = "qwen2_vl"
    projector_in_tower = True  # `visual.merger` runs at the end of `visual` (also under PVTC: its output is unused)

    def __init__(self, *args):
        super().__init__(*args)
        self.sizes = qwen_sizes(self.tiny)
        tokenizer = tiny_tokenizer("qwen2_vl")
        tokenizer.model_max_length = self.sizes.text["max_position_embeddings"]  # its own 512 would only warn
        self.ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
        # Qwen2-VL's own limits: pixels in [56^2, 28^2 * 1280], sides multiples of patch x merge = 28
        image_processor = transformers.Qwen2VLImageProcessorPil(
            size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}, patch_size=14, temporal_patch_size=2,
            merge_size=2)
        self.processor = processor_without_video(transformers.Qwen2VLProcessor, image_processor=image_processor,
                                                 tokenizer=tokenizer)

    def build(self):
        s = self.sizes
        config = Qwen2VLConfig(
            vision_config=dict(patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3, **s.vision),
            text_config=dict(s.text, tie_word_embeddings=False),
            **self.ids,
        )
        return random_model(Qwen2VLForConditionalGeneration, config, self.device, self.dtype, self.attn)

    def parts(self, model):
        return {"tower": model.model.visual, "native projector": model.model.visual.merger}

    def rvtc_config(self):
        # the visual tokens of PVTC r4 (12 x 12 at full size) as the budget, with tiles of exactly that many tokens
        side = self.sizes.token_grid // 2
        return vtc.RVTCConfig(mode="budget", tile_size=side * 28, max_visual_tokens=side * side)

    def inputs_one(self, model, config):
        # the processor patched for `config` (PVTC and RVTC change the placeholders), then left as it was
        self.apply(model, vtc.VTCConfig(pvtc=config.pvtc, rvtc=config.rvtc) if config is not None else None)
        try:
            words = [f"w{i}" for i in range(TEXT_TOKENS)]
            image = "<|vision_start|><|image_pad|><|vision_end|>"
            text = " ".join([*words[: TEXT_TOKENS // 2], image, *words[TEXT_TOKENS // 2:]])
            size = self.sizes.image_size
            out = self.processor(images=tiny_images([(size, size)]), text=[text], return_tensors="pt")
        finally:
            vtc.unpatch(model)
        return dict(out)


def expand(one: dict[str, torch.Tensor], batch: int, device: torch.device, dtype: torch.dtype):
    """`batch` copies of one prompt's inputs, on `device` (pixels in the model's dtype)."""
    out = {}
    for key, value in one.items():
        if key == "pixel_values":
            value = value.repeat(batch, *[1] * (value.dim() - 1)) if value.dim() == 2 else value.expand(
                batch, *value.shape[1:])
            out[key] = value.to(device, dtype).contiguous()
        elif key == "image_grid_thw":  # one row per image
            out[key] = value.repeat(batch, 1).to(device)
        else:
            out[key] = value.expand(batch, -1).contiguous().to(device)
    return out


# ------------------------------------------------------------------------------------------------- measurements
class FirstHookPartTimer(PartTimer):
    """`pvtc_speed.PartTimer` whose start hook runs before any other pre-hook (vtc's LM pre-hook included), so
    that the language model's time holds all of LVTC's own work."""

    first = True


class SequenceOracle(Oracle):
    """`lvtc_speed.Oracle` slicing cos/sin on the sequence axis (the second last), so that Qwen2-VL's M-RoPE
    `(3, batch, seq, dim)` is sliced like Llama's `(batch, seq, dim)`."""

    def shorten(self, _module, args, kwargs):
        self.full, n = args[0], self.length
        cos, sin = kwargs["position_embeddings"]
        mask = kwargs["attention_mask"]
        if isinstance(mask, torch.Tensor):
            mask = mask[..., :n, :n]
        self.kwargs = {**kwargs, "position_embeddings": (cos[..., :n, :], sin[..., :n, :]), "attention_mask": mask,
                       "position_ids": None}
        return (args[0][:, :n], *args[1:]), self.kwargs


def timed_parts(model, family: Family, inputs) -> dict[str, float]:
    """One prefill (`logits_to_keep=1`, as generate does), split into vision / projector / LM / total (ms)."""
    base = model.model
    timer = FirstHookPartTimer(family.device)
    for name, module in family.parts(model).items():
        timer.watch(name, module)
    pvtc = getattr(base, "vtc_pvtc", None)
    if pvtc is not None:
        timer.watch("pvtc", pvtc)
    timer.watch("lm", base.language_model)
    try:
        sync(family.device)
        start = time.perf_counter()
        model(**inputs, use_cache=True, logits_to_keep=1)
        sync(family.device)
        elapsed = dict(timer.elapsed, total=(time.perf_counter() - start) * 1e3)
    finally:
        timer.remove()
    native = elapsed.get("native projector", 0.0)
    projector = native + elapsed.get("pvtc", 0.0)
    vision = elapsed.get("tower", 0.0) - (native if family.projector_in_tower else 0.0)
    return {"vision": vision, "projector": projector, "lm": elapsed["lm"], "total": elapsed["total"]}


@dataclass
class Row:
    """One configuration of the prefill table."""

    name: str
    config: vtc.VTCConfig | None
    inputs_key: str  # which prompt it runs: "native", "pvtc r4", ...
    oracle: str | None = None  # "lm" (the decoder alone), "layers" (the model, layers K..L-1 sliced), "lm+layers"
    na: str | None = None  # why the configuration does not apply to this model


def make_rows(family: Family, model, ratios: Sequence[int], k: int, restore: int) -> list[Row]:
    def lvtc(ratio):
        return vtc.LVTCConfig(compress_layer=k, restore_layer=restore, ratio=ratio)

    rows = [Row("baseline", None, "native", oracle="lm")]
    rows += [Row(f"pvtc r{r}", vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=r)), f"pvtc r{r}", oracle="lm") for r in ratios]
    rows.append(Row("lvtc r1", vtc.VTCConfig(lvtc=lvtc(1)), "native"))
    rows += [Row(f"lvtc r{r}", vtc.VTCConfig(lvtc=lvtc(r)), "native", oracle="layers") for r in ratios]
    rvtc_config = vtc.VTCConfig(rvtc=family.rvtc_config())
    try:
        family.apply(model, rvtc_config)
        rows.append(Row("rvtc", rvtc_config, "rvtc"))
    except ConfigError as error:  # LLaVA-1.5: one fixed resolution, no tiles
        rows.append(Row("rvtc", None, "native", na=f"vtc.compress raises ConfigError: {error.field} expected "
                                                   f"{error.allowed}"))
    finally:
        vtc.unpatch(model)
    r = ratios[0]
    rows.append(Row(f"pvtc r{r} + lvtc r{r}", vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=r), lvtc=lvtc(r)), f"pvtc r{r}",
                    oracle="lm+layers"))
    return rows


def run_config(model, family: Family, row: Row, inputs) -> dict[str, float]:
    family.apply(model, row.config)  # outside the timed region
    return timed_parts(model, family, inputs)


def run_oracle(model, family: Family, row: Row, inputs, k: int, restore: int, layer_lens) -> dict[str, float]:
    """The oracle of `row`, on the unpatched model: the LM part only (`lm`), or the whole model (`layers`)."""
    vtc.unpatch(model)
    batch, length = inputs["input_ids"].shape
    hooks = SequenceOracle(model, k, restore, layer_lens[k]) if "layers" in row.oracle else None
    try:
        if row.oracle.startswith("lm"):
            return {"lm": oracle_prefill(model, batch, length, family.device)}
        return timed_parts(model, family, inputs)
    finally:
        if hooks is not None:
            hooks.remove()


def layer_lens_of(model, family: Family, row: Row, inputs) -> list[int]:
    """The sequence length each decoder layer processes for `row` (one untimed prefill)."""
    family.apply(model, row.config)
    num_layers = model.config.text_config.num_hidden_layers
    model(**inputs, use_cache=True, logits_to_keep=1)
    if row.config is None:
        return [inputs["input_ids"].shape[1]] * num_layers
    return list(vtc.last_stats(model)["layer_seq_lens"])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def prefill_phase(model, family: Family, rows: list[Row], inputs, k, restore, repeats, guard: Guard, deadline,
                  batch: int) -> dict:
    """Interleaved rounds of every row and its oracle (back to back); medians and per-round ratios."""
    live = [row for row in rows if row.na is None]
    text_config = model.config.text_config
    result: dict[str, Any] = {"batch": batch, "rows": {}, "rounds": 0}
    with torch.inference_mode():
        lens = {row.name: layer_lens_of(model, family, row, inputs[row.inputs_key]) for row in live}
        visual = {row.name: int((inputs[row.inputs_key]["input_ids"][0] == family_image_token(model)).sum())
                  for row in live}
        samples: dict[str, list[dict]] = {row.name: [] for row in live}
        oracles: dict[str, list[dict]] = {row.name: [] for row in live if row.oracle}

        def one_round(order):
            for row in order:
                samples[row.name].append(run_config(model, family, row, inputs[row.inputs_key]))
                if row.oracle:
                    oracles[row.name].append(run_oracle(model, family, row, inputs[row.inputs_key], k, restore,
                                                        lens[row.name]))

        start = time.perf_counter()
        one_round(live)  # warm-up
        warm_s = time.perf_counter() - start
        for values in (*samples.values(), *oracles.values()):
            values.clear()
        rounds = max(0, min(repeats, int(guard.left(deadline) // max(warm_s, 1e-3))))
        if rounds < repeats:
            guard.skip(f"{family.key} prefill batch {batch}: rounds {rounds + 1}..{repeats}",
                       f"a round takes ~{warm_s:.1f} s, {max(0.0, guard.left(deadline)):.0f} s left for the prefill")
        for round_ in range(rounds):
            log(f"{family.key} prefill batch {batch}: round {round_ + 1}/{rounds}")
            shift = round_ % len(live)
            one_round(live[shift:] + live[:shift])
    vtc.unpatch(model)
    result.update(rounds=rounds, warmup_round_s=round(warm_s, 2))
    if rounds == 0:
        result["skipped"] = True
        return result

    base = samples["baseline"]
    flops = {name: prefill_flops(text_config, ls).total for name, ls in lens.items()}
    for row in rows:
        if row.na is not None:
            result["rows"][row.name] = {"na": row.na}
            continue
        runs = samples[row.name]
        entry: dict[str, Any] = {
            "visual": visual[row.name], "layer_lens": lens[row.name],
            **{part: median(r[part] for r in runs) for part in ("vision", "projector", "lm", "total")},
            "speedup": median(b["total"] / r["total"] for b, r in zip(base, runs)),
            "lm_speedup": median(b["lm"] / r["lm"] for b, r in zip(base, runs)),
            "flops_ratio": flops["baseline"] / flops[row.name],
            "raw": runs,
        }
        entry["of_flops"] = entry["lm_speedup"] / entry["flops_ratio"]
        if row.oracle:
            orc = oracles[row.name]
            entry["oracle_lm"] = median(o["lm"] for o in orc)
            entry["oracle_lm_speedup"] = median(b["lm"] / o["lm"] for b, o in zip(base, orc))
            entry["of_oracle"] = median(o["lm"] / r["lm"] for o, r in zip(orc, runs))
            entry["oracle_raw"] = orc
        if row.config is not None and row.config.pvtc is not None:
            extra = entry["projector"] - median(b["projector"] for b in base)
            saved = median(b["lm"] for b in base) - entry["lm"]
            entry["projector_cost"], why_na = projector_cost(extra, saved, entry.get("oracle_lm_speedup"))
            if why_na:
                entry["projector_cost_na"] = why_na
        if row.name == "lvtc r1":
            entry["overhead"] = median(r["lm"] / b["lm"] for b, r in zip(base, runs)) - 1
        result["rows"][row.name] = entry
    return result


def family_image_token(model) -> int:
    config = model.config
    return getattr(config, "image_token_id", None) or config.image_token_index


# ------------------------------------------------------------------------------------------------- flash
class SDPACalls(TorchFunctionMode):
    """Counts the calls of `F.scaled_dot_product_attention`, and those given a mask (flash takes none on a GPU)."""

    def __init__(self):
        super().__init__()
        self.calls, self.masked, self.first_masked = 0, 0, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if mask is not None:
                self.masked += 1
                if self.first_masked is None:
                    self.first_masked = f"{tuple(args[0].shape)} q, mask {tuple(mask.shape)} {mask.dtype}"
        return func(*args, **kwargs)


def _error_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean |a - b| / mean |b|, max |a - b| / max |b|)."""
    diff, ref = (a.float() - b.float()).abs(), b.float().abs()
    return (diff.mean() / ref.mean().clamp_min(1e-12)).item(), (diff.max() / ref.max().clamp_min(1e-12)).item()


def agree_bound(default_vs_math: tuple[float, float], dtype: torch.dtype) -> tuple[float, float]:
    """The (mean, max) relative differences flash may show against the default backend: `NOISE_FACTOR` times the
    default backend's against math (the noise floor of this run), plus the dtype's fixed `AGREE_TOLERANCE`."""
    return tuple(NOISE_FACTOR * floor + tol for floor, tol in zip(default_vs_math, AGREE_TOLERANCE[dtype]))


def backends_agree(flash_vs_default: tuple[float, float], default_vs_math: tuple[float, float],
                   dtype: torch.dtype) -> bool:
    """Flash differs from the default backend no more than the backends differ among themselves: both the mean and
    the max statistic within `agree_bound`."""
    return all(rel <= bound for rel, bound in zip(flash_vs_default, agree_bound(default_vs_math, dtype)))


def compare_steps(a, b, prompt: int, new_tokens: int) -> tuple[int, tuple[float, float]]:
    """Two greedy `generate` outputs (`output_logits`): the number of steps whose logits are comparable (up to the
    first step that chose another token: the logits of step i follow the tokens before it) and the worst relative
    difference of a's step logits to b's over them."""
    same = (a.sequences[:, prompt:] == b.sequences[:, prompt:]).all(0).tolist()
    steps = min(new_tokens, 1 + next((i for i, s in enumerate(same) if not s), len(same)))
    rels = [relative_diff(x, y) for x, y in zip(a.logits[:steps], b.logits[:steps])]
    return steps, (max(r[0] for r in rels), max(r[1] for r in rels))


def final_states(model, inputs) -> torch.Tensor:
    """The decoder's final hidden states at every position (a wrong mask anywhere shows here)."""
    return model.model(**inputs, use_cache=False).last_hidden_state


def flash_check(model, family: Family, row: Row, inputs, repeats: int, new_tokens: int = 4) -> dict:
    """`row`'s prefill with the default SDPA backend, flash forced and math forced: the final hidden states at
    every position compared, the SDPA calls given a mask counted, the prefill (`logits_to_keep=1`) timed with the
    default backend and with flash; then a short greedy `generate` under flash and one under math, whose step logits
    are compared with the default backend's for as long as both chose the same tokens. Flash agrees (`agree`,
    `decode_agree`) when `backends_agree` with the default backend, against the default-vs-math floor of the same
    stage (prefill: the hidden states; decode: the step logits)."""
    family.apply(model, row.config)
    device, dtype, result = family.device, model.dtype, {}
    with torch.inference_mode():
        reference = final_states(model, inputs)
        with sdpa_kernel(SDPBackend.MATH):
            math_states = final_states(model, inputs)
        counter = SDPACalls()
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), counter:
                flash = final_states(model, inputs)
        except RuntimeError as error:
            result["prefill_error"] = _error_line(error)
            flash = None
        result.update(sdpa_calls=counter.calls, masked_calls=counter.masked, first_masked=counter.first_masked,
                      default_vs_math=relative_diff(reference, math_states))
        if flash is not None:
            result.update(flash_vs_default=relative_diff(flash, reference), flash_vs_math=relative_diff(flash, math_states))
            result["agree_bound"] = agree_bound(result["default_vs_math"], dtype)
            result["agree"] = backends_agree(result["flash_vs_default"], result["default_vs_math"], dtype)
            times = {"default": [], "flash": []}
            for _ in range(repeats + 1):  # the first of each is a warm-up
                for backend in ("default", "flash"):
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if backend == "flash" else nullcontext():
                        sync(device)
                        start = time.perf_counter()
                        model(**inputs, use_cache=True, logits_to_keep=1)
                        sync(device)
                        times[backend].append((time.perf_counter() - start) * 1e3)
            result["default_ms"] = median(times["default"][1:])
            result["flash_ms"] = median(times["flash"][1:])
        del reference, math_states, flash
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                      output_logits=True, return_dict_in_generate=True)
        default_out = model.generate(**inputs, **kwargs)
        with sdpa_kernel(SDPBackend.MATH):
            math_out = model.generate(**inputs, **kwargs)
        prompt = inputs["input_ids"].shape[1]
        math_steps, floor = compare_steps(math_out, default_out, prompt, new_tokens)
        result.update(decode_math_steps_compared=math_steps, decode_default_vs_math=floor)
        del math_out
        counter = SDPACalls()
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), counter:
                flash_out = model.generate(**inputs, **kwargs)
        except RuntimeError as error:
            result["decode_error"] = _error_line(error)
            flash_out = None
        result.update(decode_sdpa_calls=counter.calls, decode_masked_calls=counter.masked)
        if flash_out is not None:
            steps, worst = compare_steps(flash_out, default_out, prompt, new_tokens)
            result.update(decode_steps_compared=steps, decode_rel=worst, decode_agree_bound=agree_bound(floor, dtype),
                          decode_agree=backends_agree(worst, floor, dtype))
    vtc.unpatch(model)
    return result


def projector_cost(extra_ms: float, saved_ms: float, oracle_lm_speedup: float | None) -> tuple[float | None, str]:
    """PVTC's projector time beyond the native projector's over the LM time it saves, or None and why not.

    Where the oracle itself gains under `HOST_BOUND_ORACLE_SPEEDUP` (a 7B decoder at batch 1 on a GPU), the LM's time
    is the host's kernel launches: the shorter sequence saves nothing to weigh the projector against, and its cost
    shows in the whole prefill's speedup instead."""
    if oracle_lm_speedup is not None and oracle_lm_speedup < HOST_BOUND_ORACLE_SPEEDUP:
        return None, f"n/a (LM bound by the host: the oracle gains {oracle_lm_speedup:.2f}x)"
    if saved_ms <= 0:
        return None, "n/a (no LM time saved)"
    return extra_ms / saved_ms, ""


def flash_phase(model, family: Family, rows: list[Row], inputs, repeats, guard: Guard, deadline, batch) -> dict:
    result: dict[str, Any] = {"batch": batch, "rows": {}}
    for row in rows:
        if row.na is not None:
            result["rows"][row.name] = {"na": row.na}
            continue
        if guard.left(deadline) <= 0:
            result["rows"][row.name] = {"skipped": guard.skip(f"{family.key} flash {row.name}", "no time left")}
            continue
        log(f"{family.key} flash batch {batch}: {row.name}")
        result["rows"][row.name] = flash_check(model, family, row, inputs[row.inputs_key], repeats)
    return result


# ------------------------------------------------------------------------------------------------- decode
def generate_once(model, family: Family, row: Row, inputs, new_tokens: int) -> dict[str, float]:
    family.apply(model, row.config)  # outside the timed region
    result = timed_generate(model, inputs, new_tokens, family.device)
    if family.device.type == "cuda":
        result["peak_abs"] = torch.cuda.max_memory_allocated(family.device) / 2**20
    return result


def decode_phase(model, family: Family, rows: list[Row], inputs, new_tokens, repeats, guard: Guard, deadline,
                 batch: int) -> dict:
    """Generations of `new_tokens` greedy tokens: each configuration's first generation, then interleaved rounds.

    The first generation of each configuration is timed apart ("first tok/s") and only the rounds after it give
    "decode tok/s": a decode step at a KV length the process has not met before can cost several later steps' time
    (on the H200 at 7B and batch 32: 60-117 against 22-29 ms), so a configuration that happened to meet its lengths
    first would be charged for them. A round runs only if the time left covers it: the first round's estimate is the
    first generations' time, a later round's the round before it; where a whole round does not fit, as many of its
    generations as fit run, the baseline first. Rows whose first generation does not fit are skipped.
    """
    rows = [row for row in rows if row.name != "lvtc r1"]
    live = [row for row in rows if row.na is None]
    result: dict[str, Any] = {"batch": batch, "rows": {}, "rounds": 0}
    first, kv, lens = {}, {}, {}
    with torch.inference_mode():
        for row in live:  # the KV cache one prefill leaves, then the first generation
            if guard.left(deadline) <= 0:
                break
            family.apply(model, row.config)
            out = model(**inputs[row.inputs_key], use_cache=True, logits_to_keep=1)
            kv[row.name] = kv_cache_megabytes(out.past_key_values)
            lens[row.name] = (list(vtc.last_stats(model)["layer_seq_lens"]) if row.config is not None else
                              [inputs[row.inputs_key]["input_ids"].shape[1]] * model.config.text_config.num_hidden_layers)
            del out
            start = time.perf_counter()
            first[row.name] = generate_once(model, family, row, inputs[row.inputs_key], new_tokens)
            first[row.name]["seconds"] = time.perf_counter() - start
        for row in live:
            if row.name not in first:
                result["rows"][row.name] = {"skipped": guard.skip(f"{family.key} decode batch {batch} {row.name}",
                                                                  "no time left for its first generation")}
        live = [row for row in live if row.name in first]
        runs: dict[str, list[dict]] = {row.name: [] for row in live}
        seconds = {row.name: first[row.name]["seconds"] for row in live}  # then each row's latest generation
        for r in range(repeats if live else 0):
            order, left = live[r % len(live):] + live[:r % len(live)], guard.left(deadline)
            last_round = left < sum(seconds[row.name] for row in order)
            if last_round:  # not a whole round: as many generations as fit, in the table's order (the baseline first)
                order, need = [], 0.0
                for row in live:
                    if need + seconds[row.name] <= left:
                        order.append(row)
                        need += seconds[row.name]
                missing = ", ".join(row.name for row in live if row not in order)
                what = f"round {r + 1} of {missing}" if order else f"round {r + 1}"
                what += f", rounds {r + 2}..{repeats}" if r + 1 < repeats else ""
                guard.skip(f"{family.key} decode batch {batch}: {what}", f"{max(0.0, left):.0f} s left")
            if not order:
                break
            log(f"{family.key} decode batch {batch}: round {r + 1}/{repeats} ({len(order)} generations of "
                f"{new_tokens} tokens, ~{sum(seconds[row.name] for row in order):.1f} s)")
            for row in order:
                start = time.perf_counter()
                runs[row.name].append(generate_once(model, family, row, inputs[row.inputs_key], new_tokens))
                seconds[row.name] = time.perf_counter() - start
            result["rounds"] = r + 1
            if last_round:
                break
    vtc.unpatch(model)
    base = runs.get("baseline") or []
    for row in rows:
        if row.na is not None:
            result["rows"][row.name] = {"na": row.na}
            continue
        if row.name not in first:
            result["rows"].setdefault(row.name, {"skipped": "time guard"})
            continue
        r, one = runs[row.name], first[row.name]
        entry = {"visual": int((inputs[row.inputs_key]["input_ids"][0] == family_image_token(model)).sum()),
                 "layer_lens": lens[row.name], "kv_mib": kv[row.name],
                 "kv_ratio": kv[row.name] / kv["baseline"] if "baseline" in kv else None,
                 "first_decode": one.get("decode"), "first": one, "raw": r}
        if r:
            entry.update(ttft=median(x["ttft"] for x in r), decode=median(x.get("decode") for x in r))
        if base and r:
            entry["ttft_speedup"] = median(b["ttft"] / x["ttft"] for b, x in zip(base, r))
            entry["decode_speedup"] = median(x["decode"] / b["decode"] for b, x in zip(base, r))
        if "peak" in one:
            entry["peak_mib"] = median(x["peak"] for x in r or [one])
            entry["peak_abs_mib"] = median(x["peak_abs"] for x in r or [one])
        result["rows"][row.name] = entry
    return result


# ------------------------------------------------------------------------------------------------- plan
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


# ------------------------------------------------------------------------------------------------- tables
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with aligned columns (as `_common.print_table` prints it)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def _f(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def spans(lens: list[int]) -> str:
    if len(set(lens)) == 1:
        return str(lens[0])
    short = [n for n in lens if n != lens[0]]
    return f"{lens[0]} / {short[0]} x{len(short)}"


PREFILL_HEADER = ("config", "visual", "layer lengths", "vision", "projector", "LM", "total", "speedup", "LM speedup",
                  "oracle LM speedup", "of oracle", "LM FLOPs ratio", "of FLOPs", "proj cost / LM saved")


def _missing(name: str, e: dict, width: int, notes: list[str]) -> list[str] | None:
    """The row of a configuration that did not run (`n/a`, or skipped), its reason as a note under the table."""
    if "na" in e:
        notes.append(f"{name}: n/a, {e['na']}")
        return [name, "n/a (below)", *[""] * (width - 2)]
    if "skipped" in e:
        return [name, "skipped (time guard)", *[""] * (width - 2)]
    return None


def _with_notes(table: str, notes: list[str]) -> str:
    return "\n".join([table, *([""] + [f"* {n}" for n in notes] if notes else [])])


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def prefill_table(phase: dict) -> str:
    rows, notes = [], []
    for name, e in phase["rows"].items():
        missing = _missing(name, e, len(PREFILL_HEADER), notes)
        if missing:
            rows.append(missing)
            continue
        cost = "-" if "projector_cost" not in e else _f(e["projector_cost"], ".1%", e.get("projector_cost_na", "n/a"))
        rows.append([
            name, e["visual"], spans(e["layer_lens"]), _f(e["vision"], ".1f"), _f(e["projector"], ".2f"),
            _f(e["lm"], ".1f"), _f(e["total"], ".1f"), _x(e["speedup"]), _x(e["lm_speedup"]),
            _x(e.get("oracle_lm_speedup")), _f(e.get("of_oracle"), ".1%"), _x(e["flops_ratio"]),
            _f(e["of_flops"], ".1%"), cost,
        ])
    if "lvtc r1" in phase["rows"] and "overhead" in phase["rows"]["lvtc r1"]:
        notes.append(f"LVTC ratio-1 overhead (LM time, median of per-round ratios): "
                     f"{phase['rows']['lvtc r1']['overhead']:+.1%}")
    return _with_notes(markdown_table(PREFILL_HEADER, rows), notes)


def targets(results: dict, ratios: Sequence[int]) -> list[list[str]]:
    out = []
    for key, fam in results["families"].items():
        for batch, phase in fam.get("prefill", {}).items():
            if phase.get("skipped"):
                out.append([key, batch, "all", "-", "skipped (time guard)"])
                continue
            rows = phase["rows"]

            def check(target, value, ok, fmt=".1%", key=key, batch=batch):
                out.append([key, batch, target, _f(value, fmt, "n/a"),
                            "n/a" if value is None else ("met" if ok(value) else "NOT met")])

            for r in ratios:
                for kind in ("pvtc", "lvtc"):
                    e = rows.get(f"{kind} r{r}", {})
                    check(f"{kind.upper()} r{r} >= {OF_ORACLE_TARGET:.0%} of oracle", e.get("of_oracle"),
                          lambda v: v >= OF_ORACLE_TARGET)
            check(f"LVTC r1 overhead <= {LVTC_R1_OVERHEAD_TARGET:.0%}", rows.get("lvtc r1", {}).get("overhead"),
                  lambda v: v <= LVTC_R1_OVERHEAD_TARGET, "+.1%")
            for r in ratios:
                check(f"PVTC r{r} projector cost <= {PROJECTOR_COST_TARGET:.0%} of LM saved",
                      rows.get(f"pvtc r{r}", {}).get("projector_cost"), lambda v: v <= PROJECTOR_COST_TARGET)
    return out


FLASH_HEADER = ("config", "SDPA calls", "with a mask", "default ms", "flash ms", "flash speedup",
                "flash vs default", "flash vs math", "default vs math", "agree", "decode under flash")


def _rel(rel) -> str:
    return "-" if rel is None else f"{rel[0]:.1e} / {rel[1]:.1e}"


def flash_table(phase: dict) -> str:
    rows, notes = [], []
    for name, e in phase["rows"].items():
        missing = _missing(name, e, len(FLASH_HEADER), notes)
        if missing:
            rows.append(missing)
            continue
        masked = str(e["masked_calls"])
        if e["first_masked"]:
            notes.append(f"{name}: first masked SDPA call: {e['first_masked']}")
        if "prefill_error" in e:
            rows.append([name, e["sdpa_calls"], masked, "", "", "", "", "", _rel(e["default_vs_math"]),
                         "flash refused (below)", ""])
            notes.append(f"{name}: {e['prefill_error']}")
            continue
        calls = f"{e['decode_masked_calls']} of {e['decode_sdpa_calls']} calls masked"
        if "decode_error" in e:
            decode = f"refused ({calls}; below)"
            notes.append(f"{name}, decode: {e['decode_error']}")
        else:
            decode = (f"{'agrees' if e['decode_agree'] else 'DIFFERS'} ({_rel(e['decode_rel'])} over "
                      f"{e['decode_steps_compared']} steps; default vs math {_rel(e['decode_default_vs_math'])} over "
                      f"{e['decode_math_steps_compared']}; {calls})")
        rows.append([name, e["sdpa_calls"], masked, _f(e["default_ms"], ".1f"), _f(e["flash_ms"], ".1f"),
                     _x(e["default_ms"] / e["flash_ms"]), _rel(e["flash_vs_default"]), _rel(e["flash_vs_math"]),
                     _rel(e["default_vs_math"]), "yes" if e["agree"] else "NO", decode])
    table = markdown_table(FLASH_HEADER, rows)
    legend = ("Differences: mean |a - b| / mean |b| and max |a - b| / max |b| of the final hidden states at every "
              "position (decode: of each step's logits, over the steps whose tokens agreed); agree: flash vs default "
              f"<= {NOISE_FACTOR:g} x default vs math + a fixed tolerance ("
              + ", ".join(f"{str(k).replace('torch.', '')} {m:.0e} / {x:.0e}" for k, (m, x) in AGREE_TOLERANCE.items())
              + "), for the mean and the max alike: flash may differ from the default backend no more than the "
              "backends differ among themselves in this run (the noise floor; random-weight models in low precision "
              "amplify rounding over many layers). Decode under flash is judged the same way against default vs math "
              "of a greedy generate under the math backend, its step logits compared with the default backend's.")
    return _with_notes(table, [legend, *notes])


def decode_table(phase: dict, cuda: bool) -> str:
    header = ["config", "visual", "layer lengths", "TTFT ms", "TTFT speedup", "decode tok/s", "decode speedup",
              "first tok/s", "KV MiB", "KV ratio"]
    header += ["peak MiB", "peak above weights MiB", "peak ratio"] if cuda else []
    rows, notes, base = [], [], phase["rows"].get("baseline", {})
    for name, e in phase["rows"].items():
        missing = _missing(name, e, len(header), notes)
        if missing:
            rows.append(missing)
            continue
        row = [name, e["visual"], spans(e["layer_lens"]), _f(e.get("ttft"), ".1f"), _x(e.get("ttft_speedup")),
               _f(e.get("decode"), ".1f"), _x(e.get("decode_speedup")), _f(e["first_decode"], ".1f"),
               _f(e["kv_mib"], ".1f"), _f(e["kv_ratio"], ".3f")]
        if cuda:
            ratio = e["peak_mib"] / base["peak_mib"] if base.get("peak_mib") else None
            row += [_f(e["peak_abs_mib"], ".0f"), _f(e["peak_mib"], ".0f"), _f(ratio, ".3f")]
        rows.append(row)
    return _with_notes(markdown_table(header, rows), notes)


def _params(count: float) -> str:
    return f"{count / 1e9:.2f} B" if count >= 1e8 else f"{count / 1e6:.2f} M"


def render(results: dict) -> str:
    meta = results["meta"]
    cuda = meta["device"].startswith("cuda")
    out = [f"# Real sizes: {'tiny shapes (a check of the script, not a measurement)' if meta['tiny'] else '7B shapes'}",
           "",
           f"{meta['device_name']}, {meta['dtype']}, {meta['attn']}, torch {meta['torch']}, transformers "
           f"{meta['transformers']}, {meta['threads']} CPU threads; batches {meta['batches']}; prefill: median of "
           f"{meta['repeats']} interleaved rounds after a warm-up round (ms); decode: {meta['new_tokens']} new "
           f"tokens, {meta['decode_repeats']} round(s); LVTC K={meta['compress_layer']}, L={meta['restore_layer']}; "
           f"time budget {meta['budget_s']:.0f} s, used {meta.get('elapsed_s', 0):.0f} s"
           f"{'' if meta.get('finished') else ' (run still going or cut short)'}.",
           ""]
    for key, fam in results["families"].items():
        weights = f", {fam['weights_mib']:.0f} MiB on the device" if "weights_mib" in fam else ""
        out += [f"## {fam['title']}", "", f"{_params(fam.get('params', 0))} parameters{weights}; built in "
                f"{fam.get('build_s', 0):.1f} s; LVTC K={fam.get('k')}, L={fam.get('restore')} of "
                f"{fam.get('num_layers')} layers.", ""]
        for batch, phase in fam.get("prefill", {}).items():
            out += [f"### {key}: prefill, batch {batch} ({phase['rounds']} rounds; ms)", ""]
            out += ["skipped by the time guard", ""] if phase.get("skipped") else [prefill_table(phase), ""]
        if "flash" in fam:
            out += [f"### {key}: flash SDPA forced, batch {fam['flash']['batch']}", "", flash_table(fam["flash"]), ""]
        for batch, phase in fam.get("decode", {}).items():
            out += [f"### {key}: generation, batch {batch} ({phase['rounds']} round(s))", "",
                    decode_table(phase, cuda), ""]
    out += ["## Targets", "", markdown_table(("model", "batch", "target", "value", "met"),
                                             targets(results, meta["ratios"])), ""]
    out += ["## Phase times (s)", "", markdown_table(
        ("model", "phase", "planned", "took"),
        [[p["family"], p["phase"], _f(p.get("planned"), ".1f"), _f(p.get("took"), ".1f")]
         for p in results["phases"]]), ""]
    out += ["## Skipped", ""] + ([f"* {s}" for s in results["skipped"]] or ["nothing"]) + [""]
    return "\n".join(out)


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def write(results: dict, out: Path) -> None:
    results["meta"]["elapsed_s"] = time.perf_counter() - _START
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_size.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "real_size.md").write_text(render(results))


# ------------------------------------------------------------------------------------------------- main
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


FAMILY_CLASSES: dict[str, Callable[..., Family]] = {"llava": Llava, "qwen2_vl": Qwen2VL}


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
        log(f"{family.key}: built in {build_s:.1f} s ({_params(fam['params'])} parameters)")
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
