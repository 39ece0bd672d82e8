"""Batches for training: `vtc.tasks.Sample`s to model inputs, with labels on the answer tokens only.

    collator = VTCCollator(processor)                          # the processor passed to vtc.compress
    batch = collator(vtc.tasks.synthetic("grid-readout", "train", 8))
    model(**batch).loss                                       # the LM loss on the answers

The text of a sample is its prompt (`vtc.tasks.build_prompt`, the same as `vtc.evaluate` generates from), then
`answer_prefix`, the answer and the end-of-sequence token; only the answer and the end-of-sequence token are
labelled. With a `teacher_processor` (an unpatched copy of the processor) every batch also carries
`teacher_inputs`: the same samples as the uncompressed model sees them, for distillation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..tasks import Sample, build_prompt

__all__ = ["IGNORE_INDEX", "VTCCollator"]

#: The label of a position that carries no loss (what transformers' losses ignore).
IGNORE_INDEX = -100

_PADDING_SIDES = ("left", "right")


def _as_sample(item: Any) -> Sample:
    if isinstance(item, Sample):
        return item
    raise DataError(f"the collator takes vtc.tasks.Sample items, got {type(item).__name__}; load a dataset with "
                    "vtc.tasks.load_jsonl or vtc.tasks.load_from_disk, or build Samples from its rows")


class VTCCollator:
    """Turn a list of samples into one batch of model inputs, labelled on the answer tokens.

    Args:
        processor: the model's processor; after `vtc.compress`, the patched one (it writes the compressed number
            of image placeholders).
        padding_side: `"right"` (training's usual) or `"left"`; set per call, never on the shared tokenizer.
        answer_prefix: the text between the prompt and the answer.
        teacher_processor: an unpatched processor (loaded again, or `copy.deepcopy`'d before `compress`); when
            given, every batch carries `teacher_inputs`, the uncompressed model's inputs for the same samples.
        max_length: refuse (`DataError`) a batch whose longest sequence is longer; `None`: no limit.

    Samples may hold several images, or none (text only); a batch may mix both.
    """

    def __init__(self, processor: Any, *, padding_side: str = "right", answer_prefix: str = " ",
                 teacher_processor: Any = None, max_length: int | None = None):
        if padding_side not in _PADDING_SIDES:
            raise ConfigError("padding_side", padding_side, "'left' or 'right'")
        if getattr(processor, "tokenizer", None) is None:
            raise ConfigError("processor", type(processor).__name__, "a multimodal processor with a tokenizer")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 1):
            raise ConfigError("max_length", max_length, "a positive integer or None")
        self.processor = processor
        self.teacher_processor = teacher_processor
        self.padding_side = padding_side
        self.answer_prefix = answer_prefix
        self.max_length = max_length

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        samples = [_as_sample(item) for item in items]
        if not samples:
            raise DataError("the collator was given an empty batch")
        batch = self.encode(self.processor, samples)
        if self.teacher_processor is not None:
            batch["teacher_inputs"] = self.encode(self.teacher_processor, samples)
        return batch

    # ------------------------------------------------------------------------------------------------- encoding
    def encode(self, processor: Any, samples: Sequence[Sample]) -> dict[str, Any]:
        """The inputs of `processor` for `samples`, with `labels` on each answer and its end-of-sequence token."""
        tokenizer = processor.tokenizer
        prompts = [build_prompt(processor, sample) for sample in samples]
        suffixes = [f"{self.answer_prefix}{sample.answer}{tokenizer.eos_token or ''}" for sample in samples]
        inputs = self._process(processor, samples, [p + s for p, s in zip(prompts, suffixes)])
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if self.max_length is not None and ids.shape[1] > self.max_length:
            raise DataError(f"a batch is {ids.shape[1]} tokens long, over max_length={self.max_length}; shorten "
                            "the samples, give fewer images per sample, or raise max_length")
        answer_lengths = self._answer_lengths(processor, samples, prompts, suffixes, ids, mask)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, length in enumerate(answer_lengths):
            end = self._end(mask[row])
            labels[row, end - length:end] = ids[row, end - length:end]
        return {**inputs, "labels": labels}

    def _process(self, processor: Any, samples: Sequence[Sample], texts: list[str]) -> dict[str, Any]:
        images = [list(sample.images) for sample in samples]
        return dict(processor(
            images=images if any(images) else None,  # some processors refuse a batch of empty image lists
            text=texts, return_tensors="pt", padding=True, padding_side=self.padding_side,
        ))

    def _end(self, mask_row: torch.Tensor) -> int:
        """One past the last real token of a row."""
        return mask_row.shape[0] if self.padding_side == "left" else int(mask_row.sum())

    def _answer_lengths(self, processor, samples, prompts, suffixes, ids, mask) -> list[int]:
        """How many tokens each row's answer (with its end-of-sequence token) takes at the end of the row.

        Fast path: the answer's own tokens, checked against the row's tail. Where a tokenizer merges across the
        prompt/answer boundary the check fails, and the count comes from the prompt processed alone (exact, but a
        second pass of the processor for the batch).
        """
        tokenizer = processor.tokenizer
        lengths = []
        for row, suffix in enumerate(suffixes):
            own = tokenizer(suffix, add_special_tokens=False)["input_ids"]
            end = self._end(mask[row])
            if 0 < len(own) <= end and ids[row, end - len(own):end].tolist() == own:
                lengths.append(len(own))
            else:
                break
        else:
            return lengths
        prompt_inputs = self._process(processor, samples, prompts)
        prompt_lengths = prompt_inputs["attention_mask"].sum(dim=1).tolist()
        return [int(full) - int(prompt) for full, prompt in zip(mask.sum(dim=1).tolist(), prompt_lengths)]
