"""The visual layout: where each sample's visual tokens are and how they are arranged.

Every component works from this one structure. For each sample of a batch an adapter reports a tuple of
`VisualSpan`s, ordered by `start`, that together cover exactly the image-placeholder positions of that sample.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchLayout", "SampleLayout", "VisualSpan"]


@dataclass(frozen=True)
class VisualSpan:
    """A run of visual tokens in one sample's sequence.

    Args:
        start: sequence position of the span's first token.
        length: number of sequence positions the span covers.
        grid: `(h, w)` when the tokens are the cells of a 2-D grid in row-major order, `None` when they have no grid
            (a CLS or newline token, anything unknown).
        newline: only with a grid: each grid row is followed by one extra token that is not a grid cell (the
            "image newline" some families use), so the span holds `h * (w + 1)` positions and cell `(i, j)` sits at
            `start + i * (w + 1) + j`.
    """

    start: int
    length: int
    grid: tuple[int, int] | None = None
    newline: bool = False

    def __post_init__(self):
        if self.start < 0 or self.length < 1:
            raise ValueError(f"VisualSpan needs start >= 0 and length >= 1, got start={self.start}, length={self.length}")
        if self.grid is None:
            if self.newline:
                raise ValueError("VisualSpan(newline=True) needs a grid")
            return
        h, w = self.grid
        if h < 1 or w < 1:
            raise ValueError(f"VisualSpan grid must be positive, got {self.grid}")
        expected = h * (w + 1) if self.newline else h * w
        if self.length != expected:
            raise ValueError(f"VisualSpan with grid {self.grid} (newline={self.newline}) must have length {expected}, "
                             f"got {self.length}")

    @property
    def end(self) -> int:
        """One past the last position of the span."""
        return self.start + self.length

    @property
    def num_cells(self) -> int:
        """Number of grid cells (the span length without newline tokens)."""
        if self.grid is None:
            return self.length
        return self.grid[0] * self.grid[1]

    def positions(self) -> list[int]:
        """Every sequence position the span covers, in order."""
        return list(range(self.start, self.end))


SampleLayout = tuple[VisualSpan, ...]
BatchLayout = list[SampleLayout]
