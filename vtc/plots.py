"""The accuracy-against-cost picture of an ablation (`pareto.png`), with matplotlib (the optional `[plot]` extra).

    vtc.plots.pareto(points, "pareto.png")

One panel per task and cost axis (visual tokens at the LLM input, prefill FLOPs relative to the uncompressed model),
one marker style per component, one colour per model; the uncompressed model is the large star.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ParetoPoint", "pareto", "plotting_available"]

#: Marker per component combination: what a reader tells apart at a glance.
_MARKERS = {"baseline": "*", "pvtc": "o", "lvtc": "s", "rvtc": "^"}
_COMBINED_MARKER = "D"
_COSTS = (("visual_tokens", "visual tokens per sample at the LLM input"),
          ("flops_rel", "prefill FLOPs relative to uncompressed"))


@dataclass(frozen=True)
class ParetoPoint:
    """One evaluated configuration: where it lands on the picture.

    Args:
        model: the model's name (a family or a checkpoint), one colour each.
        task: the task (one panel each).
        config_name: the row name of the configuration (its label on the picture).
        components: the components it enables, e.g. `("pvtc",)`; empty for the uncompressed model.
        accuracy: the mean score in [0, 1].
        visual_tokens: mean visual tokens per sample at the LLM input.
        flops_rel: prefill FLOPs relative to the uncompressed model.
    """

    model: str
    task: str
    config_name: str
    components: tuple[str, ...]
    accuracy: float
    visual_tokens: float
    flops_rel: float


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
    figure, axes = plt.subplots(len(_COSTS), len(tasks), figsize=(4.2 * len(tasks), 7.2), squeeze=False)
    for column, task in enumerate(tasks):
        for row, (cost, label) in enumerate(_COSTS):
            axis = axes[row][column]
            for point in (p for p in points if p.task == task):
                baseline = not point.components
                axis.scatter(getattr(point, cost), point.accuracy, marker=_marker(point.components),
                             s=160 if baseline else 45, color=colours[point.model],
                             edgecolors="black" if baseline else "none", zorder=3 if baseline else 2)
            axis.set_xlabel(label)
            axis.set_ylim(-0.03, 1.03)
            axis.grid(alpha=0.3)
            axis.set_xlim(left=0)  # zero cost is the honest origin of a saving
            if column == 0:
                axis.set_ylabel("accuracy")
            if row == 0:
                axis.set_title(task)
    legend = [Line2D([], [], marker=m, linestyle="", color="gray", label=name, markersize=8)
              for name, m in [*_MARKERS.items(), ("several", _COMBINED_MARKER)]]
    legend += [Line2D([], [], marker="o", linestyle="", color=colours[m], label=m, markersize=8) for m in models]
    figure.legend(handles=legend, loc="lower center", ncol=min(len(legend), 8), frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
