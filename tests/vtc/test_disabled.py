"""`vtc.disabled(model)`: the uncompressed model, in the calling thread only, with the same weights.

Every family with every component on (RVTC where the family has tiles) and perturbed vtc parameters, so that an
output that used any of vtc's hooks, overrides or parameters cannot pass for the unpatched model's. The teacher's
inputs come from a copy of the processor made before `compress`.
"""

import copy
import io
import pickle
import threading

import pytest
import torch
from torch import nn

import vtc
from vtc.patch import PatchLedger
from vtc.testing import TINY_FAMILIES, build_tiny_model, build_tiny_processor, tiny_batch

GENERATE = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False}


def config_for(family):
    rvtc = None if family == "llava" else vtc.RVTCConfig(mode="area", max_tiles=4)
    return vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4), rvtc=rvtc,
                         lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3, restore="add"))


def perturb_vtc_parameters(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "vtc_" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def generate(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, **GENERATE)


def vtc_parameters(model):
    return {name: p for name, p in model.named_parameters() if "vtc_" in name}


class Setup:
    """A compressed tiny model, the unpatched model's outputs on the teacher's inputs, and the compressed outputs."""

    def __init__(self, family, *, with_generate=True):
        self.family = family
        self.model, self.processor = build_tiny_model(family), build_tiny_processor(family)
        self.plain_processor = copy.deepcopy(self.processor)  # before compress: stays unpatched
        self.teacher_inputs = tiny_batch(family, self.plain_processor, batch=2)
        self.plain_logits = logits(self.model, self.teacher_inputs)
        self.plain_generated = generate(self.model, self.teacher_inputs) if with_generate else None
        vtc.compress(self.model, config_for(family), processor=self.processor)
        perturb_vtc_parameters(self.model)
        self.student_inputs = tiny_batch(family, self.processor, batch=2)
        self.compressed_logits = logits(self.model, self.student_inputs)
        self.compressed_stats = vtc.last_stats(self.model)

    def assert_compressed(self):
        assert torch.equal(logits(self.model, self.student_inputs), self.compressed_logits)

    def assert_plain(self):
        assert torch.equal(logits(self.model, self.teacher_inputs), self.plain_logits)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_disabled_runs_the_unpatched_model_and_compression_comes_back(family):
    s = Setup(family)
    model = s.model
    # the compressed model really differs (fewer placeholders, a pooled and restored decoder)
    assert s.compressed_logits.shape[1] < s.plain_logits.shape[1]

    with vtc.disabled(model) as teacher:
        assert teacher is model and vtc.is_compressed(model)
        s.assert_plain()
        assert torch.equal(generate(model, s.teacher_inputs), s.plain_generated)
        # with gradients too: the backbone gets them, the parameters vtc added go unused
        model.zero_grad()
        out = model(**s.teacher_inputs).logits
        torch.testing.assert_close(out, s.plain_logits, rtol=0, atol=1e-6)
        out.float().square().mean().backward()
        assert all(p.grad is None for p in vtc_parameters(model).values()) and vtc_parameters(model)
        assert any(p.grad is not None for name, p in model.named_parameters() if "vtc_" not in name)
        # the processor stays patched, all of it: its inputs are the student's
        again = tiny_batch(family, s.processor, batch=2)
        assert again.keys() == s.student_inputs.keys()
        assert all(torch.equal(again[key], s.student_inputs[key]) for key in again)
        # a disabled forward does not record stats
        assert vtc.last_stats(model) == s.compressed_stats
    model.zero_grad()

    s.assert_compressed()
    assert vtc.last_stats(model)["visual_tokens"] == s.compressed_stats["visual_tokens"]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "internvl"])
def test_patched_processor_inputs_fail_loudly_inside_the_block(family):
    s = Setup(family, with_generate=False)
    with vtc.disabled(s.model), pytest.raises(ValueError, match="(?i)token"):
        logits(s.model, s.student_inputs)  # the unpatched model's own placeholder-count error
    s.assert_compressed()  # an exception inside the model restores compression too


def test_an_exception_in_the_block_restores_compression():
    s = Setup("qwen2_vl", with_generate=False)
    with pytest.raises(RuntimeError, match="boom"), vtc.disabled(s.model):
        s.assert_plain()
        raise RuntimeError("boom")
    assert not vtc.api._state(s.model).ledger.is_suspended
    s.assert_compressed()


def test_nested_blocks():
    s = Setup("llava_next", with_generate=False)
    with vtc.disabled(s.model):
        with vtc.disabled(s.model):
            s.assert_plain()
        s.assert_plain()  # the outer block still holds
    s.assert_compressed()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_one_thread_disabled_while_another_runs_compressed(family):
    s = Setup(family, with_generate=False)
    model, rounds = s.model, 3
    inside = threading.Barrier(2)  # the teacher thread is inside its block before either thread runs
    done = threading.Barrier(2)  # and leaves it only after the student thread has finished
    failures: list[str] = []

    def teacher():
        try:
            with vtc.disabled(model):
                inside.wait()
                for round_ in range(rounds):
                    if not torch.equal(logits(model, s.teacher_inputs), s.plain_logits):
                        failures.append(f"teacher round {round_}: not the unpatched logits")
                done.wait()
        except Exception as error:  # an exception in a thread would otherwise vanish
            failures.append(f"teacher: {type(error).__name__}: {error}")
            inside.abort()
            done.abort()

    def student():
        try:
            inside.wait()
            for round_ in range(rounds):
                if not torch.equal(logits(model, s.student_inputs), s.compressed_logits):
                    failures.append(f"student round {round_}: not the compressed logits")
                if vtc.last_stats(model)["visual_tokens"] != s.compressed_stats["visual_tokens"]:
                    failures.append(f"student round {round_}: stats of another forward")
            done.wait()
        except Exception as error:
            failures.append(f"student: {type(error).__name__}: {error}")
            inside.abort()
            done.abort()

    threads = [threading.Thread(target=teacher), threading.Thread(target=student)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    s.assert_compressed()


def test_copies_and_pickles_of_a_compressed_model_support_disabled():
    family = "internvl"
    plain_model, processor = build_tiny_model(family), build_tiny_processor(family)
    teacher_inputs = tiny_batch(family, copy.deepcopy(processor), batch=2)
    plain_logits = logits(plain_model, teacher_inputs)
    model = vtc.compress(build_tiny_model(family), config_for(family), processor=processor)
    perturb_vtc_parameters(model)

    buffer = io.BytesIO()
    torch.save(model, buffer)  # before any forward (transformers adds unpicklable hooks at the first one)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    student_inputs = tiny_batch(family, processor, batch=2)
    compressed_logits = logits(model, student_inputs)

    with vtc.disabled(model):
        clone = copy.deepcopy(model)  # a copy starts enabled in every thread
        assert torch.equal(logits(clone, student_inputs), compressed_logits)
    for other in (loaded, clone):
        with vtc.disabled(other):
            assert torch.equal(logits(other, teacher_inputs), plain_logits)
        assert torch.equal(logits(other, student_inputs), compressed_logits)
    with vtc.disabled(clone):  # suspending the copy leaves the original compressed
        assert torch.equal(logits(model, student_inputs), compressed_logits)


def test_an_uncompressed_model_is_refused():
    model = build_tiny_model("llava")
    with pytest.raises(vtc.UnsupportedModelError, match="not compressed"):
        vtc.disabled(model)
    vtc.compress(model, vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=3)))
    vtc.unpatch(model)
    with pytest.raises(vtc.UnsupportedModelError):
        vtc.disabled(model)


# ----------------------------------------------------------------------------------------------------- the ledger
class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x):
        return self.linear(x)

    def describe(self):
        return "module"


class ToyProcessor:
    def describe(self):
        return "processor"


def _loud(original, *args, **kwargs):
    return original(*args, **kwargs).upper()


def _negate(_module, _args, output):
    return -output


def _add_one(_module, args):
    return (args[0] + 1,)


def test_suspending_a_ledger_passes_model_side_changes_through_and_keeps_the_processor_patched():
    toy, processor, ledger = Toy(), ToyProcessor(), PatchLedger()
    x = torch.ones(1, 2)
    plain = toy(x)
    ledger.replace_method(toy, "describe", _loud)
    ledger.replace_method(processor, "describe", _loud)
    ledger.add_forward_pre_hook(toy, _add_one, "add one")
    ledger.add_forward_hook(toy, _negate, "negate")
    patched = toy(x)
    assert not torch.equal(patched, plain)

    with ledger.suspended():
        assert ledger.is_suspended
        assert toy.describe() == "module" and torch.equal(toy(x), plain)
        assert processor.describe() == "PROCESSOR"  # not an nn.Module: stays active
        seen = []
        other = threading.Thread(target=lambda: seen.append((ledger.is_suspended, toy.describe(), toy(x))))
        other.start()
        other.join()
        assert seen[0][0] is False and seen[0][1] == "MODULE" and torch.equal(seen[0][2], patched)
        for clone in (copy.deepcopy((toy, ledger)), pickle.loads(pickle.dumps((toy, ledger)))):
            toy_copy, ledger_copy = clone
            assert not ledger_copy.is_suspended and toy_copy.describe() == "MODULE"
            assert toy_copy.describe.ledger is ledger_copy
    assert not ledger.is_suspended and toy.describe() == "MODULE" and torch.equal(toy(x), patched)

    ledger.rollback()
    assert torch.equal(toy(x), plain) and not toy._forward_hooks and not toy._forward_pre_hooks
    assert toy.describe() == "module" and processor.describe() == "processor"
