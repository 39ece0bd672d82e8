"""LVTC never waits for the device inside the forward, and a repeated batch structure costs it no host work.

A host read of a device tensor (`.item()`, `.tolist()`, `bool()`, `.nonzero()`, `.cpu()`, boolean indexing, ...) in
a hook between decoder layers stalls the host until the device has run every layer queued before it, and leaves the
device idle while the host catches up. On a CPU every tensor is a host tensor, so the test marks the forward's own
tensors: its inputs are `ForwardTensor`s, a tensor subclass that every result computed from them inherits, and that
records each host read with the Python stack that made it. Reads from vtc's LVTC code (hooks, ops, the structure
cache) fail the test; the one read of the ids and mask when the forward begins (before any device work is queued)
and the model's own reads are allowed. On a GPU, `torch.cuda.set_sync_debug_mode("error")` around every LVTC hook says
the same with the real device.

The structure cache: with hypothesis over layouts, padding and ratios, a cached entry equals what the uncached
builders give; a new structure is a miss, the same structure a hit; cached tensors serve training after being built
under `torch.inference_mode()`.
"""

from __future__ import annotations

import copy
import functools
import pickle
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops.strategies import RATIOS, batch_layouts
from transformers import DynamicCache

import vtc
from vtc import lvtc as lvtc_module
from vtc._state import STATE_ATTR
from vtc.ops import cell_mask, compact_mask, group_index
from vtc.registry import get_adapter
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

FAMILIES = ("llava", "llava_next", "qwen2_vl", "internvl")
K, L = 1, 3  # of the tiny models' 4 decoder layers
VTC_ROOT = Path(vtc.__file__).parent
LVTC_FILES = {VTC_ROOT / "lvtc.py", VTC_ROOT / "_structure_cache.py", *(VTC_ROOT / "ops").glob("*.py")}

# Tensor methods and torch functions that copy a tensor's values to the host (or need its values to size a result).
# `.to(device)` is left out: on a CPU it cannot tell a host copy from a move between devices; vtc copies with `.cpu()`.
HOST_READS = {
    "item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
    "unique", "unique_consecutive", "masked_select", "bincount", "equal", "allclose",
}


def _stack_files() -> set[Path]:
    return {Path(frame.filename).resolve() for frame in traceback.extract_stack()}


class ForwardTensor(torch.Tensor):
    """A tensor computed in the forward under test; `reads` collects `(what, files on the stack)` of host reads."""

    reads: list[tuple[str, set[Path]]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        indexes_by_mask = name in ("__getitem__", "__setitem__") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],)))
        if name in HOST_READS or indexes_by_mask:
            cls.reads.append((name, _stack_files()))
        result = super().__torch_function__(func, types, args, kwargs)
        if name == "cpu":  # a host copy is a host tensor: reading it later is free
            return result.as_subclass(torch.Tensor)
        return result


def _as_forward_tensors(inputs: dict) -> dict:
    return {k: v.as_subclass(ForwardTensor) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _lvtc_reads() -> list[str]:
    return [name for name, files in ForwardTensor.reads if files & LVTC_FILES]


def lvtc_config(ratio: int, restore: str = "delta", **kwargs) -> vtc.VTCConfig:
    return vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=K, restore_layer=L, ratio=ratio, restore=restore,
                                             **kwargs))


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    family = request.param
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    yield family, model, processor
    vtc.unpatch(model)


def _controller(model):
    """The LVTC controller of a compressed model (its compress hook's owner)."""
    for hook in get_adapter(model).decoder_layers[K]._forward_pre_hooks.values():
        function = getattr(hook, "hook", hook)
        owner = getattr(function, "__self__", None)
        if isinstance(owner, lvtc_module._Controller):
            return owner
    raise AssertionError("no LVTC controller found")


@pytest.mark.parametrize("config", [lvtc_config(4), lvtc_config(16, "add"), lvtc_config(4, upsample="bilinear"),
                                    lvtc_config(4, position="first")], ids=["r4", "r16-add", "bilinear", "first"])
def test_lvtc_reads_nothing_from_the_device_in_prefill_and_decode(tiny, config):
    family, model, processor = tiny
    vtc.compress(model, config, processor=processor)
    inputs = _as_forward_tensors(tiny_batch(family, processor, batch=3))  # left-padded
    assert bool((inputs["attention_mask"] == 0).any()), "the batch must be padded to exercise the masks"
    ForwardTensor.reads = []
    with torch.no_grad():  # a compressed prefill, then cached decode steps
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert vtc.last_stats(model)["layer_seq_lens"][K] < inputs["input_ids"].shape[1]  # it did compress
    assert vtc.last_stats(model)["decode_steps"] == 2
    assert isinstance(out, ForwardTensor)  # the marking reached the output: the probe saw the whole generation
    assert ForwardTensor.reads, "the model's own host reads should have been seen"
    assert _lvtc_reads() == [], f"{family}: LVTC read device tensors on the host: {_lvtc_reads()}"


def test_the_probe_catches_a_host_read_in_an_lvtc_hook(tiny, monkeypatch):
    """The check above can fail: a hook that reads the mask on the host is caught."""
    family, model, processor = tiny
    original = lvtc_module._Controller._mask

    def reading_mask(self, hidden, mask2d, cache):
        if mask2d is not None:
            mask2d.tolist()
        return original(self, hidden, mask2d, cache)

    monkeypatch.setattr(lvtc_module._Controller, "_mask", reading_mask)
    vtc.compress(model, lvtc_config(4), processor=processor)
    ForwardTensor.reads = []
    with torch.no_grad():
        model(**_as_forward_tensors(tiny_batch(family, processor, batch=3)))
    assert "tolist" in _lvtc_reads()


def test_a_repeated_structure_is_a_cache_hit_and_a_new_one_a_miss(tiny, refuse_calls):
    family, model, processor = tiny
    vtc.compress(model, lvtc_config(4), processor=processor)
    cache = _controller(model).structures
    inputs, other = tiny_batch(family, processor, batch=2), tiny_batch(family, processor, batch=3)
    with torch.no_grad():
        first = model(**inputs).logits
        assert (cache.misses, cache.hits) == (1, 0)
        other_first = model(**other).logits  # another layout and padding: a miss
        assert (cache.misses, cache.hits) == (2, 0)
        attempts = refuse_calls("vtc.lvtc.group_index", "vtc.lvtc.compact_mask", "vtc.lvtc.cell_mask")
        assert torch.equal(model(**inputs).logits, first)  # a hit builds nothing and gives the same logits
        assert torch.equal(model(**other).logits, other_first)
    assert (cache.misses, cache.hits) == (2, 2) and attempts == []


def test_the_cached_layer_mask_is_used_only_for_its_own_dtype(tiny, monkeypatch):
    """Layer K uses the prefill mask built with the structure when the hidden states have the dtype it was built
    for (a wrong cached mask then shows in the logits), and builds its own otherwise (the logits stay right)."""
    family, model, processor = tiny
    inputs = tiny_batch(family, processor, batch=3)  # left-padded: the compressed layers need a materialised mask
    vtc.compress(model, lvtc_config(4), processor=processor)
    with torch.no_grad():
        expected = model(**inputs).logits
    vtc.unpatch(model)

    def wrong_mask(dtype):
        def build(self, groups, compact, device, _dtype):
            b, g = groups.batch_size, groups.max_groups
            return torch.zeros((b, 1, g, g), dtype=torch.bool, device=device), dtype  # masks every key
        return build

    for dtype, used in ((torch.float32, True), (torch.float16, False)):
        monkeypatch.setattr(lvtc_module._Controller, "_prefill_layer_mask", wrong_mask(dtype))
        vtc.compress(model, lvtc_config(4), processor=processor)  # a fresh structure cache
        with torch.no_grad():
            logits = model(**inputs).logits
        vtc.unpatch(model)
        assert torch.equal(logits, expected) != used, (dtype, used)


def test_copies_and_pickles_start_with_an_empty_cache(tiny):
    family, model, processor = tiny
    vtc.compress(model, lvtc_config(4), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    with torch.no_grad():
        expected = model(**inputs).logits
    structures = _controller(model).structures
    assert len(structures) == 1
    # (a model that has run a forward holds transformers' own unpicklable hooks: the cache is pickled alone)
    assert len(pickle.loads(pickle.dumps(structures))) == 0
    clone = copy.deepcopy(model)
    assert len(_controller(clone).structures) == 0
    with torch.no_grad():
        assert torch.equal(clone(**inputs).logits, expected)
    assert len(structures) == 1 and len(_controller(clone).structures) == 1


def test_entries_built_under_inference_mode_serve_training(tiny):
    family, model, processor = tiny
    vtc.compress(model, lvtc_config(4, "add"), processor=processor)
    inputs = tiny_batch(family, processor, batch=2)
    with torch.inference_mode():
        model(**inputs)
    model.train()
    try:
        loss = model(**inputs).logits.float().pow(2).mean()
        loss.backward()  # would raise "Inference tensors cannot be saved for backward" with inference tensors
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert _controller(model).structures.hits == 1


@settings(max_examples=40, deadline=None)
@given(batch_layouts(), RATIOS, st.data())
def test_cached_structure_equals_the_uncached_builders(case, ratio, data):
    layout, seq_len = case
    batch = len(layout)
    padded = data.draw(st.booleans())
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    if padded and seq_len:
        for b in range(batch):  # left padding outside the visual spans
            first_visual = min((span.start for span in layout[b]), default=seq_len)
            mask[b, :data.draw(st.integers(0, first_visual))] = 0
    attn = data.draw(st.sampled_from(["sdpa", "eager"]))
    controller = lvtc_module._Controller(state=_text_config_state(attn),
                                         config=vtc.LVTCConfig(ratio=ratio, restore="add"),
                                         compress_layer=0, restore_layer=1, gate=None,
                                         language_model=torch.nn.Identity())  # only its forward's signature is read
    for _ in range(2):  # a miss, then a hit: both equal the uncached builders
        structure = controller._build_structure(layout, seq_len, mask.clone(), mask, torch.device("cpu"),
                                                torch.float32)
        padding = mask == 0
        expected = group_index(layout, seq_len, ratio, padding=padding if bool(padding.any()) else None)
        for name in ("index", "num_groups", "first", "size", "is_visual", "valid", "rows", "divisor", "fill_rows"):
            assert torch.equal(getattr(structure.groups, name), getattr(expected, name)), name
        assert structure.groups.lengths == expected.lengths
        expected_mask = compact_mask(mask, expected)
        if structure.compact_mask is None:  # only when every key of the compressed prompt is attended
            assert bool(expected_mask.bool().all())
        else:
            assert torch.equal(structure.compact_mask, expected_mask)
        assert torch.equal(structure.cells, cell_mask(layout, seq_len))
        # the compressed layers' prefill mask: what layer K would build with the (empty) KV cache of a prefill
        built = controller._mask(torch.empty(batch, expected.max_groups, 0), structure.compact_mask, DynamicCache())
        assert structure.layer_mask_dtype == torch.float32
        assert (structure.layer_mask is None and built is None) or torch.equal(structure.layer_mask, built)
    assert (controller.structures.misses, controller.structures.hits) == (1, 1)


@functools.cache
def _text_config_state(attn: str) -> SimpleNamespace:
    """Just what `_Controller._mask` reads: the text config, with its attention implementation."""
    return SimpleNamespace(adapter=SimpleNamespace(text_config=build_tiny_model("llava", attn).config.text_config))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lvtc_hooks_never_synchronise_with_the_gpu(monkeypatch):
    """With CUDA's sync debug mode set to "error" inside every LVTC hook, a prefill and a decode step run through."""

    def strict(method):
        def wrapped(self, *args, **kwargs):
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                return method(self, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        return wrapped

    for name in ("begin_forward", "end_forward", "capture_positions", "compress", "swap", "restore"):
        monkeypatch.setattr(lvtc_module._Controller, name, strict(getattr(lvtc_module._Controller, name)))
    for family in FAMILIES:
        model, processor = build_tiny_model(family).cuda(), build_tiny_processor(family)
        vtc.compress(model, lvtc_config(4, "add"), processor=processor)
        inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v
                  for k, v in tiny_batch(family, processor, batch=3).items()}
        with torch.no_grad():
            for _ in range(2):  # a structure-cache miss, then a hit; each a prefill and cached decode steps
                model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert vtc.last_stats(model)["decode_steps"] == 2
        # counted on the device, so that a compiled CUDA decode step holds no CPU kernel
        assert getattr(model, STATE_ATTR).call.last.decode_steps.device.type == "cuda"
