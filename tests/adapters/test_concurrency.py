"""Threads sharing one compressed model each get exactly what they get alone: per-call state lives in the call.

Serving code shares one model between request threads. Every family, every component and all three together are
run from several threads at once on requests of different shapes (batch sizes, image sizes, padding); each thread
checks its logits, its `generate` output and its own `last_stats` against the same request run alone.
"""

import threading

import pytest
import torch

import vtc
from vtc.testing import TINY_FAMILIES, ablation_image_sizes, build_tiny_model, build_tiny_processor, tiny_batch

ROUNDS = 4
LVTC = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4)
COMPONENTS = {
    "pvtc": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)),
    "lvtc": vtc.VTCConfig(lvtc=LVTC),
    "rvtc": vtc.VTCConfig(rvtc=vtc.RVTCConfig(mode="area", max_tiles=4)),
    "all": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), lvtc=LVTC, rvtc=vtc.RVTCConfig(mode="area", max_tiles=4)),
    "pvtc+lvtc": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), lvtc=LVTC),  # "all" where RVTC does not apply
}
# LLaVA-1.5 has one fixed resolution (no RVTC); the others have "all" instead of "pvtc+lvtc".
CASES = [(f, c) for f in TINY_FAMILIES for c in COMPONENTS
         if c != ("all" if f == "llava" else "pvtc+lvtc") and not (f == "llava" and c == "rvtc")]


def requests(family, processor):
    """Three requests of different shapes: one image, a left-padded batch of two, another image size."""
    sizes = ablation_image_sizes(family)
    return [
        tiny_batch(family, processor, batch=1, image_sizes=[sizes[0]]),
        tiny_batch(family, processor, batch=2, image_sizes=[sizes[1], sizes[-1]]),
        tiny_batch(family, processor, batch=1, image_sizes=[sizes[-1]], prompt="w1 {image} w2 w3 w4 w5 w6 w7 ."),
    ]


def run(model, inputs):
    with torch.no_grad():
        logits = model(**inputs).logits
        stats = vtc.last_stats(model)
        generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    return logits, stats, generated


def comparable(stats):
    return {key: value for key, value in stats.items() if key != "decode_steps"}


@pytest.mark.parametrize(("family", "components"), CASES)
def test_threads_sharing_a_compressed_model_get_what_they_get_alone(family, components):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, COMPONENTS[components], processor=processor)
    work = requests(family, processor)
    alone = [run(model, inputs) for inputs in work]
    assert len({tuple(a[0].shape) for a in alone}) > 1  # the requests really differ

    failures: list[str] = []
    start = threading.Barrier(len(work))

    def serve(index):
        start.wait()
        try:
            for round_ in range(ROUNDS):
                logits, stats, generated = run(model, work[index])
                expected_logits, expected_stats, expected_generated = alone[index]
                if logits.shape != expected_logits.shape or not torch.allclose(logits, expected_logits, atol=1e-5):
                    failures.append(f"request {index} round {round_}: logits differ")
                if comparable(stats) != comparable(expected_stats):
                    failures.append(f"request {index} round {round_}: last_stats shows another request")
                if not torch.equal(generated, expected_generated):
                    failures.append(f"request {index} round {round_}: generate differs")
        except Exception as error:  # an exception in a thread would otherwise vanish
            failures.append(f"request {index}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_last_stats_is_the_calling_threads_last_prefill():
    family = "qwen2_vl"
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(lvtc=LVTC), processor=processor)
    first, second, _ = requests(family, processor)
    with torch.no_grad():
        model(**first)
    mine = vtc.last_stats(model)
    seen_in_other_thread = {}

    def other():
        seen_in_other_thread["before"] = vtc.last_stats(model)
        with torch.no_grad():
            model(**second)
        seen_in_other_thread["after"] = vtc.last_stats(model)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen_in_other_thread["before"] == {}  # a thread that ran nothing has no last prefill
    assert seen_in_other_thread["after"]["sequence_length"] == second["input_ids"].shape[1]
    assert vtc.last_stats(model) == mine  # this thread's view is unchanged
