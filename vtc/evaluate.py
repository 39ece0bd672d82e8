"""Accuracy and cost of a model on samples with known answers, compressed or not.

    samples = vtc.tasks.synthetic("majority-colour", "test", 256)
    result = vtc.evaluate(model, processor, samples)
    result.accuracy, result.visual_tokens, result.prefill_flops
    result.save("out/", samples)        # eval.json and eval.jsonl, as `vtc eval` writes them

Generation is batched, greedy and left-padded. The costs are means over samples and do not depend on `batch_size`:
a sample's visual tokens are its own placeholders, and its prefill FLOPs count the tokens each decoder layer
processed for it, without the padding that batching adds.

Its pieces serve callers that batch requests of their own (the lmms-eval model, `vtc.lmms`): `model_inputs` (a
batch's processor inputs), `generate_answers` (one left-padded `generate` call) and `prefill_costs` (each sample's
visual tokens and prefill FLOPs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .api import get_config, is_compressed, last_stats
from .errors import ConfigError
from .flops import decoder_dims, prefill_flops, pruning_flops
from .ops import compressed_lengths
from .registry import get_adapter
from .tasks import Sample, build_prompt, score

__all__ = ["EvalResult", "GeneratedBatch", "PrefillCost", "SampleResult", "evaluate", "generate_answers",
           "model_inputs", "prefill_costs"]

#: Tokens `generate` may write beyond the longest reference answer when `max_new_tokens=None`: room for an
#: end-of-sequence token and a little more, so that an answer running past the reference is scored as written, not
#: cut down to a match.
ANSWER_MARGIN = 4


class SampleResult(NamedTuple):
    """One sample's outcome."""

    prediction: str
    answer: str
    score: float


class PrefillCost(NamedTuple):
    """What one sample's prefill cost: its image placeholders at the language model's input, and the analytic
    FLOPs (`vtc.flops`) of the tokens each decoder layer processed for it, without the batch's padding, plus what a
    pruning method spent on its images before the language model (`vtc.flops.pruning_flops`)."""

    visual_tokens: int
    prefill_flops: float


@dataclass
class EvalResult:
    """What `evaluate` measured; every mean is over samples.

    Args:
        accuracy: the mean score (`vtc.tasks.score`).
        n: the number of samples.
        per_sample: each sample's outcome, in the order of the samples given.
        visual_tokens: the mean number of image placeholders at the language model's input.
        prefill_flops: the mean analytic prefill FLOPs (`vtc.flops`) with the lengths the decoder layers processed,
            plus a pruning method's own work before the language model.
        seconds: the wall time of the whole evaluation.
    """

    accuracy: float
    n: int
    per_sample: list[SampleResult]
    visual_tokens: float
    prefill_flops: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON values; `per_sample` becomes a list of dicts."""
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "visual_tokens": self.visual_tokens,
            "prefill_flops": self.prefill_flops,
            "seconds": self.seconds,
            "per_sample": [outcome._asdict() for outcome in self.per_sample],
        }

    def save(self, folder: str | Path, samples: Sequence[Sample], **details: Any) -> tuple[Path, Path]:
        """Write the result into `folder` (made if missing), as `vtc eval --out` does, and return both paths:

        * `eval.json`: the means (`to_dict()` without `per_sample`), then `details` (e.g. the model, the data, the
          configuration, as JSON values);
        * `eval.jsonl`: one line per sample, its index, task and question beside its outcome; `samples` are those
          `evaluate` was given, in the same order.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        summary, per_sample = folder / "eval.json", folder / "eval.jsonl"
        record = {key: value for key, value in self.to_dict().items() if key != "per_sample"}
        summary.write_text(json.dumps({**record, **details}, indent=2) + "\n")
        with per_sample.open("w") as f:
            for index, (sample, outcome) in enumerate(zip(samples, self.per_sample)):
                f.write(json.dumps({"index": index, "task": sample.task, "question": sample.question,
                                    **outcome._asdict()}) + "\n")
        return summary, per_sample


def _default_max_new_tokens(tokenizer: Any, samples: Sequence[Sample]) -> int:
    longest = max(len(tokenizer(sample.answer, add_special_tokens=False)["input_ids"]) for sample in samples)
    return longest + ANSWER_MARGIN


def _layer_lens_per_sample(model: nn.Module, num_layers: int, attention_mask: torch.Tensor) -> list[list[int]]:
    """Per sample of the prefill just run, the tokens each decoder layer processed for it, padding excluded.

    The lengths the layers ran (`last_stats`) are the batch's: padded to its longest prompt, so they depend on which
    samples share a batch. A sample's own are its unpadded length, and under LVTC, in the compressed layers, its
    compressed length, which `compressed_lengths` computes from the recorded visual layout exactly as LVTC groups
    the tokens. In a batch, a sample's run of left padding becomes one masked slot of its compressed sequence: not
    counted, as the sample alone has no padding.
    """
    lengths = attention_mask.sum(dim=1).tolist()
    config = get_config(model) if is_compressed(model) else None
    if config is not None and config.prune is not None and config.prune.in_llm:
        return _pruned_layer_lens(model, config.prune, num_layers, lengths)
    lvtc = None if config is None else config.lvtc
    if lvtc is None:
        return [[length] * num_layers for length in lengths]
    first, restore = lvtc.resolve_layers(num_layers)
    compressed_layers = range(first, num_layers if restore is None else restore)
    padding = (attention_mask == 0).cpu()
    layout = last_stats(model)["visual_layout"] or [()] * len(lengths)  # None for a batch without images
    grouped = compressed_lengths(layout, attention_mask.shape[1], lvtc.ratio, padding=padding)
    compressed = [groups - int(bool(pad.any())) for groups, pad in zip(grouped, padding)]
    return [[short if layer in compressed_layers else full for layer in range(num_layers)]
            for full, short in zip(lengths, compressed)]


def _pruned_layer_lens(model: nn.Module, prune: Any, num_layers: int, lengths: list[int]) -> list[list[int]]:
    """Per sample, the tokens each decoder layer processed under an in-decoder pruning method: every token before its
    first stage, then from each stage on the sample's text and the visual tokens it kept there (`last_stats()["kept"]`:
    per image, one list of indices, or one per stage for PyramidDrop)."""
    stats = last_stats(model)
    stages = prune.resolve_stage_layers(num_layers)
    out = []
    for length, native, kept in zip(lengths, stats["visual_tokens"], stats["kept"] or [[]] * len(lengths)):
        per_stage = [[indices] if len(stages) == 1 else indices for indices in kept]
        counts = [sum(len(image[stage]) for image in per_stage) for stage in range(len(stages))] if kept else []
        row = [length] * num_layers
        for stage, first in enumerate(stages):
            for layer in range(first, num_layers):
                row[layer] = length - native + counts[stage] if counts else length
        out.append(row)
    return out


def model_inputs(model: nn.Module, processor: Any, samples: Sequence[Sample], texts: Sequence[str] | None = None,
                 padding_side: str = "left") -> Any:
    """The processor's inputs for a batch of `samples`, on the model's device and in its dtype (integer tensors keep
    theirs).

    Args:
        texts: one text per sample; default: each sample's prompt (`vtc.tasks.build_prompt`).
        padding_side: set for this call only, never on the shared tokenizer (several threads may share it).
    """
    parameter = next(model.parameters())
    images = [list(sample.images) for sample in samples]
    return processor(
        images=images if any(images) else None,  # some processors refuse a batch of empty image lists
        text=list(texts) if texts is not None else [build_prompt(processor, sample) for sample in samples],
        return_tensors="pt", padding=True, padding_side=padding_side,
    ).to(device=parameter.device, dtype=parameter.dtype)


class GeneratedBatch(NamedTuple):
    """What `generate_answers` returns.

    Args:
        answers: each sample's continuation, decoded without special tokens (not stripped).
        inputs: the processor's inputs the prefill ran on (what `prefill_costs` takes).
        new_tokens: each sample's generated tokens, up to and with its first end-of-sequence token.
    """

    answers: list[str]
    inputs: Any
    new_tokens: list[int]


def generate_answers(model: nn.Module, processor: Any, samples: Sequence[Sample], **generate_options: Any
                     ) -> GeneratedBatch:
    """Generate a continuation of each sample's prompt in one left-padded batch.

    `generate_options` go to `model.generate` (e.g. `max_new_tokens`, `do_sample`); call it without gradients.
    """
    inputs = model_inputs(model, processor, samples)  # left-padded: generation continues each prompt
    output = model.generate(**inputs, **generate_options)
    generated = output[:, inputs["input_ids"].shape[1]:]
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    new_tokens = [next((index + 1 for index, token in enumerate(row) if token in eos), len(row))
                  for row in generated.tolist()]
    return GeneratedBatch(processor.tokenizer.batch_decode(generated, skip_special_tokens=True), inputs, new_tokens)


def prefill_costs(model: nn.Module, inputs: Any) -> list[PrefillCost]:
    """Per sample of the forward (or the prefill of the `generate` call) just run on `inputs`, what it cost: its
    visual tokens at the language model's input and its prefill FLOPs, whichever side the batch was padded on."""
    adapter = get_adapter(model)
    text_config = adapter.text_config
    num_layers = decoder_dims(text_config)["num_hidden_layers"]
    visual_tokens = (inputs["input_ids"] == adapter.image_token_id).sum(dim=1).tolist()
    layer_lens = _layer_lens_per_sample(model, num_layers, inputs["attention_mask"])
    method = [0] * len(visual_tokens)  # what a pruning method spends before the language model
    prune = get_config(model).prune if is_compressed(model) else None
    if prune is not None and prune.method != "downsample":
        stats = last_stats(model)
        layout = stats["visual_layout"] or [()] * len(visual_tokens)
        method = pruning_flops(adapter, prune, layout, inputs["attention_mask"].sum(dim=1).tolist(),
                               stats["pruned_items"], adapter.image_inputs_from(inputs))
    return [PrefillCost(tokens, prefill_flops(text_config, lens).total + extra)
            for tokens, lens, extra in zip(visual_tokens, layer_lens, method)]


def evaluate(
    model: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Generate an answer to every sample greedily, score it, and measure what the prefills cost.

    Args:
        model: a model of a supported family, compressed with `vtc.compress` or not.
        processor: its processor (the one passed to `vtc.compress`, if any); each call pads on the left, without
            changing the processor (several threads may evaluate with one processor).
        samples: the samples (`vtc.tasks.synthetic`, a dataset); prompts come from `vtc.tasks.build_prompt`.
        batch_size: samples per `generate` call.
        max_new_tokens: the most tokens generated per answer; `None`: the longest reference answer's token count
            plus `ANSWER_MARGIN`.
        progress: draw a progress bar on standard error.

    Returns:
        An `EvalResult`. The model runs in eval mode without gradients; the training mode of every module is
        restored afterwards.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", batch_size, "a positive integer")
    samples = list(samples)
    if not samples:
        raise ConfigError("samples", samples, "at least one sample", hint="e.g. vtc.tasks.synthetic(name, size=64).")
    if max_new_tokens is None:
        max_new_tokens = _default_max_new_tokens(processor.tokenizer, samples)
    get_adapter(model)  # an unsupported model fails here, before any work

    start = time.perf_counter()
    outcomes, costs = [], []
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(samples), desc="vtc eval", unit="sample", disable=not progress) as bar:
            for offset in range(0, len(samples), batch_size):
                batch = samples[offset:offset + batch_size]
                generated = generate_answers(model, processor, batch, max_new_tokens=max_new_tokens,
                                             do_sample=False, num_beams=1)
                for sample, prediction in zip(batch, generated.answers):
                    prediction = prediction.strip()
                    outcomes.append(SampleResult(prediction, sample.answer, score(sample, prediction)))
                costs += prefill_costs(model, generated.inputs)
                bar.update(len(batch))
    finally:
        for module, training in modes.items():
            module.training = training
    n = len(samples)
    return EvalResult(
        accuracy=sum(outcome.score for outcome in outcomes) / n,
        n=n,
        per_sample=outcomes,
        visual_tokens=sum(cost.visual_tokens for cost in costs) / n,
        prefill_flops=sum(cost.prefill_flops for cost in costs) / n,
        seconds=time.perf_counter() - start,
    )
