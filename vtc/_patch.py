"""The patch ledger: every change vtc makes to a model or a processor goes through here, so that it can be undone.

Three primitives, each recorded with its undo action:

* `set_attr(obj, name, value)`: set (or shadow) an attribute on one instance; undo restores the previous instance
  attribute, or removes the shadow so the class attribute shows again. Submodules, parameters and buffers of an
  `nn.Module` are handled by `nn.Module.__setattr__` / `__delattr__`, so they stay registered correctly.
* `add_hook(handle)`: a removable torch hook; undo calls `handle.remove()`.
* `call_on_undo(fn)`: anything else (e.g. restoring a tensor in place).

`replace_method(obj, name, replacement)` is `set_attr` for a method: the replacement takes on the original's signature
and docstring, because transformers routes keyword arguments by `inspect.signature` (e.g. `generate` with
`get_image_features`).

`rollback()` replays the undo actions in reverse order (LIFO), so layered changes unwind correctly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["PatchLedger"]

_MISSING = object()


def _instance_value(obj: Any, name: str) -> Any:
    """The attribute stored on the instance itself (not inherited from its class), or `_MISSING`."""
    if isinstance(obj, nn.Module):
        for store in (obj._parameters, obj._buffers, obj._modules):
            if name in store:
                return store[name]
    return vars(obj).get(name, _MISSING) if hasattr(obj, "__dict__") else _MISSING


class PatchLedger:
    """An append-only list of undo actions, replayed backwards by `rollback`."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def __len__(self) -> int:
        return len(self._undo)

    def entries(self) -> list[str]:
        """Human-readable descriptions of the recorded changes, oldest first."""
        return [description for description, _ in self._undo]

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        old = _instance_value(obj, name)

        def undo() -> None:
            if old is _MISSING:
                if _instance_value(obj, name) is not _MISSING:
                    delattr(obj, name)
            else:
                setattr(obj, name, old)

        setattr(obj, name, value)
        self._undo.append((f"set {type(obj).__name__}.{name}", undo))

    def replace_method(self, obj: Any, name: str, replacement: Callable[..., Any]) -> None:
        """Shadow the method `obj.name` with `replacement`, which shows the original's signature and docstring."""
        original = getattr(obj, name)
        replacement.__signature__ = inspect.signature(original)
        replacement.__doc__ = original.__doc__
        self.set_attr(obj, name, replacement)

    def add_hook(self, handle: Any, description: str) -> None:
        self._undo.append((f"hook {description}", handle.remove))

    def call_on_undo(self, fn: Callable[[], None], description: str) -> None:
        self._undo.append((description, fn))

    def rollback(self) -> None:
        """Undo every recorded change, newest first. Continues past failures and re-raises the first one."""
        first_error: BaseException | None = None
        while self._undo:
            _, undo = self._undo.pop()
            try:
                undo()
            except BaseException as exc:  # keep unwinding: a half-undone model is worse than one error
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
