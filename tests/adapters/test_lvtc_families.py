"""LVTC on every family × {sdpa, eager} × {batch 1, batch 2 left-padded with different visual counts}.

Also: several images in one prompt next to a sample with no image, and flash-attention-2 where it is installed.
"""

import pytest
import torch
from references import append_tokens, vtc_hooks
from transformers.utils import is_flash_attn_2_available

import vtc
from vtc.ops import compressed_lengths
from vtc.registry import get_adapter
from vtc.testing import (
    TINY_FAMILIES,
    build_tiny_model,
    build_tiny_processor,
    default_image_sizes,
    image_placeholder,
    tiny_batch,
    tiny_images,
)

ATTENTION = ("sdpa", "eager")
NUM_LAYERS = 4
K, L = 1, 3  # valid on every tiny model: Qwen3-VL's single DeepStack layer (layer 0) comes before K
PROMPTS = ("w3 w7 {image} describe the image .", "what is in this picture ? w11 w12 w13 {image} w5 w8 w9 .")


def lvtc(ratio, **kwargs):
    return vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=K, restore_layer=L, ratio=ratio, **kwargs))


def with_positions(model, inputs):
    """Explicit positions from the padding mask, so that a left-padded row sees the positions it has alone.

    Qwen models derive their M-RoPE positions from the mask themselves; the others number 0..S-1 regardless.
    """
    if get_adapter(model).uses_mrope:
        return dict(inputs)
    return {**inputs, "position_ids": (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)}


def logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**with_positions(model, inputs), **kwargs).logits


def single_sample_inputs(family, processor, index):
    """Sample `index` of `tiny_batch(family, processor, batch=2)`, processed alone (same image, same prompt)."""
    image = tiny_images(default_image_sizes(family, 2))[index]
    text = PROMPTS[index].replace("{image}", image_placeholder(family))
    return processor(images=[image], text=[text], return_tensors="pt")


def vtc_attributes(model):
    found = [name for name, _ in model.named_parameters() if "vtc_" in name]
    for name, module in model.named_modules():
        found += [f"{name}.{a}" for a in vars(module) if a.startswith("vtc_") or a == "_vtc_state"]
    return found


def gradients(model, inputs):
    model.zero_grad()
    model(**inputs, labels=inputs["input_ids"], use_cache=False).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lvtc_on_every_family(family, attn, batch):
    model, processor = build_tiny_model(family, attn), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=batch)
    seq_len = inputs["input_ids"].shape[1]
    real = inputs["attention_mask"].bool()
    reference = logits(model, inputs)
    model.generate(**inputs, max_new_tokens=1)  # transformers installs its lazy output-capture hooks on first use
    keys = list(model.state_dict())

    # ratio=1 with the default delta restore is the unpatched model (padding positions carry no meaning)
    vtc.compress(model, lvtc(1), processor=processor)
    torch.testing.assert_close(logits(model, inputs)[real], reference[real], rtol=0, atol=1e-5)

    # ratio=4: layers K..L-1 see, and cache, the compressed length the layout gives
    vtc.compress(model, lvtc(4), processor=processor)
    with torch.no_grad():
        out = model(**with_positions(model, inputs), use_cache=True)
    stats = vtc.last_stats(model)
    compressed = max(compressed_lengths(stats["visual_layout"], seq_len, 4, padding=~real))
    expected = [seq_len] * K + [compressed] * (L - K) + [seq_len] * (NUM_LAYERS - L)
    assert compressed < seq_len
    assert stats["layer_seq_lens"] == expected
    assert [out.past_key_values.get_seq_length(i) for i in range(NUM_LAYERS)] == expected
    assert out.logits.shape == reference.shape

    # cached generate equals a no-cache forward over the same tokens, at every generated step
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    no_cache = logits(model, append_tokens(inputs, generated.sequences[:, :-1]), use_cache=False)
    for step, step_logits in enumerate(generated.logits):
        torch.testing.assert_close(step_logits, no_cache[:, seq_len - 1 + step], rtol=0, atol=1e-4)

    # a batch of 2 equals two runs of 1 on the positions that are not padding
    if batch == 2:
        for index in range(2):
            alone = logits(model, single_sample_inputs(family, processor, index))[0]
            torch.testing.assert_close(out.logits[index, -alone.shape[0]:], alone, rtol=0, atol=1e-5)
            assert int(real[index].sum()) == alone.shape[0]

    # training: gradient checkpointing gives the gradients of a plain backward
    model.train()
    plain = gradients(model, inputs)
    model.activation_checkpointing_enable()
    checkpointed = gradients(model, inputs)
    model.activation_checkpointing_disable()
    model.eval()
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)

    # unpatch removes every hook and attribute
    vtc.unpatch(model)
    assert vtc_hooks(model) == [] and vtc_attributes(model) == []
    assert list(model.state_dict()) == keys
    assert torch.equal(logits(model, inputs), reference)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_several_images_in_one_prompt_next_to_a_sample_without_image(family):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    placeholder = image_placeholder(family)
    images = tiny_images([(32, 32), (64, 40)])
    texts = [f"w1 {placeholder} w2 w3 {placeholder} w4", "w5 w6 what is this ?"]
    inputs = processor(images=[images, []], text=texts, return_tensors="pt", padding=True)
    vtc.compress(model, lvtc(4), processor=processor)

    batched = logits(model, inputs)
    layout = vtc.last_stats(model)["visual_layout"]
    assert len(layout[0]) >= 2 and layout[1] == ()
    seq_len = inputs["input_ids"].shape[1]
    compressed = compressed_lengths(layout, seq_len, 4, padding=~inputs["attention_mask"].bool())
    assert vtc.last_stats(model)["layer_seq_lens"][K] == max(compressed) < seq_len

    alone = [logits(model, processor(images=[images], text=texts[:1], return_tensors="pt"))[0],
             logits(model, processor(text=texts[1:], return_tensors="pt"))[0]]
    for row, single in zip(batched, alone):
        torch.testing.assert_close(row[-single.shape[0]:], single, rtol=0, atol=1e-5)

    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    no_cache = logits(model, append_tokens(inputs, generated.sequences[:, :-1]), use_cache=False)
    torch.testing.assert_close(generated.logits[-1], no_cache[:, -1], rtol=0, atol=1e-4)


@pytest.mark.skipif(not (torch.cuda.is_available() and is_flash_attn_2_available()),
                    reason="flash-attention-2 needs CUDA and the flash-attn package")
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_flash_attention_2_follows_the_mask_contract(family):
    model = build_tiny_model(family, "flash_attention_2").to("cuda", torch.bfloat16)
    processor = build_tiny_processor(family)
    inputs = {k: v.to("cuda") for k, v in tiny_batch(family, processor, batch=2).items()}
    vtc.compress(model, lvtc(4), processor=processor)
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    no_cache = logits(model, append_tokens(inputs, generated.sequences[:, :-1]), use_cache=False)
    torch.testing.assert_close(generated.logits[-1].float(), no_cache[:, -1].float(), rtol=0, atol=5e-2)
    seq_len = inputs["input_ids"].shape[1]
    assert vtc.last_stats(model)["layer_seq_lens"][K] < seq_len
