"""Continuation scores (vtc.lmms.scoring), what lmms-eval's multiple-choice tasks ask for: the loss of the answer after
the prompt `vtc.evaluate` generates from, batched or one by one. No lmms-eval needed."""

import pytest
import torch
from lmms_references import labelled_loss

import vtc
import vtc.tasks
from vtc.evaluate import prefill_costs
from vtc.lmms.scoring import continuation_scores


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_a_batch_scores_each_choice_as_the_model_s_own_loss_alone(family):
    if family not in vtc.tasks.reference_families():
        pytest.skip(f"no reference {family} model")
    model, processor = vtc.tasks.reference_model(family)
    sample = vtc.tasks.synthetic("majority-colour", "test", 1, 3)[0]
    continuations = [f" {choice}" for choice in sample.choices]
    with torch.no_grad():
        scores, inputs = continuation_scores(model, processor, [sample] * len(continuations), continuations)
    expected = [labelled_loss(model, processor, sample, continuation) for continuation in continuations]
    assert [score.loss for score in scores] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    best = min(range(len(scores)), key=lambda index: scores[index].loss)
    assert sample.choices[best] == sample.answer and scores[best].greedy
    assert all(score.tokens >= 1 for score in scores)
    assert [cost.visual_tokens for cost in prefill_costs(model, inputs)] == [36] * len(continuations)


def test_under_compression_the_scores_come_from_the_compressed_model():
    if "llava" not in vtc.tasks.reference_families():
        pytest.skip("no reference llava model")
    model, processor = vtc.tasks.reference_model("llava")
    samples = vtc.tasks.synthetic("more-red", "test", 2, 0)
    continuations = [" first", " second"]
    with torch.no_grad():
        plain, _ = continuation_scores(model, processor, samples, continuations)
        vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
        compressed, inputs = continuation_scores(model, processor, samples, continuations)
        singles = [continuation_scores(model, processor, [s], [c])[0][0] for s, c in zip(samples, continuations)]
    assert [cost.visual_tokens for cost in prefill_costs(model, inputs)] == [18, 18]  # two images, 9 tokens each
    assert [s.loss for s in compressed] != [s.loss for s in plain]
    assert [s.loss for s in compressed] == pytest.approx([s.loss for s in singles], rel=1e-4, abs=1e-5)
