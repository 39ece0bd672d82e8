"""Videos pass through every component uncompressed, on every family whose model takes videos.

PVTC compresses images only (Qwen3-VL's `get_video_features`, which calls `get_image_features`, included), LVTC pools
image tokens only (video tokens are text to it), RVTC tiles images only. So a video alone gives exactly the unpatched
model's logits and generation; next to an image, the video's features are the unpatched model's, the image's are
compressed, and cached generation equals a forward without cache.
"""

import pytest
import torch
from references import append_tokens, identical
from transformers.utils import ModelOutput

import vtc
from vtc.testing import VIDEO_FAMILIES, build_tiny_model, build_tiny_processor, tiny_video_batch

LVTC = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4)  # the tiny models have 4 decoder layers
COMPONENTS = {
    "pvtc": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)),
    "lvtc": vtc.VTCConfig(lvtc=LVTC),
    "rvtc": vtc.VTCConfig(rvtc=vtc.RVTCConfig(max_tiles=2)),
    "pvtc+lvtc+rvtc": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), lvtc=LVTC, rvtc=vtc.RVTCConfig(max_tiles=2)),
}
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw")


def video_features(model, inputs) -> ModelOutput:
    kwargs = {k: v for k, v in inputs.items() if k in VIDEO_KEYS}
    with torch.no_grad():
        return model.model.get_video_features(**kwargs, return_dict=True)


def generate(model, inputs, **kwargs):
    return model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, **kwargs)


@pytest.mark.parametrize("component", sorted(COMPONENTS))
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_a_video_alone_gives_the_unpatched_model(family, component):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_video_batch(family, processor, batch=2)
    with torch.no_grad():
        reference = model(**inputs).logits
    reference_generation, reference_features = generate(model, inputs), video_features(model, inputs)

    vtc.compress(model, COMPONENTS[component], processor=processor)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)
    assert vtc.last_stats(model)["visual_tokens"] == [0, 0]
    assert torch.equal(generate(model, inputs), reference_generation)
    assert identical(video_features(model, inputs), reference_features)


@pytest.mark.parametrize("component", sorted(COMPONENTS))
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_a_video_next_to_an_image_keeps_its_features_and_generation_is_consistent(family, component):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    reference_features = video_features(model, tiny_video_batch(family, processor, batch=2, with_image=True))

    vtc.compress(model, COMPONENTS[component], processor=processor)
    inputs = tiny_video_batch(family, processor, batch=2, with_image=True)  # images through the patched processor
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.isfinite().all()
    placeholders = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert vtc.last_stats(model)["visual_tokens"] == placeholders
    assert identical(video_features(model, inputs), reference_features)

    # generate lays out the images, not the video frames, and its cached steps equal a forward without cache
    generated = generate(model, inputs, output_logits=True, return_dict_in_generate=True)
    assert vtc.last_stats(model)["visual_tokens"] == placeholders
    with torch.no_grad():
        no_cache = model(**append_tokens(inputs, generated.sequences[:, :-1]), use_cache=False).logits
    prompt_length = inputs["input_ids"].shape[1]
    for step, step_logits in enumerate(generated.logits):
        torch.testing.assert_close(step_logits, no_cache[:, prompt_length - 1 + step], rtol=0, atol=1e-4)


def test_qwen3_vl_video_frames_are_not_pooled_by_pvtc():
    # Qwen3-VL's get_video_features calls get_image_features: PVTC must see that the call is for a video
    model, processor = build_tiny_model("qwen3_vl"), build_tiny_processor("qwen3_vl")
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    inputs = tiny_video_batch("qwen3_vl", processor)
    features = video_features(model, inputs)
    placeholders = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert sum(len(t) for t in features.pooler_output) == placeholders
    assert all([t.shape for t in level] == [t.shape for t in features.pooler_output]
               for level in features.deepstack_features)
