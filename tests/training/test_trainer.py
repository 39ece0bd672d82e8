"""`VTCTrainer` and `train_run` on the LLaVA reference model: resuming, the output folder, activation checkpointing,
bf16, and a short run that learns.

Tolerances: resumed and uninterrupted weights must agree to `atol=1e-6, rtol=0` (the same float32 operations in the
same order on CPU: in practice bitwise equal); reloaded logits exactly; activation checkpointing recomputes the same
float32 operations, so loss and gradients agree to `atol=1e-6, rtol=1e-5`.
"""

import copy
import json
import math

import pytest
import torch
from transformers import TrainingArguments

import vtc
from vtc.training import VTCCollator, VTCTrainer, lm_loss, load_trained, prepare_stage
from vtc.training.run import RunSpec, train_run

PVTC = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))
PVTC_LVTC = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4),
                          lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4, restore="add"))
SAMPLES = vtc.tasks.synthetic("majority-colour", "train", 6) + vtc.tasks.synthetic("more-red", "train", 6)
VTC_FILES = {"vtc_config.json", "vtc_weights.safetensors"}


def compressed(stage, config=PVTC):
    """The LLaVA reference model, freshly loaded, compressed and prepared for `stage`; its patched processor."""
    model, processor = vtc.tasks.reference_model("llava")
    vtc.compress(model, config, processor=processor)
    return prepare_stage(model, stage), processor


def arguments(output_dir, **kwargs):
    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=2, learning_rate=1e-3,
                    lr_scheduler_type="linear", weight_decay=0.0, seed=0, data_seed=0, use_cpu=True, report_to="none",
                    disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0, logging_steps=1,
                    save_strategy="no")
    return TrainingArguments(**{**settings, **kwargs})


def trainable_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def resume_case(stage, tmp_path):
    steps = dict(max_steps=6, save_strategy="steps", save_steps=3)
    model, processor = compressed(stage)
    whole = VTCTrainer(model=model, args=arguments(tmp_path / "whole", **steps), train_dataset=SAMPLES,
                       data_collator=VTCCollator(processor))
    whole.train()
    for folder in ("checkpoint-3", "checkpoint-6", "."):
        assert VTC_FILES <= {p.name for p in (tmp_path / "whole" / folder).iterdir()}, folder

    # "Interrupted" after step 3 of the same 6-step run: its checkpoint-3 is exactly what a run stopped at step 3
    # leaves (same schedule), then a NEW model (loaded, compressed, staged again: fresh vtc initialisation) resumes.
    fresh, fresh_processor = compressed(stage)
    resumed = VTCTrainer(model=fresh, args=arguments(tmp_path / "resumed", **steps), train_dataset=SAMPLES,
                         data_collator=VTCCollator(fresh_processor))
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-3"))
    assert resumed.state.global_step == whole.state.global_step == 6
    return trainable_state(model), trainable_state(fresh)


def assert_same_weights(expected, actual, names):
    assert names and set(names) <= set(expected) and set(expected) == set(actual)
    for name in names:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)


def test_resuming_the_compressor_stage_gives_the_uninterrupted_weights(tmp_path):
    expected, actual = resume_case("compressor", tmp_path)
    assert all("vtc_" in n for n in expected)
    assert_same_weights(expected, actual, list(expected))


def test_resuming_the_full_stage_gives_the_uninterrupted_weights(tmp_path):
    expected, actual = resume_case("full", tmp_path)
    assert any("vtc_" in n for n in expected) and any(n.startswith("model.language_model.") for n in expected)
    # every trainable tensor: the vtc ones (from vtc_weights.safetensors) and the fine-tuned backbone
    assert_same_weights(expected, actual, list(expected))


def spec(stage, output, **kwargs):
    settings = dict(model="reference:llava", config=PVTC, stage=stage, output=str(output), steps=2, batch_size=2,
                    lr=1e-3, warmup_steps=0, progress=False)
    return RunSpec(**{**settings, **kwargs})


def assert_loads_to_the_same_logits(result, output, samples):
    loaded, loaded_processor = load_trained(output)
    assert vtc.is_compressed(vtc.training.unwrap(loaded))
    assert vtc.get_config(vtc.training.unwrap(loaded)) == PVTC
    trained = result["model"].eval()
    inputs = VTCCollator(result["processor"])(samples)
    loaded_inputs = VTCCollator(loaded_processor)(samples)
    assert torch.equal(inputs["input_ids"], loaded_inputs["input_ids"])
    with torch.no_grad():
        expected = trained(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        actual = loaded(**{k: v for k, v in loaded_inputs.items() if k != "labels"}).logits
    assert torch.equal(actual, expected)
    return loaded


def test_a_short_full_run_lowers_the_loss_and_its_output_folder_loads_with_load_trained(tmp_path):
    # the same two samples at every step (batch = dataset), so the losses of the steps are comparable
    samples = vtc.tasks.synthetic("grid-readout", "train", 2)
    result = train_run(spec("full", tmp_path, steps=4), samples)
    first, last = result["loss_first_last"]
    assert math.isfinite(first) and math.isfinite(last) and last < first - 0.1, (first, last)
    assert result["steps"] == 4
    files = {p.name for p in tmp_path.iterdir()}
    assert VTC_FILES | {"vtc_training.json", "config.json", "model.safetensors"} <= files
    assert json.loads((tmp_path / "vtc_training.json").read_text())["stage"] == "full"
    assert_loads_to_the_same_logits(result, tmp_path, samples)


@pytest.mark.parametrize("stage", ["compressor", "lora"])
def test_output_folder_of_a_run_loads_with_load_trained(stage, tmp_path):
    samples = SAMPLES[:2]
    result = train_run(spec(stage, tmp_path), samples)
    files = {p.name for p in tmp_path.iterdir()}
    assert VTC_FILES | {"vtc_training.json"} <= files
    assert ("adapter_model.safetensors" in files) == (stage == "lora")
    assert "model.safetensors" not in files  # the backbone is the base model's, named in vtc_training.json
    loaded = assert_loads_to_the_same_logits(result, tmp_path, samples)
    assert (type(loaded).__name__ == "PeftModel") == (stage == "lora")


def forward_backward(model, batch, labels):
    model.zero_grad(set_to_none=True)
    loss = lm_loss(model(**batch).logits, labels)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage", ["compressor", "full"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(stage):
    torch.manual_seed(0)
    model, processor = compressed(stage, PVTC_LVTC)
    with torch.no_grad():  # move the vtc parameters off their initialisation (PVTC's zero-initialised paths)
        for name, parameter in model.named_parameters():
            if "vtc_" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    batch = VTCCollator(processor)([SAMPLES[0], SAMPLES[6]])
    labels = batch.pop("labels")
    model.train()
    loss, grads = forward_backward(model, batch, labels)

    calls = []
    # a submodule of LVTC's compress layer K: transformers checkpoints inside the layer's forward, so the layer's
    # own hooks run once, and its submodules again when the backward pass recomputes them
    hook = model.model.language_model.layers[1].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    try:
        checkpointed_loss, checkpointed_grads = forward_backward(model, batch, labels)
    finally:
        hook.remove()
    assert len(calls) == 2  # the layer really ran again in the backward pass
    torch.testing.assert_close(checkpointed_loss, loss, atol=1e-6, rtol=1e-5)
    assert set(checkpointed_grads) == set(grads)
    assert set(grads) <= {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("vtc_lvtc" in n for n in grads) and any("vtc_pvtc" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_on_cpu_trains_with_finite_losses(tmp_path):
    model, processor = compressed("compressor")
    before = trainable_state(model)
    trainer = VTCTrainer(model=model, args=arguments(tmp_path, max_steps=2, bf16=True), train_dataset=SAMPLES,
                         data_collator=VTCCollator(processor, teacher_processor=None))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), losses
    after = trainable_state(model)
    assert all(after[n].dtype == torch.float32 for n in after)  # autocast: the master weights stay float32
    assert any(not torch.equal(after[n], before[n]) for n in after)


def test_distill_objective_trains_through_the_trainer(tmp_path):
    model, processor = vtc.tasks.reference_model("llava")
    teacher_processor = copy.deepcopy(processor)
    vtc.compress(model, PVTC, processor=processor)
    model = prepare_stage(model, "compressor")
    trainer = VTCTrainer(model=model, args=arguments(tmp_path, max_steps=2), train_dataset=SAMPLES,
                         data_collator=VTCCollator(processor, teacher_processor=teacher_processor),
                         objective="distill", lm_weight=0.1)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss >= 0 for loss in losses), losses
