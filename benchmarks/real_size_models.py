"""The models of `real_size.py`: the LLaVA-1.5-7B- and Qwen2-VL-7B-shaped families (or their `--tiny` shapes),
built with random weights, each prompt's inputs per configuration, and the configurations every phase runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import transformers
from real_size_run import error_line, log
from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2VLConfig, Qwen2VLForConditionalGeneration

import vtc
from vtc.errors import ConfigError
from vtc.ops import pooled_grid
from vtc.testing import processor_without_video, tiny_images, tiny_tokenizer

TEXT_TOKENS = 64
FAMILIES = ("llava", "qwen2_vl")


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
                log(f"vtc.compress under torch.device({self.device}) failed ({error_line(error)}); compressing "
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


FAMILY_CLASSES: dict[str, Callable[..., Family]] = {"llava": Llava, "qwen2_vl": Qwen2VL}


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


def family_image_token(model) -> int:
    config = model.config
    return getattr(config, "image_token_id", None) or config.image_token_index


@dataclass
class Row:
    """One configuration: a row of every phase's table."""

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
