"""A task's generation kwargs (lmms-eval's `generation_kwargs`) as `generate` keywords and stop strings."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "cut_at_stop", "generation_options"]

#: Tokens generated per answer when the task's generation kwargs give no `max_new_tokens`.
DEFAULT_MAX_NEW_TOKENS = 256
# Generation kwargs that only mean something when sampling: passed on to `generate` then, dropped for greedy decoding.
_SAMPLING_KEYS = ("top_p", "top_k")


def generation_options(gen_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`model.generate` keywords and the stop strings of a task's generation kwargs.

    `temperature > 0` (or `do_sample` without a temperature) samples, with `temperature`, `top_p` and `top_k`; else
    decoding is greedy (`top_p` and `top_k` are dropped). `max_new_tokens` defaults to `DEFAULT_MAX_NEW_TOKENS`,
    `num_beams` to 1; `repetition_penalty` is passed on. `until` (a string or a list) cuts the answer before the
    first stop string (`cut_at_stop`). Other keys are not honoured (a warning names them).
    """
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else [stop for stop in until if stop]
    temperature = kwargs.pop("temperature", None)
    do_sample = kwargs.pop("do_sample", None)
    sample = float(temperature) > 0 if temperature is not None else bool(do_sample)
    options: dict[str, Any] = {"max_new_tokens": int(kwargs.pop("max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS),
                               "do_sample": sample, "num_beams": int(kwargs.pop("num_beams", None) or 1)}
    if sample and temperature is not None:
        options["temperature"] = float(temperature)
    repetition_penalty = kwargs.pop("repetition_penalty", None)
    if repetition_penalty is not None:
        options["repetition_penalty"] = float(repetition_penalty)
    for key in _SAMPLING_KEYS:
        value = kwargs.pop(key, None)
        if value is not None and sample:
            options[key] = value
    if kwargs:
        warnings.warn(f"vtc's lmms-eval model ignores the generation kwargs {sorted(kwargs)}", stacklevel=2)
    return options, until


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` up to the first of the stop strings `until` (all of it if none occurs)."""
    for stop in until:
        text = text.split(stop, 1)[0]
    return text
