"""A vtc adapter for a family vtc does not ship: Idefics3 (SigLIP tiles, a pixel-shuffle connector, a Llama decoder).

The adapter locates the model's parts and says how many tokens each image becomes; vtc's core does the rest. It is
registered with `vtc.register_adapter`, then checked the way a user would check a new family on a tiny random
instance: the adapter reproduces the model's own visual tokens, PVTC and LVTC compress, `generate` runs, and
`vtc.unpatch` gives back the logits of the untouched model.

    python examples/custom_adapter.py

`docs/adapters.md` walks through it hook by hook.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

import vtc
from vtc.adapters.base import Adapter, VisionFeatures
from vtc.patch import PatchLedger
from vtc.registry import get_adapter
from vtc.testing import tiny_images, word_level_tokenizer


@vtc.register_adapter("idefics3")
class Idefics3Adapter(Adapter):
    """Idefics3 (transformers 5.23, `models/idefics3/modeling_idefics3.py`). Seams: `Idefics3Model.vision_model`,
    `.connector` (pixel shuffle by `config.scale_factor`, then a linear layer), `.text_model`; the processor writes
    `processor.image_seq_len` placeholders per tile."""

    model_class_names = ("Idefics3ForConditionalGeneration",)

    @property
    def language_model(self) -> torch.nn.Module:
        return self.base_model.text_model  # the base class looks for `.language_model`

    @property
    def projector(self) -> torch.nn.Module:
        return self.base_model.connector

    @property
    def projector_window(self) -> tuple[int, int]:
        scale = self.model.config.scale_factor  # the pixel shuffle turns scale x scale patches into one token
        return scale, scale

    @property
    def vision_has_cls(self) -> bool:
        return False  # SigLIP: PVTC's global query is the mean of the patches

    @property
    def vision_feature_dim(self) -> int:
        return self.model.config.vision_config.hidden_size

    @property
    def patch_side(self) -> int:
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    @property
    def reference_token_grid(self) -> tuple[int, int]:
        side = self.patch_side // self.model.config.scale_factor
        return side, side

    def vision_features(self, pixel_values: torch.Tensor, **image_inputs: Any) -> VisionFeatures:
        # (samples, tiles, 3, s, s): every tile is a full s x s square (so `pixel_attention_mask` is all ones), and
        # samples with fewer tiles are padded with all-zero tiles, which the model drops as well
        tiles = pixel_values.flatten(0, 1)
        tiles = tiles[tiles.flatten(1).ne(0).any(1)]
        hidden = self.base_model.vision_model(pixel_values=tiles.to(self.base_model.dtype)).last_hidden_state
        patches = hidden.unflatten(1, (self.patch_side, self.patch_side))
        return VisionFeatures(patches=list(patches), cls=None, items_per_image=[1] * len(tiles))

    def apply_projector(self, projector: torch.nn.Module, grid: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = grid.shape  # the connector takes a square grid as a sequence of patches
        scale = self.model.config.scale_factor
        return projector(grid.flatten(1, 2)).unflatten(1, (h // scale, w // scale))

    def patch_processor_for_pvtc(self, processor: Any, ledger: PatchLedger) -> None:
        h, w = self.token_grid_under_pvtc(self.reference_token_grid)
        ledger.set_attr(processor, "image_seq_len", h * w)  # through the ledger: vtc.unpatch restores it


# ------------------------------------------------------------------------------------ a tiny random instance
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>", "<fake_token_around_image>", "<global-img>",
            "<end_of_utterance>", *(f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2)))


def tiny_idefics3() -> tuple[transformers.PreTrainedModel, transformers.ProcessorMixin]:
    """32 px tiles of 8x8 patches, 4x4 = 16 tokens each; a 64 px image is 2x2 tiles plus a global tile."""
    config = transformers.Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=4),
        text_config=dict(model_type="llama", vocab_size=96, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        scale_factor=2, image_token_id=SPECIALS.index("<image>"))
    torch.manual_seed(0)
    model = transformers.Idefics3ForConditionalGeneration(config).eval()
    tokenizer = word_level_tokenizer(SPECIALS, [f"w{i}" for i in range(60)] + "describe the image .".split(), {})
    images = transformers.Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    return model, transformers.Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=16)


def batch(processor) -> dict:
    images = tiny_images([(64, 64), (40, 64)])
    prompts = ["w1 <image> describe the image .", "w2 w3 <image> describe ."]
    return processor(images=[[images[0]], [images[1]]], text=prompts, padding=True, return_tensors="pt")


def main() -> None:
    model, processor = tiny_idefics3()
    image_token = model.config.image_token_id
    inputs = batch(processor)
    with torch.no_grad():
        reference = model(**inputs).logits

        # 1. The adapter reproduces the model's own visual tokens.
        adapter = get_adapter(model)
        ours = torch.cat(adapter.project(adapter.vision_features(inputs["pixel_values"])))
        native = torch.cat(model.model.get_image_features(inputs["pixel_values"]).pooler_output)
        torch.testing.assert_close(ours, native)
        print(f"adapter: {type(adapter).__name__} reproduces the model's {len(native)} visual tokens")

        # 2. PVTC at ratio 1 (warm start) is the identity; at ratio 4 each tile keeps 2x2 of its 4x4 tokens.
        vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=1, num_heads=4)), processor=processor)
        torch.testing.assert_close(model(**batch(processor)).logits, reference)
        print("pvtc ratio=1: logits equal the unpatched model's")
        config = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4, num_heads=4),
                               lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=-1, ratio=4))
        vtc.compress(model, config, processor=processor)
        compressed = batch(processor)
        placeholders = (compressed["input_ids"] == image_token).sum(1).tolist()
        assert placeholders == [5 * 4, 5 * 4], placeholders  # 5 tiles per image, 4 tokens per tile
        model(**compressed)
        stats = vtc.last_stats(model)
        assert stats["visual_tokens"] == placeholders
        print(f"pvtc ratio=4 + lvtc ratio=4: visual tokens per sample {placeholders} "
              f"(native {(inputs['input_ids'] == image_token).sum(1).tolist()}); "
              f"decoder layer lengths {stats['layer_seq_lens']}")

        # 3. generate runs on the compressed model, with its KV cache.
        generated = model.generate(**compressed, max_new_tokens=4, do_sample=False)
        print(f"generate: {tuple(generated.shape)}")

        # 4. unpatch restores the model and the processor.
        vtc.unpatch(model)
        torch.testing.assert_close(model(**batch(processor)).logits, reference, rtol=0, atol=0)
        print(f"unpatch: logits restored exactly, processor.image_seq_len={processor.image_seq_len}")


if __name__ == "__main__":
    main()
