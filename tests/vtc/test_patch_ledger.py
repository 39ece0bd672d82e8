"""The patch ledger undoes every kind of change it records, newest first."""

import pytest
import torch
from torch import nn

from vtc.patch import PatchLedger


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.register_buffer("scale", torch.ones(3))
        self.flag = "original"

    def forward(self, x):
        return self.linear(x) * self.scale

    def describe(self):
        return "class method"


def snapshot(module: nn.Module):
    return (
        {k: v.clone() for k, v in module.state_dict().items()},
        dict(vars(module)),
        {name: type(m) for name, m in module.named_modules()},
    )


def test_set_attr_new_attribute_is_removed():
    toy, ledger = Toy(), PatchLedger()
    ledger.set_attr(toy, "vtc_note", 1)
    assert toy.vtc_note == 1
    ledger.rollback()
    assert not hasattr(toy, "vtc_note")


def test_set_attr_shadowing_a_method_restores_the_class_method():
    toy, ledger = Toy(), PatchLedger()
    ledger.set_attr(toy, "describe", lambda: "patched")
    assert toy.describe() == "patched"
    ledger.rollback()
    assert toy.describe() == "class method"
    assert "describe" not in vars(toy)


def test_submodule_parameter_and_buffer_replacement_round_trip():
    toy, ledger = Toy(), PatchLedger()
    state_before = snapshot(toy)
    original_linear = toy.linear
    ledger.set_attr(toy, "linear", nn.Linear(3, 5))
    ledger.set_attr(toy, "vtc_extra", nn.Linear(2, 2))
    ledger.set_attr(toy.linear, "weight", nn.Parameter(torch.zeros(5, 3)))
    ledger.set_attr(toy, "scale", torch.zeros(3))
    ledger.set_attr(toy, "flag", "patched")
    assert toy.linear.out_features == 5 and "vtc_extra" in dict(toy.named_children())
    ledger.rollback()
    assert toy.linear is original_linear
    state_after = snapshot(toy)
    assert state_before[0].keys() == state_after[0].keys()
    assert all(torch.equal(state_before[0][k], state_after[0][k]) for k in state_before[0])
    assert state_before[2] == state_after[2]
    assert toy.flag == "original" and len(ledger) == 0


def test_hooks_are_removed():
    toy, ledger = Toy(), PatchLedger()
    calls = []
    ledger.add_hook(toy.register_forward_pre_hook(lambda m, a: calls.append(1)), "count")
    toy(torch.ones(1, 3))
    ledger.rollback()
    toy(torch.ones(1, 3))
    assert calls == [1]
    assert len(toy._forward_pre_hooks) == 0


def test_rollback_is_lifo():
    toy, ledger = Toy(), PatchLedger()
    ledger.set_attr(toy, "flag", "first")
    ledger.set_attr(toy, "flag", "second")
    order = []
    ledger.call_on_undo(lambda: order.append(toy.flag), "observe")
    ledger.rollback()
    assert order == ["second"]
    assert toy.flag == "original"


def test_rollback_continues_after_a_failing_undo_and_reraises():
    toy, ledger = Toy(), PatchLedger()
    ledger.set_attr(toy, "flag", "patched")

    def boom():
        raise RuntimeError("undo failed")

    ledger.call_on_undo(boom, "failing")
    with pytest.raises(RuntimeError, match="undo failed"):
        ledger.rollback()
    assert toy.flag == "original"


def test_entries_describe_changes():
    toy, ledger = Toy(), PatchLedger()
    ledger.set_attr(toy, "flag", 1)
    ledger.add_hook(toy.register_forward_hook(lambda *a: None), "observer")
    assert ledger.entries() == ["set Toy.flag", "hook observer"]


def test_replace_method_keeps_the_signature_and_doc_and_is_undone():
    import inspect

    class Model:
        def features(self, pixel_values, image_sizes=None, **kwargs):
            """The original."""
            return "original"

    model = Model()
    ledger = PatchLedger()
    ledger.replace_method(model, "features", lambda original, *args, **kwargs: f"replaced {original(*args)}")
    assert model.features(1) == "replaced original"
    assert list(inspect.signature(model.features).parameters) == ["pixel_values", "image_sizes", "kwargs"]
    assert model.features.__doc__ == "The original."
    ledger.rollback()
    assert model.features(1) == "original" and "features" not in vars(model)


def test_a_copied_or_pickled_ledger_undoes_its_own_objects():
    import copy
    import pickle

    toy, ledger = Toy(), PatchLedger()
    ledger.set_attr(toy, "flag", "patched")
    ledger.replace_method(toy, "describe", _shout)
    ledger.add_hook(toy.register_forward_hook(_observe), "observer")
    for clone_of in (copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))):
        toy_copy, ledger_copy = clone_of((toy, ledger))
        assert toy_copy.describe() == "CLASS METHOD" and toy_copy._forward_hooks
        ledger_copy.rollback()
        assert toy_copy.describe() == "class method" and toy_copy.flag == "original" and not toy_copy._forward_hooks
        assert toy.describe() == "CLASS METHOD" and toy.flag == "patched" and toy._forward_hooks  # untouched
    ledger.rollback()
    assert toy.describe() == "class method" and "describe" not in vars(toy)


def _shout(original):
    return original().upper()


def _observe(_module, _args, _output):
    return None
