"""The adapter registry, keyed by `model.config.model_type`.

Built-in adapters live in `vtc.adapters` and are imported on the first lookup, so `import vtc` stays cheap.
Third parties register their own families with the same decorator:

    @vtc.register_adapter("my_vlm")
    class MyAdapter(vtc.adapters.base.Adapter): ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import UnsupportedModelError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["get_adapter", "get_adapter_class", "register_adapter", "supported_models"]

_REGISTRY: dict[str, type] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True  # set first: the import below re-enters register_adapter
        importlib.import_module("vtc.adapters")


def register_adapter(*model_types: str):
    """Class decorator: register an adapter class for one or more `config.model_type` values.

    Raises:
        ValueError: a model type is empty, not lower case, or already registered.
    """
    if not model_types:
        raise ValueError("register_adapter needs at least one model_type, e.g. @register_adapter('my_vlm')")

    def decorator(cls: type) -> type:
        for model_type in model_types:
            if not model_type or model_type != model_type.lower():
                raise ValueError(f"model_type must be a non-empty lower-case string, got {model_type!r}")
            if model_type in _REGISTRY:
                raise ValueError(f"an adapter for model_type {model_type!r} is already registered "
                                 f"({_REGISTRY[model_type].__qualname__})")
        for model_type in model_types:
            _REGISTRY[model_type] = cls
        # read the class's own attribute: a subclass must not inherit its parent's model types
        own = tuple(cls.__dict__.get("model_types", ()))
        cls.model_types = own + tuple(t for t in model_types if t not in own)
        return cls

    return decorator


def supported_models() -> list[str]:
    """The sorted `config.model_type` values that have an adapter."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_adapter_class(model_type: str) -> type:
    _load_builtins()
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"no vtc adapter for model_type {model_type!r}. Supported: {', '.join(sorted(_REGISTRY))}. "
            "Register one with @vtc.register_adapter(...)."
        ) from None


def get_adapter(model: nn.Module):
    """The adapter instance bound to `model`, chosen by `model.config.model_type` and checked against the model."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no `config.model_type`; vtc.compress expects a transformers "
            f"PreTrainedModel of one of: {', '.join(supported_models())}"
        )
    adapter = get_adapter_class(model_type)(model)
    adapter.check_model()
    return adapter
