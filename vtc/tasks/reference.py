"""Reference models: tiny real-class multimodal LLMs trained on the synthetic tasks, shipped with vtc.

    model, processor = vtc.tasks.reference_model(family)     # a family of vtc.tasks.reference_families()

Each is a ``...ForConditionalGeneration`` of its family's transformers class (about 0.8 M parameters) with the family's
real processor class, trained from scratch by ``python -m vtc.cli.train_reference FAMILY``: one visual token per
8-px cell of the tasks' 48 x 48 images, so the uncompressed model reads a grid exactly and training-free compression
visibly costs it the fine task (`grid-readout`) but not the coarse ones. The folder of each model
(``reference_path(family)``) also loads with ``AutoModelForImageTextToText.from_pretrained``; its ``training.json``
records the steps, time and test scores of the run that made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError

__all__ = ["reference_families", "reference_model", "reference_path", "reference_record"]

_ROOT = Path(__file__).parent / "reference"


def reference_families() -> list[str]:
    """The families (``config.model_type``) that have a shipped reference model."""
    from vtc.testing import REFERENCE_FAMILIES

    present = {p.name for p in _ROOT.iterdir() if (p / "config.json").is_file()} if _ROOT.is_dir() else set()
    return [f for f in REFERENCE_FAMILIES if f in present] + sorted(present - set(REFERENCE_FAMILIES))


def reference_path(family: str) -> Path:
    """The folder of `family`'s reference model.

    Raises:
        ConfigError: no reference model for `family`.
    """
    families = reference_families()
    if family not in families:
        raise ConfigError("family", family, f"one of {', '.join(families) or '(none shipped)'}")
    return _ROOT / family


def reference_record(family: str) -> dict[str, Any]:
    """The ``training.json`` of `family`'s reference model: seed, steps, wall seconds and test scores per task."""
    return json.loads((reference_path(family) / "training.json").read_text())


def reference_model(family: str, *, attn_implementation: str = "sdpa") -> tuple[nn.Module, Any]:
    """The trained reference model of `family` (in eval mode, float32) and its processor.

    Raises:
        ConfigError: no reference model for `family` (the message names those available).
    """
    from ..loading import load_checkpoint

    return load_checkpoint(reference_path(family), attn_implementation=attn_implementation)
