"""Running a model method on runs of images that each need their own value of a shared attribute.

Some families read a per-model setting inside a per-image loop (LLaVA-NeXT reads `config.image_grid_pinpoints` for
every image). When RVTC gives each image its own value, the method is called once per run of consecutive images
that share a value, with the attribute set for the duration of the call, and the outputs are joined back together
in the original order.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers.utils import ModelOutput

__all__ = ["attribute_swap_lock", "concatenate_outputs", "consecutive_runs", "swapped_attribute"]


#: Held while an attribute is swapped (and while code that reads a swappable attribute runs), so that a thread never
#: sees another thread's temporary value. Re-entrant: swaps nest within one thread.
_SWAP_LOCK = threading.RLock()


def attribute_swap_lock() -> threading.RLock:
    """The lock `swapped_attribute` holds: hold it to read, unswapped, an attribute other threads may swap."""
    return _SWAP_LOCK


@contextmanager
def swapped_attribute(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set `obj.name = value` inside the block; afterwards the instance is exactly as before (a class-level value
    shows through again where there was no instance value). Other threads swapping attributes wait for the block."""
    with _SWAP_LOCK:
        had_own = name in vars(obj)
        old = vars(obj).get(name)
        setattr(obj, name, value)
        try:
            yield
        finally:
            if had_own:
                setattr(obj, name, old)
            else:
                delattr(obj, name)


def consecutive_runs(keys: Sequence[Hashable | None]) -> list[tuple[Hashable | None, int, int]]:
    """`(key, start, stop)` for each maximal run of consecutive equal keys; a `None` key (no preference) joins the run
    it is in, and a run of only `None` keys keeps `None`."""
    runs: list[list[Any]] = []
    for i, key in enumerate(keys):
        if runs and (key is None or runs[-1][0] is None or key == runs[-1][0]):
            runs[-1][0] = runs[-1][0] if key is None else key
            runs[-1][2] = i + 1
        else:
            runs.append([key, i, i + 1])
    return [tuple(run) for run in runs]


def _concatenate(values: list[Any]) -> Any:
    first = values[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, list):
        return [item for value in values for item in value]
    if isinstance(first, tuple):
        return tuple(_concatenate(list(parts)) for parts in zip(*values))
    raise TypeError(f"cannot join outputs of type {type(first).__name__}")


def concatenate_outputs(outputs: list[Any]) -> Any:
    """Join the outputs of several calls along the item axis: tensors on dim 0, lists and tuples item by item.

    A `ModelOutput` keeps its class and fields (per-item tensors such as a vision tower's hidden states are
    concatenated, per-image lists such as packed features are chained).
    """
    first = outputs[0]
    if isinstance(first, ModelOutput):
        return type(first)(**{key: _concatenate([output[key] for output in outputs]) for key in first.keys()})
    return _concatenate(outputs)
