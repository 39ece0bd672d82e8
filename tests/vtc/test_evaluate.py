"""vtc.evaluate: batched greedy generation that equals a per-sample loop, and the per-sample cost it reports."""

import json

import pytest
import torch

import vtc
from vtc.evaluate import ANSWER_MARGIN
from vtc.flops import prefill_flops, uniform_layer_lens
from vtc.tasks import Sample, build_prompt, score, synthetic
from vtc.testing import IMAGE_TOKEN_IDS, build_tiny_model, build_tiny_processor

MAX_NEW_TOKENS = 4
PVTC = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))
LVTC = vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=-1, ratio=4))
#: Visual tokens of one 48 x 48 task image: 64 (LLaVA's one 32-px crop), 6x6 (Qwen, merged 2x2), 2x2 tiles and a
#: thumbnail of 16 (InternVL); and under PVTC with ratio 4.
TOKENS_PER_IMAGE = {"llava": 64, "qwen2_vl": 36, "internvl": 80}
PVTC_TOKENS_PER_IMAGE = {"llava": 16, "qwen2_vl": 9, "internvl": 20}


def mixed_samples(family: str, per_task: int = 3) -> list[Sample]:
    """Samples of several tasks, interleaved: their prompts differ in length, so a batch of them is left-padded."""
    tasks = [synthetic(name, "test", per_task, seed=1) for name in ("majority-colour", "grid-readout", "more-red")]
    return [sample for group in zip(*tasks) for sample in group]


def generate_one_by_one(model, processor, samples, max_new_tokens=MAX_NEW_TOKENS):
    """The reference: each sample alone (no padding), greedy. Returns predictions, placeholder counts and lengths."""
    predictions, placeholders, lengths = [], [], []
    image_token_id = IMAGE_TOKEN_IDS[model.config.model_type]
    for sample in samples:
        inputs = processor(images=sample.images or None, text=build_prompt(processor, sample), return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        length = inputs["input_ids"].shape[1]
        predictions.append(processor.tokenizer.decode(output[0, length:], skip_special_tokens=True).strip())
        placeholders.append(int((inputs["input_ids"] == image_token_id).sum()))
        lengths.append(length)
    return predictions, placeholders, lengths


def per_sample(result):
    return [tuple(outcome) for outcome in result.per_sample]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "internvl"])
def test_evaluate_equals_a_per_sample_generate_loop_at_every_batch_size(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    samples = mixed_samples(family)
    predictions, placeholders, lengths = generate_one_by_one(model, processor, samples)

    result = vtc.evaluate(model, processor, samples, batch_size=16, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    assert [outcome.prediction for outcome in result.per_sample] == predictions
    assert [outcome.answer for outcome in result.per_sample] == [sample.answer for sample in samples]
    assert [outcome.score for outcome in result.per_sample] == [score(s, p) for s, p in zip(samples, predictions)]
    assert result.n == len(samples) and result.accuracy == sum(o.score for o in result.per_sample) / len(samples)
    assert result.visual_tokens == sum(placeholders) / len(samples)
    assert placeholders[0] == TOKENS_PER_IMAGE[family]
    text_config = model.config.get_text_config(decoder=True)
    assert result.prefill_flops == sum(prefill_flops(text_config, uniform_layer_lens(text_config, length)).total
                                       for length in lengths) / len(samples)
    assert result.seconds > 0
    for batch_size in (1, 4):  # batches of 4 split the tasks' interleaving differently from one batch of 16
        other = vtc.evaluate(model, processor, samples, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS,
                             progress=False)
        assert per_sample(other) == per_sample(result), batch_size
        assert (other.visual_tokens, other.prefill_flops) == (result.visual_tokens, result.prefill_flops)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "internvl"])
def test_compression_shows_in_visual_tokens_and_flops_and_batching_changes_nothing(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    samples = synthetic("majority-colour", "test", 3) + synthetic("grid-readout", "test", 3)

    def run(batch_size, data=samples):
        return vtc.evaluate(model, processor, data, batch_size=batch_size, max_new_tokens=2, progress=False)

    baseline = run(16)
    vtc.compress(model, PVTC, processor=processor)
    pooled = run(16)
    assert pooled.visual_tokens == PVTC_TOKENS_PER_IMAGE[family] < baseline.visual_tokens
    assert pooled.prefill_flops < baseline.prefill_flops
    assert per_sample(run(1)) == per_sample(pooled)

    vtc.compress(model, LVTC)
    shortened = run(16)
    assert shortened.visual_tokens == baseline.visual_tokens  # LVTC pools inside the decoder, not at its input
    assert shortened.prefill_flops < baseline.prefill_flops
    alone = run(1)
    assert per_sample(alone) == per_sample(shortened)
    assert alone.prefill_flops == shortened.prefill_flops  # the batch's padding is not counted
    # One sample alone has no padding: its FLOPs are those of the lengths the decoder layers really ran.
    single = run(1, samples[-1:])
    text_config = model.config.get_text_config(decoder=True)
    assert single.prefill_flops == prefill_flops(text_config, vtc.last_stats(model)["layer_seq_lens"]).total
    vtc.unpatch(model)


def test_text_only_samples_mixed_with_images_and_alone():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    text_only = [Sample([], "what is this ?", "cat"), Sample([], "how many dog are there ?", "w3", task="count")]
    with_images = synthetic("majority-colour", "test", 2)
    samples = [with_images[0], text_only[0], with_images[1], text_only[1]]
    predictions, placeholders, _ = generate_one_by_one(model, processor, samples)
    for batch_size in (1, 4):
        result = vtc.evaluate(model, processor, samples, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS,
                              progress=False)
        assert [outcome.prediction for outcome in result.per_sample] == predictions
        assert placeholders == [64, 0, 64, 0] and result.visual_tokens == 32
    alone = vtc.evaluate(model, processor, text_only, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    assert [outcome.prediction for outcome in alone.per_sample] == predictions[1::2]
    assert alone.visual_tokens == 0


def test_default_max_new_tokens_is_the_longest_answer_plus_a_margin():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    samples = [Sample([], "w1", "red blue"), Sample([], "w2", "red blue green red blue")]  # 2 and 5 words
    asked = []
    generate = model.generate

    def recording_generate(**kwargs):
        asked.append(kwargs["max_new_tokens"])
        return generate(**kwargs)

    model.generate = recording_generate
    vtc.evaluate(model, processor, samples, progress=False)
    assert asked == [5 + ANSWER_MARGIN]


def test_the_processor_and_the_training_modes_are_left_as_they_were():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    processor.tokenizer.padding_side = "right"
    model.train()
    model.lm_head.eval()
    modes = {name: module.training for name, module in model.named_modules()}
    seen_in_forward = []
    model.register_forward_pre_hook(lambda module, _args: seen_in_forward.append((module.training,
                                                                                  torch.is_grad_enabled())))
    samples = synthetic("majority-colour", "test", 3) + synthetic("grid-readout", "test", 1)
    result = vtc.evaluate(model, processor, samples, batch_size=4, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    assert set(seen_in_forward) == {(False, False)}  # eval mode, no gradients
    assert processor.tokenizer.padding_side == "right"
    assert {name: module.training for name, module in model.named_modules()} == modes
    # The batch was left-padded all the same: the same answers as one by one.
    assert [outcome.prediction for outcome in result.per_sample] == generate_one_by_one(
        model.eval(), processor, samples)[0]


def test_to_dict_is_json():
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    result = vtc.evaluate(model, processor, synthetic("majority-colour", "test", 2), max_new_tokens=1,
                          progress=False)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["n"] == 2 and record["visual_tokens"] == 64 and record["prefill_flops"] == result.prefill_flops
    assert record["per_sample"][0] == {"prediction": result.per_sample[0].prediction, "answer": "yellow",
                                       "score": result.per_sample[0].score}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "batch_size=0 is invalid: expected a positive integer"),
    ({"samples": []}, "at least one sample"),
])
def test_bad_arguments(kwargs, message):
    model, processor = build_tiny_model("llava"), build_tiny_processor("llava")
    arguments = {"samples": synthetic("majority-colour", "test", 1), **kwargs}
    with pytest.raises(vtc.ConfigError, match=message):
        vtc.evaluate(model, processor, progress=False, **arguments)
