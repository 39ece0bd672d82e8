"""The shipped reference models: they solve the synthetic tasks, their recipe trains, and compression shows."""

from __future__ import annotations

import json

import pytest
import torch

import vtc
from vtc.tasks import available, reference_families, reference_model
from vtc.tasks.reference import reference_path, reference_record
from vtc.tasks.train_reference import TARGETS, greedy_scores, train
from vtc.testing import REFERENCE_FAMILIES as FAMILIES

CHECK_SIZE = 64  # samples per task: the first 64 of the 128 test samples the training run scored


def test_every_recipe_family_is_shipped():
    assert reference_families() == list(FAMILIES)


def test_unknown_family_is_a_config_error_naming_the_available_ones():
    with pytest.raises(vtc.ConfigError, match="llava"):
        reference_model("no_such_family")


# What a saved file records about how it was written, not what was built: the library version, the weights' dtype,
# the padding the tokenizer last ran with.
SAVE_METADATA = ("transformers_version", "dtype", "padding")


def assert_has_the_shipped_values(built: dict, shipped: dict, where: str = "") -> None:
    """`built` has every key of `shipped` (a shipped JSON file), with the same value, metadata aside."""
    for key, value in shipped.items():
        if key in SAVE_METADATA:
            continue
        assert key in built, where + key
        if isinstance(value, dict) and isinstance(built[key], dict):
            assert_has_the_shipped_values(built[key], value, f"{where}{key}.")
        else:
            assert built[key] == value, where + key


@pytest.mark.parametrize("family", FAMILIES)
def test_recipe_rebuilds_what_was_shipped(family, tmp_path):
    # The family recipe at the reference sizes builds what was trained and shipped: the same config, generation
    # config, processor, chat template and tokenizer (only the weights differ: these are untrained).
    from vtc.tasks import vocabulary
    from vtc.testing import build_reference_model

    model, processor = build_reference_model(family, vocabulary(), seed=0)
    folder = reference_path(family)
    config = json.loads((folder / "config.json").read_text())
    assert config.pop("architectures") == [type(model).__name__]
    assert_has_the_shipped_values(json.loads(model.config.to_json_string()), config)

    processor.save_pretrained(tmp_path)
    model.generation_config.save_pretrained(tmp_path)
    for name in ("generation_config.json", "processor_config.json", "tokenizer_config.json", "tokenizer.json"):
        built, shipped = (json.loads((where / name).read_text()) for where in (tmp_path, folder))
        assert_has_the_shipped_values(built, shipped, f"{name}: ")
    template = folder / "chat_template.jinja"
    assert (tmp_path / template.name).exists() == template.exists()
    if template.exists():
        assert (tmp_path / template.name).read_text() == template.read_text()


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_model_reaches_its_recorded_scores(family):
    record = reference_record(family)
    assert record["family"] == family
    assert list(record["test_scores"]) == available()  # trained on every listed task
    for task, value in record["test_scores"].items():
        assert value >= TARGETS[task], (task, record["test_scores"])
    model, processor = reference_model(family)
    assert not model.training and model.config.model_type == family
    scores = greedy_scores(model, processor, size=CHECK_SIZE)
    # The record is of `test_samples_per_task` samples, of which these are the first: all of its misses may fall
    # among them, so each score is at least what the record leaves room for.
    recorded_size = record["test_samples_per_task"]
    for task, value in scores.items():
        floor = 1 - (1 - record["test_scores"][task]) * recorded_size / CHECK_SIZE
        assert value >= floor - 1e-9, (task, scores, record["test_scores"])


@pytest.mark.parametrize("family", FAMILIES)
def test_one_visual_token_per_cell(family):
    # 48 x 48 images of 6 x 6 cells of 8 px: the real processor writes 36 placeholders per image, and the model makes
    # 36 visual features per image.
    from vtc.tasks import build_prompt, synthetic

    model, processor = reference_model(family)
    samples = synthetic("more-red", "test", 2)  # two images each
    inputs = processor(images=[s.images for s in samples], text=[build_prompt(processor, s) for s in samples],
                       return_tensors="pt", padding=True)
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert (inputs["input_ids"] == image_token).sum(1).tolist() == [72, 72]
    features = model.get_image_features(**{k: v for k, v in inputs.items() if k in ("pixel_values", "image_grid_thw")})
    features = getattr(features, "pooler_output", features)
    assert sum(f.reshape(-1, model.config.text_config.hidden_size).shape[0] for f in features) == 4 * 36


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_folder_loads_with_transformers_auto_class(family):
    from transformers import AutoModelForImageTextToText

    folder = reference_path(family)
    assert (folder / "model.safetensors").stat().st_size <= 4 * 2**20
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True)
    reference, _ = reference_model(family)
    assert type(model) is type(reference)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_training_recipe_lowers_the_loss():
    # The recipe shrunk: 30 steps of batch 6 (2 samples per task), no evaluation.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the recipe runs; also the fastest for these tiny shapes on a shared machine
    try:
        result = train("llava", steps=30, batch_size=6, warmup=5, eval_every=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    losses = result["losses"]
    assert len(losses) == 30 and result["steps"] == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)


# Measured on the shipped LLaVA reference model, 64 test samples per task, greedy: uncompressed grid-readout 1.00,
# majority-colour 1.00; PVTC ratio 4, training-free (warm init): grid-readout 0.000 (below chance, 0.125: a 2x2
# window mixes four independent cells, and the model no longer writes 36 colours in order), majority-colour 1.00.
GRID_DROP_AT_LEAST = 0.8
COARSE_KEEPS_AT_LEAST = 0.9


def test_fine_task_is_compression_sensitive_and_coarse_task_is_not():
    model, processor = reference_model("llava")
    tasks = ("grid-readout", "majority-colour")
    base = greedy_scores(model, processor, size=CHECK_SIZE, tasks=tasks)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    compressed = greedy_scores(model, processor, size=CHECK_SIZE, tasks=tasks)
    assert vtc.last_stats(model)["visual_tokens"][0] == 9  # 6x6 cells pooled 2x2 -> 3x3 tokens
    assert compressed["grid-readout"] <= base["grid-readout"] - GRID_DROP_AT_LEAST, (base, compressed)
    assert compressed["majority-colour"] >= COARSE_KEEPS_AT_LEAST, (base, compressed)
