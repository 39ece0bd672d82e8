"""`torch.compile` must never run one model's compiled code for another that vtc changed differently.

Dynamo shares compiled code between instances of a class whose guards pass, and by default it does not guard a
module's empty hook dicts (`torch._dynamo.config.skip_nnmodule_hook_guards`): code compiled for a module without hooks
then also runs for one with hooks, which silently skips them. A compressed model's hooks are most of vtc (LVTC's
compress, swap and restore; the prefill record), so in a process that compiled an uncompressed model of the same
class a compiled compressed model ran uncompressed: its outputs were the uncompressed model's. These tests compare a
compiled model's greedy `generate` (its scores and the KV lengths per layer) with the same model run eagerly, in the
orders that met compiled code of another configuration: another model compiled first, compiled later, and the same
model compiled before it was compressed or unpatched.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo

import vtc
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

pytestmark = pytest.mark.slow

NEW_TOKENS = 3
LVTC = vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4))
PVTC = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))


@pytest.fixture(autouse=True)
def fresh_process():
    """Dynamo as in a process that has compressed nothing yet: nothing compiled, torch's default settings (restored
    afterwards to what they were)."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=True):
        yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def llava():
    return build_tiny_model("llava")


def _copy(llava, config: vtc.VTCConfig | None):
    """A copy of the model, compressed with `config` (with a processor of its own: PVTC patches it), and its inputs."""
    model, processor = copy.deepcopy(llava), build_tiny_processor("llava")
    if config is not None:
        vtc.compress(model, config, processor=processor)
    return model, dict(tiny_batch("llava", processor))


def _generate(model, inputs) -> tuple[list[int], torch.Tensor]:
    """The KV length of every layer after a greedy generation, and every step's scores."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             return_dict_in_generate=True, output_scores=True)
    cache = out.past_key_values
    return [cache.get_seq_length(layer) for layer in range(len(cache.layers))], torch.stack(out.scores)


class Compiled:
    """`model.forward` compiled (what `generate` calls), switchable on and off."""

    def __init__(self, model):
        self.model, self.forward = model, torch.compile(model.forward, backend="eager")

    def generate(self, inputs):
        self.model.forward = self.forward
        try:
            return _generate(self.model, inputs)
        finally:
            del self.model.forward


def _assert_runs_as_eager(compiled: Compiled, inputs, what: str) -> None:
    eager_lengths, eager_scores = _generate(compiled.model, inputs)
    lengths, scores = compiled.generate(inputs)
    assert lengths == eager_lengths, f"{what}: KV lengths per layer {lengths}, eagerly {eager_lengths}"
    torch.testing.assert_close(scores, eager_scores, atol=1e-5, rtol=1e-4, msg=f"{what}: scores differ from eager")


@pytest.mark.parametrize("config", [LVTC, PVTC], ids=["lvtc", "pvtc"])
@pytest.mark.parametrize("order", ["other compiled first", "other compiled between"])
def test_a_compressed_model_never_runs_code_compiled_for_an_uncompressed_one(llava, config, order):
    compressed, inputs = _copy(llava, config)
    plain, plain_inputs = _copy(llava, None)
    mine, other = Compiled(compressed), Compiled(plain)
    if order == "other compiled first":
        other.generate(plain_inputs)
    else:
        mine.generate(inputs)
        other.generate(plain_inputs)
    _assert_runs_as_eager(mine, inputs, f"compressed after {order}")
    _assert_runs_as_eager(other, plain_inputs, f"uncompressed after {order}")


def test_a_model_compiled_before_compress_runs_compressed_and_after_unpatch_uncompressed(llava):
    model, inputs = _copy(llava, None)
    compiled = Compiled(model)
    compiled.generate(inputs)
    vtc.compress(model, LVTC)
    _assert_runs_as_eager(compiled, inputs, "compiled, then compressed")
    vtc.unpatch(model)
    _assert_runs_as_eager(compiled, inputs, "compressed and compiled, then unpatched")


def test_compress_turns_dynamo_hook_guards_on():
    assert torch._dynamo.config.skip_nnmodule_hook_guards  # torch's default
    vtc.compress(build_tiny_model("llava"), LVTC)
    assert not torch._dynamo.config.skip_nnmodule_hook_guards
