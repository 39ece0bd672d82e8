"""How likely a model finds a continuation of a prompt: what lmms-eval's `loglikelihood` requests (multiple-choice
tasks) ask for.

    scores, inputs = continuation_scores(model, processor, samples, [" red", " blue"])

The prompt of a sample is `vtc.tasks.build_prompt` (as `vtc.evaluate` generates from); the continuation follows it
directly. One right-padded forward per batch scores every continuation token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ..evaluate import model_inputs
from ..tasks import Sample, build_prompt

__all__ = ["ContinuationScore", "continuation_scores"]


class ContinuationScore(NamedTuple):
    """One continuation's score.

    Args:
        loss: the mean negative log-likelihood of its tokens (nats per token): lower is more likely.
        greedy: whether greedy decoding would produce every one of its tokens.
        tokens: how many tokens it is.
    """

    loss: float
    greedy: bool
    tokens: int


def continuation_scores(model: nn.Module, processor: Any, samples: Sequence[Sample], continuations: Sequence[str]
                        ) -> tuple[list[ContinuationScore], Any]:
    """Score `continuations[i]` after the prompt of `samples[i]`, in one forward; returns the scores and the inputs
    the forward ran on (for `vtc.evaluate.prefill_costs`). Call it without gradients.

    The continuation's tokens are those after the prompt's: the prompt is processed alone (no forward) to count its
    tokens with the image placeholders the processor writes.
    """
    prompts = [build_prompt(processor, sample) for sample in samples]
    texts = [prompt + continuation for prompt, continuation in zip(prompts, continuations)]
    inputs = model_inputs(model, processor, samples, texts, padding_side="right")
    prompt_lengths = model_inputs(model, processor, samples, prompts, padding_side="right")["attention_mask"].sum(1)
    lengths = inputs["attention_mask"].sum(1)
    logits = model(**inputs).logits
    scores = []
    for row, (start, end) in enumerate(zip(prompt_lengths.tolist(), lengths.tolist())):
        if end <= start:  # an empty continuation: certain
            scores.append(ContinuationScore(0.0, True, 0))
            continue
        # the logits at position t predict the token at t + 1
        log_probs = torch.log_softmax(logits[row, start - 1:end - 1].float(), dim=-1)
        targets = inputs["input_ids"][row, start:end]
        token_log_probs = log_probs.gather(-1, targets[:, None])[:, 0]
        scores.append(ContinuationScore(-token_log_probs.mean().item(),
                                        bool((log_probs.argmax(-1) == targets).all()), end - start))
    return scores, inputs
