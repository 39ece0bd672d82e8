"""Image inputs that the model's processor would never make reach a PVTC model: a typed `vtc.InputError` that says
what was expected, never a bare reshape, convolution or `torch.cat` error from inside the vision path."""

import pytest
import torch
import torch.nn.functional as F

import vtc
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch

TILED = [f for f in TINY_FAMILIES if not f.startswith("qwen")]  # pixel values `(..., 3, 32, 32)`, one per tile
QWEN = [f for f in TINY_FAMILIES if f.startswith("qwen")]  # pixel values: one row of 3 x 2 x 4 x 4 values per patch
EXPECTED_TILE = {
    "internvl": "(tiles, 3, 32, 32)",
    "llava": "(images, 3, 32, 32)",
    "llava_next": "(images, crops, 3, 32, 32) or (crops, 3, 32, 32)",
    "llava_onevision": "(images, crops, 3, 32, 32) or (crops, 3, 32, 32)",
}


@pytest.fixture(scope="module")
def compressed(request):
    """A tiny PVTC model of the family (`request.param`) and a batch of 2 that its patched processor made."""
    family = request.param
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)), processor=processor)
    return family, model, tiny_batch(family, processor, batch=2)


def text_only(inputs):
    """The last four tokens of every prompt: no image placeholder left."""
    return {k: v[:, -4:] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}


def forward(model, inputs, **changes):
    with torch.no_grad():
        return model(**{**inputs, **changes})


def resized(pixel_values, height, width):
    """The same tiles, resampled to `height x width` pixels (any leading axes kept)."""
    flat = pixel_values.reshape(-1, *pixel_values.shape[-3:])
    return F.interpolate(flat, size=(height, width)).reshape(*pixel_values.shape[:-2], height, width)


@pytest.mark.parametrize("compressed", TINY_FAMILIES, indirect=True)
def test_well_formed_inputs_run(compressed):
    family, model, inputs = compressed
    assert forward(model, inputs).logits.shape[:2] == inputs["input_ids"].shape


@pytest.mark.parametrize("size", [(16, 16), (48, 48), (32, 16)], ids=["16x16", "48x48", "32x16"])
@pytest.mark.parametrize("compressed", TILED, indirect=True)
def test_wrong_tile_size_names_the_expected_shape(compressed, size):
    family, model, inputs = compressed
    with pytest.raises(vtc.InputError, match="is 32x32 pixels with 3 channels") as info:
        forward(model, inputs, pixel_values=resized(inputs["pixel_values"], *size))
    assert EXPECTED_TILE[family] in str(info.value) and "processor" in str(info.value)


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("compressed", TILED, indirect=True)
def test_wrong_channel_count(compressed, channels):
    family, model, inputs = compressed
    pixel_values = inputs["pixel_values"]
    changed = pixel_values[..., :1, :, :].repeat_interleave(channels, dim=-3)
    with pytest.raises(vtc.InputError, match=r"3 channels; got shape \(.*" + str(channels) + r", 32, 32\)"):
        forward(model, inputs, pixel_values=changed)


@pytest.mark.parametrize("compressed", TILED, indirect=True)
def test_zero_pixel_items_with_a_text_only_prompt(compressed):
    family, model, inputs = compressed
    empty = inputs["pixel_values"][:0]
    if family == "llava_next":  # the model itself skips an empty pixel batch: the prompt is text only
        assert forward(model, {**inputs, **text_only(inputs)}, pixel_values=empty).logits.shape[1] == 4
        return
    with pytest.raises(vtc.InputError, match="hold no (tile|input|crop): pass pixel_values=None"):
        forward(model, {**inputs, **text_only(inputs)}, pixel_values=empty)


@pytest.mark.parametrize("compressed", ["llava_onevision"], indirect=True)
def test_onevision_zero_pixel_items_next_to_placeholders(compressed):
    """The reported case: with zero pixel items LLaVA-OneVision failed in `torch.cat(): expected a non-empty list`."""
    family, model, inputs = compressed
    with pytest.raises(vtc.InputError, match=r"pixel_values of shape \(0, 5, 3, 32, 32\) hold no crop"):
        forward(model, inputs, pixel_values=inputs["pixel_values"][:0])


@pytest.mark.parametrize("compressed", ["llava_next", "llava_onevision"], indirect=True)
def test_anyres_crops_must_match_image_sizes(compressed):
    family, model, inputs = compressed
    pixel_values = inputs["pixel_values"]  # (2 images, 5 crops at most, 3, 32, 32)
    for changed in (pixel_values[:1], pixel_values[:, :2], pixel_values.flatten(0, 1)[:3]):
        with pytest.raises(vtc.InputError, match="do not hold the crops image_sizes calls for"):
            forward(model, inputs, pixel_values=changed)
    # with placeholders in the prompt the visual layout already misses image_sizes; without, the vision path does
    with pytest.raises(vtc.InputError, match="without image_sizes"):
        forward(model, {**inputs, **text_only(inputs)}, image_sizes=None)
    with pytest.raises(vtc.InputError, match=r"one \(height, width\) per image"):
        forward(model, {**inputs, **text_only(inputs)}, image_sizes=torch.ones(2, 3, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------- Qwen
@pytest.mark.parametrize("compressed", QWEN, indirect=True)
def test_qwen_pixel_rows_must_match_the_grid(compressed):
    family, model, inputs = compressed
    # grids (1, 8, 8) and (1, 10, 14): 64 + 140 patches, each a row of 3 channels x 2 frames x 4 x 4 pixels
    rows = inputs["pixel_values"]
    assert tuple(rows.shape) == (204, 96)
    for changed in (rows[:-4], rows[:, :48], torch.cat([rows, rows[:, :1]], 1)):
        with pytest.raises(vtc.InputError, match=r"expected pixel_values of shape \(204, 96\) for image_grid_thw"):
            forward(model, inputs, pixel_values=changed)
    # the tower views the rows as patches, so an extra leading axis of one works natively and under PVTC alike
    assert forward(model, inputs, pixel_values=rows[None]).logits.shape[:2] == inputs["input_ids"].shape


@pytest.mark.parametrize("compressed", QWEN, indirect=True)
def test_qwen_grid_must_be_one_frame_in_whole_merge_blocks(compressed):
    family, model, inputs = compressed
    inputs = {**inputs, **text_only(inputs)}
    rows = inputs["pixel_values"][:64]
    with pytest.raises(vtc.InputError, match="positive multiples of the merge size 2"):
        forward(model, inputs, pixel_values=rows[:56], image_grid_thw=torch.tensor([[1, 7, 8]]))
    with pytest.raises(vtc.InputError, match="t=1"):
        forward(model, inputs, pixel_values=torch.cat([rows, rows]), image_grid_thw=torch.tensor([[2, 8, 8]]))


@pytest.mark.parametrize("compressed", QWEN, indirect=True)
def test_qwen_zero_images(compressed):
    family, model, inputs = compressed
    with pytest.raises(vtc.InputError, match=r"image_grid_thw of shape \(images, 3\) with at least one image"):
        forward(model, {**inputs, **text_only(inputs)}, pixel_values=inputs["pixel_values"][:0],
                image_grid_thw=inputs["image_grid_thw"][:0])


def test_input_error_is_a_vtc_value_error():
    assert issubclass(vtc.InputError, vtc.VTCError) and issubclass(vtc.InputError, ValueError)
