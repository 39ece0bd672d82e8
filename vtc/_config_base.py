"""What every vtc config shares: the value checks that raise `ConfigError` naming the field, and dict / JSON IO."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["ConfigIO", "check_choice", "check_float", "check_int", "set_normalised"]

_C = TypeVar("_C", bound="ConfigIO")


# ---- value checks shared by the configs ----------------------------------------------------------------------------

def check_int(name: str, value: Any, allowed: str, minimum: int | None = None, maximum: int | None = None) -> int:
    # bool is a subclass of int, so `ratio=True` would otherwise pass as 1; numpy integers are accepted and stored as a
    # plain int so that the config stays JSON-serialisable.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(name, value, allowed)
    if minimum is not None and value < minimum:
        raise ConfigError(name, value, allowed)
    if maximum is not None and value > maximum:
        raise ConfigError(name, value, allowed)
    return int(value)


def check_float(name: str, value: Any, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(name, value, allowed)
    try:
        number = float(value)
    except OverflowError:  # an int or Fraction beyond the float range, e.g. 10**400
        raise ConfigError(name, value, allowed) from None
    if not math.isfinite(number):
        raise ConfigError(name, value, allowed)
    return number


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def set_normalised(obj: Any, name: str, value: Any) -> None:
    # Normalised values (numpy int -> int, 4 -> 4.0) are written back through object.__setattr__ because the dataclass
    # is frozen; this keeps equality and JSON output independent of how the caller spelled the number.
    object.__setattr__(obj, name, value)


# ---- dict / JSON IO ----------------------------------------------------------------------------------------------

class ConfigIO:
    """`to_dict` / `from_dict` / `to_json` / `from_json` for the flat configs (every field a JSON scalar)."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain dict of JSON-able values (field name -> value)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def _check_keys(cls, d: Any) -> Mapping[str, Any]:
        if not isinstance(d, Mapping):
            raise ConfigError(cls.__name__, d, "a dict of field values")
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in valid]
        if unknown:
            # Silently dropping a misspelt key would run a different ablation than the one asked for.
            hint = f"Unknown keys: {', '.join(map(repr, unknown))}." if len(unknown) > 1 else None
            raise ConfigError(str(unknown[0]), d[unknown[0]], f"a {cls.__name__} key, one of {', '.join(valid)}",
                              hint=hint)
        return d

    @classmethod
    def from_dict(cls: type[_C], d: Mapping[str, Any]) -> _C:
        """Builds the config from a dict as written by `to_dict`; missing keys take their defaults.

        Args:
            d: mapping of field name to value.

        Raises:
            ConfigError: on a key that is not a field, or on an invalid value.
        """
        return cls(**cls._check_keys(d))

    def to_json(self, indent: int | None = 2) -> str:
        """Returns the config as a JSON string.

        Args:
            indent: passed to `json.dumps`; `None` gives one line.
        """
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls: type[_C], s: str) -> _C:
        """Builds the config from a JSON string as written by `to_json`.

        Args:
            s: the JSON text of one object.
        """
        return cls.from_dict(json.loads(s))
