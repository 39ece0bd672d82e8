"""The upstream tests the suite does not run, and why: one table, which compat/run.py checks against the tests it
collects (a name that matches none is an error, so the table cannot go stale)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

__all__ = ["EXCLUDED", "Exclusion", "exclusion_for", "matches"]

EVERY = ("unpatched", "all_off", "lvtc_ratio1", "pvtc_warm_ratio1")


@dataclass(frozen=True)
class Exclusion:
    reason: str
    conditions: tuple[str, ...] = EVERY
    families: tuple[str, ...] | None = None  # None: every family


_LLAVA_GRADIENT_CHECKPOINTING = Exclusion(
    "upstream skips it for this family: the last vision layer, which `vision_feature_layer=-2` never reads, gets no "
    "gradient", families=("llava", "llava_next"))

#: upstream test name -> why it is not run. A name also covers its parameterized variants (`<name>_<n>_...`); a name
#: with `*` is a pattern over the variants' names.
EXCLUDED: dict[str, Exclusion] = {
    "test_num_layers_is_small": Exclusion(
        "upstream's size rule for its own testers (2 decoder layers): the tiny zoo has 4, so that LVTC has a layer "
        "before K=1 and one between K and L"),
    "test_generation_tester_mixin_inheritance": Exclusion(
        "checks that the test class derives from GenerationTesterMixin, whose tests the source distribution does not "
        "ship"),
    "test_eager_matches_sdpa_inference_*_fp16_*": Exclusion(
        "time: the fp32 variants run the same code paths; the half-precision ones repeat them on the CPU"),
    "test_eager_matches_sdpa_inference_*_bf16_*": Exclusion(
        "time: the fp32 variants run the same code paths; the half-precision ones repeat them on the CPU"),
    "test_training_gradient_checkpointing": _LLAVA_GRADIENT_CHECKPOINTING,
    "test_training_gradient_checkpointing_use_reentrant_false": _LLAVA_GRADIENT_CHECKPOINTING,
    "test_training_gradient_checkpointing_use_reentrant_true": _LLAVA_GRADIENT_CHECKPOINTING,
}


def matches(name: str, test: str) -> bool:
    """Whether the table entry `name` covers the test method `test`."""
    if "*" in name:
        return fnmatch.fnmatchcase(test, name)
    return re.fullmatch(rf"{re.escape(name)}(_\d+(_.*)?)?", test) is not None


def exclusion_for(test: str, family: str, condition: str) -> str | None:
    """The reason `test` is not run for `family` under `condition`, or None."""
    for name, exclusion in EXCLUDED.items():
        if matches(name, test) and condition in exclusion.conditions and (
                exclusion.families is None or family in exclusion.families):
            return exclusion.reason
    return None
