"""Training a compressor on a frozen backbone, and checkpointing only what vtc added."""

import json

import pytest
import torch

import vtc
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch


def compressed(family="llava", ratio=4, init="warm"):
    model = build_tiny_model(family)
    processor = build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=ratio, init=init)), processor=processor)
    return model, processor


@pytest.mark.parametrize("init", ["warm", "paper"])
def test_a_few_optimizer_steps_lower_the_loss_and_leave_the_backbone_alone(init):
    torch.manual_seed(0)
    model, processor = compressed(init=init)
    backbone = {n: p.detach().clone() for n, p in model.named_parameters() if "vtc_" not in n}
    trainable = vtc.mark_only_vtc_trainable(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    inputs = tiny_batch("llava", processor, batch=2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(torch.equal(p, backbone[n]) for n, p in model.named_parameters() if n in backbone)
    assert trainable == [n for n, p in model.named_parameters() if p.requires_grad]


def test_save_and_load_round_trip_to_identical_outputs(tmp_path):
    model, processor = compressed(family="qwen2_vl")
    with torch.no_grad():  # move away from the initialisation so that loading has something to restore
        for name, p in model.named_parameters():
            if "vtc_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    inputs = tiny_batch("qwen2_vl", processor, batch=2)
    with torch.no_grad():
        expected = model(**inputs).logits
    folder = vtc.save_pretrained(model, tmp_path / "ckpt")
    assert json.loads((folder / "vtc_config.json").read_text())["pvtc"]["ratio"] == 4

    fresh, fresh_processor = build_tiny_model("qwen2_vl"), build_tiny_processor("qwen2_vl")
    vtc.load_pretrained(fresh, folder, processor=fresh_processor)
    assert vtc.get_config(fresh) == vtc.get_config(model)
    with torch.no_grad():
        assert torch.equal(fresh(**tiny_batch("qwen2_vl", fresh_processor, batch=2)).logits, expected)


def test_checkpoint_of_another_family_is_refused_and_leaves_the_model_uncompressed(tmp_path):
    model, _ = compressed(family="llava")
    folder = vtc.save_pretrained(model, tmp_path / "ckpt")
    other = build_tiny_model("internvl")
    with pytest.raises(vtc.ConfigError, match="missing"):
        vtc.load_pretrained(other, folder, processor=build_tiny_processor("internvl"))
    assert not vtc.is_compressed(other)


def test_nothing_to_train_without_a_component():
    model = build_tiny_model("llava")
    vtc.compress(model, vtc.VTCConfig())
    with pytest.raises(vtc.ConfigError, match="vtc.compress"):
        vtc.mark_only_vtc_trainable(model)
