"""Validation, defaults, dict/JSON round trips and `dataclasses.replace` of the vtc configs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtc.config import LVTCConfig, PVTCConfig, RVTCConfig, VTCConfig
from vtc.errors import ConfigError

# ---- invalid values: (config class, kwargs, field named in the error) ----------------------------------------------

INVALID = [
    # PVTC
    (PVTCConfig, {"ratio": 3}, "ratio"),
    (PVTCConfig, {"ratio": 2}, "ratio"),
    (PVTCConfig, {"ratio": 8}, "ratio"),
    (PVTCConfig, {"ratio": 0}, "ratio"),
    (PVTCConfig, {"ratio": -4}, "ratio"),
    (PVTCConfig, {"ratio": 4.0}, "ratio"),
    (PVTCConfig, {"ratio": True}, "ratio"),
    (PVTCConfig, {"ratio": "4"}, "ratio"),
    (PVTCConfig, {"num_heads": 0}, "num_heads"),
    (PVTCConfig, {"num_heads": True}, "num_heads"),
    (PVTCConfig, {"num_heads": 2.0}, "num_heads"),
    (PVTCConfig, {"mlp_ratio": 0}, "mlp_ratio"),
    (PVTCConfig, {"mlp_ratio": -1.0}, "mlp_ratio"),
    (PVTCConfig, {"mlp_ratio": float("nan")}, "mlp_ratio"),
    (PVTCConfig, {"mlp_ratio": float("inf")}, "mlp_ratio"),
    (PVTCConfig, {"mlp_ratio": True}, "mlp_ratio"),
    (PVTCConfig, {"mlp_ratio": "4"}, "mlp_ratio"),
    (PVTCConfig, {"drop_path": 1.0}, "drop_path"),
    (PVTCConfig, {"drop_path": -0.1}, "drop_path"),
    (PVTCConfig, {"drop_path": float("nan")}, "drop_path"),
    (PVTCConfig, {"drop_path": False}, "drop_path"),
    (PVTCConfig, {"drop_path": None}, "drop_path"),
    (PVTCConfig, {"global_query": "max"}, "global_query"),
    (PVTCConfig, {"global_query": None}, "global_query"),
    (PVTCConfig, {"init": "random"}, "init"),
    (PVTCConfig, {"init": 1}, "init"),
    # LVTC
    (LVTCConfig, {"ratio": 0}, "ratio"),
    (LVTCConfig, {"ratio": -1}, "ratio"),
    (LVTCConfig, {"ratio": 2.5}, "ratio"),
    (LVTCConfig, {"ratio": True}, "ratio"),
    (LVTCConfig, {"compress_layer": 0}, "compress_layer"),
    (LVTCConfig, {"compress_layer": True}, "compress_layer"),
    (LVTCConfig, {"compress_layer": 2.0}, "compress_layer"),
    (LVTCConfig, {"compress_layer": None}, "compress_layer"),
    (LVTCConfig, {"compress_layer": 4, "restore_layer": 4}, "restore_layer"),
    (LVTCConfig, {"compress_layer": 5, "restore_layer": 3}, "restore_layer"),
    (LVTCConfig, {"compress_layer": -2, "restore_layer": -4}, "restore_layer"),
    (LVTCConfig, {"compress_layer": -3, "restore_layer": -3}, "restore_layer"),
    (LVTCConfig, {"restore_layer": 0}, "restore_layer"),
    (LVTCConfig, {"restore_layer": False}, "restore_layer"),
    (LVTCConfig, {"restore_layer": "last"}, "restore_layer"),
    (LVTCConfig, {"restore": "replace"}, "restore"),
    (LVTCConfig, {"upsample": "bicubic"}, "upsample"),
    (LVTCConfig, {"position": "last"}, "position"),
    # RVTC
    (RVTCConfig, {"mode": "pixels"}, "mode"),
    (RVTCConfig, {"mode": None}, "mode"),
    (RVTCConfig, {"min_tiles": 0}, "min_tiles"),
    (RVTCConfig, {"min_tiles": True}, "min_tiles"),
    (RVTCConfig, {"min_tiles": 7, "max_tiles": 6}, "max_tiles"),
    (RVTCConfig, {"max_tiles": 0}, "max_tiles"),
    (RVTCConfig, {"max_tiles": 6.0}, "max_tiles"),
    (RVTCConfig, {"tile_size": 0}, "tile_size"),
    (RVTCConfig, {"tile_size": True}, "tile_size"),
    (RVTCConfig, {"tile_size": 448.0}, "tile_size"),
    (RVTCConfig, {"use_thumbnail": 1}, "use_thumbnail"),
    (RVTCConfig, {"use_thumbnail": None}, "use_thumbnail"),
    (RVTCConfig, {"mode": "budget"}, "max_visual_tokens"),
    (RVTCConfig, {"mode": "budget", "max_visual_tokens": 0}, "max_visual_tokens"),
    (RVTCConfig, {"mode": "budget", "max_visual_tokens": True}, "max_visual_tokens"),
    (RVTCConfig, {"mode": "edge", "max_visual_tokens": 1024}, "max_visual_tokens"),
    (RVTCConfig, {"mode": "area", "max_visual_tokens": 1024}, "max_visual_tokens"),
    # upper bounds
    (PVTCConfig, {"ratio": 65 * 65}, "ratio"),
    (PVTCConfig, {"ratio": 10**20}, "ratio"),
    (PVTCConfig, {"num_heads": 1025}, "num_heads"),
    (PVTCConfig, {"mlp_ratio": 16.001}, "mlp_ratio"),
    (PVTCConfig, {"mlp_ratio": 1e9}, "mlp_ratio"),
    (LVTCConfig, {"ratio": 4097}, "ratio"),
    (RVTCConfig, {"min_tiles": 257, "max_tiles": 300}, "min_tiles"),
    (RVTCConfig, {"max_tiles": 257}, "max_tiles"),
    (RVTCConfig, {"tile_size": 8193}, "tile_size"),
    (RVTCConfig, {"mode": "budget", "max_visual_tokens": 2**20 + 1}, "max_visual_tokens"),
    # VTC: components must be config objects, not dicts or the wrong component
    (VTCConfig, {"pvtc": {"ratio": 4}}, "pvtc"),
    (VTCConfig, {"lvtc": PVTCConfig()}, "lvtc"),
    (VTCConfig, {"rvtc": True}, "rvtc"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), INVALID, ids=[f"{c.__name__}-{k}" for c, k, _ in INVALID])
def test_invalid_value_raises_config_error_naming_field_and_value(cls, kwargs, name):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    err = info.value
    assert err.field == name
    assert str(err).startswith(f"{name}={err.value!r} is invalid: expected ")
    assert err.value is kwargs.get(name, err.value)  # the value named is the one passed (or None when missing)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError, match=r"ratio=3 is invalid: expected a perfect square >= 1"):
        PVTCConfig(ratio=3)


def test_compress_layer_zero_hints_the_way_out():
    with pytest.raises(ConfigError, match="use compress_layer >= 1"):
        LVTCConfig(compress_layer=0)


def test_budget_without_max_visual_tokens_names_none():
    with pytest.raises(ConfigError, match=r"max_visual_tokens=None is invalid"):
        RVTCConfig(mode="budget")


# ---- defaults and valid corner cases -----------------------------------------------------------------------------

def test_defaults():
    p = PVTCConfig()
    assert (p.ratio, p.num_heads, p.mlp_ratio, p.drop_path, p.global_query, p.init) == (4, 16, 4.0, 0.0, "auto", "warm")
    assert p.window == 2
    lv = LVTCConfig()
    assert (lv.compress_layer, lv.restore_layer, lv.ratio, lv.restore, lv.upsample, lv.position) == (
        2, -4, 4, "delta", "nearest", "mean")
    r = RVTCConfig()
    assert (r.mode, r.min_tiles, r.max_tiles, r.tile_size, r.use_thumbnail, r.max_visual_tokens) == (
        "edge", 1, 6, None, True, None)
    v = VTCConfig()
    assert v.is_identity and (v.pvtc, v.lvtc, v.rvtc) == (None, None, None)
    assert not VTCConfig(rvtc=RVTCConfig()).is_identity


def test_every_field_has_help():
    for cls in (PVTCConfig, LVTCConfig, RVTCConfig, VTCConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize(("ratio", "window"), [(1, 1), (4, 2), (9, 3), (16, 4), (64, 8)])
def test_pvtc_window(ratio, window):
    assert PVTCConfig(ratio=ratio).window == window


def test_upper_bounds_are_inclusive():
    assert PVTCConfig(ratio=PVTCConfig.MAX_RATIO).window == 64
    assert PVTCConfig(num_heads=PVTCConfig.MAX_HEADS, mlp_ratio=PVTCConfig.MAX_MLP_RATIO).mlp_ratio == 16.0
    assert LVTCConfig(ratio=LVTCConfig.MAX_RATIO).ratio == 4096
    r = RVTCConfig(mode="budget", min_tiles=RVTCConfig.MAX_TILES, max_tiles=RVTCConfig.MAX_TILES,
                   tile_size=RVTCConfig.MAX_TILE_SIZE, max_visual_tokens=RVTCConfig.MAX_VISUAL_TOKENS)
    assert (r.max_tiles, r.tile_size, r.max_visual_tokens) == (256, 8192, 2**20)


# Every numeric field with what it needs beside it to be checked (a budget only exists with mode="budget").
NUMERIC_FIELDS = [
    (PVTCConfig, "ratio", {}), (PVTCConfig, "num_heads", {}), (PVTCConfig, "mlp_ratio", {}),
    (PVTCConfig, "drop_path", {}), (LVTCConfig, "ratio", {}), (RVTCConfig, "min_tiles", {}),
    (RVTCConfig, "max_tiles", {}), (RVTCConfig, "tile_size", {}),
    (RVTCConfig, "max_visual_tokens", {"mode": "budget"}),
]
FIELD_IDS = [f"{cls.__name__}.{name}" for cls, name, _ in NUMERIC_FIELDS]
UNBOUNDED = {"huge": 10**400, "-huge": -(10**400), "1e20": 10**20, "1e300": 1e300, "nan": float("nan"),
             "inf": float("inf"), "-inf": float("-inf"), "True": True, "False": False, "str": "1", "list": [4]}


@pytest.mark.parametrize("value", UNBOUNDED.values(), ids=UNBOUNDED.keys())
@pytest.mark.parametrize(("cls", "name", "context"), NUMERIC_FIELDS, ids=FIELD_IDS)
def test_huge_non_finite_and_bool_values_are_config_errors(cls, name, context, value):
    # never OverflowError (float(10**400)), TypeError or a config that later allocates a gigantic projector
    with pytest.raises(ConfigError) as info:
        cls(**context, **{name: value})
    assert info.value.field == name and info.value.value is value


@pytest.mark.parametrize("name", ["compress_layer", "restore_layer"])
@pytest.mark.parametrize("value", [10**400, -(10**400), True, float("nan"), 2.0], ids=["huge", "-huge", "True", "nan",
                                                                                       "2.0"])
def test_layer_indices_are_bounded_by_the_model(name, value):
    """Layer indices have no fixed range: any int is checked against the decoder when the config is applied."""
    if isinstance(value, int) and not isinstance(value, bool):
        config = LVTCConfig(**{"compress_layer": 1, "restore_layer": None, name: value})
        with pytest.raises(ConfigError, match="for a model with 24 decoder layers") as info:
            config.resolve_layers(24)
    else:
        with pytest.raises(ConfigError) as info:
            LVTCConfig(**{name: value})
    assert info.value.field == name


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    np = pytest.importorskip("numpy")
    p = PVTCConfig(ratio=np.int64(16), num_heads=np.int32(8), mlp_ratio=np.float32(2.0), drop_path=np.float64(0.5))
    assert (p.ratio, p.num_heads, p.mlp_ratio, p.drop_path) == (16, 8, 2.0, 0.5)
    assert type(p.ratio) is int and type(p.mlp_ratio) is float
    with pytest.raises(ConfigError):
        PVTCConfig(mlp_ratio=np.float64("nan"))
    with pytest.raises(ConfigError):
        PVTCConfig(ratio=np.bool_(True))


def test_every_numeric_field_documents_its_range():
    documented = {
        (PVTCConfig, "ratio"): "4096", (PVTCConfig, "num_heads"): "1..1024", (PVTCConfig, "mlp_ratio"): "<= 16",
        (PVTCConfig, "drop_path"): "0 <= p < 1", (LVTCConfig, "ratio"): "1..4096",
        (LVTCConfig, "compress_layer"): "decoder layers", (LVTCConfig, "restore_layer"): "layer count",
        (RVTCConfig, "min_tiles"): "1..256", (RVTCConfig, "max_tiles"): "min_tiles..256",
        (RVTCConfig, "tile_size"): "1..8192", (RVTCConfig, "max_visual_tokens"): "1..1048576",
    }
    for (cls, name), text in documented.items():
        assert text in next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"], (cls, name)


def test_valid_corner_cases():
    assert LVTCConfig(ratio=1).ratio == 1
    assert LVTCConfig(ratio=2).ratio == 2  # 1-D runs do not need a square
    assert LVTCConfig(compress_layer=-8, restore_layer=-2).restore_layer == -2
    assert LVTCConfig(compress_layer=-8, restore_layer=4).restore_layer == 4  # mixed signs: checked at resolve time
    assert LVTCConfig(restore_layer=None).restore_layer is None
    assert RVTCConfig(min_tiles=3, max_tiles=3).max_tiles == 3
    assert RVTCConfig(mode="budget", max_visual_tokens=1).max_visual_tokens == 1
    assert PVTCConfig(drop_path=0.999).drop_path == 0.999


def test_numbers_are_normalised():
    p = PVTCConfig(mlp_ratio=2)
    assert isinstance(p.mlp_ratio, float) and p.mlp_ratio == 2.0
    assert isinstance(PVTCConfig(drop_path=0).drop_path, float)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PVTCConfig().ratio = 9


# ---- dataclasses.replace -----------------------------------------------------------------------------------------

def test_replace_revalidates():
    assert dataclasses.replace(PVTCConfig(), ratio=16).window == 4
    with pytest.raises(ConfigError, match="ratio=5"):
        dataclasses.replace(PVTCConfig(), ratio=5)
    with pytest.raises(ConfigError, match="restore_layer"):
        dataclasses.replace(LVTCConfig(compress_layer=3, restore_layer=10), compress_layer=12)
    with pytest.raises(ConfigError, match="max_visual_tokens"):
        dataclasses.replace(RVTCConfig(), mode="budget")
    with pytest.raises(ConfigError, match="pvtc"):
        dataclasses.replace(VTCConfig(), pvtc={"ratio": 4})


def test_nested_replace_for_ablations():
    cfg = VTCConfig(pvtc=PVTCConfig(), lvtc=LVTCConfig())
    swept = dataclasses.replace(cfg, lvtc=dataclasses.replace(cfg.lvtc, ratio=16))
    assert swept.lvtc.ratio == 16 and swept.pvtc == cfg.pvtc and cfg.lvtc.ratio == 4


# ---- resolve_layers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "r", "expected"), [
    (2, -4, (2, 20)),
    (2, 20, (2, 20)),
    (-22, -4, (2, 20)),
    (1, 2, (1, 2)),
    (23, 24, (23, 24)),     # restore after the last layer
    (-1, 24, (23, 24)),
    (-23, -1, (1, 23)),
    (12, None, (12, None)),
    (-12, None, (12, None)),
])
def test_resolve_layers(k, r, expected):
    assert LVTCConfig(compress_layer=k, restore_layer=r).resolve_layers(24) == expected


@pytest.mark.parametrize(("k", "r", "name"), [
    (-24, None, "compress_layer"),      # normalises to 0
    (-30, None, "compress_layer"),
    (24, None, "compress_layer"),
    (30, None, "compress_layer"),
    (2, 25, "restore_layer"),           # beyond the last layer
    (-4, 10, "restore_layer"),          # K=20 >= L=10
    (-4, 20, "restore_layer"),          # K=20 == L
    (10, -14, "restore_layer"),         # L=10 == K
    (10, -30, "restore_layer"),         # L negative after normalisation
    (23, -1, "restore_layer"),          # K=23, L=23
])
def test_resolve_layers_errors_name_field_and_layer_count(k, r, name):
    with pytest.raises(ConfigError, match="24 decoder layers") as info:
        LVTCConfig(compress_layer=k, restore_layer=r).resolve_layers(24)
    assert info.value.field == name


@pytest.mark.parametrize("n", [0, 1, -3, 2.0, True])
def test_resolve_layers_rejects_bad_layer_count(n):
    with pytest.raises(ConfigError, match="num_layers"):
        LVTCConfig(compress_layer=1, restore_layer=None).resolve_layers(n)


# ---- dict / JSON round trips -------------------------------------------------------------------------------------

_square = st.integers(1, 12).map(lambda s: s * s)
_unit = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)

pvtc_configs = st.builds(
    PVTCConfig, ratio=_square, num_heads=st.integers(1, 64),
    mlp_ratio=st.floats(1e-3, 16.0, allow_nan=False, allow_infinity=False), drop_path=_unit,
    global_query=st.sampled_from(PVTCConfig.GLOBAL_QUERIES), init=st.sampled_from(PVTCConfig.INITS))


@st.composite
def lvtc_configs(draw):
    k = draw(st.integers(1, 40) | st.integers(-40, -1))
    if k > 0:
        r = draw(st.none() | st.integers(k + 1, 80) | st.integers(-40, -1))
    else:
        r = draw(st.none() | st.integers(k + 1, -1) | st.integers(1, 80)) if k < -1 else draw(
            st.none() | st.integers(1, 80))
    return LVTCConfig(compress_layer=k, restore_layer=r, ratio=draw(st.integers(1, 64)),
                      restore=draw(st.sampled_from(LVTCConfig.RESTORES)),
                      upsample=draw(st.sampled_from(LVTCConfig.UPSAMPLES)),
                      position=draw(st.sampled_from(LVTCConfig.POSITIONS)))


@st.composite
def rvtc_configs(draw):
    mode = draw(st.sampled_from(RVTCConfig.MODES))
    lo = draw(st.integers(1, 12))
    return RVTCConfig(mode=mode, min_tiles=lo, max_tiles=draw(st.integers(lo, 40)),
                      tile_size=draw(st.none() | st.integers(1, 2048)), use_thumbnail=draw(st.booleans()),
                      max_visual_tokens=draw(st.integers(1, 100_000)) if mode == "budget" else None)


vtc_configs = st.builds(VTCConfig, pvtc=st.none() | pvtc_configs, lvtc=st.none() | lvtc_configs(),
                        rvtc=st.none() | rvtc_configs())
any_config = pvtc_configs | lvtc_configs() | rvtc_configs() | vtc_configs


@given(any_config)
def test_dict_and_json_round_trip(cfg):
    cls = type(cfg)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON-able values
    assert cls.from_dict(d) == cfg
    assert cls.from_json(cfg.to_json()) == cfg
    assert cls.from_json(cfg.to_json(indent=None)) == cfg


@given(vtc_configs)
def test_vtc_dict_nests(cfg):
    d = cfg.to_dict()
    assert set(d) == {"pvtc", "lvtc", "rvtc", "prune"}
    for name in d:
        part = getattr(cfg, name)
        assert d[name] == (None if part is None else part.to_dict())


def test_from_dict_fills_defaults_and_accepts_objects():
    assert PVTCConfig.from_dict({}) == PVTCConfig()
    assert VTCConfig.from_dict({"lvtc": {"ratio": 9}}) == VTCConfig(lvtc=LVTCConfig(ratio=9))
    assert VTCConfig.from_dict({"pvtc": PVTCConfig(ratio=1), "rvtc": None}) == VTCConfig(pvtc=PVTCConfig(ratio=1))


@pytest.mark.parametrize(("cls", "d", "key"), [
    (PVTCConfig, {"ratio": 4, "keep_ratio": 0.5}, "keep_ratio"),
    (LVTCConfig, {"layer": 2}, "layer"),
    (RVTCConfig, {"max_num": 6}, "max_num"),
    (VTCConfig, {"pvtc": None, "llm": {}}, "llm"),
    (VTCConfig, {"lvtc": {"compress": 2}}, "compress"),    # nested level
])
def test_from_dict_unknown_key_lists_valid_keys(cls, d, key):
    with pytest.raises(ConfigError) as info:
        cls.from_dict(d)
    assert info.value.field == key
    target = LVTCConfig if key == "compress" else cls
    for f in dataclasses.fields(target):
        assert f.name in str(info.value)


def test_from_dict_several_unknown_keys_are_all_named():
    with pytest.raises(ConfigError, match=r"Unknown keys: 'a', 'b'"):
        PVTCConfig.from_dict({"a": 1, "b": 2})


@pytest.mark.parametrize("d", [None, [("ratio", 4)], "ratio=4"])
def test_from_dict_rejects_non_mappings(d):
    with pytest.raises(ConfigError):
        PVTCConfig.from_dict(d)


def test_from_json_validates():
    with pytest.raises(ConfigError, match="ratio=3"):
        VTCConfig.from_json('{"pvtc": {"ratio": 3}}')
    with pytest.raises(ConfigError, match="VTCConfig"):
        VTCConfig.from_json("[1, 2]")


def test_save_load(tmp_path):
    cfg = VTCConfig(pvtc=PVTCConfig(ratio=16, init="paper", drop_path=0.1), lvtc=LVTCConfig(restore_layer=None),
                    rvtc=RVTCConfig(mode="budget", max_visual_tokens=2048))
    path = tmp_path / "vtc_config.json"
    cfg.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == cfg.to_dict()
    assert VTCConfig.load(path) == cfg
    assert VTCConfig.load(str(path)) == cfg
    VTCConfig().save(str(path))
    assert VTCConfig.load(path).is_identity
