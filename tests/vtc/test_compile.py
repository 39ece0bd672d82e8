"""`torch.compile` on a compressed model: the same outputs as eager, no more graphs, no recompilation per decode step.

For each component on a tiny model (PVTC, LVTC and PVTC + LVTC on LLaVA; PVTC on LLaVA-NeXT's crops; on Qwen2-VL,
PVTC's pooled grids in the M-RoPE index and LVTC on M-RoPE positions with RVTC's tiling; on Qwen3-VL, PVTC's
DeepStack features and LVTC in a layer loop dynamo runs eagerly) and for the unpatched model (the control and the
yardstick), one test runs a prefill with
`use_cache=True` and greedy single-token decode steps on its KV cache, first eagerly (the reference; the first call
also lets transformers install its output-capturing hooks, a first-call graph break of its own), then through
`torch.compile(model)`, and checks:

* prefill: the compiled logits are the eager ones;
* cached decode: every step's logits (so every greedy token) are the eager ones;
* graph breaks: the compiled prefill has no more graphs than the unpatched model's (dynamo's count, as in
  `torch._dynamo.explain`: breaks = graphs - 1);
* recompilation: decode steps 1 and 2 compile (the first step's static shapes, then the growing cache length made
  dynamic), and no later step compiles anything, as for the unpatched model.

These run dynamo with the `eager` backend: the same graphs, breaks and guards as the default inductor backend, without
its code generation (tens of seconds per model on a CPU). One test compiles PVTC + LVTC with inductor and compares its
prefill logits with eager.

Graph-break and recompilation excesses raise their own exception types, whose messages list dynamo's break reasons
and the frames each decode step compiled.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import vtc
from vtc.patch import PatchLedger
from vtc.testing import build_tiny_model, build_tiny_processor, tiny_batch

pytestmark = pytest.mark.slow

DECODE_STEPS = 4  # steps 1 and 2 compile (static shapes, then the cache length made dynamic); 3 and 4 must not
LVTC = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4)
PVTC = vtc.PVTCConfig(ratio=4)
CONFIGS = {
    "unpatched": None,
    "pvtc": vtc.VTCConfig(pvtc=PVTC),
    "lvtc": vtc.VTCConfig(lvtc=LVTC),
    "pvtc+lvtc": vtc.VTCConfig(pvtc=PVTC, lvtc=LVTC),
    "lvtc+rvtc": vtc.VTCConfig(lvtc=LVTC, rvtc=vtc.RVTCConfig(mode="area", max_tiles=4)),
    "divprune": vtc.VTCConfig(prune=vtc.PruneConfig(method="divprune", keep=0.5)),
    "visionzip": vtc.VTCConfig(prune=vtc.PruneConfig(method="visionzip", keep=0.5)),
    "fastv": vtc.VTCConfig(prune=vtc.PruneConfig(method="fastv", keep=0.5)),
}


class MoreGraphBreaks(AssertionError):
    """The compressed model's compiled prefill has more graphs than the unpatched model's."""


class RecompiledPerStep(AssertionError):
    """A cached decode step after the second compiled something."""


# ---------------------------------------------------------------------------------------------------- the patch ledger
class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x):
        return self.features(x) + 1

    def features(self, x):
        return self.linear(x)


def _break_then_call(original, x):
    y = x * 2
    torch._dynamo.graph_break()  # dynamo resumes this frame with `original` rebuilt from what it traced
    return original(y)


def test_an_override_survives_a_graph_break():
    """After a graph break, dynamo rebuilt the original (a bound method) as `getattr(owner, name)`, which is the
    override itself: the override then called itself until RecursionError."""
    toy, ledger = _Toy(), PatchLedger()
    ledger.replace_method(toy, "features", _break_then_call)
    x = torch.randn(2, 3)
    expected = toy(x)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    try:
        assert torch.equal(torch.compile(toy, backend=counter)(x), expected)
        assert counter.frame_count >= 2  # the break happened, and the frame after it was compiled
        with ledger.suspended():  # an override passing through under compile takes the same way
            assert torch.equal(torch.compile(toy, backend="eager")(x), toy.linear(x) + 1)
    finally:
        torch._dynamo.reset()
    ledger.rollback()
    assert "features" not in vars(toy)


class _Loop(nn.Module):
    """Two layers; with `break_in_loop`, a graph break inside the loop over them, which makes dynamo run the loop
    eagerly and compile each layer call as a frame of its own (as Qwen3-VL's DeepStack step does)."""

    def __init__(self, break_in_loop: bool):
        super().__init__()
        self.layers, self.break_in_loop = nn.ModuleList(nn.Linear(3, 3) for _ in range(2)), break_in_loop

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
            if self.break_in_loop:
                torch._dynamo.graph_break()
        return x


def _double_the_input(_module, args):
    return (args[0] * 2,)


@pytest.mark.parametrize("break_in_loop", [False, True], ids=["traced loop", "eager loop"])
def test_a_hook_compiles_only_inside_its_callers_graph(break_in_loop):
    """A vtc hook (tensor work) adds no graph: traced into the loop's graph, or run eagerly with an eager loop."""
    x = torch.randn(2, 3)
    graphs = {}
    for hooked in (False, True):
        loop, ledger = _Loop(break_in_loop), PatchLedger()
        if hooked:
            ledger.add_forward_pre_hook(loop.layers[1], _double_the_input, "double")
        expected = loop(x)
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("eager")
        try:
            assert torch.equal(torch.compile(loop, backend=counter)(x), expected)
        finally:
            torch._dynamo.reset()
        graphs[hooked] = counter.frame_count
    assert graphs[True] == graphs[False], graphs


# ---------------------------------------------------------------------------------------------------- tiny models
def _perturb_vtc_parameters(model: nn.Module) -> None:
    """Warm PVTC starts with zero residual branches and no global branch: make every vtc parameter count."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "vtc_" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def _setup(family: str, config: vtc.VTCConfig | None):
    model, processor = build_tiny_model(family), build_tiny_processor(family)
    if config is not None:
        vtc.compress(model, config, processor=processor)
        _perturb_vtc_parameters(model)
    return model, dict(tiny_batch(family, processor))


def _greedy(model, inputs, family: str, counter: CompileCounterWithBackend | None = None):
    """A prefill with `use_cache=True`, then `DECODE_STEPS` greedy single-token steps on its KV cache.

    Returns the prefill's logits, every token's logits (the prefill's last position's, then each step's) and, with a
    counter, its compiled-frame count after the prefill and after each step. LLaVA's steps get the extended
    attention mask; Qwen's get none (batch 1, nothing padded), so that the model takes its M-RoPE positions from the
    prefill's `rope_deltas` (with a mask and no `position_ids` it would number the whole sequence again).
    """
    out = model(**inputs, use_cache=True)
    prefill_logits, cache = out.logits, out.past_key_values
    step_logits, frames = [out.logits[:, -1]], []
    mask = inputs["attention_mask"] if family == "llava" else None
    for _ in range(DECODE_STEPS):
        if counter is not None:
            frames.append(counter.frame_count)
        token = step_logits[-1].argmax(-1, keepdim=True)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
        step_logits.append(out.logits[:, -1])
    if counter is not None:
        frames.append(counter.frame_count)
    return prefill_logits, torch.stack(step_logits, dim=1), frames


class Run:
    """One model compiled after its eager reference: prefill and decode logits, graphs and per-step compiles."""

    def __init__(self, family: str, config: vtc.VTCConfig | None, backend: str = "eager"):
        model, inputs = _setup(family, config)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        try:
            with torch.no_grad():
                self.eager_logits, self.eager_step_logits, _ = _greedy(model, inputs, family)
                counter = CompileCounterWithBackend(backend)
                self.compiled_logits, self.compiled_step_logits, self.frames = _greedy(
                    torch.compile(model, backend=counter), inputs, family, counter)
            self.graphs = self.frames[0]  # the prefill's
            self.break_reasons = sorted(torch._dynamo.utils.counters["graph_break"])
        finally:
            torch._dynamo.reset()

    def check_outputs(self, atol: float = 1e-5) -> None:
        torch.testing.assert_close(self.compiled_logits, self.eager_logits, atol=atol, rtol=1e-4)
        # the same greedy tokens, step by step, and the same logits for them
        torch.testing.assert_close(self.compiled_step_logits, self.eager_step_logits, atol=atol, rtol=1e-4)
        assert torch.equal(self.compiled_step_logits.argmax(-1), self.eager_step_logits.argmax(-1))

    def late_step_compiles(self) -> int:
        """Frames compiled by decode steps 3.. (`frames[k]`: after the prefill for k=0, after decode step k)."""
        return self.frames[-1] - self.frames[2]


@functools.cache
def _unpatched(family: str) -> Run:
    return Run(family, None)


def _check_compile_friendly(run: Run, control: Run) -> None:
    """Raise `MoreGraphBreaks` / `RecompiledPerStep` (both when both) after the outputs were checked."""
    problems = []
    if run.graphs > control.graphs:
        problems.append(MoreGraphBreaks(
            f"the compiled prefill has {run.graphs} graphs ({run.graphs - 1} breaks), the unpatched model "
            f"{control.graphs}; the break reasons dynamo counted: {run.break_reasons}"))
    if run.late_step_compiles():
        problems.append(RecompiledPerStep(
            f"decode steps 3..{DECODE_STEPS} compiled {run.late_step_compiles()} frames (compiled frames after the "
            f"prefill and each step: {run.frames})"))
    if problems:
        raise type(problems[0])("; ".join(map(str, problems)))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_the_unpatched_model_compiles_without_recompiling_per_step(family):
    """The control: what the compressed models are held to holds for the model itself."""
    run = _unpatched(family)
    run.check_outputs()
    assert run.late_step_compiles() == 0, run.frames


@pytest.mark.parametrize("family, component", [
    ("llava", "pvtc"),
    ("llava", "lvtc"),
    ("llava", "pvtc+lvtc"),
    ("llava_next", "pvtc"),  # the any-resolution crops, packed at PVTC's grid
    ("qwen2_vl", "pvtc"),  # the pooled grids in the M-RoPE index
    ("qwen2_vl", "lvtc+rvtc"),  # LVTC on M-RoPE positions; RVTC's tiling
    ("qwen3_vl", "pvtc"),  # DeepStack features at PVTC's grid
    ("qwen3_vl", "lvtc"),  # a layer loop that runs eagerly: the hooks must not compile as graphs of their own
    ("llava", "divprune"),  # a greedy loop of tensor ops before the language model
    ("llava", "fastv"),  # an attention row inside the decoder, from tapped queries and keys
])
def test_compiled_component_matches_eager_without_more_graphs_or_recompiles(family, component):
    run = Run(family, CONFIGS[component])
    run.check_outputs()
    _check_compile_friendly(run, _unpatched(family))


def test_visionzip_compiles_to_the_eager_outputs():
    """VisionZip's merge has data-dependent shapes (each contextual token merges a count of tokens only the features
    tell): dynamo breaks the graph around it, and the compiled model still computes what the eager one does."""
    Run("llava", CONFIGS["visionzip"]).check_outputs()


def test_inductor_prefill_matches_eager():
    """The default backend (inductor, generated C++ on a CPU) on PVTC + LVTC: the compressed prefill's logits."""
    model, inputs = _setup("llava", CONFIGS["pvtc+lvtc"])
    torch._dynamo.reset()
    try:
        # One compile process: a pool of workers costs more to start than the few small kernels here take.
        with torch.no_grad(), torch._inductor.config.patch(compile_threads=1):
            expected = model(**inputs).logits
            compiled = torch.compile(model)
            torch.testing.assert_close(compiled(**inputs).logits, expected, atol=1e-5, rtol=1e-4)
            assert vtc.last_stats(model)["layer_seq_lens"][1] < inputs["input_ids"].shape[1]  # LVTC did compress
    finally:
        torch._dynamo.reset()


def test_a_model_compiled_before_its_first_call_recompiles_nothing_later():
    """`torch.compile(model)` before the first call (transformers installs its output-capturing hooks then, under a
    lock dynamo breaks the graph at), PVTC: later prefills compile nothing, also after another model of the same
    classes is compressed with LVTC. Two ways this failed: the original a method override hands its implementation
    was a new object per call, on which dynamo guarded, so every prefill recompiled PVTC's `get_image_features`; and
    a module-level cache that grew per hooked class made dynamo guard on its length."""
    model, inputs = _setup("llava", CONFIGS["pvtc"])
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            compiled = torch.compile(model, backend="eager")
            compiled(**inputs)  # the first call on this thread creates its call state: the second compiles again
            expected = compiled(**inputs).logits
            with torch.compiler.set_stance("fail_on_recompile"):
                compiled(**inputs)
            other, other_inputs = _setup("llava", CONFIGS["lvtc"])  # LVTC hooks the language model's class
            other(**other_inputs)
            with torch.compiler.set_stance("fail_on_recompile"):
                torch.testing.assert_close(compiled(**inputs).logits, expected, atol=0, rtol=0)
    finally:
        torch._dynamo.reset()
