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


_TIME_EAGER_SDPA = Exclusion(
    "time: one variant per mask layout is kept (fp32, left padding, with and without output_attentions); the others "
    "repeat the same code in other dtypes, padding sides and SDPA kernels on the CPU")
_LLAVA_GRADIENT_CHECKPOINTING = Exclusion(
    "the last vision layer, which `vision_feature_layer=-2` never reads, gets no gradient (upstream's LLaVA model "
    "test skips these tests for that reason)", families=("llava", "llava_next"))

#: upstream test name -> why it is not run. A name also covers its parameterized variants (`<name>_<n>_...`); a name
#: with `*` is a pattern over the variants' names.
EXCLUDED: dict[str, Exclusion] = {
    "test_num_layers_is_small": Exclusion(
        "upstream's size rule for its own testers (2 decoder layers): the tiny zoo has 4, so that LVTC has a layer "
        "before K=1 and one between K and L"),
    "test_generation_tester_mixin_inheritance": Exclusion(
        "checks that the test class derives from GenerationTesterMixin, whose tests the source distribution does not "
        "ship"),
    "test_model_weights_reload_no_missing_tied_weights": Exclusion(
        "it replaces model.safetensors with a placeholder and expects every parameter to be reported missing; vtc's "
        "tensors are in vtc_weights.safetensors beside it, which vtc.load_pretrained loads after from_pretrained",
        conditions=("pvtc_warm_ratio1",)),
    # Time (the whole run stays near 10 minutes on 2 cores): variants and repeats of what the suite runs anyway.
    "test_eager_matches_sdpa_inference_*_fp16_*": _TIME_EAGER_SDPA,
    "test_eager_matches_sdpa_inference_*_bf16_*": _TIME_EAGER_SDPA,
    "test_eager_matches_sdpa_inference_*_pad_right*": _TIME_EAGER_SDPA,
    "test_eager_matches_sdpa_inference_*_no_attn_mask*": _TIME_EAGER_SDPA,
    "test_eager_matches_sdpa_inference_*_sdpa_kernels": _TIME_EAGER_SDPA,
    "test_training_gradient_checkpointing_use_reentrant_false": Exclusion(
        "time: `use_reentrant=False` is the default that test_training_gradient_checkpointing already runs"),
    "test_bc_torch_dtype": Exclusion(
        "time: the deprecated `torch_dtype` spelling of `from_pretrained`'s `dtype`, transformers' own argument "
        "handling; loading is covered by the save/load tests"),
    "test_causal_lm_loss_honors_shift_labels": Exclusion(
        "time: transformers' loss function on the logits; test_training runs the loss under every condition"),
    "test_training_gradient_checkpointing": _LLAVA_GRADIENT_CHECKPOINTING,
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
