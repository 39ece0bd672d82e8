"""`prepare_stage`: which parameters each stage trains, counted against groups built from the parameter names alone.

The groups (tiny LLaVA, Qwen2-VL and InternVL):

* vtc: a name with a dotted part starting with `vtc_` (PVTC's projector, LVTC's `add` gate);
* language model: `model.language_model.*`; output head: `lm_head.*` (tied to the embeddings in InternVL, so absent);
* native projector: `model.multi_modal_projector.*` (LLaVA, InternVL), `model.visual.merger.*` (Qwen);
* vision tower: `model.vision_tower.*` (LLaVA, InternVL), `model.visual.*` minus the merger (Qwen).

Every parameter of the model falls in exactly one group, so a parameter that trains by mistake cannot hide.
"""

import copy
import functools

import pytest
import torch
from torch import nn

import vtc
from vtc.tasks import Sample
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_images
from vtc.training import VTCCollator, lm_loss, prepare_stage

FAMILIES = ("llava", "qwen2_vl", "internvl")
LVTC_ADD = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4, restore="add")  # has a trainable gate
PVTC_LVTC = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), lvtc=LVTC_ADD)
LVTC_ONLY = vtc.VTCConfig(lvtc=LVTC_ADD)  # the native projector stays in use
VISION_PREFIX = {"llava": "model.vision_tower.", "internvl": "model.vision_tower.", "qwen2_vl": "model.visual."}
PROJECTOR_PREFIX = {"llava": "model.multi_modal_projector.", "internvl": "model.multi_modal_projector.",
                    "qwen2_vl": "model.visual.merger."}
PEFT_PREFIX = "base_model.model."
SAMPLES = [Sample(tiny_images([(40, 40)]), "what is in this picture ?", "red blue w3"),
           Sample(tiny_images([(32, 48)], seed=1), "describe the image .", "w7")]


def is_vtc(name):
    return any(part.startswith("vtc_") for part in name.split("."))


def groups(family, names):
    """The names of each group, from the names alone; asserts that the groups partition `names`."""
    vtc_names = {n for n in names if is_vtc(n)}
    rest = [n for n in names if n not in vtc_names]
    projector = {n for n in rest if n.startswith(PROJECTOR_PREFIX[family])}
    vision = {n for n in rest if n.startswith(VISION_PREFIX[family]) and n not in projector}
    language = {n for n in rest if n.startswith("model.language_model.")}
    head = {n for n in rest if n.startswith("lm_head.")}
    parts = {"vtc": vtc_names, "language": language, "head": head, "projector": projector, "vision": vision}
    assert sum(map(len, parts.values())) == len(names) == len(set().union(*parts.values()))
    assert all(parts[k] for k in ("vtc", "language", "projector", "vision")), {k: len(v) for k, v in parts.items()}
    return parts


@functools.cache
def _built(family):
    return build_tiny_model(family), build_tiny_processor(family)


def compressed(family, config=PVTC_LVTC):
    """A compressed copy of the tiny model of `family` (built once per worker), and its own processor."""
    base, plain = _built(family)
    model, processor = copy.deepcopy(base), copy.deepcopy(plain)
    vtc.compress(model, config, processor=processor if config.pvtc is not None else None)
    return model, processor


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def lm_linears(model):
    return {n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.startswith("model.language_model.") and not is_vtc(n)}


@pytest.mark.parametrize("family", FAMILIES)
def test_compressor_stage_trains_exactly_the_vtc_parameters(family):
    model, _ = compressed(family)
    names = [n for n, _ in model.named_parameters()]
    parts = groups(family, names)
    assert prepare_stage(model, "compressor") is model
    assert trainable(model) == parts["vtc"]
    assert len(trainable(model)) == sum(is_vtc(n) for n in names) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_full_stage_trains_language_model_head_projector_and_vtc_but_no_vision(family):
    model, _ = compressed(family, LVTC_ONLY)
    names = [n for n, _ in model.named_parameters()]
    parts = groups(family, names)
    assert prepare_stage(model, "full") is model
    expected = parts["vtc"] | parts["language"] | parts["head"] | parts["projector"]
    assert trainable(model) == expected
    assert len(trainable(model)) == len(names) - len(parts["vision"])
    assert not trainable(model) & parts["vision"]
    assert (family == "internvl") == (not parts["head"])  # InternVL ties its head to the embeddings


@pytest.mark.parametrize("family", FAMILIES)
def test_full_stage_with_train_vision_trains_everything(family):
    model, _ = compressed(family, LVTC_ONLY)  # every parameter takes part (with PVTC the native projector does not)
    prepare_stage(model, "full", train_vision=True)
    assert trainable(model) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_lora_stage_trains_lora_on_every_language_model_linear_and_the_vtc_parameters(family):
    model, _ = compressed(family)
    vtc_names = {n for n, _ in model.named_parameters() if is_vtc(n)}
    linears = lm_linears(model)
    # q, k, v, o and gate, up, down in every decoder layer
    assert len(linears) == 7 * model.config.text_config.num_hidden_layers
    peft_model = prepare_stage(model, "lora")
    assert type(peft_model).__name__ == "PeftModel"
    lora = {f"{PEFT_PREFIX}{n}.lora_{ab}.default.weight" for n in linears for ab in "AB"}
    assert trainable(peft_model) == lora | {PEFT_PREFIX + n for n in vtc_names}
    assert len(trainable(peft_model)) == 2 * len(linears) + len(vtc_names)
    adapted = {n for n, _ in peft_model.named_parameters() if ".lora_" in n}
    assert adapted == lora  # no LoRA anywhere else (vision tower, projector, head, vtc modules)
    assert vtc.training.unwrap(peft_model) is model and vtc.is_compressed(model)


def test_lora_stage_with_train_vision_adds_only_the_vision_tower():
    model, _ = compressed("llava")
    parts = groups("llava", [n for n, _ in model.named_parameters()])
    peft_model = prepare_stage(model, "lora", train_vision=True)
    lora = {n for n in trainable(peft_model) if ".lora_" in n}
    assert lora
    assert trainable(peft_model) - lora == {PEFT_PREFIX + n for n in parts["vtc"] | parts["vision"]}


def test_uncompressed_models_unknown_stages_and_bad_options_are_refused():
    plain = build_tiny_model("llava")
    for stage in ("compressor", "full", "lora"):
        with pytest.raises(vtc.ConfigError):
            prepare_stage(plain, stage)
    model, _ = compressed("llava")
    with pytest.raises(vtc.ConfigError):
        prepare_stage(model, "everything")
    with pytest.raises(vtc.ConfigError):
        prepare_stage(model, "compressor", train_vision=True)
    assert all(p.requires_grad for p in plain.parameters())  # refused before touching anything


def one_step(train_model, processor):
    """One AdamW step (no weight decay) on the LM loss over ALL parameters, frozen ones included (they get no
    gradient, so AdamW skips them); the names of the parameters that changed."""
    before = {n: p.detach().clone() for n, p in train_model.named_parameters()}
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-2, weight_decay=0.0)
    batch = VTCCollator(processor)(SAMPLES)
    labels = batch.pop("labels")
    train_model.train()
    lm_loss(train_model(**batch).logits, labels).backward()
    optimizer.step()
    return {n for n, p in train_model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize(("family", "stage", "config"), [
    ("llava", "compressor", PVTC_LVTC),
    ("llava", "full", LVTC_ONLY),
    ("qwen2_vl", "full", LVTC_ONLY),
    ("llava", "lora", PVTC_LVTC),
])
def test_one_optimizer_step_changes_only_what_the_stage_trains(family, stage, config):
    model, processor = compressed(family, config)
    parts = groups(family, [n for n, _ in model.named_parameters()])
    linears = lm_linears(model)
    train_model = prepare_stage(model, stage)
    changed = one_step(train_model, processor)
    assert changed <= trainable(train_model)
    if stage == "lora":
        # the base weights stay; every adapter's B moves, its A not yet (A's gradient is zero while B is zero)
        assert len({n for n in changed if ".lora_B." in n}) == len(linears)
        assert not any(".lora_A." in n or ".base_layer." in n for n in changed)
        changed = {n.removeprefix(PEFT_PREFIX) for n in changed if ".lora_" not in n}
    assert not changed & parts["vision"]
    assert changed & parts["vtc"]
    if stage in ("compressor", "lora"):
        assert changed <= parts["vtc"]
    else:
        assert changed & parts["language"] and changed & parts["projector"]


@pytest.mark.parametrize("train_vision", [False, True])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_full_stage_with_pvtc_trains_only_parameters_that_get_gradients(family, train_vision):
    model, processor = compressed(family)
    parts = groups(family, [n for n, _ in model.named_parameters()])
    prepare_stage(model, "full", train_vision=train_vision)
    batch = VTCCollator(processor)(SAMPLES)
    labels = batch.pop("labels")
    model.train()
    lm_loss(model(**batch).logits, labels).backward()
    assert bool(trainable(model) & parts["vision"]) == train_vision
    assert parts["language"] <= trainable(model)
    # (vision towers may hold parameters their model never uses, e.g. LLaVA's CLIP post_layernorm: not vtc's doing)
    unused = sorted(n for n, p in model.named_parameters()
                    if p.requires_grad and p.grad is None and n not in parts["vision"])
    assert not unused, unused
