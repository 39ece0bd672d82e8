"""PEFT LoRA around a compressed model: save, reload, merge, unpatch, and `vtc.disabled` inside the wrapper.

The LLaVA reference model compressed with PVTC (ratio 4) and LVTC (`add`, which has a trainable gate), staged with
`prepare_stage("lora")` and trained two steps, so that the adapters' B matrices and the vtc tensors are non-zero.

Tolerances: reloading gives the same logits exactly; `merge_and_unload` folds `W + s * B @ A` into the weights, which
rounds differently from applying the adapter as a separate branch: `atol=5e-5, rtol=1e-5` (measured: max |diff|
1.7e-5 on logits up to 10.5); the unpatched merged model against a plain model merged by hand: `atol=1e-6` (measured:
bitwise equal).
"""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import vtc
from vtc.training import VTCCollator, lm_loss, prepare_stage, unwrap

peft = pytest.importorskip("peft")

CONFIG = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4),
                       lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4, restore="add"))
SAMPLES = vtc.tasks.synthetic("grid-readout", "train", 1) + vtc.tasks.synthetic("more-red", "train", 1)


def logits(model, processor):
    inputs = VTCCollator(processor)(SAMPLES)
    inputs.pop("labels")
    with torch.no_grad():
        return model(**inputs).logits


class Trained:
    """The trained PEFT model, its (patched) processor, an unpatched processor, and the folder it was saved to."""

    def __init__(self, folder):
        torch.manual_seed(0)
        model, self.processor = vtc.tasks.reference_model("llava")
        self.plain_processor = copy.deepcopy(self.processor)
        vtc.compress(model, CONFIG, processor=self.processor)
        self.peft_model = prepare_stage(model, "lora")
        batch = VTCCollator(self.processor)(SAMPLES)
        labels = batch.pop("labels")
        optimizer = torch.optim.AdamW([p for p in self.peft_model.parameters() if p.requires_grad], lr=1e-2)
        self.peft_model.train()
        for _ in range(2):
            optimizer.zero_grad()
            lm_loss(self.peft_model(**batch).logits, labels).backward()
            optimizer.step()
        self.peft_model.eval()
        self.logits = logits(self.peft_model, self.processor)
        self.folder = folder
        self.peft_model.save_pretrained(folder)
        vtc.save_pretrained(self.peft_model, folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return Trained(tmp_path_factory.mktemp("peft"))


def reloaded(folder):
    """A fresh base model, compressed from the folder's vtc files, with the folder's adapter on top."""
    model, processor = vtc.tasks.reference_model("llava")
    vtc.load_pretrained(model, folder, processor=processor)
    return peft.PeftModel.from_pretrained(model, folder), processor


def merged_by_hand(folder):
    """A plain (never compressed) base model with the saved LoRA adapters added into its weights: W + s * B @ A."""
    model, _ = vtc.tasks.reference_model("llava")
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    adapters = load_file(str(folder / "adapter_model.safetensors"))
    weights = model.state_dict()
    with torch.no_grad():
        for key, a in adapters.items():
            if ".lora_A." in key:
                b = adapters[key.replace(".lora_A.", ".lora_B.")]
                weights[key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")].add_(scale * b @ a)
    return model


def test_save_and_reload_into_a_fresh_base_model_gives_the_same_logits(trained):
    files = {p.name for p in trained.folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "vtc_config.json", "vtc_weights.safetensors"} <= files
    saved = load_file(str(trained.folder / "vtc_weights.safetensors"))
    assert saved and all(not k.startswith("base_model.") for k in saved)  # the names of the plain compressed model
    assert any(b.abs().sum() > 0 for k, b in load_file(str(trained.folder / "adapter_model.safetensors")).items()
               if ".lora_B." in k)
    model, processor = reloaded(trained.folder)
    assert torch.equal(logits(model, processor), trained.logits)


def test_merge_and_unload_stays_compressed_and_unpatch_gives_the_plain_merged_model(trained):
    model, processor = reloaded(trained.folder)
    merged = model.merge_and_unload()
    assert vtc.is_compressed(merged)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, processor), trained.logits, atol=5e-5, rtol=1e-5)

    vtc.unpatch(merged)
    assert not vtc.is_compressed(merged)
    assert not any("vtc_" in n for n, _ in merged.state_dict().items())
    # the processor is unpatched too: it writes the uncompressed placeholder counts again
    plain_inputs = VTCCollator(trained.plain_processor)(SAMPLES)
    assert torch.equal(VTCCollator(processor)(SAMPLES)["input_ids"], plain_inputs["input_ids"])
    torch.testing.assert_close(logits(merged, trained.plain_processor),
                               logits(merged_by_hand(trained.folder), trained.plain_processor), atol=1e-6, rtol=0)


def test_disabled_on_the_inner_model_runs_the_uncompressed_model_with_the_adapters(trained):
    inner = unwrap(trained.peft_model)
    assert inner is not trained.peft_model and vtc.is_compressed(inner)
    plain, _ = vtc.tasks.reference_model("llava")
    expected = logits(peft.PeftModel.from_pretrained(plain, trained.folder), trained.plain_processor)
    with vtc.disabled(inner):
        actual = logits(trained.peft_model, trained.plain_processor)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)
    assert not torch.equal(actual[:, -1], logits(trained.peft_model, trained.processor)[:, -1])
    assert torch.equal(logits(trained.peft_model, trained.processor), trained.logits)  # compressed again after
