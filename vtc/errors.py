"""Typed errors. Each message names the problem and the way out."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InputError",
    "PlaceholderMismatchError",
    "UnsupportedModelError",
    "UnsupportedVersionError",
    "VTCError",
]


class VTCError(Exception):
    """Base class of every error raised by vtc."""


class ConfigError(VTCError, ValueError):
    """A configuration value is invalid, or invalid for the model it is applied to."""

    def __init__(self, field: str, value: object, allowed: str, *, hint: str | None = None):
        self.field, self.value, self.allowed = field, value, allowed
        message = f"{field}={value!r} is invalid: expected {allowed}."
        if hint:
            message += f" {hint}"
        super().__init__(message)


class UnsupportedModelError(VTCError, TypeError):
    """The model (or the situation it is in, e.g. a static cache) is not supported."""


class UnsupportedVersionError(VTCError, RuntimeError):
    """The installed transformers version is outside the range an adapter was tested with."""


class PlaceholderMismatchError(VTCError, ValueError):
    """The number of image placeholders in the prompt disagrees with the number of visual features."""


class InputError(VTCError, ValueError):
    """The image inputs of a forward (pixel values, image sizes, grids) are not shaped as the model's processor makes
    them, e.g. pixel values of another size than the vision tower's tile."""
