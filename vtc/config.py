"""Typed, validated configurations of the three compressors and of their composition.

Every config is a frozen dataclass: build it with keywords, derive ablations with `dataclasses.replace` (which runs the
same validation again), and store it as JSON. Invalid values raise `ConfigError` naming the field, the value and what
is allowed. Checks that need the model (layer count, LLM width, native tile size) happen when the config is applied.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

__all__ = ["LVTCConfig", "PVTCConfig", "RVTCConfig", "VTCConfig"]

_C = TypeVar("_C", bound="_ConfigIO")


# ---- value checks shared by the configs ----------------------------------------------------------------------------

def _int(name: str, value: Any, allowed: str, minimum: int | None = None, maximum: int | None = None) -> int:
    # bool is a subclass of int, so `ratio=True` would otherwise pass as 1; numpy integers are accepted and stored as a
    # plain int so that the config stays JSON-serialisable.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(name, value, allowed)
    if minimum is not None and value < minimum:
        raise ConfigError(name, value, allowed)
    if maximum is not None and value > maximum:
        raise ConfigError(name, value, allowed)
    return int(value)


def _float(name: str, value: Any, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(name, value, allowed)
    try:
        number = float(value)
    except OverflowError:  # an int or Fraction beyond the float range, e.g. 10**400
        raise ConfigError(name, value, allowed) from None
    if not math.isfinite(number):
        raise ConfigError(name, value, allowed)
    return number


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def _set(obj: Any, name: str, value: Any) -> None:
    # Normalised values (numpy int -> int, 4 -> 4.0) are written back through object.__setattr__ because the dataclass
    # is frozen; this keeps equality and JSON output independent of how the caller spelled the number.
    object.__setattr__(obj, name, value)


# ---- dict / JSON IO ----------------------------------------------------------------------------------------------

class _ConfigIO:
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


# ---- the components ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PVTCConfig(_ConfigIO):
    """Projector-level compression: point-to-region cross-attention replaces the model's projector.

    Args:
        ratio: factor by which the visual tokens per image (or tile) are reduced relative to the model's native count;
            a perfect square (1, 4, 9, 16, ...) because each output token covers a `sqrt(ratio) x sqrt(ratio)` window,
            at most `MAX_RATIO` (a 64 x 64 window). When the model is known it must also not exceed the native tokens
            of one tile, or for families without tiles the most native tokens the processor gives one image.
        num_heads: attention heads of the region cross-attention, `1..MAX_HEADS`; the LLM width must be divisible by
            it (checked when the model is known).
        mlp_ratio: hidden width of the block's MLP as a multiple of the LLM width, `0 < mlp_ratio <= MAX_MLP_RATIO`;
            with the model known, the MLP must get at least one unit.
        drop_path: stochastic-depth probability during training, drawn per output token, `0 <= p < 1`.
        global_query: source of the global query: `"cls"` (the tower's CLS token), `"mean"` (the mean of the image's
            patches), `"auto"` (CLS when the tower has one, else the mean) or `"none"` (local branch only).
        init: `"warm"` starts from the model's own projector so that `ratio=1` reproduces the unpatched model;
            `"paper"` uses the original structure and random initialisation.
    """

    # Upper bounds far above any useful setting (the paper uses ratio 4, 16 heads, MLP ratio 4) that keep a typo from
    # allocating a projector larger than the model or pooling windows larger than any image.
    MAX_RATIO: ClassVar[int] = 4096
    MAX_HEADS: ClassVar[int] = 1024
    MAX_MLP_RATIO: ClassVar[float] = 16.0

    ratio: int = field(default=4, metadata={"help": "Visual-token reduction factor vs. the model's native count; "
                                                    f"a perfect square (1, 4, 9, ...) up to {MAX_RATIO} and up to "
                                                    "the native tokens of one tile or image."})
    num_heads: int = field(default=16, metadata={"help": "Attention heads of the region cross-attention, "
                                                         f"1..{MAX_HEADS}; must divide the LLM width."})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP hidden width as a multiple of the LLM width, "
                                                            f"0 < r <= {MAX_MLP_RATIO:g}."})
    drop_path: float = field(default=0.0, metadata={"help": "Per-token stochastic-depth probability in training, "
                                                            "0 <= p < 1."})
    global_query: str = field(default="auto", metadata={"help": "Global query source: auto, cls, mean or none."})
    init: str = field(default="warm", metadata={"help": "warm (start from the model's projector) or paper."})

    GLOBAL_QUERIES: ClassVar[tuple[str, ...]] = ("auto", "cls", "mean", "none")
    INITS: ClassVar[tuple[str, ...]] = ("warm", "paper")

    def __post_init__(self):
        square = f"a perfect square >= 1 and <= {self.MAX_RATIO} (1, 4, 9, 16, ...)"
        ratio = _int("ratio", self.ratio, square, minimum=1, maximum=self.MAX_RATIO)
        if math.isqrt(ratio) ** 2 != ratio:
            raise ConfigError("ratio", self.ratio, square, hint=f"The nearest squares are "
                              f"{math.isqrt(ratio) ** 2} and {(math.isqrt(ratio) + 1) ** 2}.")
        _set(self, "ratio", ratio)
        _set(self, "num_heads", _int("num_heads", self.num_heads, f"an int in 1..{self.MAX_HEADS}", minimum=1,
                                     maximum=self.MAX_HEADS))
        bounded = f"a finite number > 0 and <= {self.MAX_MLP_RATIO:g}"
        mlp_ratio = _float("mlp_ratio", self.mlp_ratio, bounded)
        if not 0.0 < mlp_ratio <= self.MAX_MLP_RATIO:
            raise ConfigError("mlp_ratio", self.mlp_ratio, bounded)
        _set(self, "mlp_ratio", mlp_ratio)
        drop_path = _float("drop_path", self.drop_path, "a number with 0 <= p < 1")
        if not 0.0 <= drop_path < 1.0:
            raise ConfigError("drop_path", self.drop_path, "a number with 0 <= p < 1")
        _set(self, "drop_path", drop_path)
        _choice("global_query", self.global_query, self.GLOBAL_QUERIES)
        _choice("init", self.init, self.INITS)

    @property
    def window(self) -> int:
        """Side of the square window of native tokens that one output token covers, `sqrt(ratio)`."""
        return math.isqrt(self.ratio)


@dataclass(frozen=True)
class LVTCConfig(_ConfigIO):
    """LLM-level compression: pool the visual states at layer K, run layers K..L-1 short, restore after layer L-1.

    Args:
        compress_layer: K, the first decoder layer that sees the compressed sequence; negative counts from the end.
            Never 0: layer 0's KV cache must stay full length. With `n` decoder layers (known when the config is
            applied), `1 <= K < n` once normalised.
        restore_layer: L, the first layer that sees the full sequence again (L may equal the layer count: restore after
            the last layer); negative counts from the end; `None` never restores (a merge-only baseline). With `n`
            decoder layers, `K < L <= n` once normalised.
        ratio: visual tokens per pooled group, `1..MAX_RATIO`.
        restore: `"delta"` (`H_K + unpool(H'_L - H'_K)`, the identity at `ratio=1`), `"add"` (`up(H'_L) + g * H_K`
            with a learnable gate `g` initialised to 0) or `"upsample"` (`up(H'_L)`, no residual).
        upsample: `"nearest"` (each token takes its group's value) or `"bilinear"` over the grid.
        position: rotary position of a pooled group: the `"mean"` of its members' positions or the `"first"`.
    """

    # Far above any useful pooling (the paper pools 4 tokens); a larger group would only be a typo.
    MAX_RATIO: ClassVar[int] = 4096

    compress_layer: int = field(default=2, metadata={"help": "K: first decoder layer on the compressed sequence; "
                                                             "negative counts from the end; never 0; inside the "
                                                             "model's decoder layers."})
    restore_layer: int | None = field(default=-4, metadata={"help": "L: first decoder layer on the full sequence "
                                                                    "again, after K and at most the layer count; "
                                                                    "negative counts from the end; None = never "
                                                                    "restore."})
    ratio: int = field(default=4, metadata={"help": f"Visual tokens per pooled group, 1..{MAX_RATIO}."})
    restore: str = field(default="delta", metadata={"help": "Restore rule: delta, add or upsample."})
    upsample: str = field(default="nearest", metadata={"help": "Unpooling: nearest or bilinear."})
    position: str = field(default="mean", metadata={"help": "Position of a pooled group: mean or first."})

    RESTORES: ClassVar[tuple[str, ...]] = ("delta", "add", "upsample")
    UPSAMPLES: ClassVar[tuple[str, ...]] = ("nearest", "bilinear")
    POSITIONS: ClassVar[tuple[str, ...]] = ("mean", "first")

    def __post_init__(self):
        k = _int("compress_layer", self.compress_layer, "an int (negative counts from the end), not 0")
        if k == 0:
            raise ConfigError("compress_layer", self.compress_layer, "a layer index other than 0",
                              hint="Layer 0's KV cache must stay full length: use compress_layer >= 1.")
        _set(self, "compress_layer", k)
        if self.restore_layer is not None:
            layer = _int("restore_layer", self.restore_layer, "an int (negative counts from the end) or None")
            # L=0 can never lie after K >= 1, whatever the layer count.
            if layer == 0:
                raise ConfigError("restore_layer", self.restore_layer, "a layer index after compress_layer, or None")
            # Mixed signs can only be compared once the layer count is known (resolve_layers).
            if (k > 0) == (layer > 0) and layer <= k:
                raise ConfigError("restore_layer", self.restore_layer,
                                  f"a layer index after compress_layer={k}, or None")
            _set(self, "restore_layer", layer)
        _set(self, "ratio", _int("ratio", self.ratio, f"an int in 1..{self.MAX_RATIO}", minimum=1,
                                 maximum=self.MAX_RATIO))
        _choice("restore", self.restore, self.RESTORES)
        _choice("upsample", self.upsample, self.UPSAMPLES)
        _choice("position", self.position, self.POSITIONS)

    def resolve_layers(self, num_layers: int) -> tuple[int, int | None]:
        """Normalises K and L for a decoder with `num_layers` layers.

        Args:
            num_layers: number of decoder layers of the language model.

        Returns:
            `(K, L)` with `1 <= K < num_layers` and `K < L <= num_layers`, or `(K, None)` when never restoring.

        Raises:
            ConfigError: when an index falls outside the model.
        """
        n = _int("num_layers", num_layers, "an int >= 2 (LVTC needs a layer before and at K)", minimum=2)
        k = self.compress_layer + n if self.compress_layer < 0 else self.compress_layer
        if not 1 <= k < n:
            raise ConfigError("compress_layer", self.compress_layer,
                              f"an index in 1..{n - 1} or {1 - n}..-1 for a model with {n} decoder layers")
        if self.restore_layer is None:
            return k, None
        layer = self.restore_layer + n if self.restore_layer < 0 else self.restore_layer
        if not k < layer <= n:
            negative = "" if k + 1 >= n else " or -1" if k + 2 == n else f" or {k + 1 - n}..-1"
            resolved = f", i.e. layer {k}" if self.compress_layer < 0 else ""
            raise ConfigError("restore_layer", self.restore_layer,
                              f"an index in {k + 1}..{n}{negative} (after compress_layer={self.compress_layer}"
                              f"{resolved}) for a model with {n} decoder layers")
        return k, layer


@dataclass(frozen=True)
class RVTCConfig(_ConfigIO):
    """Resolution-adaptive tiling: how many high-resolution tiles an image gets.

    Args:
        mode: `"edge"` caps the tiles at `ceil(H/s) * ceil(W/s)` (the released rule), `"area"` at `ceil(W*H/s^2)`,
            `"budget"` picks the largest grid whose visual tokens stay within `max_visual_tokens`.
        min_tiles: fewest tiles per image, `1..MAX_TILES`.
        max_tiles: most tiles per image, `min_tiles..MAX_TILES`.
        tile_size: tile side `s` in pixels, `1..MAX_TILE_SIZE`; `None` uses the model's native tile.
        use_thumbnail: append a whole-image tile when an image gets more than one tile (where the model has one).
        max_visual_tokens: the per-image token budget, `1..MAX_VISUAL_TOKENS`; required by, and only allowed with,
            `mode="budget"`.
    """

    # Far above what the supported models tile (a few dozen tiles of 336 to 512 px, at most about 16k visual tokens
    # per image): larger values are typos, and the planner's cost grows with the tile count.
    MAX_TILES: ClassVar[int] = 256
    MAX_TILE_SIZE: ClassVar[int] = 8192
    MAX_VISUAL_TOKENS: ClassVar[int] = 1 << 20

    mode: str = field(default="edge", metadata={"help": "Tile cap: edge, area or budget."})
    min_tiles: int = field(default=1, metadata={"help": f"Fewest tiles per image, 1..{MAX_TILES}."})
    max_tiles: int = field(default=6, metadata={"help": f"Most tiles per image, min_tiles..{MAX_TILES}."})
    tile_size: int | None = field(default=None, metadata={"help": f"Tile side in pixels, 1..{MAX_TILE_SIZE}; "
                                                                  "None = the model's own."})
    use_thumbnail: bool = field(default=True, metadata={"help": "Add a whole-image thumbnail tile."})
    max_visual_tokens: int | None = field(default=None, metadata={"help": "Token budget per image (mode=budget), "
                                                                          f"1..{MAX_VISUAL_TOKENS}."})

    MODES: ClassVar[tuple[str, ...]] = ("edge", "area", "budget")

    def __post_init__(self):
        _choice("mode", self.mode, self.MODES)
        min_tiles = _int("min_tiles", self.min_tiles, f"an int in 1..{self.MAX_TILES}", minimum=1,
                         maximum=self.MAX_TILES)
        _set(self, "min_tiles", min_tiles)
        _set(self, "max_tiles", _int("max_tiles", self.max_tiles, f"an int in min_tiles={min_tiles}..{self.MAX_TILES}",
                                     minimum=min_tiles, maximum=self.MAX_TILES))
        if self.tile_size is not None:
            _set(self, "tile_size", _int("tile_size", self.tile_size, f"an int in 1..{self.MAX_TILE_SIZE} or None",
                                         minimum=1, maximum=self.MAX_TILE_SIZE))
        if not isinstance(self.use_thumbnail, bool):
            raise ConfigError("use_thumbnail", self.use_thumbnail, "True or False")
        if self.mode == "budget":
            _set(self, "max_visual_tokens", _int("max_visual_tokens", self.max_visual_tokens,
                                                 f"an int in 1..{self.MAX_VISUAL_TOKENS} with mode='budget'",
                                                 minimum=1, maximum=self.MAX_VISUAL_TOKENS))
        elif self.max_visual_tokens is not None:
            # Accepting it would let a user believe a budget is enforced when the edge/area rule ignores it.
            raise ConfigError("max_visual_tokens", self.max_visual_tokens, f"None with mode={self.mode!r}",
                              hint="Set mode='budget' to enforce a token budget.")


# ---- the composition ---------------------------------------------------------------------------------------------

_COMPONENTS: dict[str, type[_ConfigIO]] = {"pvtc": PVTCConfig, "lvtc": LVTCConfig, "rvtc": RVTCConfig}


@dataclass(frozen=True)
class VTCConfig(_ConfigIO):
    """The three compressors together; a component set to `None` is off.

    Args:
        pvtc: projector-level compression, or `None`.
        lvtc: LLM-level compression, or `None`.
        rvtc: resolution-adaptive tiling, or `None`.
    """

    pvtc: PVTCConfig | None = field(default=None, metadata={"help": "Projector-level compression; None = off."})
    lvtc: LVTCConfig | None = field(default=None, metadata={"help": "LLM-level compression; None = off."})
    rvtc: RVTCConfig | None = field(default=None, metadata={"help": "Resolution-adaptive tiling; None = off."})

    def __post_init__(self):
        for name, cls in _COMPONENTS.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise ConfigError(name, value, f"a {cls.__name__} or None",
                                  hint="Build nested dicts with VTCConfig.from_dict.")

    @property
    def is_identity(self) -> bool:
        """Whether every component is off, so applying the config changes nothing."""
        return self.pvtc is None and self.lvtc is None and self.rvtc is None

    def to_dict(self) -> dict[str, Any]:
        """Returns `{"pvtc": dict | None, "lvtc": dict | None, "rvtc": dict | None}`."""
        return {name: None if getattr(self, name) is None else getattr(self, name).to_dict() for name in _COMPONENTS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VTCConfig:
        """Builds the config from nested dicts as written by `to_dict`; a missing or `None` component is off.

        Args:
            d: mapping of component name (`pvtc`, `lvtc`, `rvtc`) to a dict of its fields, a component config, or `None`.

        Raises:
            ConfigError: on an unknown key at either level, or on an invalid value.
        """
        d = cls._check_keys(d)
        parts = {}
        for name, value in d.items():
            parts[name] = _COMPONENTS[name].from_dict(value) if isinstance(value, Mapping) else value
        return cls(**parts)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the config as JSON.

        Args:
            path: the file to write (its folder must exist), e.g. `ckpt/vtc_config.json`.
        """
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> VTCConfig:
        """Reads a config written by `save`.

        Args:
            path: the JSON file to read.
        """
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())
