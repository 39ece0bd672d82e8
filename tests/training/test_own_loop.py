"""Training a compressed model with a loop of one's own: the native projector PVTC bypasses is frozen while compressed.

Under PVTC the model's own projector takes no part in the forward pass, so its parameters would get no gradient, and
a plain `DistributedDataParallel(model)` (`find_unused_parameters=False`) stops at its second step. `vtc.compress`
freezes them through the patch ledger; `vtc.unpatch` gives each parameter back the `requires_grad` it had.
"""

import copy
import functools
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vtc
from vtc.api import get_adapter_of
from vtc.testing import TINY_FAMILIES, make_tiny, tiny_batch
from vtc.training import prepare_stage

WORKER = Path(__file__).with_name("_own_loop_worker.py")
PVTC_WARM = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))
PVTC_PAPER = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4, init="paper"))
LVTC_ONLY = vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4, restore="add"))


@functools.cache
def _built(family):
    return make_tiny(family)


def fresh(family):
    """A copy of the tiny model of `family` (built once per worker) and its own processor."""
    model, processor = _built(family)
    return copy.deepcopy(model), copy.deepcopy(processor)


def native_projector_names(model):
    """The full names of the native projector's parameters (the model compressed)."""
    owned = {id(p) for p in get_adapter_of(model).projector.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in owned]


def requires_grad(model, names):
    parameters = dict(model.named_parameters())
    return [parameters[name].requires_grad for name in names]


def set_requires_grad(model, names, values):
    parameters = dict(model.named_parameters())
    for name, value in zip(names, values):
        parameters[name].requires_grad_(value)


def without_gradient(model, family, processor):
    """The names of the parameters that require grad but get no gradient from one training step."""
    inputs = tiny_batch(family, processor, batch=2)
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    return {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_under_pvtc_every_trainable_parameter_gets_a_gradient(family):
    """Nothing the compressed model asks to train goes without a gradient, beyond what the unpatched model already
    leaves unused (LLaVA's vision towers: layers after the one the model reads)."""
    model, processor = fresh(family)
    unused_unpatched = without_gradient(model, family, processor)
    model.zero_grad(set_to_none=True)
    vtc.compress(model, PVTC_WARM, processor=processor)
    assert without_gradient(model, family, processor) <= unused_unpatched


@pytest.mark.parametrize("config", [PVTC_WARM, PVTC_PAPER], ids=["warm", "paper"])
@pytest.mark.parametrize("before", ["trainable", "frozen", "mixed"])
def test_unpatch_restores_each_projector_parameters_requires_grad(config, before):
    model, processor = fresh("qwen2_vl")
    vtc.compress(model, config, processor=processor)
    names = native_projector_names(model)
    vtc.unpatch(model)
    values = {"trainable": [True] * len(names), "frozen": [False] * len(names),
              "mixed": [i % 2 == 0 for i in range(len(names))]}[before]
    set_requires_grad(model, names, values)

    vtc.compress(model, config, processor=processor)
    assert not any(requires_grad(model, names))
    if config.pvtc.init == "warm":  # the local query's copy of the projector keeps training as the user set it
        copy_ = [p.requires_grad for p in model.model.vtc_pvtc.native_projector.parameters()]
        assert copy_ == values
    vtc.compress(model, config, processor=processor)  # compressing again first undoes the last compression
    vtc.unpatch(model)
    assert requires_grad(model, names) == values


def test_the_frozen_projector_travels_with_copies_and_pickles():
    model, processor = fresh("internvl")
    vtc.compress(model, PVTC_WARM, processor=processor)
    names = native_projector_names(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for duplicate in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert not any(requires_grad(duplicate, names))
        vtc.unpatch(duplicate)
        assert all(requires_grad(duplicate, names))
    assert not any(requires_grad(model, names))  # the copies' unpatch left the original compressed
    vtc.unpatch(model)
    assert all(requires_grad(model, names))


def test_the_projector_stays_frozen_inside_disabled_and_trains_without_pvtc():
    model, processor = fresh("qwen2_vl")
    vtc.compress(model, LVTC_ONLY)  # the native projector is still in use: nothing frozen
    names = native_projector_names(model)
    assert all(requires_grad(model, names))
    vtc.compress(model, PVTC_WARM, processor=processor)
    with vtc.disabled(model):  # the original projector runs again, for a teacher that does not train
        assert not any(requires_grad(model, names))


@pytest.mark.parametrize("stage", ["compressor", "full"])
def test_prepare_stage_keeps_the_projector_frozen_and_unpatch_restores_it(stage):
    model, processor = fresh("qwen2_vl")
    vtc.compress(model, PVTC_WARM, processor=processor)
    names = native_projector_names(model)
    prepare_stage(model, stage, train_vision=stage == "full")
    assert not any(requires_grad(model, names))
    vtc.unpatch(model)
    assert all(requires_grad(model, names))  # what compress changed, back; the stage's other choices stay


def test_load_pretrained_compresses_again_with_the_projector_frozen(tmp_path):
    model, processor = fresh("qwen2_vl")
    vtc.compress(model, PVTC_WARM, processor=processor)
    names = native_projector_names(model)
    vtc.save_pretrained(model, tmp_path)
    loaded, loaded_processor = fresh("qwen2_vl")
    vtc.load_pretrained(loaded, tmp_path, processor=loaded_processor)
    assert not any(requires_grad(loaded, names))
    vtc.unpatch(loaded)
    assert all(requires_grad(loaded, names))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_a_plain_ddp_loop_trains_a_compressed_model(tmp_path):
    """Two processes (gloo, CPU), `DistributedDataParallel(model)` with its defaults, PVTC and PVTC+LVTC."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT") and not k.startswith("TORCHELASTIC_")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(WORKER), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, "\n".join((done.stdout + done.stderr).splitlines()[-30:])
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) == 4
    for run in ranks[0]:
        assert all(map(torch.isfinite, map(torch.tensor, ranks[0][run]["losses"] + ranks[1][run]["losses"])))
        # DDP averaged the gradients: the ranks, on batches of their own, end with the same weights
        assert ranks[0][run]["checksum"] == pytest.approx(ranks[1][run]["checksum"], rel=1e-9), run
