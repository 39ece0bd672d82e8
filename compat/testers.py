"""Model testers for transformers' ``ModelTesterMixin``, one per family, built from vtc.testing's tiny zoo.

Upstream writes a tester per model test file; the source distribution ships none of them, so these are our own: the
config is the tiny recipe's (the sizes vtc's own tests run on) and the inputs are what the family's real processor
makes of two images, so placeholders, grids and masks are the family's real ones.
"""

from __future__ import annotations

import copy
from functools import cache

from transformers import PreTrainedConfig

from vtc.testing import build_tiny_model, build_tiny_processor, default_image_sizes, tiny_batch

__all__ = ["FamilyModelTester"]

# Both samples get the same image size and prompts of the same length, as upstream's testers do:
# `test_batching_equivalence` cuts the batch in half along the first axis, which for the Qwen families is the
# flattened patches of all images, so each half must be one image's patches and one unpadded row.
_PROMPTS = ("w3 w7 {image} describe the image .", "w5 w9 {image} what is the picture")
# LLaVA-NeXT and OneVision: a 24x20 image takes the 32x64 pinpoint (2 crops and the base), a short sequence.
_IMAGE_SIZES = {"llava_next": (24, 20), "llava_onevision": (24, 20)}


@cache
def _config_and_inputs(family: str) -> tuple[PreTrainedConfig, dict]:
    config = build_tiny_model(family).config
    size = _IMAGE_SIZES.get(family, default_image_sizes(family)[0])
    inputs = tiny_batch(family, build_tiny_processor(family), batch=2, image_sizes=[size, size], prompt=_PROMPTS)
    # A fresh config, as upstream's `get_config` returns: none of the attention implementation the model was built with.
    return type(config).from_dict(config.to_dict()), dict(inputs)


class FamilyModelTester:
    """What ``ModelTesterMixin`` reads from ``self.model_tester``, for one tiny family."""

    is_training = True

    def __init__(self, parent, family: str):
        self.parent = parent
        self.family = family
        config, inputs = _config_and_inputs(family)
        text = config.get_text_config()
        self.batch_size, self.seq_length = inputs["input_ids"].shape
        self.hidden_size = text.hidden_size
        self.num_hidden_layers = text.num_hidden_layers
        self.num_attention_heads = text.num_attention_heads
        self.vocab_size = text.vocab_size
        # Where the mixin reads the vision tower's depth (`get_image_features` hidden states and attentions).
        vision = config.vision_config
        self.vision_config = {"num_hidden_layers": getattr(vision, "num_hidden_layers", None) or vision.depth}
        self.video_config = self.vision_config  # videos run through the same tower

    def get_config(self) -> PreTrainedConfig:
        return copy.deepcopy(_config_and_inputs(self.family)[0])

    def prepare_config_and_inputs_for_common(self) -> tuple[PreTrainedConfig, dict]:
        config, inputs = _config_and_inputs(self.family)
        return copy.deepcopy(config), {name: value.clone() for name, value in inputs.items()}
