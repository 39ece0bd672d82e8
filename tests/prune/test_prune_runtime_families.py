"""Threads, save and load on the families whose pruning has state of its own: Qwen's kept positions (made before
the selection is known inside `generate`, per thread) and LLaVA-NeXT's packed images."""

import threading

import pytest
import torch

import vtc
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

FAMILIES = ("qwen2_vl", "llava_next")
CONFIG = vtc.VTCConfig(prune=vtc.PruneConfig(method="divprune", keep=0.5))


def greedy(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                              return_dict_in_generate=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_threads_generating_with_one_pruned_model_get_what_each_gets_alone(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, CONFIG, processor=processor)
    batches = [tiny_batch(family, processor, batch=1, image_sizes=[size]) for size in [(48, 40), (40, 64)]]
    alone = []
    for inputs in batches:
        out = greedy(model, inputs)
        alone.append((out.sequences, torch.stack(out.logits), vtc.last_stats(model)["kept"]))
    results = [None, None]

    def run(index):
        for _ in range(2):
            out = greedy(model, batches[index])
            results[index] = (out.sequences, torch.stack(out.logits), vtc.last_stats(model)["kept"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (sequences, step_logits, kept), (want_sequences, want_logits, want_kept) in zip(results, alone):
        assert torch.equal(sequences, want_sequences) and kept == want_kept
        torch.testing.assert_close(step_logits, want_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_pruned_model_loads_to_the_same_outputs(family, tmp_path):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, CONFIG, processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    expected = greedy(model, inputs)
    model.save_pretrained(tmp_path)
    backbone = type(model).from_pretrained(tmp_path).eval()
    assert not vtc.is_compressed(backbone)
    fresh = build_tiny_processor(family)
    vtc.load_pretrained(backbone, tmp_path, processor=fresh)
    assert vtc.get_config(backbone) == CONFIG
    got = greedy(backbone, tiny_batch(family, fresh, batch=2))  # the patched processor writes the pruned counts
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(expected.logits), rtol=0, atol=1e-5)
