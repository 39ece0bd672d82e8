"""The four conditions every upstream test runs under, and the model classes that apply them.

A compressed condition's model class is the family's own class, subclassed under the same name (upstream's tests
look classes up by name in transformers' auto mappings): every model a test builds from a config is compressed as its
constructor ends. `from_pretrained` compresses after the weights load, as a user does (load, then `vtc.compress`);
a folder written by a compressed model's `save_pretrained` carries vtc's checkpoint, which `vtc.load_pretrained`
applies.
"""

from __future__ import annotations

import contextvars
from pathlib import Path

import transformers

import vtc
from vtc.checkpoint import CONFIG_NAME as VTC_CONFIG_NAME
from vtc.checkpoint import vtc_state_dict

__all__ = ["CONDITIONS", "compressed_class"]

#: condition name -> the compression applied to every model the tests build (None: the unpatched baseline).
CONDITIONS: dict[str, vtc.VTCConfig | None] = {
    "unpatched": None,
    "all_off": vtc.VTCConfig(),
    "lvtc_ratio1": vtc.VTCConfig(lvtc=vtc.LVTCConfig(ratio=1, compress_layer=1, restore_layer=-1)),
    "pvtc_warm_ratio1": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=1, init="warm")),
}

# Set while `from_pretrained` builds the model: the constructor leaves compression to after the weights load.
_loading = contextvars.ContextVar("loading", default=False)


def compressed_class(class_name: str, config: vtc.VTCConfig | None) -> type:
    """transformers' `class_name`, or (with a config) a subclass of the same name whose models are compressed."""
    base = getattr(transformers, class_name)
    if config is None:
        return base

    def __init__(self, model_config, *args, **kwargs):
        base.__init__(self, model_config, *args, **kwargs)
        if not _loading.get():
            vtc.compress(self, config)

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        token = _loading.set(True)
        try:
            loaded = super(compressed, cls).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        finally:
            _loading.reset(token)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) when asked for
        folder = Path(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if folder is not None and (folder / VTC_CONFIG_NAME).is_file():
            vtc.load_pretrained(model, folder)
        else:
            vtc.compress(model, config)
            # A state dict given in place of a checkpoint holds vtc's tensors too: they load as the backbone's do.
            given = kwargs.get("state_dict") or {}
            own = {name: given[name] for name in vtc_state_dict(model) if name in given}
            model.load_state_dict(own, strict=False)
        return loaded

    namespace = {"__init__": __init__, "from_pretrained": classmethod(from_pretrained),
                 "__module__": base.__module__, "__qualname__": base.__qualname__}
    compressed = type(base.__name__, (base,), namespace)
    return compressed
