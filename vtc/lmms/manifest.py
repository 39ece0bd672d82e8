"""The entry point lmms-eval reads (group `lmms_eval.models`, declared in pyproject.toml): model id `vtc`.

lmms-eval calls `manifest()` while it builds its model registry, before any model is chosen; it imports nothing of
vtc's model code, so a broken environment fails only when `--model vtc` is asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_CLASS", "MODEL_ID", "manifest"]

MODEL_ID = "vtc"
#: The class lmms-eval builds for `--model vtc` (a "simple" model: it gets the task's text and images).
MODEL_CLASS = "vtc.lmms.model.VTCModel"


def manifest() -> Any:
    """lmms-eval's `ModelManifest` of model id `vtc`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)
