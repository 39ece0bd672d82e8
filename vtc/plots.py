"""The accuracy-against-cost picture of an ablation (`pareto.png`), with matplotlib (the optional `[plot]` extra).

    vtc.plots.pareto(points, "pareto.png")

One panel per task and cost axis (visual tokens at the LLM input, prefill FLOPs relative to the uncompressed model),
one marker style per component, one colour per model; the uncompressed model is the star. Markers are hollow and each
model's are a different size, so points that coincide (every model's baseline, a configuration that changes nothing)
stay visible as concentric outlines. A trained run's point (`ParetoPoint.trained`) is the same marker filled, labelled
with its row name, so it reads against the hollow training-free point of its configuration.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ParetoPoint", "pareto", "plotting_available"]

#: Marker per component combination: what a reader tells apart at a glance.
_MARKERS = {"baseline": "*", "pvtc": "o", "lvtc": "s", "rvtc": "^",
            # the training-free pruning baselines, one each (`vtc.PruneConfig.METHODS`)
            "pool": "v", "random": "X", "divprune": "P", "visionzip": "h", "downsample": "<",
            "fastv": ">", "pdrop": "p", "dart": "d"}  # "8" would read as PVTC's circle
_COMBINED_MARKER = "D"
_COSTS = (("visual_tokens", "visual tokens per sample at the LLM input"),
          ("flops_rel", "prefill FLOPs relative to uncompressed"))


@dataclass(frozen=True)
class ParetoPoint:
    """One evaluated configuration: where it lands on the picture.

    Args:
        model: the model's name (a family or a checkpoint), one colour each.
        task: the task (one panel each).
        config_name: the row name of the configuration.
        components: the components it enables, e.g. `("pvtc",)`; empty for the uncompressed model.
        accuracy: the mean score in [0, 1].
        visual_tokens: mean visual tokens per sample at the LLM input.
        flops_rel: prefill FLOPs relative to the uncompressed model.
        trained: for a trained run, the label drawn next to its (filled) point, e.g. `pvtc-r4 +full 1500 steps`;
            `None` for a training-free configuration.
    """

    model: str
    task: str
    config_name: str
    components: tuple[str, ...]
    accuracy: float
    visual_tokens: float
    flops_rel: float
    trained: str | None = None


def plotting_available() -> bool:
    """Whether matplotlib is installed (`pip install "vtc[plot]"`)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _marker(components: Sequence[str]) -> str:
    if not components:
        return _MARKERS["baseline"]
    return _MARKERS[components[0]] if len(components) == 1 else _COMBINED_MARKER


def _translucent(colour) -> tuple[float, ...]:
    from matplotlib.colors import to_rgba

    return to_rgba(colour, alpha=0.45)


def pareto(points: Sequence[ParetoPoint], path: str | os.PathLike) -> Path:
    """Draw accuracy against visual tokens and against prefill FLOPs, one column of panels per task; return the path.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    if not plotting_available():
        raise ImportError('plotting needs matplotlib: pip install "vtc[plot]"')
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tasks = sorted({p.task for p in points})
    models = sorted({p.model for p in points})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    # Largest for the first model: coinciding points of several models nest instead of hiding each other.
    sizes = {m: 40 * (1 + 0.8 * (len(models) - 1 - i)) for i, m in enumerate(models)}
    figure, axes = plt.subplots(len(_COSTS), len(tasks), figsize=(4.2 * len(tasks), 7.2), squeeze=False)
    for column, task in enumerate(tasks):
        for row, (cost, label) in enumerate(_COSTS):
            axis = axes[row][column]
            for point in (p for p in points if p.task == task):
                baseline = not point.components
                # Trained points filled (half see-through, over the hollow ones): the outlines beneath stay visible.
                fill = _translucent(colours[point.model]) if point.trained else "none"
                axis.scatter(getattr(point, cost), point.accuracy, marker=_marker(point.components),
                             s=sizes[point.model] * (1.6 if baseline else 1), facecolors=fill,
                             edgecolors=colours[point.model], linewidths=1.4, zorder=3 if point.trained else 2)
                if point.trained:  # below the point near the top: clear of the panel's title
                    axis.annotate(point.trained, (getattr(point, cost), point.accuracy),
                                  xytext=(5, -10 if point.accuracy > 0.9 else 4), textcoords="offset points",
                                  fontsize=7, color=colours[point.model])
            axis.set_xlabel(label)
            axis.set_ylim(-0.03, 1.03)
            axis.grid(alpha=0.3)
            # Zero cost is the honest origin of a saving; the margin keeps the baseline's markers whole.
            axis.set_xlim(0, 1.08 * max(getattr(p, cost) for p in points if p.task == task))
            if column == 0:
                axis.set_ylabel("accuracy")
            if row == 0:
                axis.set_title(task)
    used = {_marker(p.components) for p in points}  # the legend names the markers drawn
    legend = [Line2D([], [], marker=m, linestyle="", color="gray", markerfacecolor="none", label=name, markersize=8)
              for name, m in [*_MARKERS.items(), ("several", _COMBINED_MARKER)] if m in used]
    if any(p.trained for p in points):
        legend.append(Line2D([], [], marker="o", linestyle="", color="gray", markerfacecolor=_translucent("gray"),
                             label="trained (filled, labelled)", markersize=8))
    legend += [Line2D([], [], marker="o", linestyle="", color=colours[m], markerfacecolor="none", label=m,
                      markersize=sizes[m] ** 0.5) for m in models]
    figure.legend(handles=legend, loc="lower center", ncol=min(len(legend), 8), frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
