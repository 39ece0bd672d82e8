"""Pruning inside the decoder at run time, as for LVTC: threads sharing one pruned model, copies and pickles, training
with gradient checkpointing, `vtc.disabled`, checkpoints, several images in one prompt next to a sample without one,
rows `generate` repeats, and PVTC's fewer tokens pruned further."""

import copy
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from inllm_helpers import METHODS, config, counts, items
from prune_helpers import with_positions
from references import vtc_hooks

import vtc
from vtc.registry import get_adapter
from vtc.testing import (
    TINY_FAMILIES,
    ablation_image_sizes,
    build_tiny_model,
    build_tiny_processor,
    image_placeholder,
    tiny_batch,
    tiny_images,
)

#: Every method on a family of each kind (a fixed grid, tiles, M-RoPE), FastV on every family.
CASES = sorted({*((family, method) for family in ("llava", "internvl", "qwen2_vl") for method in METHODS),
                *((family, "fastv") for family in TINY_FAMILIES)})


def pruned(family, method, **kwargs):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, config(method, **kwargs), processor=processor)
    return model, processor


def logits(model, inputs, **kwargs):
    inputs = dict(inputs) if get_adapter(model).uses_mrope else with_positions(inputs)
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


@pytest.mark.parametrize(("family", "method"), CASES)
def test_threads_sharing_a_pruned_model_get_what_each_gets_alone(family, method):
    model, processor = pruned(family, method)
    sizes = ablation_image_sizes(family)
    work = [tiny_batch(family, processor, batch=1, image_sizes=[sizes[0]]),
            tiny_batch(family, processor, batch=2, image_sizes=[sizes[1], sizes[-1]]),
            tiny_batch(family, processor, batch=1, image_sizes=[sizes[-1]], prompt="w1 {image} w2 w3 w4 w5 w6 .")]

    def serve(inputs):
        out = logits(model, inputs)
        stats = vtc.last_stats(model)
        generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        return out, (stats["kept"], stats["layer_seq_lens"]), generated

    alone = [serve(inputs) for inputs in work]
    start = threading.Barrier(len(work))

    def rounds(index):
        """Three rounds of one request, next to the others; the rounds that differ from the request alone."""
        start.wait()
        differ = []
        for round_ in range(3):
            out, stats, generated = serve(work[index])
            if not (torch.allclose(out, alone[index][0], atol=1e-5) and stats == alone[index][1]
                    and torch.equal(generated, alone[index][2])):
                differ.append(f"request {index} round {round_}")
        return differ

    with ThreadPoolExecutor(max_workers=len(work)) as pool:  # a thread's exception reaches `result()`
        assert [future.result() for future in [pool.submit(rounds, i) for i in range(len(work))]] == [[]] * len(work)


@pytest.mark.parametrize(("family", "method"), [c for c in CASES if c[0] in ("llava", "internvl", "qwen2_vl")])
def test_a_copy_and_a_pickle_are_independent_pruned_models(family, method):
    model, processor = pruned(family, method)
    inputs = tiny_batch(family, processor, batch=2)
    restored = pickle.loads(pickle.dumps(model))  # before any forward: transformers adds unpicklable hooks at the first
    reference = logits(model, inputs)
    kept = vtc.last_stats(model)["kept"]
    assert torch.equal(logits(restored, inputs), reference) and vtc.last_stats(restored)["kept"] == kept
    twin = copy.deepcopy(model)
    assert torch.equal(logits(twin, inputs), reference) and vtc.last_stats(twin)["kept"] == kept
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.equal(twin.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False), generated)
    vtc.unpatch(twin)
    assert vtc_hooks(twin) == [] and vtc.is_compressed(model)
    assert torch.equal(logits(model, inputs), reference)


@pytest.mark.parametrize("method", METHODS)
def test_training_with_gradient_checkpointing_gives_the_plain_gradients(method):
    model, processor = pruned("qwen2_vl", method)
    inputs = tiny_batch("qwen2_vl", processor, batch=2)

    def gradients():
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"], use_cache=False).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    model.train()
    plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed = gradients()
    model.activation_checkpointing_disable()
    model.eval()
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_disabled_and_a_checkpoint(tmp_path):
    model, processor = build_tiny_model("internvl"), build_tiny_processor("internvl")
    inputs = tiny_batch("internvl", processor, batch=2)
    reference = logits(model, inputs)
    settings = config("pdrop", keep=0.5, layer=(1, 3))
    vtc.compress(model, settings, processor=processor)
    pruned_logits = logits(model, inputs)
    with vtc.disabled(model):
        assert torch.equal(logits(model, inputs), reference)
    model.save_pretrained(tmp_path)
    assert vtc.VTCConfig.load(tmp_path / "vtc_config.json") == settings
    backbone = type(model).from_pretrained(tmp_path).eval()
    vtc.load_pretrained(backbone, tmp_path, processor=build_tiny_processor("internvl"))
    assert vtc.get_config(backbone).prune.layer == (1, 3)
    assert torch.equal(logits(backbone, inputs), pruned_logits)


@pytest.mark.parametrize("family", ["llava", "internvl", "qwen2_vl"])
@pytest.mark.parametrize("method", METHODS)
def test_several_images_in_one_prompt_next_to_a_sample_without_one(family, method):
    model, processor = pruned(family, method)
    placeholder = image_placeholder(family)
    images = tiny_images([(32, 32), (64, 40)])
    texts = [f"w1 {placeholder} w2 w3 {placeholder} w4 what is this ?", "w5 w6 what is this ?"]
    inputs = processor(images=[images, []], text=texts, return_tensors="pt", padding=True)
    batched = logits(model, inputs)
    stats = vtc.last_stats(model)
    groups = items(family, stats["visual_layout"][0])
    assert len(groups) >= 2 and stats["visual_layout"][1] == () and stats["kept"][1] == []
    for positions, kept in zip(groups, stats["kept"][0]):
        last = kept[-1] if method == "pdrop" else kept
        assert len(last) == counts(method, len(positions))[-1]
    alone = [logits(model, processor(images=[images], text=texts[:1], return_tensors="pt"))[0],
             logits(model, processor(text=texts[1:], return_tensors="pt"))[0]]
    real = inputs["attention_mask"].bool()
    for row, single in enumerate(alone):
        torch.testing.assert_close(batched[row][real[row]], single, rtol=0, atol=1e-5)


def test_the_rows_generate_repeats_keep_what_their_row_keeps():
    model, processor = pruned("internvl", "fastv")
    inputs = tiny_batch("internvl", processor, batch=2)  # one tile, then three
    logits(model, inputs)
    kept = vtc.last_stats(model)["kept"]
    model.generate(**inputs, max_new_tokens=2, num_beams=2, num_return_sequences=2, do_sample=False)
    assert vtc.last_stats(model)["kept"] == [kept[0], kept[0], kept[1], kept[1]]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_pvtc_tokens_are_pruned_further_inside_the_decoder(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    settings = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), prune=vtc.PruneConfig(method="fastv", keep=0.5, layer=2))
    vtc.compress(model, settings, processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    out = logits(model, inputs)
    stats = vtc.last_stats(model)
    for sample, kept in zip(stats["visual_layout"], stats["kept"]):
        assert [len(k) for k in kept] == [-(-span.length // 2) for span in sample]  # half of PVTC's tokens
    generated = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    torch.testing.assert_close(generated.logits[0], out[:, -1], rtol=0, atol=1e-5)
