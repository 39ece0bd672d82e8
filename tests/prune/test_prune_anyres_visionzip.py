"""VisionZip on LLaVA-NeXT and LLaVA-OneVision against an independent implementation: the feature layer's attention
weights of an eager tower (`output_attentions=True`, the [CLS] row on CLIP, the mean received on SigLIP), its keys
and the projector's inputs, packed by the model's own `pack_image_features`, ranked and merged as plain loops; and
what `vtc.evaluate` charges for it per image. (The shared matrix, budget to contract, is `test_prune_anyres.py`.)"""

import pytest
import torch
from prune_helpers import logits, placeholder_runs, prune
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

import vtc
from vtc.evaluate import prefill_costs
from vtc.flops import decoder_dims, prefill_flops, prune_flops
from vtc.prune import visionzip_counts
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

FAMILIES = ("llava_next", "llava_onevision")
PATCHES = 64  # an 8x8 patch grid per view on the tiny models


def pack(model, features, image_sizes, newline):
    """The model's own `pack_image_features` of per-image `(crops, patches, c)` features."""
    if model.config.model_type == "llava_next":
        return model.model.pack_image_features(features, image_sizes, "default", image_newline=newline)[0]
    return model.model.pack_image_features(features, image_sizes, image_newline=newline,
                                           vision_aspect_ratio=model.config.vision_aspect_ratio)[0]


def reference_rows(model, inputs):
    """Per image, its packed tokens and, lined up with them, `(is_newline, score, key, projector input)`."""
    config, vision = model.config, model.model.vision_tower
    layer = config.vision_feature_layer
    layers = (getattr(vision, "encoder", None) or vision.vision_model.encoder).layers
    captured = {}
    hook = layers[layer % len(layers)].self_attn.k_proj.register_forward_hook(
        lambda module, args, output: captured.update(keys=output))
    with torch.no_grad():
        output = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True,
                                                output_attentions=True, output_hidden_states=True)
    hook.remove()
    attention = output.attentions[layer]  # (views, heads, t, t), eager
    has_cls = config.model_type == "llava_next"
    scores = attention[:, :, 0, 1:].sum(1) if has_cls else attention.mean(dim=(1, 2))
    heads = config.vision_config.num_attention_heads
    keys = captured["keys"].reshape(*captured["keys"].shape[:2], heads, -1).mean(dim=2)[:, -PATCHES:]
    hidden = output.hidden_states[layer][:, -PATCHES:]
    rows = torch.cat([torch.zeros_like(scores)[..., None], scores[..., None], keys, hidden], dim=-1)
    crops = [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
             for size in inputs["image_sizes"]]
    newline = torch.zeros(rows.shape[-1])
    newline[0] = 1
    packed = list(pack(model, list(rows.split(crops)), inputs["image_sizes"], newline))
    width = keys.shape[-1]
    return list(output.pooler_output), [(p[:, 0] == 1, p[:, 1], p[:, 2:2 + width], p[:, 2 + width:]) for p in packed]


def visionzip_reference(model, tokens, rows, count, resized):
    """VisionZip on one image as plain loops: `(kept indices, tokens)`."""
    is_newline, scores, keys, hidden = rows
    cells = [i for i in range(len(tokens)) if not is_newline[i]]
    newlines = [i for i in range(len(tokens)) if is_newline[i]]
    contextual = visionzip_counts(min(count, len(cells)), len(cells))[1]
    dominant = count - contextual
    ranked = sorted(cells, key=lambda i: (-float(scores[i]), i))
    top = sorted(ranked[:dominant] + newlines[:max(0, dominant - len(cells))])
    rest = sorted(ranked[dominant:])
    out = [tokens[top]]
    targets = []
    if contextual:
        step = max(1, len(rest) // contextual)
        targets = rest[::step][:contextual]
        joined = {t: [] for t in targets}
        normed = keys / keys.norm(dim=-1, keepdim=True)
        for i in (i for i in rest if i not in targets):
            similarity = [float(normed[i] @ normed[t]) for t in targets]
            joined[targets[similarity.index(max(similarity))]].append(i)
        source = tokens if resized else hidden
        merged = torch.stack([source[t] + (source[joined[t]].mean(0) if joined[t] else 0) for t in targets])
        with torch.no_grad():
            out.append(merged if resized else model.model.multi_modal_projector(merged[None])[0])
    return top + targets, torch.cat(out)


@pytest.mark.parametrize(("family", "keep", "aspect"), [
    ("llava_next", 40, None), ("llava_next", 0.6, None), ("llava_onevision", 40, None),
    ("llava_onevision", 0.6, "anyres_max_1"),  # the joined grid resized: contextual tokens merged after the projector
])
def test_visionzip_equals_an_independent_implementation(family, keep, aspect):
    reference_model, model, processor = (build_tiny_model(family, "eager"), build_tiny_model(family),
                                         build_tiny_processor(family))
    if aspect is not None:
        reference_model.config.vision_aspect_ratio = model.config.vision_aspect_ratio = aspect
    vtc.compress(model, prune("visionzip", keep), processor=processor)
    inputs = tiny_batch(family, processor, batch=2, image_sizes=[(64, 64), (64, 40)])
    with torch.no_grad():
        pruned = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                return_dict=True).pooler_output
    logits(model, inputs)
    kept = vtc.last_stats(model)["kept"]
    full, rows = reference_rows(reference_model, inputs)
    assert (len(full[0]) < 64 + 16 * 17) == (aspect is not None)  # the 64x64 image's 16x16 joined grid, resized
    for index, (tokens, native, image_rows) in enumerate(zip(pruned, full, rows, strict=True)):
        count = vtc.PruneConfig(method="visionzip", keep=keep).kept_count(len(native))
        resized = aspect is not None  # both images' joined grids (16x16, 16x10) exceed one crop's 8x8 by far
        expected_kept, expected = visionzip_reference(reference_model, native, image_rows, count, resized)
        assert kept[index][0] == expected_kept
        assert not any(image_rows[0][i] for i in expected_kept)  # no newline token is kept or summarised
        torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)
    assert placeholder_runs(inputs["input_ids"], model.config.image_token_id) == [len(t) for t in pruned]


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_above_the_cells_keeps_newline_tokens_last(family):
    """An int `keep` between an image's cells and its tokens keeps every cell and the first newline tokens."""
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    full, rows = reference_rows(build_tiny_model(family, "eager"), inputs)
    newlines = int(rows[0][0].sum())
    keep = len(full[0]) - newlines // 2
    vtc.compress(model, prune("visionzip", keep), processor=processor)
    logits(model, tiny_batch(family, processor, batch=2))
    kept = vtc.last_stats(model)["kept"][0][0]
    cells = [i for i in range(len(full[0])) if not rows[0][0][i]]
    assert kept == sorted(cells + [i for i in range(len(full[0])) if rows[0][0][i]][:keep - len(cells)])


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_charges_each_image_its_views_and_cells(family):
    """VisionZip's cost per image: the attention of each of its views (one [CLS] row per view on LLaVA-NeXT, every
    query's on OneVision), and the merge over its grid cells (newline tokens are never summarised)."""
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    reference = tiny_batch(family, processor, batch=2)
    _, rows = reference_rows(build_tiny_model(family, "eager"), reference)
    cells = [int((~r[0]).sum()) for r in rows]
    config = model.config
    crops = [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
             for size in reference["image_sizes"]]
    vtc.compress(model, prune("visionzip", 0.5), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    with torch.no_grad():
        model(**inputs)
    stats, text_config = vtc.last_stats(model), config.text_config
    width, dim = text_config.hidden_size, config.vision_config.hidden_size
    heads = config.vision_config.num_attention_heads
    view = PATCHES + int(family == "llava_next")
    layers = decoder_dims(text_config)["num_hidden_layers"]
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    for (item,), views, cell_count, cost, length in zip(stats["pruned_items"], crops, cells,
                                                         prefill_costs(model, inputs), lengths):
        kept = min(item[1], cell_count)
        spent = prune_flops("visionzip", cell_count, kept, width, tower_tokens=views * view, attention_width=dim,
                            head_width=dim // heads, queries=1 if family == "llava_next" else view)
        contextual = visionzip_counts(kept, cell_count)[1]
        queries = views if family == "llava_next" else views * view
        assert spent == 2 * queries * view * dim + 2 * (cell_count - kept) * contextual * (dim // heads)
        assert cost.prefill_flops == prefill_flops(text_config, [length] * layers).total + spent
