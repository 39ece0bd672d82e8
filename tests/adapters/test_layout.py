"""Adapters describe the vision output and the visual layout exactly as the model consumes them."""

import pytest
import torch

import vtc
from vtc.registry import get_adapter
from vtc.testing import (
    TINY_FAMILIES,
    build_tiny_model,
    build_tiny_processor,
    image_placeholder,
    tiny_batch,
    tiny_images,
)


def placeholder_positions(row, image_token):
    return torch.nonzero(row == image_token).flatten().tolist()


def assert_layout_covers_placeholders(layout, input_ids, image_token):
    assert len(layout) == input_ids.shape[0]
    for row, spans in zip(input_ids, layout):
        covered = [p for span in spans for p in span.positions()]
        assert covered == sorted(covered), "spans must be ordered and disjoint"
        assert covered == placeholder_positions(row, image_token)


def flat_features(pooler_output):
    if isinstance(pooler_output, torch.Tensor):
        return pooler_output.reshape(-1, pooler_output.shape[-1])
    return torch.cat(list(pooler_output))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_vision_features_through_the_native_projector_equal_get_image_features(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    adapter = get_adapter(model)
    image_inputs = adapter.image_inputs_from(inputs)
    with torch.no_grad():
        reference = flat_features(model.model.get_image_features(**image_inputs).pooler_output)
        features = adapter.vision_features(**image_inputs)
        projected = torch.cat(adapter.project(features))
    torch.testing.assert_close(projected, reference, rtol=1e-5, atol=1e-6)
    assert len(features.patches) == sum(features.items_per_image)
    assert (features.cls is not None) == adapter.vision_has_cls
    (h, w), (sh, sw) = features.patches[0].shape[:2], adapter.projector_window
    assert h % sh == 0 and w % sw == 0
    if family == "qwen3_vl":
        deepstack = adapter.project_deepstack(features)
        reference_deepstack = model.model.get_image_features(**image_inputs).deepstack_features
        for level, ref_level in zip(deepstack, reference_deepstack):
            torch.testing.assert_close(torch.cat(level), torch.cat(list(ref_level)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_layout_grids_match_the_feature_counts_per_image(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    adapter = get_adapter(model)
    layout = adapter.visual_layout(inputs["input_ids"], adapter.image_inputs_from(inputs))
    assert_layout_covers_placeholders(layout, inputs["input_ids"], adapter.image_token_id)
    grid_spans = [s for spans in layout for s in spans if s.grid is not None]
    assert grid_spans, "every family reports at least one 2-D grid"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_several_images_in_one_prompt_and_a_sample_without_image(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    placeholder = image_placeholder(family)
    images = tiny_images([(32, 32), (64, 40)])
    inputs = processor(images=[images], text=[f"w1 {placeholder} w2 w3 {placeholder} w4"], return_tensors="pt")
    adapter = get_adapter(model)
    vtc.compress(model, vtc.VTCConfig(), processor=processor)
    with torch.no_grad():
        model(**inputs)
    layout = vtc.last_stats(model)["visual_layout"]
    assert_layout_covers_placeholders(layout, inputs["input_ids"], adapter.image_token_id)
    assert len([s for s in layout[0] if s.grid is not None]) >= 2

    # a text-only, left-padded sample next to the image sample: its layout is empty
    ids = inputs["input_ids"]
    text_only = torch.cat([torch.zeros(1, 3, dtype=ids.dtype), torch.randint(20, 60, (1, ids.shape[1] - 3))], 1)
    batch_ids = torch.cat([ids, text_only])
    layout = adapter.visual_layout(batch_ids, adapter.image_inputs_from(inputs))
    assert layout[1] == ()
    assert_layout_covers_placeholders(layout, batch_ids, adapter.image_token_id)
