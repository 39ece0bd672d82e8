"""Typed, validated configurations of the compressors, the pruning baselines and their composition.

Every config is a frozen dataclass: build it with keywords, derive ablations with `dataclasses.replace` (which runs the
same validation again), and store it as JSON. Invalid values raise `ConfigError` naming the field, the value and what
is allowed. Checks that need the model (layer count, LLM width, native tile size) happen when the config is applied.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

from ._config_base import ConfigIO, check_choice, check_float, check_int, set_normalised
from .errors import ConfigError

__all__ = ["LVTCConfig", "PVTCConfig", "PruneConfig", "RVTCConfig", "VTCConfig"]


# ---- the components ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PVTCConfig(ConfigIO):
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
        ratio = check_int("ratio", self.ratio, square, minimum=1, maximum=self.MAX_RATIO)
        if math.isqrt(ratio) ** 2 != ratio:
            raise ConfigError("ratio", self.ratio, square, hint=f"The nearest squares are "
                              f"{math.isqrt(ratio) ** 2} and {(math.isqrt(ratio) + 1) ** 2}.")
        set_normalised(self, "ratio", ratio)
        set_normalised(self, "num_heads", check_int("num_heads", self.num_heads, f"an int in 1..{self.MAX_HEADS}", minimum=1,
                                     maximum=self.MAX_HEADS))
        bounded = f"a finite number > 0 and <= {self.MAX_MLP_RATIO:g}"
        mlp_ratio = check_float("mlp_ratio", self.mlp_ratio, bounded)
        if not 0.0 < mlp_ratio <= self.MAX_MLP_RATIO:
            raise ConfigError("mlp_ratio", self.mlp_ratio, bounded)
        set_normalised(self, "mlp_ratio", mlp_ratio)
        drop_path = check_float("drop_path", self.drop_path, "a number with 0 <= p < 1")
        if not 0.0 <= drop_path < 1.0:
            raise ConfigError("drop_path", self.drop_path, "a number with 0 <= p < 1")
        set_normalised(self, "drop_path", drop_path)
        check_choice("global_query", self.global_query, self.GLOBAL_QUERIES)
        check_choice("init", self.init, self.INITS)

    @property
    def window(self) -> int:
        """Side of the square window of native tokens that one output token covers, `sqrt(ratio)`."""
        return math.isqrt(self.ratio)


@dataclass(frozen=True)
class LVTCConfig(ConfigIO):
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
        k = check_int("compress_layer", self.compress_layer, "an int (negative counts from the end), not 0")
        if k == 0:
            raise ConfigError("compress_layer", self.compress_layer, "a layer index other than 0",
                              hint="Layer 0's KV cache must stay full length: use compress_layer >= 1.")
        set_normalised(self, "compress_layer", k)
        if self.restore_layer is not None:
            layer = check_int("restore_layer", self.restore_layer, "an int (negative counts from the end) or None")
            # L=0 can never lie after K >= 1, whatever the layer count.
            if layer == 0:
                raise ConfigError("restore_layer", self.restore_layer, "a layer index after compress_layer, or None")
            # Mixed signs can only be compared once the layer count is known (resolve_layers).
            if (k > 0) == (layer > 0) and layer <= k:
                raise ConfigError("restore_layer", self.restore_layer,
                                  f"a layer index after compress_layer={k}, or None")
            set_normalised(self, "restore_layer", layer)
        set_normalised(self, "ratio", check_int("ratio", self.ratio, f"an int in 1..{self.MAX_RATIO}", minimum=1,
                                 maximum=self.MAX_RATIO))
        check_choice("restore", self.restore, self.RESTORES)
        check_choice("upsample", self.upsample, self.UPSAMPLES)
        check_choice("position", self.position, self.POSITIONS)

    def resolve_layers(self, num_layers: int) -> tuple[int, int | None]:
        """Normalises K and L for a decoder with `num_layers` layers.

        Args:
            num_layers: number of decoder layers of the language model.

        Returns:
            `(K, L)` with `1 <= K < num_layers` and `K < L <= num_layers`, or `(K, None)` when never restoring.

        Raises:
            ConfigError: when an index falls outside the model.
        """
        n = check_int("num_layers", num_layers, "an int >= 2 (LVTC needs a layer before and at K)", minimum=2)
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
class RVTCConfig(ConfigIO):
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
        check_choice("mode", self.mode, self.MODES)
        min_tiles = check_int("min_tiles", self.min_tiles, f"an int in 1..{self.MAX_TILES}", minimum=1,
                         maximum=self.MAX_TILES)
        set_normalised(self, "min_tiles", min_tiles)
        set_normalised(self, "max_tiles", check_int("max_tiles", self.max_tiles, f"an int in min_tiles={min_tiles}..{self.MAX_TILES}",
                                     minimum=min_tiles, maximum=self.MAX_TILES))
        if self.tile_size is not None:
            set_normalised(self, "tile_size", check_int("tile_size", self.tile_size, f"an int in 1..{self.MAX_TILE_SIZE} or None",
                                         minimum=1, maximum=self.MAX_TILE_SIZE))
        if not isinstance(self.use_thumbnail, bool):
            raise ConfigError("use_thumbnail", self.use_thumbnail, "True or False")
        if self.mode == "budget":
            set_normalised(self, "max_visual_tokens", check_int("max_visual_tokens", self.max_visual_tokens,
                                                 f"an int in 1..{self.MAX_VISUAL_TOKENS} with mode='budget'",
                                                 minimum=1, maximum=self.MAX_VISUAL_TOKENS))
        elif self.max_visual_tokens is not None:
            # Accepting it would let a user believe a budget is enforced when the edge/area rule ignores it.
            raise ConfigError("max_visual_tokens", self.max_visual_tokens, f"None with mode={self.mode!r}",
                              hint="Set mode='budget' to enforce a token budget.")


@dataclass(frozen=True)
class PruneConfig(ConfigIO):
    """Training-free reduction of the visual tokens, before the language model or inside its decoder: the baselines
    compressors are compared with (`docs/prune.md` gives each method's rule and source).

    Args:
        method: before the language model: `"downsample"` (the image goes in with fewer tiles, so the model natively
            makes about `keep` tokens), `"pool"` (2-D average pooling of the projector's output grid to about `keep`
            tokens), `"random"` (`keep` tokens drawn uniformly, seeded), `"divprune"` (greedy max-min diversity of
            the projector's outputs) or `"visionzip"` (the tokens the [CLS] token attends to most, plus a few merged
            contextual tokens); inside the decoder (`IN_LLM_METHODS`): `"fastv"` (from decoder layer `layer` on, the
            tokens the last prompt token attended to most in the layer before), `"dart"` (from decoder layer
            `layer` on, the tokens least similar to a few pivot tokens) or `"pdrop"` (PyramidDrop: fewer tokens at
            each of the decoder layers `layer`, ranked by the last prompt token's attention).
        keep: the visual tokens of one image (of one tile on a family whose model sees tiles, not images, except
            with `downsample`, which acts per image): an int `>= 1`, at most the native count (checked when the
            model is known; an image with fewer native tokens keeps them all inside the decoder), or a float
            `0 < keep < 1`, that fraction of the native tokens, rounded up. Before the language model it is the count
            at its input; for `fastv` and `dart` the count from decoder layer `layer` on; for `pdrop` the average
            over all decoder layers, for which vtc solves the keep ratio of the stages.
        seed: the seed of `method="random"`'s draw, `0 <= seed < 2**63`; only allowed with that method.
        layer: only for the in-decoder methods, `None` elsewhere. `fastv` and `dart`: K, the first decoder layer
            that runs without the dropped tokens (an int, negative counts from the end, never 0; `None` is the
            official K = 2). `pdrop`: the first layer of each stage, increasing (a sequence of such ints, or one
            int for one stage; `None` is the official quarters of the decoder: 8, 16 and 24 of 32 layers). Checked
            against the model's decoder when the config is applied.
    """

    METHODS: ClassVar[tuple[str, ...]] = ("downsample", "pool", "random", "divprune", "visionzip", "fastv", "pdrop",
                                          "dart")
    #: The methods that act inside the decoder (the sequence shortens from a decoder layer on; the processor and the
    #: language model's input are unchanged).
    IN_LLM_METHODS: ClassVar[tuple[str, ...]] = ("fastv", "pdrop", "dart")
    #: FastV's and DART's K when `layer` is None: both official codes prune at the input of decoder layer 2.
    DEFAULT_LAYER: ClassVar[int] = 2
    # Far above the visual tokens of any supported image (a few thousand): a larger int is a typo.
    MAX_KEEP: ClassVar[int] = 1 << 20

    method: str = field(default="divprune", metadata={"help": "Reduction rule: downsample, pool, random, divprune, "
                                                              "visionzip (before the language model), fastv, pdrop "
                                                              "or dart (inside its decoder)."})
    keep: int | float = field(default=0.25, metadata={"help": "Visual tokens per image (per tile where the model sees "
                                                              "tiles): an int up to the native count, or a fraction "
                                                              "0 < f < 1 of the native tokens, rounded up; pdrop: "
                                                              "the average over the decoder layers."})
    seed: int = field(default=0, metadata={"help": "Seed of method=random, 0 <= seed < 2**63."})
    layer: int | tuple[int, ...] | None = field(
        default=None, metadata={"help": "fastv, dart: K, the first decoder layer without the dropped tokens (None: "
                                        "2); pdrop: each stage's first layer, increasing (None: the quarters of "
                                        "the decoder). Negative counts from the end; never 0."})

    def __post_init__(self):
        check_choice("method", self.method, self.METHODS)
        allowed = f"an int in 1..{self.MAX_KEEP} or a float with 0 < keep < 1"
        if isinstance(self.keep, numbers.Integral) and not isinstance(self.keep, bool):
            set_normalised(self, "keep", check_int("keep", self.keep, allowed, minimum=1, maximum=self.MAX_KEEP))
        else:
            keep = check_float("keep", self.keep, allowed)
            if not 0.0 < keep < 1.0:
                hint = "Give a whole number of tokens as an int." if keep >= 1.0 and keep.is_integer() else None
                raise ConfigError("keep", self.keep, allowed, hint=hint)
            set_normalised(self, "keep", keep)
            # The fraction as written (its shortest decimal): 0.1 of 30 tokens is 3, where the binary float gives 4.
            # Kept as two ints so that `kept_count` is integer arithmetic, which `torch.compile` folds into constants.
            written = Fraction(repr(keep))
            object.__setattr__(self, "_keep_ratio", (written.numerator, written.denominator))
        seed = check_int("seed", self.seed, "an int with 0 <= seed < 2**63", minimum=0, maximum=2**63 - 1)
        if seed and self.method != "random":
            # Accepting it would let a user believe the selection varies with the seed.
            raise ConfigError("seed", self.seed, f"0 with method={self.method!r}",
                              hint="Only method='random' draws tokens.")
        set_normalised(self, "seed", seed)
        set_normalised(self, "layer", self._checked_layer())

    def _checked_layer(self) -> int | tuple[int, ...] | None:
        if self.layer is None:
            return None
        if not self.in_llm:
            # Accepting it would let a user believe the tokens are dropped inside the decoder.
            raise ConfigError("layer", self.layer, f"None with method={self.method!r}",
                              hint=f"Only the in-decoder methods {', '.join(self.IN_LLM_METHODS)} act at a decoder "
                                   "layer; the others act before the language model.")
        index = "an int (negative counts from the end), not 0 (a sequence of stages only with method='pdrop')"
        if self.method != "pdrop":
            return self._layer_index(self.layer, index)
        stages = "an int or a non-empty sequence of ints (negative counts from the end), none 0, increasing"
        if isinstance(self.layer, numbers.Integral) and not isinstance(self.layer, bool):
            return (self._layer_index(self.layer, stages),)
        if isinstance(self.layer, (str, bytes, Mapping)) or not isinstance(self.layer, (list, tuple)) or not self.layer:
            raise ConfigError("layer", self.layer, stages)
        layers = tuple(self._layer_index(value, stages) for value in self.layer)
        # Mixed signs can only be compared once the layer count is known (`resolve_stage_layers`).
        if any((a > 0) == (b > 0) and b <= a for a, b in zip(layers, layers[1:])):
            raise ConfigError("layer", self.layer, stages)
        return layers

    def _layer_index(self, value: Any, allowed: str) -> int:
        layer = check_int("layer", value, allowed)
        if layer == 0:
            raise ConfigError("layer", self.layer, allowed,
                              hint="Layer 0 runs on every token: its KV cache must stay full length, and the rules "
                                   "rank the tokens with what the layers before the pruned one computed.")
        return layer

    @property
    def in_llm(self) -> bool:
        """Whether the method acts inside the decoder (`IN_LLM_METHODS`)."""
        return self.method in self.IN_LLM_METHODS

    def resolve_stage_layers(self, num_layers: int) -> tuple[int, ...]:
        """The first decoder layer of each pruning stage (one for `fastv` and `dart`), normalised for a decoder with
        `num_layers` layers: increasing, each in `1..num_layers - 1`.

        Raises:
            ConfigError: for a method that acts before the language model, or an index outside the decoder.
        """
        if not self.in_llm:
            raise ConfigError("method", self.method, "one of " + ", ".join(map(repr, self.IN_LLM_METHODS)),
                              hint="Only the in-decoder methods have stages.")
        n = check_int("num_layers", num_layers, "an int >= 2 (a layer before the pruned one and the pruned one)",
                 minimum=2)
        if self.layer is None:
            layers = ((n // 4, n // 2, 3 * n // 4) if self.method == "pdrop" else (self.DEFAULT_LAYER,))
            layers = tuple(sorted({max(1, min(layer, n - 1)) for layer in layers}))
        else:
            given = self.layer if isinstance(self.layer, tuple) else (self.layer,)
            layers = tuple(layer + n if layer < 0 else layer for layer in given)
        allowed = f"an index in 1..{n - 1} or {1 - n}..-1 for a model with {n} decoder layers"
        if not all(1 <= layer < n for layer in layers):
            raise ConfigError("layer", self.layer, allowed + ("" if len(layers) == 1 else ", increasing"))
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ConfigError("layer", self.layer, allowed + ", increasing",
                              hint=f"They resolve to {list(layers)} for this model.")
        return layers

    def kept_count(self, native: int) -> int:
        """The tokens an item with `native` visual tokens keeps: `keep`, or `ceil(keep * native)` for a fraction.

        The count function of the selection methods on both sides: the processor's placeholders and the model's
        features come from it. (`pool` keeps the product of `vtc.prune.pool_grid` instead, about this many; inside
        the decoder an item keeps at most its `native` tokens, and `pdrop` reads it as an average over the layers.)
        """
        if isinstance(self.keep, int):
            return self.keep
        numerator, denominator = self._keep_ratio
        return max(1, -(-numerator * native // denominator))


# ---- the composition ---------------------------------------------------------------------------------------------

_COMPONENTS: dict[str, type[ConfigIO]] = {"pvtc": PVTCConfig, "lvtc": LVTCConfig, "rvtc": RVTCConfig,
                                           "prune": PruneConfig}


@dataclass(frozen=True)
class VTCConfig(ConfigIO):
    """The compressors together; a component set to `None` is off.

    Args:
        pvtc: projector-level compression, or `None`.
        lvtc: LLM-level compression, or `None`.
        rvtc: resolution-adaptive tiling, or `None`.
        prune: a training-free pruning baseline, or `None`; a method before the language model not together with
            `pvtc` (both replace the projector's output), a method inside the decoder not together with `lvtc` (both
            shorten the decoder's sequence).
    """

    pvtc: PVTCConfig | None = field(default=None, metadata={"help": "Projector-level compression; None = off."})
    lvtc: LVTCConfig | None = field(default=None, metadata={"help": "LLM-level compression; None = off."})
    rvtc: RVTCConfig | None = field(default=None, metadata={"help": "Resolution-adaptive tiling; None = off."})
    prune: PruneConfig | None = field(default=None, metadata={"help": "Training-free pruning, before the language "
                                                                      "model or inside its decoder; None = off."})

    def __post_init__(self):
        for name, cls in _COMPONENTS.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise ConfigError(name, value, f"a {cls.__name__} or None",
                                  hint="Build nested dicts with VTCConfig.from_dict.")
        if self.pvtc is not None and self.prune is not None and not self.prune.in_llm:
            raise ConfigError("prune", self.prune, "None together with pvtc",
                              hint="PVTC and pruning before the language model both replace the projector's output "
                                   "tokens: use one of them.")
        if self.lvtc is not None and self.prune is not None and self.prune.in_llm:
            raise ConfigError("prune", self.prune, "None together with lvtc, or a method before the language model",
                              hint=f"LVTC and {self.prune.method} both shorten the sequence inside the decoder: use "
                                   "one of them.")

    @property
    def is_identity(self) -> bool:
        """Whether every component is off, so applying the config changes nothing."""
        return all(getattr(self, name) is None for name in _COMPONENTS)

    def to_dict(self) -> dict[str, Any]:
        """Returns `{"pvtc": dict | None, "lvtc": dict | None, "rvtc": dict | None, "prune": dict | None}`."""
        return {name: None if getattr(self, name) is None else getattr(self, name).to_dict() for name in _COMPONENTS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VTCConfig:
        """Builds the config from nested dicts as written by `to_dict`; a missing or `None` component is off.

        Args:
            d: mapping of component name (`pvtc`, `lvtc`, `rvtc`, `prune`) to a dict of its fields, a component
                config, or `None`.

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
