"""The families the suite runs, with the class upstream's tests build for each."""

from __future__ import annotations

from vtc.testing import RECIPES

__all__ = ["FAMILIES"]

#: family (config.model_type) -> its `...ForConditionalGeneration` class name, the class vtc compresses.
FAMILIES: dict[str, str] = {family: recipe.model_class for family, recipe in RECIPES.items()}
