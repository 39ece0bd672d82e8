"""What the pruning tests share: the families and methods, expected counts, and model inspections."""

import torch
from references import append_tokens, vtc_hooks

import vtc
from vtc.prune import SELECTION_METHODS, item_token_count
from vtc.testing import build_tiny_model, build_tiny_processor, image_placeholder, tiny_batch, tiny_images

FAMILIES = ("llava", "internvl")
#: The methods that act on the model's tokens (every family of this slice has them); `downsample` is InternVL's only.
MODEL_METHODS = ("pool", "random", "divprune", "visionzip")
#: The native token grid of one item: a LLaVA image (8x8 patches) or an InternVL tile (4x4 after the pixel shuffle).
GRID = {"llava": (8, 8), "internvl": (4, 4)}
#: A `keep` below the native count on each family.
KEEP = {"llava": 20, "internvl": 6}
PROMPTS = ("w3 w7 {image} describe the image .", "what is in this picture ? w11 w12 w13 {image} w5 w8 w9 .",
           "w5 w6 what is this ?")


def prune(method, keep, **kwargs):
    return vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=keep, **kwargs))


def native_count(family):
    h, w = GRID[family]
    return h * w


def per_item(family, config):
    """The visual tokens one item (image or tile) brings under `config` (a `VTCConfig`)."""
    return item_token_count(config.prune, GRID[family])


def compressed(family, config, attn="sdpa"):
    """A tiny model and its processor, compressed with `config`."""
    model, processor = build_tiny_model(family, attn), build_tiny_processor(family)
    vtc.compress(model, config, processor=processor)
    return model, processor


def with_positions(inputs):
    """Explicit positions from the padding mask, so that a left-padded row sees the positions it has alone (the
    families here number positions 0..S-1 regardless of padding)."""
    return {**inputs, "position_ids": (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)}


def logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**with_positions(inputs), **kwargs).logits


def items_of(model, inputs):
    """The visual tokens of every item as the (patched) model produces them: `get_image_features().pooler_output`."""
    with torch.no_grad():
        pooled = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
    return list(pooled)


def placeholder_runs(input_ids, image_token):
    """Lengths of the consecutive runs of image placeholders, in batch order (from where each run starts and ends)."""
    edges = torch.nn.functional.pad((input_ids == image_token).int(), (1, 1)).diff(dim=1)
    return ((edges == -1).nonzero()[:, 1] - (edges == 1).nonzero()[:, 1]).tolist()


def three_samples(family, processor):
    """Two samples with an image each (different visual counts on InternVL) and one without, left-padded; and the
    three samples processed alone."""
    images = tiny_images([(32, 32), (64, 32)] if family == "internvl" else [(48, 40), (40, 48)])
    texts = [p.replace("{image}", image_placeholder(family)) for p in PROMPTS]
    batch = processor(images=[[images[0]], [images[1]], []], text=texts, return_tensors="pt", padding=True)
    alone = [processor(images=[images[0]], text=texts[:1], return_tensors="pt"),
             processor(images=[images[1]], text=texts[1:2], return_tensors="pt"),
             processor(text=texts[2:], return_tensors="pt")]
    return batch, alone


def check_kept(family, method, kept, counts):
    """`last_stats()["kept"]` lists, per sample, per item, `count` distinct native indices (ascending for random and
    DivPrune; VisionZip's dominant tokens ascending, then its contextual targets), or is None for pool."""
    if method not in SELECTION_METHODS:
        assert kept is None
        return
    assert [len(sample) for sample in kept] == [len(c) for c in counts]
    for sample, sample_counts in zip(kept, counts):
        for indices, count in zip(sample, sample_counts):
            assert len(indices) == count == len(set(indices))
            assert all(0 <= i < native_count(family) for i in indices)
            if method != "visionzip":
                assert indices == sorted(indices)



def check_batch_equals_singles(model, method, batch, alone, logits=logits):
    """A left-padded batch's logits (at each sample's own positions) and kept indices equal its samples' alone; the
    last sample has no image. `logits(model, inputs)` runs the model as the family needs it."""
    batched = logits(model, batch)
    kept = vtc.last_stats(model)["kept"]
    for index, inputs in enumerate(alone):
        single = logits(model, inputs)[0]
        torch.testing.assert_close(batched[index, -single.shape[0]:], single, rtol=0, atol=1e-5)
        if method != "pool" and index < len(alone) - 1:
            assert vtc.last_stats(model)["kept"][0] == kept[index]
    assert kept is None if method == "pool" else kept[-1] == []


def check_sdpa_and_eager_agree(run):
    """`run(attn)` -> `(logits at the real positions, kept indices)`: equal kept indices, logits within 1e-4."""
    (sdpa, sdpa_kept), (eager, eager_kept) = run("sdpa"), run("eager")
    assert sdpa_kept == eager_kept
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-4)


def check_generate_then_unpatch(model, processor, family, inputs, stats, keys, reference_inputs, logits=logits):
    """Cached `generate` prunes as the forward did, equals a no-cache forward over the same tokens at every step and
    `generate(use_cache=False)`; then `unpatch` leaves no hook, weight or processor change behind."""
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
    assert vtc.last_stats(model)["kept"] == stats["kept"]  # generate's prefill pruned the same way
    seq_len = inputs["input_ids"].shape[1]
    no_cache = logits(model, append_tokens(inputs, generated.sequences[:, :-1]), use_cache=False)
    for step, step_logits in enumerate(generated.logits):
        torch.testing.assert_close(step_logits, no_cache[:, seq_len - 1 + step], rtol=0, atol=1e-4)
    uncached = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, use_cache=False)
    assert torch.equal(uncached, generated.sequences)
    vtc.unpatch(model)
    assert vtc_hooks(model) == [] and list(model.state_dict()) == keys and not hasattr(model, "_vtc_state")
    assert tiny_batch(family, processor, batch=2)["input_ids"].equal(reference_inputs["input_ids"])
