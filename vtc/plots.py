"""The accuracy-against-cost picture of an ablation (`pareto.png`), with matplotlib (the optional `[plot]` extra).

    vtc.plots.pareto(points, "pareto.png")                 # relative=True: accuracy over the uncompressed model's
    figure = vtc.plots.pareto_figure(points)               # the matplotlib figure, to show or save yourself

Two panels per task: accuracy against the visual tokens at the LLM input and against prefill FLOPs relative to the
uncompressed model (one row of two panels for one task, one column per task for more). Every point is one marker per
method (`legend_entries` names them in words); training-free points are hollow, trained ones (`ParetoPoint.trained`)
the same marker filled. Colour tells the models apart where there are several (their markers also differ in size, so
that coinciding points nest as concentric outlines); with one model it tells the method families apart. Points of
equal visual tokens stand on one faint vertical line: the equal-budget comparison.

Each model's Pareto frontier (the best accuracy at or below each cost) is a dashed step line. Its points, the
uncompressed one and the trained ones carry their row names, each placed where it overlaps no other label and stays
inside its panel; a label that finds no such place is left out, and its point is still told by its marker, fill and
colour in the legend beside the panels, which lists every one drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import PruneConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LABEL_GID", "ParetoPoint", "legend_entries", "pareto", "pareto_figure", "plotting_available"]

#: Per method (a component, a pruning baseline by its method): its name in the legend, its marker and the marker's
#: shape in words; what a reader tells apart at a glance.
_METHODS = {
    "baseline": ("uncompressed", "*", "star"), "pvtc": ("pvtc", "o", "circle"), "lvtc": ("lvtc", "s", "square"),
    "rvtc": ("rvtc", "^", "triangle up"), "several": ("several components", "D", "diamond"),
    # the pruning baselines, one each (`vtc.PruneConfig.METHODS`)
    "pool": ("pool", "v", "triangle down"), "random": ("random", "X", "cross"), "divprune": ("divprune", "P", "plus"),
    "visionzip": ("visionzip", (4, 1, 0), "four-pointed star"),  # a hexagon would read as PVTC's circle "downsample": ("downsample", "<", "triangle left"),
    "fastv": ("fastv", ">", "triangle right"), "pdrop": ("pdrop", "p", "pentagon"),
    "dart": ("dart", "d", "thin diamond"),  # an octagon would read as PVTC's circle
}
_OTHER_MARKER = ("H", "flat hexagon")  # a method added after this table
#: The method families and their colours in a one-model picture, in the legend's order.
UNCOMPRESSED, COMPONENTS, BEFORE_LLM, INSIDE_LLM = ("uncompressed", "vtc components", "pruning before the LLM",
                                                    "pruning inside the LLM")
_FAMILY_COLOURS = {UNCOMPRESSED: "black", COMPONENTS: "tab:blue", BEFORE_LLM: "tab:orange", INSIDE_LLM: "tab:green"}
_COSTS = (("visual_tokens", "visual tokens per sample at the LLM input"),
          ("flops_rel", "prefill FLOPs relative to uncompressed"))
#: The gid of every point label: what the layout test finds them by.
LABEL_GID = "vtc-pareto-label"
_LABEL_SIZE, _DPI = 7, 110
_PANEL_INCHES = (4.0, 3.3)


@dataclass(frozen=True)
class ParetoPoint:
    """One evaluated configuration: where it lands on the picture.

    Args:
        model: the model's name (a family or a checkpoint), one colour each where there are several.
        task: the task (its panels' title).
        config_name: the row name of the configuration: its label.
        components: the components it enables, a pruning baseline by its method, e.g. `("pvtc",)`, `("divprune",)`;
            empty for the uncompressed model.
        accuracy: the mean score in [0, 1].
        visual_tokens: mean visual tokens per sample at the LLM input.
        flops_rel: prefill FLOPs relative to the uncompressed model.
        trained: for a trained run, its row name; `None` for a training-free configuration.
        accuracy_rel: the accuracy relative to the uncompressed model's (`pareto(..., relative=True)` draws it);
            `None` where that scores 0.
    """

    model: str
    task: str
    config_name: str
    components: tuple[str, ...]
    accuracy: float
    visual_tokens: float
    flops_rel: float
    trained: str | None = None
    accuracy_rel: float | None = None


def plotting_available() -> bool:
    """Whether matplotlib is installed (`pip install "vtc[plot]"`)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _method(point: ParetoPoint) -> str:
    """The key of `_METHODS` the point is drawn as: `baseline`, its one component, or `several`."""
    if not point.components:
        return "baseline"
    return point.components[0] if len(point.components) == 1 else "several"


def _marker(method: str) -> tuple[Any, str]:
    """The marker of a method and its shape in words."""
    return _METHODS[method][1:] if method in _METHODS else _OTHER_MARKER


def _family(method: str) -> str:
    if method == "baseline":
        return UNCOMPRESSED
    if method in PruneConfig.IN_LLM_METHODS:
        return INSIDE_LLM
    return BEFORE_LLM if method in PruneConfig.METHODS else COMPONENTS


def _methods_drawn(points: Sequence[ParetoPoint]) -> list[str]:
    """The methods of `points`, by family, in `_METHODS`' order within one (a method it lacks last)."""
    drawn = {_method(point) for point in points}
    methods = [method for method in [*_METHODS, *sorted(drawn - _METHODS.keys())] if method in drawn]
    return sorted(methods, key=lambda method: list(_FAMILY_COLOURS).index(_family(method)))  # stable


def legend_entries(points: Sequence[ParetoPoint]) -> list[tuple[str, str, str]]:
    """`(method family, method, marker shape in words)` of every method drawn for `points`, in the legend's order."""
    return [(_family(method), _METHODS[method][0] if method in _METHODS else method, _marker(method)[1])
            for method in _methods_drawn(points)]


def _frontier(points: Sequence[ParetoPoint], cost: str, value: str) -> list[ParetoPoint]:
    """The points no other beats (none as cheap and as accurate, one of both strictly), cheapest first; points at
    the same place all kept."""
    out: list[ParetoPoint] = []
    for point in sorted(points, key=lambda p: (getattr(p, cost), -getattr(p, value))):
        here, last = (getattr(point, cost), getattr(point, value)), out and out[-1]
        if not last or here[1] > getattr(last, value) or here == (getattr(last, cost), getattr(last, value)):
            out.append(point)
    return out


def pareto(points: Sequence[ParetoPoint], path: str | os.PathLike, *, relative: bool = False) -> Path:
    """Draw `pareto_figure(points, relative=relative)` to the PNG `path`; return the path.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
        ValueError: no point to draw (`pareto_figure`).
    """
    figure = pareto_figure(points, relative=relative)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=_DPI)
    return out


def pareto_figure(points: Sequence[ParetoPoint], *, relative: bool = False) -> Figure:
    """Accuracy (`relative`: as a fraction of the uncompressed model's) against visual tokens and against prefill
    FLOPs, two panels per task, with the legend beside them; the labels are placed (see the module's docstring).

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
        ValueError: no point to draw (with `relative`, where every uncompressed accuracy is 0).
    """
    if not plotting_available():
        raise ImportError('plotting needs matplotlib: pip install "vtc[plot]"')
    # A figure of its own, drawn with Agg: no pyplot state, no display needed, and the backend of a notebook is left.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    value = "accuracy_rel" if relative else "accuracy"
    points = [point for point in points if getattr(point, value) is not None]
    if not points:
        raise ValueError("no point to draw" + (": every uncompressed accuracy is 0, so no accuracy is relative to it"
                                               if relative else ""))
    tasks = list(dict.fromkeys(point.task for point in points))
    models = list(dict.fromkeys(point.model for point in points))
    style = _Style(models, colormaps["tab10"])
    legend = _legend_handles(points, style)
    shape = (1, 2) if len(tasks) == 1 else (2, len(tasks))
    panel = _PANEL_INCHES if not style.several else (_PANEL_INCHES[0] * 1.15, _PANEL_INCHES[1] * 1.2)
    width = shape[1] * panel[0] + 2.8  # the legend's column
    height = max(shape[0] * panel[1] + 0.5, 0.2 * len(legend) + 0.8)
    figure = Figure(figsize=(width, height), layout="constrained", dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(*shape, squeeze=False)
    panels = []
    for column, task in enumerate(tasks):
        mine = [point for point in points if point.task == task]
        for row, (cost, label) in enumerate(_COSTS):
            axis = axes[0][row] if len(tasks) == 1 else axes[row][column]
            _draw_panel(axis, mine, cost, value, style)
            axis.set_xlabel(label)
            if axis is axes[0][0] or (len(tasks) > 1 and column == 0):
                axis.set_ylabel("accuracy relative to uncompressed" if relative else "accuracy")
            if row == 0 or len(tasks) == 1:
                axis.set_title(task)
            panels.append((axis, mine, cost))
    handles = figure.legend(handles=[handle for handle, _ in legend], labels=[text for _, text in legend],
                            loc="outside right upper", frameon=False, fontsize=8, handletextpad=0.4)
    for text, (handle, _) in zip(handles.get_texts(), legend):
        if handle.get_gid() == "header":
            text.set_fontweight("bold")
    figure.draw_without_rendering()  # the layout first: labels are placed in the panels' final pixels
    figure.set_layout_engine("none")
    renderer = figure.canvas.get_renderer()
    for axis, mine, cost in panels:
        _Labels(axis, renderer, cost, value, style).place(_wanted(mine, cost, value))
    return figure


class _Style:
    """Colour, marker size and label colour of a point: by model where there are several, else by method family."""

    def __init__(self, models: Sequence[str], colours):
        self.several = len(models) > 1
        self.model_colour = {model: colours(i % 10) for i, model in enumerate(models)}
        # Largest for the first model: coinciding points of several models nest instead of hiding each other.
        self.model_size = {model: 48 * (1 + 0.8 * (len(models) - 1 - i)) for i, model in enumerate(models)}

    def colour(self, point: ParetoPoint):
        if self.several:
            return self.model_colour[point.model]
        return _FAMILY_COLOURS[_family(_method(point))]

    def size(self, point: ParetoPoint) -> float:
        return self.model_size[point.model] * (1.8 if not point.components else 1)

    def line(self, model: str):
        return self.model_colour[model] if self.several else "0.35"


def _translucent(colour) -> tuple[float, ...]:
    from matplotlib.colors import to_rgba

    return to_rgba(colour, alpha=0.45)


def _draw_panel(axis, points: Sequence[ParetoPoint], cost: str, value: str, style: _Style) -> None:
    """The markers, each model's frontier, the equal-token guides and the limits of one panel."""
    top = max([1.0, *(getattr(p, value) for p in points)])
    right = max([getattr(p, cost) for p in points] or [1.0])
    # Zero cost is the honest origin of a saving; the margins keep the outermost markers whole.
    axis.set_xlim(0, 1.08 * right)
    axis.set_ylim(-0.04 * top, 1.09 * top)
    axis.grid(alpha=0.3)
    if value == "accuracy_rel":  # the papers' form: "95% of the accuracy at 11% of the tokens"
        from matplotlib.ticker import PercentFormatter

        axis.yaxis.set_major_formatter(PercentFormatter(1.0))
    if cost == "visual_tokens":  # equal budgets share an x: a faint line through each
        for tokens in sorted({p.visual_tokens for p in points}):
            axis.axvline(tokens, color="0.88", linewidth=0.8, zorder=0)
    for point in points:
        colour = style.colour(point)
        # Trained points filled (half see-through, over the hollow ones): the outlines beneath stay visible.
        axis.scatter(getattr(point, cost), getattr(point, value), marker=_marker(_method(point))[0],
                     s=style.size(point), facecolors=_translucent(colour) if point.trained else "none",
                     edgecolors=colour, linewidths=1.3, zorder=3 if point.trained else 2)
    for model in dict.fromkeys(p.model for p in points):
        steps = _frontier([p for p in points if p.model == model], cost, value)
        xs = [getattr(p, cost) for p in steps] + [1.08 * right]
        ys = [getattr(p, value) for p in steps] + [getattr(steps[-1], value)]
        axis.plot(xs, ys, drawstyle="steps-post", linestyle="--", linewidth=0.9, color=style.line(model),
                  alpha=0.7, zorder=1)


def _legend_handles(points: Sequence[ParetoPoint], style: _Style) -> list[tuple[object, str]]:
    """`(handle, text)` of every marker, colour, fill and line drawn: methods by family, models, then the styles."""
    from matplotlib.lines import Line2D

    def header(text: str):
        return Line2D([], [], linestyle="", marker="", gid="header"), text

    def entry(marker: str, colour, text: str, filled: bool = False, size: float = 7):
        face = _translucent(colour) if filled else "none"
        return Line2D([], [], marker=marker, linestyle="", color=colour, markerfacecolor=face,
                      markersize=size), text

    out, family = [], None
    for method in _methods_drawn(points):
        if _family(method) not in (family, UNCOMPRESSED):  # the star needs no heading
            out.append(header(_family(method)))
        family = _family(method)
        colour = "0.3" if style.several else _FAMILY_COLOURS[family]
        name = _METHODS[method][0] if method in _METHODS else method
        out.append(entry(_marker(method)[0], colour, name, size=10 if method == "baseline" else 7))
    if style.several:
        out.append(header("model (colour)"))
        out += [entry("o", colour, model) for model, colour in style.model_colour.items()]
    out.append(header("style"))
    out.append(entry("o", "0.3", "training-free (hollow)"))
    if any(point.trained for point in points):
        out.append(entry("o", "0.3", "trained (filled)", filled=True))
    out.append((Line2D([], [], linestyle="--", color="0.35", linewidth=0.9), "Pareto frontier"))
    out.append((Line2D([], [], linestyle="", marker=""), "labelled: frontier, uncompressed, trained"))
    return out


def _wanted(points: Sequence[ParetoPoint], cost: str, value: str) -> list[ParetoPoint]:
    """The points of one panel that carry a label, most wanted first: the uncompressed ones, each model's frontier,
    the trained ones."""
    order = [p for p in points if not p.components and not p.trained]
    for model in dict.fromkeys(p.model for p in points):
        order += _frontier([p for p in points if p.model == model], cost, value)
    order += [p for p in points if p.trained]
    return list(dict.fromkeys(order))


@dataclass
class _Label:
    """One label: the names of the points it stands for (a model's points at one place, or one name's points of
    several models close together), anchored at the first."""

    points: list[ParetoPoint]
    xy: tuple[float, float]  # the anchor in pixels

    @property
    def text(self) -> str:
        names = list(dict.fromkeys(point.config_name for point in self.points))
        return ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")


class _Labels:
    """Places the labels of one panel: each beside its point, at the first of rings of candidate places (nearest
    first) that stays inside the panel and clears every label placed, preferring places that cover no marker."""

    DIRECTIONS = ((1, 0), (1, 1), (1, -1), (0, 1), (0, -1), (-1, 0), (-1, 1), (-1, -1))
    #: Points of one name closer than this (pixels) share a label: the same configuration on several models.
    NEAR = 24

    def __init__(self, axis, renderer, cost: str, value: str, style: _Style):
        from matplotlib.font_manager import FontProperties

        self.axis, self.renderer, self.font = axis, renderer, FontProperties(size=_LABEL_SIZE)
        self.cost, self.value, self.style = cost, value, style
        self.bounds = axis.get_window_extent(renderer)
        self.placed: list[tuple[float, float, float, float]] = []
        self.px = axis.figure.dpi / 72  # pixels per point
        # Every marker drawn (one collection each): a label prefers a place that covers none.
        self.markers = [(tuple(axis.transData.transform(xy)), collection.get_sizes()[0] ** 0.5 / 2 * self.px)
                        for collection in axis.collections for xy in collection.get_offsets()]

    def place(self, points: Sequence[ParetoPoint]) -> None:
        """Label `points`, most wanted first (`_wanted`)."""
        labels: list[_Label] = []
        for point in points:
            xy = tuple(self.axis.transData.transform((getattr(point, self.cost), getattr(point, self.value))))
            same = next((label for label in labels if _distance(label.xy, xy) <= self.NEAR and (
                label.points[0].config_name == point.config_name
                or (label.points[0].model == point.model and _distance(label.xy, xy) < 1))), None)
            if same is not None:
                same.points.append(point)
            else:
                labels.append(_Label([point], xy))
        for label in labels:
            self._draw(label)

    def _draw(self, label: _Label) -> None:
        anchor, (x, y) = label.points[0], label.xy
        radius = self.style.size(anchor) ** 0.5 / 2 * self.px
        width, height, _ = self.renderer.get_text_width_height_descent(label.text, self.font, ismath=False)
        found = self._best_box(x, y, radius, width, height)
        if found is None:
            return  # no free place: the marker, fill and colour still tell the point in the legend
        ring, box = found
        self.placed.append(box)
        colours = {self.style.colour(point) for point in label.points}
        colour = colours.pop() if len(colours) == 1 else "0.2"
        to_points = 1 / self.px
        self.axis.annotate(
            label.text, (getattr(anchor, self.cost), getattr(anchor, self.value)),
            xytext=((box[0] - x) * to_points, (box[1] - y) * to_points), textcoords="offset points",
            ha="left", va="bottom", fontsize=_LABEL_SIZE, color=colour, gid=LABEL_GID,
            # A see-through backing: readable over a frontier line or a marker it could not avoid.
            bbox=dict(boxstyle="square,pad=0.05", facecolor="white", edgecolor="none", alpha=0.7),
            # Away from its point, a thin line leads to it.
            arrowprops=None if ring == 0 else dict(arrowstyle="-", color=colour, linewidth=0.5, shrinkA=0,
                                                   shrinkB=radius * to_points))

    def _best_box(self, x, y, radius, width, height):
        """`(ring, box)`: where a `width` x `height` label goes beside the marker of `radius` at `(x, y)` (pixels),
        the first place that covers no marker, else the one that covers fewest; `None` where every place leaves the
        panel or meets a label."""
        best = None
        for ring, gap in enumerate((3, 14, 28)):
            distance = radius + gap
            for turn, (dx, dy) in enumerate(self.DIRECTIONS):
                left = x + distance if dx > 0 else x - distance - width if dx < 0 else x - width / 2
                bottom = y + distance if dy > 0 else y - distance - height if dy < 0 else y - height / 2
                box = (left, bottom, left + width, bottom + height)
                if not self._inside(box) or any(_overlap(box, other, 2) for other in self.placed):
                    continue
                covered = sum(_overlap(box, (cx - r, cy - r, cx + r, cy + r)) for (cx, cy), r in self.markers)
                if best is None or (covered, ring, turn) < best[0]:
                    best = ((covered, ring, turn), (ring, box))
                if covered == 0:
                    return ring, box
        return None if best is None else best[1]

    def _inside(self, box) -> bool:
        b = self.bounds
        return b.x0 + 2 <= box[0] and box[2] <= b.x1 - 2 and b.y0 + 2 <= box[1] and box[3] <= b.y1 - 2


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) ** 0.5


def _overlap(a, b, pad: float = 0) -> bool:
    """Whether two boxes `(x0, y0, x1, y1)` come closer than `pad`."""
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad
