"""`vtc.PruneConfig`: every bad value is a `ConfigError` naming the field; JSON round trips; `VTCConfig(prune=...)`;
the command line's `--config` file; the FLOP count of each method."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import vtc
from vtc.cli.arguments import vtc_config_file
from vtc.config import PruneConfig, VTCConfig
from vtc.flops import prune_flops

prune_configs = st.builds(
    lambda method, keep, seed, layer: PruneConfig(method=method, keep=keep, seed=seed if method == "random" else 0,
                                                  layer=layer if method in PruneConfig.IN_LLM_METHODS else None),
    st.sampled_from(PruneConfig.METHODS),
    st.integers(1, PruneConfig.MAX_KEEP) | st.floats(0.001, 0.999),
    st.integers(0, 2**63 - 1),
    st.none() | st.integers(1, 40),
)


def test_defaults_and_public_name():
    assert vtc.PruneConfig is PruneConfig and "PruneConfig" in vtc.__all__
    config = PruneConfig()
    assert (config.method, config.keep, config.seed, config.layer) == ("divprune", 0.25, 0, None)
    assert {f.name for f in dataclasses.fields(PruneConfig)} == {"method", "keep", "seed", "layer"}
    assert all(f.metadata["help"] for f in dataclasses.fields(PruneConfig))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"keep": 0}, "keep"),
    ({"keep": -3}, "keep"),
    ({"keep": PruneConfig.MAX_KEEP + 1}, "keep"),
    ({"keep": 0.0}, "keep"),
    ({"keep": 1.0}, "keep"),
    ({"keep": 1.5}, "keep"),
    ({"keep": float("nan")}, "keep"),
    ({"keep": float("inf")}, "keep"),
    ({"keep": True}, "keep"),
    ({"keep": "64"}, "keep"),
    ({"keep": None}, "keep"),
    ({"method": "tome"}, "method"),
    ({"method": "Random"}, "method"),
    ({"method": None}, "method"),
    ({"method": "random", "seed": -1}, "seed"),
    ({"method": "random", "seed": 2**63}, "seed"),
    ({"method": "random", "seed": 1.0}, "seed"),
    ({"method": "random", "seed": False}, "seed"),
    ({"method": "pool", "seed": 3}, "seed"),
])
def test_every_bad_value_is_a_config_error_naming_the_field(kwargs, field):
    with pytest.raises(vtc.ConfigError) as info:
        PruneConfig(**kwargs)
    assert info.value.field == field


def test_a_whole_float_is_pointed_to_an_int():
    with pytest.raises(vtc.ConfigError, match="as an int"):
        PruneConfig(keep=64.0)


def test_numbers_are_normalised():
    assert PruneConfig(keep=np.int64(64)).keep == 64 and type(PruneConfig(keep=np.int64(64)).keep) is int
    assert type(PruneConfig(keep=np.float32(0.5)).keep) is float
    assert PruneConfig(method="random", seed=np.uint8(7)).seed == 7
    assert dataclasses.replace(PruneConfig(keep=64), keep=0.5) == PruneConfig(keep=0.5)


@given(prune_configs)
def test_json_round_trip(config):
    assert PruneConfig.from_json(config.to_json()) == config
    both = VTCConfig(prune=config, rvtc=vtc.RVTCConfig())
    assert VTCConfig.from_dict(json.loads(both.to_json())) == both


def test_vtc_config_nests_prune():
    config = VTCConfig(prune=PruneConfig(method="pool", keep=64))
    assert config.to_dict()["prune"] == {"method": "pool", "keep": 64, "seed": 0, "layer": None}
    assert VTCConfig.from_dict({"prune": {"method": "pool", "keep": 64}}) == config
    assert not config.is_identity and VTCConfig(prune=None).is_identity
    with pytest.raises(vtc.ConfigError, match="PruneConfig or None"):
        VTCConfig(prune={"method": "pool"})
    with pytest.raises(vtc.ConfigError) as info:
        VTCConfig.from_dict({"prune": {"method": "pool", "ratio": 4}})
    assert info.value.field == "ratio"


def test_pvtc_and_prune_together_are_refused():
    with pytest.raises(vtc.ConfigError, match="both replace the projector's output") as info:
        VTCConfig(pvtc=vtc.PVTCConfig(), prune=PruneConfig())
    assert info.value.field == "prune"


def test_the_command_line_loads_a_config_file_with_prune(tmp_path):
    path = tmp_path / "prune.json"
    path.write_text(json.dumps({"prune": {"method": "visionzip", "keep": 0.25}}))
    assert vtc_config_file(str(path)) == VTCConfig(prune=PruneConfig(method="visionzip", keep=0.25))
    VTCConfig(prune=PruneConfig(method="random", keep=8, seed=3)).save(path)
    assert vtc_config_file(str(path)).prune.seed == 3


# ---------------------------------------------------------------------------------------------------- FLOPs
def test_flops_of_each_method():
    n, k, d = 576, 64, 4096
    assert prune_flops("random", n, k, d) == prune_flops("downsample", n, k, d) == 0
    assert prune_flops("pool", n, k, d) == n * d
    assert prune_flops("divprune", n, k, d) == 2 * n * n * d + 2 * k * n
    # VisionZip at 64 tokens: 10 contextual tokens absorb the 512 tokens not kept
    assert prune_flops("visionzip", n, k, d, tower_tokens=577, attention_width=1024, head_width=64) == (
        2 * 577 * 1024 + 2 * 512 * 10 * 64)
    assert prune_flops("visionzip", n, n, d) == 2 * n * d  # everything kept: only the attention row
    # a tower without a [CLS] token: the attention every token receives from every query
    assert prune_flops("visionzip", n, k, d, tower_tokens=2304, attention_width=1280, head_width=80,
                       queries=2304) == 2 * 2304 * 2304 * 1280 + 2 * 512 * 10 * 80


@pytest.mark.parametrize(("args", "field"), [(("tome", 576, 64, 8), "method"), (("pool", 0, 0, 8), "native_tokens"),
                                             (("pool", 16, 17, 8), "kept_tokens"), (("pool", 16, 4, 0), "width")])
def test_flops_refuse_bad_counts(args, field):
    with pytest.raises(vtc.ConfigError) as info:
        prune_flops(*args)
    assert info.value.field == field
