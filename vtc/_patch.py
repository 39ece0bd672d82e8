"""The patch ledger: every change vtc makes to a model or a processor goes through here, so that it can be undone.

Three primitives, each recorded with its undo action:

* `set_attr(obj, name, value)`: set (or shadow) an attribute on one instance; undo restores the previous instance
  attribute, or removes the shadow so the class attribute shows again. Submodules, parameters and buffers of an
  `nn.Module` are handled by `nn.Module.__setattr__` / `__delattr__`, so they stay registered correctly.
* `add_hook(handle)`: a removable torch hook; undo calls `handle.remove()`.
* `call_on_undo(fn)`: anything else (e.g. restoring a tensor in place).

`replace_method(obj, name, implementation)` is `set_attr` with a `MethodOverride`: it shows the original's signature
(transformers routes keyword arguments by `inspect.signature`, e.g. `generate` with `get_image_features`) and calls
`implementation(original, *args, **kwargs)`.

The undo actions are plain records (objects and names, never closures): a compressed model deep-copies into an
independent compressed model whose ledger undoes the copy, and pickles (`torch.save`) with everything it needs.

`rollback()` replays the undo actions in reverse order (LIFO), so layered changes unwind correctly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["MethodOverride", "PatchLedger"]


class _Missing:
    """The marker of "no instance attribute"; one instance, kept one through copies and pickles."""

    def __reduce__(self) -> str:
        return "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def _instance_value(obj: Any, name: str) -> Any:
    """The attribute stored on the instance itself (not inherited from its class), or `MISSING`."""
    if isinstance(obj, nn.Module):
        for store in (obj._parameters, obj._buffers, obj._modules):
            if name in store:
                return store[name]
    return vars(obj).get(name, MISSING) if hasattr(obj, "__dict__") else MISSING


class MethodOverride:
    """`owner.name` replaced by `implementation(original, *args, **kwargs)`.

    `original` is what `owner.name` was before: an earlier instance override, or the class's method bound to
    `owner`. The override holds the owner and the name, never a bound method, so a copy of the owner gets an
    override of the copy and a pickled one resolves its original again on load. `inspect.signature` shows the
    original's signature.
    """

    def __init__(self, owner: Any, name: str, implementation: Callable[..., Any]):
        self.owner, self.name, self.implementation = owner, name, implementation
        self.previous = _instance_value(owner, name)

    @property
    def original(self) -> Callable[..., Any]:
        if self.previous is not MISSING:
            return self.previous
        return getattr(type(self.owner), self.name).__get__(self.owner, type(self.owner))

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.original)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.original.__doc__

    @property
    def __wrapped__(self) -> Callable[..., Any]:  # what `inspect.unwrap` and debuggers follow
        return self.original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.implementation(self.original, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<vtc override of {type(self.owner).__name__}.{self.name}>"


class _RestoreAttribute:
    def __init__(self, obj: Any, name: str, old: Any):
        self.obj, self.name, self.old = obj, name, old

    def __call__(self) -> None:
        if self.old is MISSING:
            if _instance_value(self.obj, self.name) is not MISSING:
                delattr(self.obj, self.name)
        else:
            setattr(self.obj, self.name, self.old)


class _RemoveHook:
    def __init__(self, handle: Any):
        self.handle = handle

    def __call__(self) -> None:
        self.handle.remove()


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
        setattr(obj, name, value)
        self._undo.append((f"set {type(obj).__name__}.{name}", _RestoreAttribute(obj, name, old)))

    def replace_method(self, obj: Any, name: str, implementation: Callable[..., Any]) -> None:
        """Shadow the method `obj.name` by a `MethodOverride` calling `implementation(original, *args, **kwargs)`.

        `implementation` should be a bound method or a `functools.partial` of a module-level function (not a
        closure), so that the model stays copyable and picklable.
        """
        self.set_attr(obj, name, MethodOverride(obj, name, implementation))

    def add_hook(self, handle: Any, description: str) -> None:
        self._undo.append((f"hook {description}", _RemoveHook(handle)))

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
