"""The prompt of a sample, built the same way for evaluation and training."""

from __future__ import annotations

from typing import Any

from .sample import Sample

__all__ = ["build_prompt"]


def build_prompt(processor: Any, sample: Sample) -> str:
    """The text prompt for `sample`: the processor's chat template where it has one (a user turn with the images,
    then the question, and the generation prompt), else one `processor.image_token` per image, then the question.

    The processor expands each image token into the image's placeholders; the answer follows the prompt directly.
    """
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"} for _ in sample.images] + [{"type": "text", "text": sample.question}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = "".join(processor.image_token for _ in sample.images)
    return f"{images}{sample.question}" if images else sample.question
