"""Reference computations the lmms-eval tests compare against, written independently of vtc.lmms."""

import torch

import vtc.tasks


def labelled_loss(model, processor, sample, continuation):
    """The model's own loss on `continuation` after the prompt of `sample`, alone (no batch, no padding): the mean
    negative log-likelihood of the continuation's tokens, labels on those tokens only."""
    prompt = vtc.tasks.build_prompt(processor, sample)
    full = processor(images=[sample.images], text=[prompt + continuation], return_tensors="pt")
    prompt_length = processor(images=[sample.images], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
    labels = torch.full_like(full["input_ids"], -100)
    labels[:, prompt_length:] = full["input_ids"][:, prompt_length:]
    with torch.no_grad():
        return model(**full, labels=labels).loss.item()


def choice_accuracy(model, processor, samples, delimiter=" "):
    """The fraction of samples whose answer is the choice of smallest `labelled_loss`."""
    right = 0
    for sample in samples:
        losses = [labelled_loss(model, processor, sample, delimiter + choice) for choice in sample.choices]
        right += sample.choices[losses.index(min(losses))] == sample.answer
    return right / len(samples)
