"""Typed errors. Each message names the problem and the way out."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "InputError",
    "PlaceholderMismatchError",
    "UnsupportedModelError",
    "UnsupportedVersionError",
    "UntestedVersionWarning",
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


class UntestedVersionWarning(UserWarning):
    """vtc runs on a transformers release newer than the tested range because the user opted in
    (`VTC_ALLOW_UNTESTED_TRANSFORMERS=1`)."""


class PlaceholderMismatchError(VTCError, ValueError):
    """The number of image placeholders in the prompt disagrees with the number of visual features."""


class InputError(VTCError, ValueError):
    """The image inputs of a forward (pixel values, image sizes, grids) are not shaped as the model's processor makes
    them, e.g. pixel values of another size than the vision tower's tile."""


class DataError(VTCError, ValueError):
    """A dataset file or folder cannot be loaded as samples. The message starts with where: the file and the
    1-based line (JSONL) or row (a `datasets` folder)."""

    def __init__(self, message: str, *, path: object = None, line: int | None = None, row: int | None = None):
        self.path, self.line, self.row = path, line, row
        where = [str(path)] if path is not None else []
        where += [f"line {line}"] if line is not None else []
        where += [f"row {row}"] if row is not None else []
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
