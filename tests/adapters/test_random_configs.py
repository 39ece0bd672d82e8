"""Random configurations on every family: compress either refuses with a typed error and leaves the model exactly as
it was, or the compressed model runs with the shapes the config implies and `unpatch` gives back the original logits.

Each component is on or off; its fields are drawn in range, and one of them may then be replaced by a value out of
range (huge, NaN, bool, wrong type). A config the constructor refuses is a valid outcome; so is one the model refuses
at `compress` (a ratio beyond its tiles, heads that do not divide its width, layers it does not have, RVTC on a model
with one resolution ...).
"""

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from references import vtc_hooks

import vtc
from vtc.ops import compressed_lengths
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch

NUM_LAYERS = 4  # of every tiny model
NAN, INF = float("nan"), float("inf")

# Per field, values that no config accepts.
OUT_OF_RANGE = {
    "pvtc": {
        "ratio": [0, -4, 8, 65 * 65, 10**20, True, 4.0],
        "num_heads": [0, 1025, 10**400, True],
        "mlp_ratio": [0.0, -1.0, NAN, INF, 1e9, 10**400, True],
        "drop_path": [1.0, -0.1, NAN, 10**400],
        "global_query": ["max", None],
        "init": ["random", 1],
    },
    "lvtc": {
        "compress_layer": [0, True, 2.0, None],
        "restore_layer": [0, "last", False],
        "ratio": [0, 4097, 10**20, 2.5, True],
        "restore": ["replace"],
        "upsample": ["bicubic"],
        "position": ["last"],
    },
    "rvtc": {
        "mode": ["pixels"],
        "min_tiles": [0, 257, True],
        "max_tiles": [0, 257, 6.0, 10**400],
        "tile_size": [0, 8193, True, 448.0],
        "use_thumbnail": [1, None],
        "max_visual_tokens": [0, 2**20 + 1, True, NAN],
    },
}


def usually(draw, common, rare):
    """A value of the strategy `common`, or one time in eight of `rare`: values in range that some tiny model refuses,
    rare enough that most examples reach a forward."""
    return draw(rare if draw(st.integers(0, 7)) == 0 else common)


@st.composite
def pvtc_fields(draw):
    return {
        # 25 exceeds an InternVL tile (16 tokens), 81 every tile and image; 3 heads do not divide the width 64; below
        # 1/64 the MLP has no unit; "cls" is refused on towers without a CLS token
        "ratio": usually(draw, st.sampled_from([1, 4, 9, 16]), st.sampled_from([25, 81])),
        "num_heads": usually(draw, st.sampled_from([1, 2, 4, 8, 16]), st.just(3)),
        "mlp_ratio": usually(draw, st.floats(0.25, 16.0), st.just(0.001)),
        "drop_path": draw(st.floats(0.0, 0.9)),
        "global_query": usually(draw, st.sampled_from(["auto", "mean", "none"]), st.just("cls")),
        "init": draw(st.sampled_from(vtc.PVTCConfig.INITS)),
    }


@st.composite
def lvtc_fields(draw):
    # K and L in the order the config requires; compress refuses K = 4 or -4 (layer 0), a restore layer of the other
    # sign that falls before K or beyond the model, and "add" without a restore layer
    k = usually(draw, st.sampled_from([1, 2, 3, -1, -2, -3]), st.sampled_from([NUM_LAYERS, -NUM_LAYERS]))
    after = st.nothing() if k in (NUM_LAYERS, -1) else st.integers(k + 1, NUM_LAYERS if k > 0 else -1)
    other_sign = st.integers(-NUM_LAYERS - 1, -1) if k > 0 else st.integers(1, NUM_LAYERS + 1)
    return {
        "compress_layer": k,
        "restore_layer": usually(draw, st.none() | after, other_sign),
        "ratio": draw(st.integers(1, 20) | st.just(4096)),
        "restore": draw(st.sampled_from(vtc.LVTCConfig.RESTORES)),
        "upsample": draw(st.sampled_from(vtc.LVTCConfig.UPSAMPLES)),
        "position": draw(st.sampled_from(vtc.LVTCConfig.POSITIONS)),
    }


@st.composite
def rvtc_fields(draw):
    # compress refuses RVTC on LLaVA-1.5, a Qwen tile that is not a multiple of 8 pixels and a budget below min_tiles
    mode = draw(st.sampled_from(vtc.RVTCConfig.MODES))
    min_tiles = draw(st.integers(1, 4))
    return {
        "mode": mode,
        "min_tiles": min_tiles,
        "max_tiles": draw(st.integers(min_tiles, 8)),
        "tile_size": usually(draw, st.sampled_from([None, 8, 16, 32, 64]), st.just(12)),
        "use_thumbnail": draw(st.booleans()),
        "max_visual_tokens": usually(draw, st.integers(64, 400), st.integers(1, 63)) if mode == "budget" else None,
    }


FIELDS = {"pvtc": pvtc_fields, "lvtc": lvtc_fields, "rvtc": rvtc_fields}
CLASSES = {"pvtc": vtc.PVTCConfig, "lvtc": vtc.LVTCConfig, "rvtc": vtc.RVTCConfig}


@st.composite
def config_kwargs(draw):
    """Per component, the keyword arguments of its config (each on two times in three) or `None` for off; one time in
    four, one field of one component is then out of range."""
    kwargs = {name: draw(fields()) if draw(st.sampled_from(["off", "on", "on"])) == "on" else None
              for name, fields in FIELDS.items()}
    enabled = [name for name, fields in kwargs.items() if fields is not None]
    if enabled and draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(enabled))
        field = draw(st.sampled_from(sorted(OUT_OF_RANGE[name])))
        kwargs[name][field] = draw(st.sampled_from(OUT_OF_RANGE[name][field]))
    return kwargs


def build_config(kwargs):
    """The `VTCConfig` of the drawn keyword arguments (raises `ConfigError` for a value out of range)."""
    return vtc.VTCConfig(**{name: None if kw is None else CLASSES[name](**kw) for name, kw in kwargs.items()})


# ---------------------------------------------------------------------------------------------------- the model
def hook_ids(module):
    return {name: tuple(value) for name, value in vars(module).items() if name.endswith("hooks") and
            isinstance(value, dict)}


def snapshot(model, processor, family):
    """Everything `compress` may touch: weights, state_dict keys, instance attributes and hooks of every module, the
    model config, and what the processor makes."""
    return {
        "state": {name: tensor.clone() for name, tensor in model.state_dict().items()},
        "attributes": {name: sorted(vars(module)) for name, module in model.named_modules()},
        "hooks": {name: hook_ids(module) for name, module in model.named_modules()},
        "config": model.config.to_dict(),
        "processor": (sorted(vars(processor)), sorted(vars(processor.image_processor))),
        "inputs": dict(tiny_batch(family, processor, batch=2)),
    }


def vtc_leftovers(model, processor):
    named = [f"{name}.{attribute}" for name, module in model.named_modules() for attribute in vars(module)
             if "vtc" in attribute]
    named += [f"processor.{a}" for a in (*vars(processor), *vars(processor.image_processor)) if "vtc" in a]
    return named + vtc_hooks(model)


def assert_untouched(subject):
    model, processor, reference = subject.model, subject.processor, subject.reference
    assert not vtc.is_compressed(model)
    assert vtc_leftovers(model, processor) == []
    now = snapshot(model, processor, subject.family)
    assert now["state"].keys() == reference["state"].keys()
    assert all(torch.equal(now["state"][name], tensor) for name, tensor in reference["state"].items())
    assert now["attributes"].keys() == reference["attributes"].keys()  # the same modules
    for name, attributes in reference["attributes"].items():
        assert now["attributes"][name] == attributes, (name, set(now["attributes"][name]) ^ set(attributes))
    for key in ("hooks", "config", "processor"):
        assert now[key] == reference[key], key
    assert now["inputs"].keys() == reference["inputs"].keys()
    assert all(torch.equal(now["inputs"][k], v) for k, v in reference["inputs"].items())


@dataclass
class Subject:
    """One family's tiny model and processor, their snapshot and the logits of the snapshot's batch of 2."""

    family: str
    model: torch.nn.Module
    processor: Any
    reference: dict
    logits: torch.Tensor

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Subject({self.family!r})"


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def subject(request):
    family = request.param
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    inputs = tiny_batch(family, processor, batch=2)
    # transformers installs its output-capture hooks on a module's first call that asks for hidden states: make every
    # call vtc makes once, so that the snapshot holds them
    model.generate(**inputs, max_new_tokens=1)
    vtc.compress(model, vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=1)), processor=processor)
    with torch.no_grad():
        model(**inputs)
    vtc.unpatch(model)
    with torch.no_grad():
        logits = model(**inputs).logits
    return Subject(family, model, processor, snapshot(model, processor, family), logits)


def expected_layer_lengths(config, stats, seq_len, padding):
    if config.lvtc is None:
        return [seq_len] * NUM_LAYERS
    k, restore_layer = config.lvtc.resolve_layers(NUM_LAYERS)
    end = NUM_LAYERS if restore_layer is None else restore_layer
    compressed = max(compressed_lengths(stats["visual_layout"], seq_len, config.lvtc.ratio, padding=padding))
    return [seq_len] * k + [compressed] * (end - k) + [seq_len] * (NUM_LAYERS - end)


@settings(max_examples=15)
@given(kwargs=config_kwargs())
def test_random_config_is_refused_cleanly_or_runs_and_unpatches_exactly(subject, kwargs):
    family, model, processor = subject.family, subject.model, subject.processor
    try:
        config = build_config(kwargs)
    except vtc.ConfigError:
        event("refused by the config")
        return
    try:
        vtc.compress(model, config, processor=processor)
    except vtc.VTCError as error:
        event(f"refused by compress: {type(error).__name__}")
        assert_untouched(subject)
        return
    event("compressed: " + ("+".join(name for name in FIELDS if getattr(config, name) is not None) or "identity"))

    try:
        inputs = tiny_batch(family, processor, batch=2)
        with torch.no_grad():
            logits = model(**inputs).logits
        seq_len = inputs["input_ids"].shape[1]
        assert logits.shape == (2, seq_len, model.config.get_text_config().vocab_size)
        assert not logits.isnan().any()
        stats = vtc.last_stats(model)
        assert stats["visual_tokens"] == (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
        padding = ~inputs["attention_mask"].bool()
        assert stats["layer_seq_lens"] == expected_layer_lengths(config, stats, seq_len, padding)
    finally:
        vtc.unpatch(model)
    assert_untouched(subject)
    with torch.no_grad():
        assert torch.equal(model(**subject.reference["inputs"]).logits, subject.logits)


def test_the_out_of_range_values_are_refused_by_the_constructors():
    """What `component_kwargs` substitutes must really be out of range, or the property would test less than it says."""
    for name, fields in OUT_OF_RANGE.items():
        for field, values in fields.items():
            context = {"mode": "budget"} if field == "max_visual_tokens" else {}
            for value in values:
                with pytest.raises(vtc.ConfigError):
                    CLASSES[name](**context, **{field: value})
