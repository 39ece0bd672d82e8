"""PVTC: the point-to-region cross-attention projector of arXiv 2503.21307, for any vision tower and LLM.

Each output token owns a window ("region") of the vision patch grid. Two queries are made for it: a local one from
the region itself and a global one from the whole image (its CLS token, or the mean of its patches). Each query
attends to the patches of its region only (point-to-region cross-attention), and the two results are summed:

    regions  R   = silu(W_kv · norm(patches))            every patch projected to the language width
    local    LQ  = silu(W_l · norm(concat(region)))       init="paper"
                 = native_projector(window mean)          init="warm": the model's own projector, see below
    global   GQ  = silu(W_g · norm(cls or mean)) ⊙ Σ      Σ: a learnable scale per output position
    output       = Block_L(LQ, R) + Block_G(GQ, R)        each block: pre-norm cross-attention + SwiGLU MLP

`init="warm"` makes the projector start as the model it replaces: the local query is a copy of the model's projector
applied to the window-averaged projector input, and the attention and MLP output projections and Σ start at zero, so
both blocks add nothing and the global branch is zero. At `ratio=1` the output is then exactly the native projector's;
at higher ratios a pretrained model works before any training, and training can only add to it.

Axes: n items (images or tiles), h, w patch grid, gh, gw output grid, k patches per region, c language width,
d vision width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from vtc.ops.regions import average_token_windows, partition_windows
from vtc.ops.windows import pooled_grid

__all__ = ["DropPath", "PVTCProjector", "RMSNorm", "RegionCrossAttention"]

#: Applies a native projector to a patch grid: `(projector, (n, h, w, d)) -> (n, h / th, w / tw, c)`.
ApplyProjector = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    """RMS normalisation with a learnable gain, computed in float32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused op rather than five (square, mean, add, rsqrt, multiply) and two copies (to float32 and back):
        # fewer kernel launches where the host bounds a small batch, fewer passes over the states where memory does.
        # `rms_norm` computes in float32 for half-precision inputs and returns the input dtype.
        return self.weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps)


class DropPath(nn.Module):
    """Stochastic depth drawn per row: during training each row's branch is dropped with probability `p`.

    PVTC folds the output positions into the rows, so a branch is dropped per output token, as in the original.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class RegionCrossAttention(nn.Module):
    """One block: a query attends to its region (pre-norm, residual), then a SwiGLU MLP (pre-norm, residual).

    The region is normalised once and feeds both keys and values. No linear layer has a bias.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        hidden = int(round(dim * mlp_ratio))
        self.query_norm, self.region_norm, self.mlp_norm = RMSNorm(dim), RMSNorm(dim), RMSNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.drop_path = DropPath(drop_path)

    def zero_residual_branches(self) -> None:
        """Make the block the identity (`query` in, `query` out) while every weight still receives gradients."""
        nn.init.zeros_(self.o_proj.weight)
        nn.init.zeros_(self.down_proj.weight)

    def forward(self, query: torch.Tensor, region: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            query: `(b, c)`, one query per region.
            region: `(b, k, c)`, the region's patches at the language width.
            valid: `(b, k)` bool (False = padding, never attended to), or `None` when every slot is real.

        Returns:
            `(b, c)`.
        """
        # heads: attention heads, e: their width (c = heads * e); the query is a sequence of one.
        heads = self.num_heads
        q = rearrange(self.q_proj(self.query_norm(query)), "b (heads e) -> b heads 1 e", heads=heads)
        normed = self.region_norm(region)
        keys = rearrange(self.k_proj(normed), "b k (heads e) -> b heads k e", heads=heads)
        values = rearrange(self.v_proj(normed), "b k (heads e) -> b heads k e", heads=heads)
        mask = None if valid is None else valid[:, None, None, :]
        attended = rearrange(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask),
                             "b heads 1 e -> b (heads e)")
        h = query + self.drop_path(self.o_proj(attended))
        x = self.mlp_norm(h)
        return h + self.drop_path(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class PVTCProjector(nn.Module):
    """Point-to-region cross-attention projector (model-agnostic).

    Args:
        vision_dim: `d`, the width of the vision features it consumes.
        text_dim: `c`, the language model's width (its output width).
        ratio: output tokens are `ratio` times fewer than the native projector's: a perfect square, each output token
            covers `sqrt(ratio) x sqrt(ratio)` native tokens.
        token_window: `(th, tw)` patches per native token (1x1 for a per-patch MLP, 2x2 for a pixel shuffle or merger).
        num_heads: attention heads of both blocks; must divide `text_dim`.
        mlp_ratio: the blocks' MLP width as a multiple of `text_dim`.
        drop_path: per-token stochastic-depth probability in training.
        global_query: `"cls"` (a CLS vector is passed to `forward`), `"mean"` (the mean of the item's patches) or
            `"none"` (no global branch).
        scale_grid: the output grid on which the per-position global scale Σ is stored; other grids (other image
            sizes) use a bilinear resize of it.
        native_projector: `init="warm"`: a copy of the model's projector, applied to the window-averaged grid through
            the `apply_projector` passed to `forward`. `None` gives the paper's structure and initialisation.
    """

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        *,
        ratio: int = 4,
        token_window: tuple[int, int] = (1, 1),
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        global_query: str = "cls",
        scale_grid: tuple[int, int] = (16, 16),
        native_projector: nn.Module | None = None,
    ):
        super().__init__()
        side = math.isqrt(ratio)
        if side * side != ratio:
            raise ValueError(f"ratio must be a perfect square, got {ratio}")
        if global_query not in ("cls", "mean", "none"):
            raise ValueError(f"global_query must be 'cls', 'mean' or 'none', got {global_query!r}")
        self.ratio, self.side, self.token_window, self.global_query = ratio, side, tuple(token_window), global_query
        self.window = (token_window[0] * side, token_window[1] * side)  # patches per output token
        self.init = "paper" if native_projector is None else "warm"

        if native_projector is None:
            region_width = self.window[0] * self.window[1] * vision_dim
            self.local_norm = RMSNorm(region_width)
            self.local_proj = nn.Linear(region_width, text_dim, bias=False)
        else:
            self.native_projector = native_projector
        self.region_norm = RMSNorm(vision_dim)
        self.region_proj = nn.Linear(vision_dim, text_dim, bias=False)
        self.local_block = RegionCrossAttention(text_dim, num_heads, mlp_ratio, drop_path)
        if global_query != "none":
            self.global_norm = RMSNorm(vision_dim)
            self.global_proj = nn.Linear(vision_dim, text_dim, bias=False)
            self.global_scale = nn.Parameter(torch.randn(*scale_grid, text_dim))
            self.global_block = RegionCrossAttention(text_dim, num_heads, mlp_ratio, drop_path)
        if self.init == "warm":
            self.local_block.zero_residual_branches()
            if global_query != "none":
                nn.init.zeros_(self.global_scale)
                self.global_block.zero_residual_branches()

    def output_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The output token grid for a `(h, w)` patch grid."""
        th, tw = self.token_window
        return pooled_grid((grid[0] // th, grid[1] // tw), (self.side, self.side))

    def native_input(self, patches: torch.Tensor) -> torch.Tensor:
        """`init="warm"`: what the native projector receives for `(n, h, w, d)` patch grids to make the local
        queries (every window averaged into one native token's patches)."""
        return average_token_windows(patches, self.token_window, self.side)

    def _scale(self, grid: tuple[int, int]) -> torch.Tensor:
        scale = self.global_scale
        if tuple(scale.shape[:2]) == tuple(grid):
            return scale
        resized = F.interpolate(rearrange(scale, "gh gw c -> 1 c gh gw").float(), size=grid, mode="bilinear",
                                align_corners=False)
        return rearrange(resized, "1 c gh gw -> gh gw c").to(scale.dtype)

    def forward(
        self,
        patches: torch.Tensor,
        cls: torch.Tensor | None = None,
        apply_projector: ApplyProjector | None = None,
        local: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            patches: `(n, h, w, d)` patch grids of `n` items of the same size, row-major.
            cls: `(n, d)` CLS vectors; required when `global_query="cls"`.
            apply_projector: how the native projector maps a patch grid to tokens; required by `init="warm"` unless
                `local` is given.
            local: `init="warm"`: the local queries `(n, gh, gw, c)`, the native projector applied to
                `native_input(patches)` by the caller (who can batch it over items of every size, as the model
                does); computed here when `None`.

        Returns:
            `(n, gh, gw, c)`, `(gh, gw) = output_grid((h, w))`, in the dtype of the projector's weights.
        """
        if patches.dim() != 4:
            raise ValueError(f"patches must have shape (n, h, w, d), got {tuple(patches.shape)}")
        n, h, w, _ = patches.shape
        th, tw = self.token_window
        if h % th or w % tw:
            raise ValueError(f"a ({h}, {w}) patch grid is not a whole number of {self.token_window} native tokens")
        dtype = self.region_proj.weight.dtype
        patches = patches.to(dtype)

        region_values = F.silu(self.region_proj(self.region_norm(patches)))  # (n, h, w, c)
        regions, valid = partition_windows(region_values, self.window)  # (n, gh, gw, k, c), (gh, gw, k)
        _, gh, gw, _, c = regions.shape
        regions = rearrange(regions, "n gh gw k c -> (n gh gw) k c")
        # Known from the shapes (no read of `valid`, which would be a device sync): windows tile the grid exactly.
        tiled = h % self.window[0] == 0 and w % self.window[1] == 0
        valid = None if tiled else repeat(valid, "gh gw k -> (n gh gw) k", n=n)

        if self.init == "paper":
            concat, _ = partition_windows(patches, self.window)
            local = F.silu(self.local_proj(self.local_norm(concat.flatten(3))))  # (n, gh, gw, c)
        elif local is None:
            if apply_projector is None:
                raise ValueError("a warm PVTCProjector needs apply_projector to run its native projector")
            local = apply_projector(self.native_projector, self.native_input(patches))
        out = self.local_block(local.reshape(-1, c).to(dtype), regions, valid)

        if self.global_query != "none":
            if self.global_query == "cls":
                if cls is None:
                    raise ValueError("global_query='cls' needs the CLS vectors")
                source = cls.to(dtype)
            else:
                source = patches.mean(dim=(1, 2))
            pooled = F.silu(self.global_proj(self.global_norm(source)))  # (n, c)
            query = pooled[:, None, None, :] * self._scale((gh, gw))  # (n, gh, gw, c)
            out = out + self.global_block(query.reshape(-1, c), regions, valid)
        return out.reshape(n, gh, gw, c)
