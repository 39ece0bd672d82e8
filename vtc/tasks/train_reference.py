"""Train the reference models: tiny real-class multimodal LLMs that solve the synthetic tasks, built from scratch.

    result = train(family, seed=0)                       # or: python -m vtc.cli.train_reference FAMILY
    save(result, reference_folder(family), family=family, seed=0)

The recipes (model sizes, processors, tokenizers) live with the adapters (`vtc.testing`). Training is
multi-task (every batch mixes the tasks of `vtc.tasks.available()`), teacher-forced, with the loss on the answer
tokens and the end-of-sequence token only; the loss is the mean over each task's answer tokens, averaged over the
tasks (so the 37 supervised tokens of a read-out do not drown the one-word answers).

The run stops as soon as the greedy test scores reach the targets (``TARGETS``) at ``confirm`` evaluations in a row,
or at ``steps``; ``save`` writes ``model.save_pretrained``, ``processor.save_pretrained`` and ``training.json``.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vtc.testing import REFERENCE_EOS_ID, REFERENCE_PAD_ID, build_reference_model

from .prompt import build_prompt
from .sample import Sample
from .synthetic import available, score, synthetic, vocabulary

__all__ = ["TARGETS", "greedy_scores", "reference_folder", "save", "train"]

#: The mean greedy test score each task must reach (uncompressed); training covers the tasks of `available()`.
TARGETS: dict[str, float] = {"grid-readout": 0.99, "majority-colour": 0.99, "more-red": 0.99, "odd-one-out": 0.99,
                             "where-is-it": 0.99}

# ---------------------------------------------------------------------------------------------------- batches
def _inputs(processor, samples: Sequence[Sample], answers: bool):
    """The processor's tensors for `samples` (left-padded); with `answers`, each prompt is followed by its answer and
    the end-of-sequence token, and `labels` marks those tokens (-100 elsewhere)."""
    tokenizer = processor.tokenizer
    prompts = [build_prompt(processor, s) for s in samples]
    if answers:
        prompts = [f"{p} {s.answer} {tokenizer.eos_token}" for p, s in zip(prompts, samples)]
    images = [list(s.images) for s in samples]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    if answers:
        labels = torch.full_like(inputs["input_ids"], -100)
        for row, sample in enumerate(samples):
            n = len(tokenizer(sample.answer, add_special_tokens=False)["input_ids"]) + 1  # + end of sequence
            labels[row, -n:] = inputs["input_ids"][row, -n:]
        inputs["labels"] = labels
    return inputs


def _loss(model, inputs, tasks: Sequence[str]) -> torch.Tensor:
    """Mean cross-entropy over each task's answer tokens, averaged over the tasks present."""
    labels = inputs.pop("labels")
    logits = model(**inputs).logits[:, :-1].float()
    target = labels[:, 1:]
    per_token = nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
    mask = (target != -100).float()
    losses = []
    for task in dict.fromkeys(tasks):
        rows = torch.tensor([t == task for t in tasks])
        losses.append((per_token[rows] * mask[rows]).sum() / mask[rows].sum())
    return torch.stack(losses).mean()


@torch.no_grad()
def greedy_predictions(model, processor, samples: Sequence[Sample], *, batch_size: int = 64) -> list[str]:
    """Greedy generations for `samples`, decoded without special tokens (the answer only)."""
    predictions: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        inputs = _inputs(processor, chunk, answers=False)
        max_new = max(len(s.answer.split()) for s in chunk) + 2
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False, eos_token_id=REFERENCE_EOS_ID,
                             pad_token_id=REFERENCE_PAD_ID)
        new = out[:, inputs["input_ids"].shape[1]:]
        predictions += processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    return predictions


def greedy_scores(model, processor, *, size: int = 128, seed: int = 0, split: str = "test",
                  tasks: Sequence[str] | None = None, batch_size: int = 64) -> dict[str, float]:
    """The mean `vtc.tasks.score` per task of greedy generation on `size` samples of each task's `split`."""
    was_training = model.training
    model.eval()
    result = {}
    for task in tasks or available():
        samples = synthetic(task, split, size, seed)
        preds = greedy_predictions(model, processor, samples, batch_size=batch_size)
        result[task] = sum(score(s, p) for s, p in zip(samples, preds)) / len(samples)
    model.train(was_training)
    return result


# ---------------------------------------------------------------------------------------------------- training
def train(
    family: str,
    *,
    steps: int = 3000,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 2e-3,
    warmup: int = 50,
    eval_every: int = 100,
    eval_size: int = 128,
    stop_at_target: bool = True,
    confirm: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `family`'s reference model from scratch, deterministically for a given `seed`.

    Every batch holds `batch_size` samples: the tasks of `available()` take turns, so each has an equal share of the
    batch. The learning rate warms up linearly over `warmup` steps, then follows a cosine to a tenth of `lr` at
    `steps`. Every `eval_every` steps (and at the end) the greedy test scores of `eval_size` samples per task are
    measured; with `stop_at_target`, training stops once every task has reached `TARGETS` at `confirm` evaluations in
    a row (one evaluation that just clears a target on 128 samples can sit below it on a subset). With `progress`, a
    bar shows the steps and the running loss, and every evaluation is written under it.

    Returns a dict with the `model` (in eval mode), the `processor`, the per-step `losses`, the `evaluations`
    ({step: scores}), `steps` done, `wall_seconds` and the final `scores` (None when `eval_every` is 0 and no
    evaluation ran).
    """
    torch.manual_seed(seed)
    random.seed(seed)
    model, processor = build_reference_model(family, vocabulary(), seed=seed)
    model.train()
    tasks = available()
    per_task = [batch_size // len(tasks) + (i < batch_size % len(tasks)) for i in range(len(tasks))]
    # One deterministic training stream per task, drawn as it is consumed (in chunks, so a long run costs no more
    # than it uses): the seed of chunk k is derived from (seed, k), so the samples depend only on the seed.
    chunk = 64
    streams: dict[str, list[Sample]] = {t: [] for t in tasks}
    drawn: dict[str, int] = {t: 0 for t in tasks}

    def take(task: str, n: int) -> list[Sample]:
        while len(streams[task]) < n:
            streams[task] += synthetic(task, "train", chunk * 16, seed * 100_003 + drawn[task])
            drawn[task] += 1
        out, streams[task] = streams[task][:n], streams[task][n:]
        return out

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    losses: list[float] = []
    evaluations: dict[int, dict[str, float]] = {}
    start = time.perf_counter()
    step = 0
    scores = None
    met_in_a_row = 0
    bar = tqdm(total=steps, desc=f"train {family}", unit="step", disable=not progress, file=sys.stderr)
    while step < steps:
        samples: list[Sample] = []
        for task, n in zip(tasks, per_task):
            samples += take(task, n)
        inputs = _inputs(processor, samples, answers=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = _loss(model, inputs, [s.task for s in samples])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.4f}")
        if eval_every and (step % eval_every == 0 or step == steps):
            scores = greedy_scores(model, processor, size=eval_size, seed=seed)
            evaluations[step] = scores
            if progress:
                bar.write(f"{family} step {step} test " + " ".join(f"{t} {v:.4f}" for t, v in scores.items()))
            met_in_a_row = met_in_a_row + 1 if all(scores[t] >= TARGETS[t] for t in scores) else 0
            if stop_at_target and met_in_a_row >= confirm:
                break
            model.train()
    bar.close()
    model.eval()
    return dict(model=model, processor=processor, losses=losses, evaluations=evaluations, steps=step,
                wall_seconds=time.perf_counter() - start, scores=scores)


def reference_folder(family: str) -> Path:
    """Where `family`'s shipped reference model lives (`vtc.tasks.reference_path`), whether or not it exists yet."""
    return Path(__file__).parent / "reference" / family


def save(result: dict[str, Any], out: str | Path, *, family: str, seed: int, extra: dict | None = None) -> Path:
    """Write the trained model, its processor and `training.json` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["model"].save_pretrained(out)
    result["processor"].save_pretrained(out)
    record = dict(
        family=family,
        seed=seed,
        steps=result["steps"],
        wall_seconds=round(result["wall_seconds"], 1),
        parameters=sum(p.numel() for p in result["model"].parameters()),
        test_scores=result["scores"],
        test_samples_per_task=extra.pop("eval_size", None) if extra else None,
        evaluations={str(k): v for k, v in result["evaluations"].items()},
        loss_first_last=[result["losses"][0], result["losses"][-1]] if result["losses"] else None,
        **(extra or {}),
    )
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
