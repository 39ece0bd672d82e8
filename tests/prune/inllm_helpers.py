"""What the tests of pruning inside the decoder share: the configs, the items of a layout, and independent references
of the three rules computed from what the unpatched (or pruned) model itself returns: eager attention weights, its
KV cache, its hidden states."""

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

import vtc
from vtc.llm_prune import pdrop_schedule
from vtc.registry import get_adapter

METHODS = ("fastv", "dart", "pdrop")
K = 2  # FastV's and DART's layer on the tiny models' 4 decoder layers (after Qwen3-VL's DeepStack layer 0)
STAGES = (1, 2, 3)  # PyramidDrop's stages on the same 4 layers
KEEP = 0.3
#: The families whose image is several spans of the layout (a base grid and its crops): one item per image.
IMAGE_ITEMS = ("llava_next", "llava_onevision")


def config(method, keep=KEEP, layer=None):
    if layer is None:
        layer = STAGES if method == "pdrop" else K
    return vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=keep, layer=layer))


def stage_layers(method):
    return STAGES if method == "pdrop" else (K,)


def items(family, sample):
    """Each item's positions in the sequence: one span each, or (one image per sample) all the sample's spans."""
    groups = [sample] if family in IMAGE_ITEMS and sample else [(span,) for span in sample]
    return [[p for span in spans for p in span.positions()] for spans in groups]


def counts(method, native, keep=KEEP, num_layers=4):
    """The tokens an item keeps from each stage on (the budget arithmetic is tested on its own)."""
    if method == "pdrop":
        target = Fraction(repr(keep)) * native if isinstance(keep, float) else Fraction(keep)
        return pdrop_schedule(native, STAGES, num_layers, target).counts
    return (min(math.ceil(keep * native) if isinstance(keep, float) else keep, native),)


def last_prompt_token(inputs, b):
    return int(inputs["attention_mask"][b].nonzero().max())


def top(scores, count):
    """The `count` highest scores' indices, ascending, the lower index first among equal scores."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:count])


def rotate_half(x, cos, sin):
    """The rotary embedding, `x` `(s, heads, d)`, `cos` / `sin` `(s, d)`."""
    half = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin[:, None]


# ---------------------------------------------------------------------------------------------------- references
def fastv_reference(family, inputs, layout, attentions, keep=KEEP):
    """FastV from eager attention weights (`output_attentions=True` on the unpatched model): per sample, per item,
    the kept indices: the highest of layer K-1's row of the last prompt token, averaged over heads."""
    kept = []
    for b, sample in enumerate(layout):
        row = attentions[K - 1][b, :, last_prompt_token(inputs, b)].float().mean(0)
        kept.append([top(row[positions], counts("fastv", len(positions), keep)[0]) for positions in items(family,
                                                                                                      sample)])
    return kept


def dart_oracle(states, key_norms, candidates, text, count, pivots=(4, 4)):
    """DART as the upstream `get_retained_image_token` computes it, on one item, with vtc's documented choices: the
    pivots in ascending position order, the budget `count` shared among them (`floor(r / p)` each, one more for the
    first `r mod p`), the lower index first among equal values."""
    if count >= len(candidates):
        return list(range(len(candidates)))
    by_norm = sorted(candidates, key=lambda p: (-float(key_norms[p]), candidates.index(p)))
    image_pivots = by_norm[:min(pivots[0], count)]
    text_pivots = sorted(text, key=lambda p: (-float(key_norms[p]), text.index(p)))[:min(pivots[1], len(text))]
    chosen = set(image_pivots)
    valid = [p for p in candidates if p not in chosen]
    order = sorted(image_pivots + text_pivots)
    share, extra = divmod(count - len(image_pivots), len(order))
    for i, pivot in enumerate(order):
        similarity = {p: float(F.cosine_similarity(states[pivot][None].double(), states[p][None].double()))
                      for p in valid}
        picked = sorted(valid, key=lambda p: (similarity[p], candidates.index(p)))[:share + (i < extra)]
        chosen.update(picked)
        valid = [p for p in valid if p not in picked]
    return sorted(candidates.index(p) for p in chosen)


def dart_reference(family, model, inputs, layout, output, keep=KEEP):
    """DART from the unpatched model's own tensors (`use_cache=True, output_hidden_states=True`): the keys of layer
    K-1 as its KV cache holds them (after the rotary embedding), and the input of layer K through the final norm."""
    keys = output.past_key_values.layers[K - 1].keys  # (b, kv heads, s, d)
    key_norms = keys.permute(0, 2, 1, 3).flatten(2).float().abs().sum(-1)
    with torch.no_grad():
        states = get_adapter(model).language_model.norm(output.hidden_states[K])
    kept = []
    for b, sample in enumerate(layout):
        visual = {p for span in sample for p in span.positions()}
        last, mask = last_prompt_token(inputs, b), inputs["attention_mask"][b]
        row = []
        for positions in items(family, sample):
            text = [p for p in range(positions[-1] + 1, last + 1) if p not in visual and mask[p]]
            count = counts("dart", len(positions), keep)[0]
            row.append(dart_oracle(states[b], key_norms[b], positions, text, count))
        kept.append(row)
    return kept


def pdrop_reference(family, model, inputs, layout, attentions, rotary, hidden_states, kept, keep=KEEP):
    """PyramidDrop, stage by stage: stage 1 from the unpatched model's eager attention of layer `STAGES[0]` (its
    attention on its input is exactly that layer's); later stages recomputed from the pruned model's hidden states
    entering the stage's first layer with that layer's norm, projections and the rotary embedding of the kept
    positions (`rotary`: the unpatched model's `(cos, sin)`), as the official code computes its ranking. `kept` is
    what the pruned model reports (the previous stages' tokens define the sequence a stage ranks)."""
    adapter = get_adapter(model)
    text_config = adapter.text_config
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    reference = []
    for b, sample in enumerate(layout):
        groups = items(family, sample)
        last = last_prompt_token(inputs, b)
        per_item = [[] for _ in groups]
        for stage, layer in enumerate(STAGES):
            # the sequence entering this stage: every position outside the items, and each item's kept tokens
            sequence = list(range(inputs["input_ids"].shape[1]))
            if stage:
                dropped = {p for g, positions in enumerate(groups) for i, p in enumerate(positions)
                           if i not in kept[b][g][stage - 1]}
                sequence = [p for p in sequence if p not in dropped]
            if stage == 0:
                row = attentions[layer][b, :, last].float().mean(0)
            else:
                row = _attention_row(adapter.decoder_layers[layer], hidden_states[layer][b, :len(sequence)],
                                     sequence, last, inputs["attention_mask"][b], rotary, b, heads, kv_heads)
            for g, positions in enumerate(groups):
                candidates = positions if not stage else [positions[i] for i in kept[b][g][stage - 1]]
                native = counts("pdrop", len(positions), keep)[stage]
                picked = top(row[[sequence.index(p) for p in candidates]], native)
                per_item[g].append(sorted(positions.index(candidates[i]) for i in picked))
        reference.append(per_item)
    return reference


def _attention_row(layer, hidden, sequence, last, mask, rotary, b, heads, kv_heads):
    attention = layer.self_attn
    d = attention.head_dim
    cos, sin = (t[0 if t.shape[0] == 1 else b, sequence] for t in rotary)
    with torch.no_grad():
        normed = layer.input_layernorm(hidden)
        q = attention.q_proj(normed).reshape(len(sequence), heads, d)
        k = attention.k_proj(normed).reshape(len(sequence), kv_heads, d)
        if getattr(attention, "q_norm", None) is not None:
            q, k = attention.q_norm(q), attention.k_norm(k)
        q, k = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
    i = sequence.index(last)
    weights = []
    for head in range(heads):
        logits = (k[:, head // (heads // kv_heads)] @ q[i, head]) * attention.scaling
        allowed = torch.tensor([j <= i and bool(mask[p]) for j, p in enumerate(sequence)])
        weights.append(logits.masked_fill(~allowed, -math.inf).float().softmax(-1))
    return torch.stack(weights).mean(0)


# ---------------------------------------------------------------------------------------------------- decoding
def dropped_positions(family, layout, kept, method):
    """Per stage, per sample, the positions the pruned layers no longer hold (from `last_stats()["kept"]`)."""
    stages = []
    for stage in range(len(stage_layers(method))):
        per_sample = []
        for sample, sample_kept in zip(layout, kept):
            dropped = set()
            for positions, item_kept in zip(items(family, sample), sample_kept):
                indices = item_kept[stage] if method == "pdrop" else item_kept
                dropped.update(p for i, p in enumerate(positions) if i not in indices)
            per_sample.append(sorted(dropped))
        stages.append(per_sample)
    return stages


def masked_logits(model, inputs, method, dropped):
    """The logits of an eager, unpatched `model` whose layers from each stage on may not attend to that stage's dropped
    positions (FastV's own attention-mask variant of dropping tokens): every kept position, and every token appended
    after the prompt, computes what the pruned model computes, without a KV cache or any shortened sequence.

    Args:
        inputs: the prompt and any tokens appended after it (positions explicit where the family numbers 0..S-1).
        dropped: per stage, per sample, the dropped prompt positions (`dropped_positions`).
    """
    mask = inputs["attention_mask"].bool()
    b, s = mask.shape
    allowed = torch.tril(torch.ones(s, s, dtype=torch.bool))[None] & mask[:, None, :]
    additive = []
    for stage in dropped:
        stage_allowed = allowed.clone()
        for row, positions in enumerate(stage):
            stage_allowed[row, :, positions] = False
        additive.append(torch.zeros(b, 1, s, s).masked_fill(~stage_allowed[:, None], torch.finfo(torch.float32).min))
    layers, handles = get_adapter(model).decoder_layers, []
    starts = stage_layers(method)
    for index in range(starts[0], len(layers)):
        stage = sum(start <= index for start in starts) - 1

        def swap(_module, args, kwargs, stage=stage):
            return args, {**kwargs, "attention_mask": additive[stage]}

        handles.append(layers[index].register_forward_pre_hook(swap, with_kwargs=True))
    try:
        with torch.no_grad():
            return model(**inputs, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
