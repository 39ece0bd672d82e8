"""The patch ledger: every change vtc makes to a model or a processor goes through here, so that it can be undone.

Four primitives, each recorded with its undo action:

* `set_attr(obj, name, value)`: set (or shadow) an attribute on one instance; undo restores the previous instance
  attribute, or removes the shadow so the class attribute shows again. Submodules, parameters and buffers of an
  `nn.Module` are handled by `nn.Module.__setattr__` / `__delattr__`, so they stay registered correctly.
* `set_requires_grad(module, requires_grad)`: set `requires_grad` on every parameter of a module; undo gives each
  parameter its own previous value (a parameter frozen before stays frozen).
* `add_hook(handle)`: a removable torch hook; undo calls `handle.remove()`.
* `call_on_undo(fn)`: anything else (e.g. restoring a tensor in place).

`replace_method(obj, name, implementation)` is `set_attr` with a `MethodOverride`: it shows the original's signature
(transformers routes keyword arguments by `inspect.signature`, e.g. `generate` with `get_image_features`) and calls
`implementation(original, *args, **kwargs)`. Under `torch.compile` the original of a class method is handed over as
`functools.partial(function, obj)` rather than a bound method: after a graph break, dynamo rebuilds a bound method
as `getattr(obj, name)`, which is the override itself, and the override would call itself forever.
`add_forward_pre_hook` / `add_forward_hook` register a torch hook wrapped in a `GuardedHook` and record its removal.

Suspending (`with ledger.suspended():`, what `vtc.disabled` uses) makes, in the calling thread only, every model-side
change behave as if it were not there: guarded hooks return `None` and suspendable overrides call their original.
Overrides on objects that are not `nn.Module`s (a processor) never pass through, so that a processor shared by
threads is never seen half-patched. The depth is a thread-local counter, so blocks nest and other threads are not
affected.

The undo actions are plain records (objects and names, never closures): a compressed model deep-copies into an
independent compressed model whose ledger undoes the copy, and pickles (`torch.save`) with everything it needs.

`rollback()` replays the undo actions in reverse order (LIFO), so layered changes unwind correctly.
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._compile_guards import compiled_only_inlined

__all__ = ["GuardedHook", "MethodOverride", "PatchLedger"]


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

    `original` is what `owner.name` was before: an earlier instance override, or the class's attribute bound to
    `owner` (through the descriptor protocol, so a static or class method stays one). The override holds the owner
    and the name, never a bound method, so a copy of the owner gets an override of the copy. The class attribute is
    looked up once, when the override is made, and again when a copy or a pickle is loaded (it is never pickled).
    `inspect.signature` shows the original's signature.

    Under `torch.compile` (while dynamo traces), an original that is a plain class function is handed to the
    implementation as `functools.partial(function, owner)`: dynamo rebuilds a bound method it made during tracing as
    `getattr(owner, name)` after a graph break, which here is the override itself. The partial has the bound method's
    signature and result, not its `__self__`; only processor-side overrides, which are never compiled, read that.
    It is made once per override, not per call: an implementation compiled as a frame of its own (after a graph break
    in its caller) is guarded on the identity of its `original`, and a new object per call would recompile it on
    every call.

    With a `ledger` and `suspendable`, the override calls the original directly while the ledger is suspended in
    the calling thread (`PatchLedger.suspended`).
    """

    # class-level defaults: an override pickled before these existed loads as one that never passes through
    ledger: PatchLedger | None = None
    suspendable: bool = False

    def __init__(self, owner: Any, name: str, implementation: Callable[..., Any], *,
                 ledger: PatchLedger | None = None, suspendable: bool = False):
        self.owner, self.name, self.implementation = owner, name, implementation
        self.previous = _instance_value(owner, name)
        self.ledger, self.suspendable = ledger, suspendable
        self._resolve_class_attribute()

    def _resolve_class_attribute(self) -> None:
        # The raw entry of the class (or a base) with descriptors not applied; `MISSING` where an instance value is
        # the original, or where the class has no such attribute (calling the override then raises AttributeError).
        self._class_attribute = MISSING
        if self.previous is MISSING:
            try:
                self._class_attribute = inspect.getattr_static(type(self.owner), self.name)
            except AttributeError:
                pass
        attribute = self._class_attribute
        self._traced_original = (functools.partial(attribute, self.owner)
                                 if isinstance(attribute, types.FunctionType) else None)

    # The class attribute (and the partial of it) is re-resolved on load, never pickled: a function is pickled by its
    # qualified name, which a decorated method does not always resolve to.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_class_attribute", "_traced_original")}

    def __setstate__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self._resolve_class_attribute()

    @property
    def original(self) -> Callable[..., Any]:
        if self.previous is not MISSING:
            return self.previous
        attribute = self._class_attribute
        if attribute is MISSING:  # the class had no such attribute when the override was made
            return getattr(type(self.owner), self.name).__get__(self.owner, type(self.owner))
        get = getattr(type(attribute), "__get__", None)
        return attribute if get is None else get(attribute, self.owner, type(self.owner))

    def _callable_original(self) -> Callable[..., Any]:
        """What the call hands on: `original`, or under `torch.compile` a partial in place of a bound class function."""
        if self._traced_original is not None and torch.compiler.is_compiling():
            return self._traced_original
        return self.original

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
        original = self._callable_original()
        if self.suspendable and self.ledger is not None and self.ledger.is_suspended:
            return original(*args, **kwargs)
        return self.implementation(original, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<vtc override of {type(self.owner).__name__}.{self.name}>"


class GuardedHook:
    """A torch forward (pre-)hook that does nothing (returns `None`) while its ledger is suspended in the calling
    thread. A plain object rather than a closure, so that the module stays copyable and picklable."""

    def __init__(self, ledger: PatchLedger, hook: Callable[..., Any]):
        self.ledger, self.hook = ledger, hook

    @compiled_only_inlined  # part of a compiled caller's graph, never a graph of its own
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.ledger.is_suspended:
            return None
        return self.hook(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<vtc hook {self.hook!r}>"


class _RestoreAttribute:
    def __init__(self, obj: Any, name: str, old: Any):
        self.obj, self.name, self.old = obj, name, old

    def __call__(self) -> None:
        if self.old is MISSING:
            if _instance_value(self.obj, self.name) is not MISSING:
                delattr(self.obj, self.name)
        else:
            setattr(self.obj, self.name, self.old)


class _RestoreRequiresGrad:
    """Each parameter's previous `requires_grad`, found again by its owning module and name: a copy or a pickle of
    the model maps the modules to their copies."""

    def __init__(self, previous: list[tuple[nn.Module, str, bool]]):
        self.previous = previous

    def __call__(self) -> None:
        for owner, name, requires_grad in self.previous:
            parameter = owner._parameters.get(name)
            if parameter is not None:
                parameter.requires_grad_(requires_grad)


class _RemoveHook:
    def __init__(self, handle: Any):
        self.handle = handle

    def __call__(self) -> None:
        self.handle.remove()


class PatchLedger:
    """An append-only list of undo actions, replayed backwards by `rollback`, and a per-thread suspension depth."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._threads = threading.local()

    # Copies and pickles start unsuspended in every thread (a thread-local cannot be copied anyway).
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_threads"}

    def __setstate__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self._threads = threading.local()

    @property
    def is_suspended(self) -> bool:
        """Whether the calling thread is inside a `suspended()` block of this ledger."""
        return getattr(self._threads, "depth", 0) > 0

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Inside the block, in the calling thread only: guarded hooks do nothing and suspendable overrides call
        their original. Blocks nest; the previous depth is restored on exit, also when the block raises."""
        threads = self._threads
        depth = getattr(threads, "depth", 0)
        threads.depth = depth + 1
        try:
            yield
        finally:
            threads.depth = depth

    def __len__(self) -> int:
        return len(self._undo)

    def entries(self) -> list[str]:
        """Human-readable descriptions of the recorded changes, oldest first."""
        return [description for description, _ in self._undo]

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        old = _instance_value(obj, name)
        setattr(obj, name, value)
        self._undo.append((f"set {type(obj).__name__}.{name}", _RestoreAttribute(obj, name, old)))

    def replace_method(self, obj: Any, name: str, implementation: Callable[..., Any], *,
                       suspendable: bool | None = None) -> None:
        """Shadow the method `obj.name` by a `MethodOverride` calling `implementation(original, *args, **kwargs)`.

        `implementation` should be a bound method or a `functools.partial` of a module-level function (not a
        closure), so that the model stays copyable and picklable.

        `suspendable`: whether the override calls the original while this ledger is suspended; by default, when
        `obj` is an `nn.Module` (the model side). A processor's overrides stay active: the processor's patched
        attributes are shared by every thread, and its overrides must agree with them.
        """
        if suspendable is None:
            suspendable = isinstance(obj, nn.Module)
        self.set_attr(obj, name, MethodOverride(obj, name, implementation, ledger=self, suspendable=suspendable))

    def set_requires_grad(self, module: nn.Module, requires_grad: bool, description: str) -> None:
        """Set `requires_grad` on every parameter of `module` and its submodules; undo restores each parameter's own
        previous value."""
        previous = [(owner, name, parameter.requires_grad) for owner in module.modules()
                    for name, parameter in owner._parameters.items() if parameter is not None]
        for owner, name, _ in previous:
            owner._parameters[name].requires_grad_(requires_grad)
        self._undo.append((f"requires_grad={requires_grad} {description}", _RestoreRequiresGrad(previous)))

    def add_hook(self, handle: Any, description: str) -> None:
        """Record a hook handle for removal (the hook is not guarded: prefer `add_forward_pre_hook` and
        `add_forward_hook`)."""
        self._undo.append((f"hook {description}", _RemoveHook(handle)))

    def add_forward_pre_hook(self, module: nn.Module, hook: Callable[..., Any], description: str,
                             **options: Any) -> Any:
        """`module.register_forward_pre_hook(hook, **options)`, the hook passing through while suspended; recorded
        for removal. Returns the handle."""
        handle = module.register_forward_pre_hook(GuardedHook(self, hook), **options)
        self.add_hook(handle, description)
        return handle

    def add_forward_hook(self, module: nn.Module, hook: Callable[..., Any], description: str, **options: Any) -> Any:
        """`module.register_forward_hook(hook, **options)`, the hook passing through while suspended; recorded for
        removal. Returns the handle."""
        handle = module.register_forward_hook(GuardedHook(self, hook), **options)
        self.add_hook(handle, description)
        return handle

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
