"""Distillation from the uncompressed model: `distillation_loss` and `VTCTrainer.compute_loss(objective="distill")`.

The teacher pass runs the same model under `vtc.disabled`; it is checked against a separately loaded, never
compressed copy of the reference model on the teacher processor's inputs.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainingArguments

import vtc
from vtc.training import IGNORE_INDEX, VTCCollator, VTCTrainer, distillation_loss, lm_loss, prepare_stage

SAMPLES = vtc.tasks.synthetic("majority-colour", "train", 2) + vtc.tasks.synthetic("more-red", "train", 1)


def trainer(model, tmp_path, **kwargs):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True,
                             remove_unused_columns=False, per_device_train_batch_size=len(SAMPLES))
    return VTCTrainer(model=model, args=args, objective="distill", **kwargs)


def logits(model, inputs):
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k not in ("labels", "teacher_inputs")}).logits


def lvtc(ratio):
    return vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=ratio, restore="delta"))


def test_lvtc_at_ratio_1_distills_to_zero_and_at_ratio_4_does_not(tmp_path):
    model, processor = vtc.tasks.reference_model("llava")
    # LVTC alone: the teacher sees the student's own inputs; grid-readout is the task that pooling visibly hurts
    batch = VTCCollator(processor)(SAMPLES + vtc.tasks.synthetic("grid-readout", "train", 1))
    losses = {}
    for ratio in (1, 4):
        vtc.compress(model, lvtc(ratio))
        with torch.no_grad():
            losses[ratio] = trainer(model, tmp_path).compute_loss(model, batch).item()
    # ratio 1 with restore "delta" is the identity up to float rounding; ratio 4 shows the teacher really is the
    # uncompressed model (were it the student, both losses would be 0)
    assert 0.0 <= losses[1] < 1e-6, losses
    assert losses[4] > 1e-2, losses


def test_pvtc_distillation_is_positive_and_uses_the_uncompressed_model_as_teacher(tmp_path):
    torch.manual_seed(0)
    model, processor = vtc.tasks.reference_model("llava")
    plain_model, plain_processor = vtc.tasks.reference_model("llava")  # never compressed
    teacher_processor = copy.deepcopy(processor)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    model = prepare_stage(model, "compressor")
    batch = VTCCollator(processor, teacher_processor=teacher_processor)(SAMPLES)
    teacher_inputs = batch["teacher_inputs"]
    assert teacher_inputs["input_ids"].shape[1] > batch["input_ids"].shape[1]
    assert torch.equal(teacher_inputs["input_ids"],
                       VTCCollator(plain_processor)(SAMPLES)["input_ids"])  # the copy was taken unpatched

    student, teacher = logits(model, batch), logits(plain_model, teacher_inputs)
    labels, teacher_labels = batch["labels"], teacher_inputs["labels"]
    expected = {t: distillation_loss(student, labels, teacher, teacher_labels, temperature=t) for t in (1.0, 2.0)}
    lm = lm_loss(student, labels)

    loss = trainer(model, tmp_path).compute_loss(model, batch)
    assert torch.isfinite(loss) and loss.item() > 0
    torch.testing.assert_close(loss, expected[1.0], rtol=1e-4, atol=1e-7)
    loss.backward()  # the gradient reaches the compressor only (the teacher pass is under no_grad)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("vtc_" in n for n in grads) and any(g.abs().sum() > 0 for g in grads.values())

    with torch.no_grad():
        hot = trainer(model, tmp_path, temperature=2.0).compute_loss(model, batch)
        mixed = trainer(model, tmp_path, lm_weight=0.5).compute_loss(model, batch)
        per_item = trainer(model, tmp_path).compute_loss(model, batch, num_items_in_batch=torch.tensor(10))
    torch.testing.assert_close(hot, expected[2.0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(mixed, expected[1.0] + 0.5 * lm, rtol=1e-4, atol=1e-7)
    answer_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(per_item, expected[1.0] * answer_tokens / 10, rtol=1e-4, atol=1e-7)


def test_trainer_refuses_bad_distillation_options(tmp_path):
    model, _ = vtc.tasks.reference_model("llava")
    for kwargs in ({"objective": "kl"}, {"temperature": 0}, {"temperature": -1.0}, {"lm_weight": -0.1}):
        with pytest.raises(vtc.ConfigError):
            VTCTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                           report_to="none"), **kwargs)


def random_case(seed=0, vocab=11):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(2, 6, vocab, generator=gen) * 3, torch.randn(2, 8, vocab, generator=gen) * 3
    student_labels = torch.full((2, 6), IGNORE_INDEX)
    teacher_labels = torch.full((2, 8), IGNORE_INDEX)
    student_labels[0, 4:6] = 1  # 2 answer tokens in row 0, 1 in row 1
    student_labels[1, 5] = 2
    teacher_labels[0, 6:8] = 1  # the same answers, later in the longer teacher rows
    teacher_labels[1, 3] = 2
    return student, student_labels, teacher, teacher_labels


def test_distillation_loss_is_temperature_scaled_kl_at_the_answer_positions():
    student, student_labels, teacher, teacher_labels = random_case()
    # the logits predicting each answer token: position t - 1 for the token at t
    s = torch.stack([student[0, 3], student[0, 4], student[1, 4]])
    t = torch.stack([teacher[0, 5], teacher[0, 6], teacher[1, 2]])
    for temperature in (0.5, 1.0, 2.0, 4.0):
        p, log_p = F.softmax(t / temperature, -1), F.log_softmax(t / temperature, -1)
        kl = (p * (log_p - F.log_softmax(s / temperature, -1))).sum()
        loss = distillation_loss(student, student_labels, teacher, teacher_labels, temperature=temperature)
        torch.testing.assert_close(loss, temperature**2 * kl / 3)
        per_item = distillation_loss(student, student_labels, teacher, teacher_labels, temperature=temperature,
                                     num_items=7)
        torch.testing.assert_close(per_item, temperature**2 * kl / 7)
    # positions that predict no answer token do not matter
    noisy_student, noisy_teacher = student.clone(), teacher.clone()
    noisy_student[0, :3] = 1e4
    noisy_teacher[1, 3:] = -1e4
    torch.testing.assert_close(distillation_loss(noisy_student, student_labels, noisy_teacher, teacher_labels),
                               distillation_loss(student, student_labels, teacher, teacher_labels))
    # the same distributions at the answer positions: zero at every temperature
    same = teacher.clone()[:, :6]
    same[0, 3:5], same[1, 4] = teacher[0, 5:7], teacher[1, 2]
    for temperature in (0.5, 3.0):
        loss = distillation_loss(same, student_labels, teacher, teacher_labels, temperature=temperature)
        assert abs(loss.item()) < 1e-6


def test_distillation_loss_refuses_batches_with_different_answer_counts():
    student, student_labels, teacher, teacher_labels = random_case()
    teacher_labels[1, 4] = 3  # one answer token more in the teacher's batch
    with pytest.raises(vtc.DataError):
        distillation_loss(student, student_labels, teacher, teacher_labels)
