"""Phase 2 of `real_size.py`, flash: each configuration's prefill and a short greedy generation under the default
SDPA backend, flash forced and math forced, compared within the noise floor of the backends."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from real_size_models import Family, Row
from real_size_run import Guard, error_line, log, median, sync
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

import vtc

# Flash against the default backend, per dtype: the fixed part of the (mean |difference| / mean |value|,
# max |difference| / max |value|) allowed, of the final hidden states at every position (prefill) and of the step
# logits (decode). bfloat16 keeps 8 bits of mantissa: two kernels that sum in another order differ by about 1e-2
# after a few dozen layers, while a wrong mask (a padded or non-causal position) changes the states by their own size.
AGREE_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 1e-1), torch.float16: (5e-3, 5e-2)}
# ... plus NOISE_FACTOR times the noise floor measured in the same run: how much the default backend differs from the
# math backend. A fixed tolerance alone does not fit every model: random-weight 7B-shaped models in bfloat16 amplify
# rounding across 32 layers until any two SDPA backends differ by ~7e-2 / 9e-2, the unpatched baseline included.
# Flash is one more backend, so it should land within that spread; 1.5 leaves room for flash summing in an order of
# its own (it may differ from both a little more than they differ from each other) while a wrong mask, which changes
# the states by their own size (~1), stays far outside.
NOISE_FACTOR = 1.5


class SDPACalls(TorchFunctionMode):
    """Counts the calls of `F.scaled_dot_product_attention`, and those given a mask (flash takes none on a GPU)."""

    def __init__(self):
        super().__init__()
        self.calls, self.masked, self.first_masked = 0, 0, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if mask is not None:
                self.masked += 1
                if self.first_masked is None:
                    self.first_masked = f"{tuple(args[0].shape)} q, mask {tuple(mask.shape)} {mask.dtype}"
        return func(*args, **kwargs)


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean |a - b| / mean |b|, max |a - b| / max |b|)."""
    diff, ref = (a.float() - b.float()).abs(), b.float().abs()
    return (diff.mean() / ref.mean().clamp_min(1e-12)).item(), (diff.max() / ref.max().clamp_min(1e-12)).item()


def agree_bound(default_vs_math: tuple[float, float], dtype: torch.dtype) -> tuple[float, float]:
    """The (mean, max) relative differences flash may show against the default backend: `NOISE_FACTOR` times the
    default backend's against math (the noise floor of this run), plus the dtype's fixed `AGREE_TOLERANCE`."""
    return tuple(NOISE_FACTOR * floor + tol for floor, tol in zip(default_vs_math, AGREE_TOLERANCE[dtype]))


def backends_agree(flash_vs_default: tuple[float, float], default_vs_math: tuple[float, float],
                   dtype: torch.dtype) -> bool:
    """Flash differs from the default backend no more than the backends differ among themselves: both the mean and
    the max statistic within `agree_bound`."""
    return all(rel <= bound for rel, bound in zip(flash_vs_default, agree_bound(default_vs_math, dtype)))


def compare_steps(a, b, prompt: int, new_tokens: int) -> tuple[int, tuple[float, float]]:
    """Two greedy `generate` outputs (`output_logits`): the number of steps whose logits are comparable (up to the
    first step that chose another token: the logits of step i follow the tokens before it) and the worst relative
    difference of a's step logits to b's over them."""
    same = (a.sequences[:, prompt:] == b.sequences[:, prompt:]).all(0).tolist()
    steps = min(new_tokens, 1 + next((i for i, s in enumerate(same) if not s), len(same)))
    rels = [relative_diff(x, y) for x, y in zip(a.logits[:steps], b.logits[:steps])]
    return steps, (max(r[0] for r in rels), max(r[1] for r in rels))


def final_states(model, inputs) -> torch.Tensor:
    """The decoder's final hidden states at every position (a wrong mask anywhere shows here)."""
    return model.model(**inputs, use_cache=False).last_hidden_state


def flash_check(model, family: Family, row: Row, inputs, repeats: int, new_tokens: int = 4) -> dict:
    """`row`'s prefill with the default SDPA backend, flash forced and math forced: the final hidden states at
    every position compared, the SDPA calls given a mask counted, the prefill (`logits_to_keep=1`) timed with the
    default backend and with flash; then a short greedy `generate` under flash and one under math, whose step logits
    are compared with the default backend's for as long as both chose the same tokens. Flash agrees (`agree`,
    `decode_agree`) when `backends_agree` with the default backend, against the default-vs-math floor of the same
    stage (prefill: the hidden states; decode: the step logits)."""
    family.apply(model, row.config)
    device, dtype, result = family.device, model.dtype, {}
    with torch.inference_mode():
        reference = final_states(model, inputs)
        with sdpa_kernel(SDPBackend.MATH):
            math_states = final_states(model, inputs)
        counter = SDPACalls()
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), counter:
                flash = final_states(model, inputs)
        except RuntimeError as error:
            result["prefill_error"] = error_line(error)
            flash = None
        result.update(sdpa_calls=counter.calls, masked_calls=counter.masked, first_masked=counter.first_masked,
                      default_vs_math=relative_diff(reference, math_states))
        if flash is not None:
            result.update(flash_vs_default=relative_diff(flash, reference), flash_vs_math=relative_diff(flash, math_states))
            result["agree_bound"] = agree_bound(result["default_vs_math"], dtype)
            result["agree"] = backends_agree(result["flash_vs_default"], result["default_vs_math"], dtype)
            times = {"default": [], "flash": []}
            for _ in range(repeats + 1):  # the first of each is a warm-up
                for backend in ("default", "flash"):
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if backend == "flash" else nullcontext():
                        sync(device)
                        start = time.perf_counter()
                        model(**inputs, use_cache=True, logits_to_keep=1)
                        sync(device)
                        times[backend].append((time.perf_counter() - start) * 1e3)
            result["default_ms"] = median(times["default"][1:])
            result["flash_ms"] = median(times["flash"][1:])
        del reference, math_states, flash
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                      output_logits=True, return_dict_in_generate=True)
        default_out = model.generate(**inputs, **kwargs)
        with sdpa_kernel(SDPBackend.MATH):
            math_out = model.generate(**inputs, **kwargs)
        prompt = inputs["input_ids"].shape[1]
        math_steps, floor = compare_steps(math_out, default_out, prompt, new_tokens)
        result.update(decode_math_steps_compared=math_steps, decode_default_vs_math=floor)
        del math_out
        counter = SDPACalls()
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), counter:
                flash_out = model.generate(**inputs, **kwargs)
        except RuntimeError as error:
            result["decode_error"] = error_line(error)
            flash_out = None
        result.update(decode_sdpa_calls=counter.calls, decode_masked_calls=counter.masked)
        if flash_out is not None:
            steps, worst = compare_steps(flash_out, default_out, prompt, new_tokens)
            result.update(decode_steps_compared=steps, decode_rel=worst, decode_agree_bound=agree_bound(floor, dtype),
                          decode_agree=backends_agree(worst, floor, dtype))
    vtc.unpatch(model)
    return result


def flash_phase(model, family: Family, rows: list[Row], inputs, repeats, guard: Guard, deadline, batch) -> dict:
    result: dict[str, Any] = {"batch": batch, "rows": {}}
    for row in rows:
        if row.na is not None:
            result["rows"][row.name] = {"na": row.na}
            continue
        if guard.left(deadline) <= 0:
            result["rows"][row.name] = {"skipped": guard.skip(f"{family.key} flash {row.name}", "no time left")}
            continue
        log(f"{family.key} flash batch {batch}: {row.name}")
        result["rows"][row.name] = flash_check(model, family, row, inputs[row.inputs_key], repeats)
    return result
