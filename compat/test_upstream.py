"""transformers' `ModelTesterMixin`, one test class per family and condition (`<Family>__<condition>`).

The mixin comes from the transformers source distribution of the installed release, which `compat/run.py` unpacks
as the package `transformers_tests` (see README.md); the classes are made here, at import.
"""

from __future__ import annotations

import os
import unittest

from transformers_tests.test_modeling_common import ModelTesterMixin

from compat.conditions import CONDITIONS, compressed_class
from compat.families import FAMILIES
from compat.testers import FamilyModelTester


def _test_class(family: str, condition: str) -> type:
    def setUp(self):
        self.model_tester = FamilyModelTester(self, family)

    name = f"{family}__{condition}"
    namespace = {
        "all_model_classes": (compressed_class(FAMILIES[family], CONDITIONS[condition]),),
        "_is_composite": True,  # a vision tower and a language model, each with its own config
        "family": family,
        "condition": condition,
        "setUp": setUp,
        "__module__": __name__,
        "__qualname__": name,
    }
    return type(name, (ModelTesterMixin, unittest.TestCase), namespace)


def _selected(variable: str, known: dict) -> list[str]:
    """The comma-separated names in the environment `variable` (all of `known` without it)."""
    names = [name for name in os.environ.get(variable, "").split(",") if name] or list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{variable}: unknown {', '.join(unknown)}; expected some of {', '.join(known)}")
    return names


for _family in _selected("VTC_COMPAT_FAMILIES", FAMILIES):
    for _condition in _selected("VTC_COMPAT_CONDITIONS", CONDITIONS):
        _cls = _test_class(_family, _condition)
        globals()[_cls.__name__] = _cls
del _family, _condition, _cls
