"""Brute-force references and model inspections shared by the test modules (importable: tests/ is on sys.path)."""

import math

import torch


def reference_groups(spans, seq_len, ratio, padding=None):
    """Every group's sorted members, groups sorted by first member, by brute force from the layout: windows of each
    grid (newline tokens alone), runs of `ratio` grid-less tokens, runs of consecutive padding (when `padding`, a
    sequence of bools per position, is given), every other position alone."""
    side = math.isqrt(ratio)
    sh, sw = (side, side) if side * side == ratio else (1, ratio)
    groups, covered = [], set()
    for span in spans:
        covered.update(span.positions())
        if span.grid is None:
            groups += [list(range(p, min(p + ratio, span.end))) for p in range(span.start, span.end, ratio)]
            continue
        h, w = span.grid
        stride = w + 1 if span.newline else w
        windows = {}
        for i in range(h):
            for j in range(w):
                windows.setdefault((i // sh, j // sw), []).append(span.start + i * stride + j)
            if span.newline:
                groups.append([span.start + i * stride + w])
        groups += windows.values()
    run = []
    for p in range(seq_len):
        if p in covered:
            continue
        if padding is not None and padding[p]:
            if run and run[-1] == p - 1:
                run.append(p)
                continue
            run = [p]
            groups.append(run)
        else:
            groups.append([p])
    return sorted(sorted(g) for g in groups)


def members(gi, b):
    """Members of each valid group of sample `b`, read off `gi.index`."""
    return [torch.nonzero(gi.index[b] == k).flatten().tolist() for k in range(int(gi.num_groups[b]))]


def vtc_hooks(model):
    """Names of the modules holding a hook whose function comes from vtc (transformers adds its own lazily)."""
    found = []
    for name, module in model.named_modules():
        for registry in (module._forward_pre_hooks, module._forward_hooks, module._backward_hooks):
            found += [name for fn in registry.values() if getattr(fn, "__module__", "").startswith("vtc")]
    return found


def identical(a, b) -> bool:
    """Same structure (model outputs with their fields in order, tensors, None, lists and tuples, by type) and
    bit-identical tensors."""
    from transformers.utils import ModelOutput

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, ModelOutput):
        return (type(a) is type(b) and list(a.keys()) == list(b.keys())
                and all(identical(a[k], b[k]) for k in a.keys()))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def append_tokens(inputs, sequences):
    """`inputs` with `sequences` (the prompt plus generated tokens) as input ids, masks extended by ones."""
    extra = sequences.shape[1] - inputs["input_ids"].shape[1]
    out = {**inputs, "input_ids": sequences}
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(sequences[:, :extra])], 1)
    if "mm_token_type_ids" in inputs:
        types = inputs["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(types[:, :extra])], 1)
    return out
