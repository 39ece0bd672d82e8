"""The ablation picture: two panels per task, written as a PNG; every text inside the figure, the point labels
disjoint and inside their panels, the legend beside the panels and complete, for the pictures a user meets: the default
grid on five tasks, one task of a checkpoint with trained runs, and every method at three budgets on several models;
a clear error without matplotlib."""

import random

import pytest
from PIL import Image

import vtc.plots
from vtc.ablate import AblationRow, budget_grid, components, default_grid, pareto_points
from vtc.plots import LABEL_GID, ParetoPoint, legend_entries, pareto, pareto_figure

POINTS = [
    ParetoPoint(model, task, name, components, accuracy, tokens, flops)
    for model in ("a", "b")
    for task in ("fine", "coarse")
    for name, components, accuracy, tokens, flops in (
        ("baseline", (), 1.0, 36, 1.0),
        ("pvtc-r4", ("pvtc",), 0.2, 9, 0.3),
        ("pvtc-r4+lvtc-r4", ("pvtc", "lvtc"), 0.1, 9, 0.2),
    )
]
TASKS = ("grid-readout", "majority-colour", "more-red", "odd-one-out", "where-is-it")
#: The trained rows of a user's four runs on one task (the names that ran into each other).
TRAINED = (("pvtc-r16-paper +full 300 steps", {"pvtc": {"ratio": 16}}, 0.83, 4.0, 0.31),
           ("baseline +full 300 steps", {}, 1.0, 36.0, 1.0),
           ("pvtc-r4 +full 300 steps", {"pvtc": {"ratio": 4}}, 0.95, 9.0, 0.42),
           ("pvtc-r4 +lora 300 steps", {"pvtc": {"ratio": 4}}, 0.91, 9.0, 0.42))


def grid_rows(grid, models, tasks, seed=0):
    """Rows as `evaluate_grid` makes them, with seeded accuracies in steps of 1/8 (ties, as on 8 samples) and the
    tokens and FLOPs each kind of configuration has on a 36-token model."""
    draw = random.Random(seed)
    rows = []
    for model in models:
        for task in tasks:
            for name, config in grid.items():
                parts, settings = components(config), config.to_dict()
                tokens, flops = 36.0, 1.0
                if settings["pvtc"]:
                    tokens = float(round(36 / settings["pvtc"]["ratio"]))
                if settings["prune"] and settings["prune"]["method"] not in ("fastv", "pdrop", "dart"):
                    keep = settings["prune"]["keep"]
                    tokens = float(round(36 * keep) if isinstance(keep, float) else keep)
                if parts:
                    flops = 0.2 + 0.75 * tokens / 36 * (0.7 if settings["lvtc"] or settings["prune"] else 1)
                accuracy = 1.0 if not parts else draw.randrange(9) / 8
                rows.append(AblationRow(model, task, name, settings, 8, accuracy, tokens, flops * 1e6,
                                        flops_rel=flops, accuracy_rel=accuracy))
    return rows


def trained_rows():
    rows = grid_rows(default_grid(), ["llava"], ["odd-one-out"])
    rows += [AblationRow("llava", "odd-one-out", name, config, 64, accuracy, tokens, flops * 1e6, flops_rel=flops,
                         accuracy_rel=accuracy, trained="full, 300 steps, lm") for name, config, accuracy, tokens, flops
             in TRAINED]
    return rows


CASES = {
    "default grid, five tasks": lambda: grid_rows(default_grid(), ["llava"], TASKS),
    "default grid, five tasks, five models": lambda: grid_rows(default_grid(), [f"m{i}" for i in range(5)], TASKS),
    "one task, trained runs": trained_rows,
    "three budgets, every baseline, two models": lambda: grid_rows(budget_grid([1 / 3, 2 / 9, 1 / 9], 36),
                                                                   ["llava", "qwen2_vl"], TASKS[:2]),
}


def drawn_tick_labels(axis):
    """The tick labels matplotlib draws: those of ticks inside the view (it keeps the others, undrawn)."""
    low, high = sorted(axis.get_view_interval())
    return [tick.label1 for tick in axis.get_major_ticks() if low <= tick.get_loc() <= high]


def words(label, renderer):
    """Where a label's text is drawn (an annotation's own extent adds the line that leads to its point)."""
    from matplotlib.text import Text

    return Text.get_window_extent(label, renderer)


def inside(box, frame, slack=0.5):
    return (frame.x0 - slack <= box.x0 and box.x1 <= frame.x1 + slack and frame.y0 - slack <= box.y0
            and box.y1 <= frame.y1 + slack)


@pytest.mark.parametrize("case, relative", [*((case, False) for case in CASES), (list(CASES)[-1], True)],
                         ids=[*CASES, "relative accuracy"])
def test_every_text_is_inside_the_figure_and_no_two_labels_overlap(case, relative):
    pytest.importorskip("matplotlib")
    points = pareto_points(CASES[case]())
    figure = pareto_figure(points, relative=relative)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    frame = figure.bbox
    assert inside(figure.get_tightbbox(renderer).transformed(figure.dpi_scale_trans), frame)
    (legend,) = figure.legends
    texts = [*legend.get_texts()]
    for axis in figure.axes:
        texts += [axis.title, axis.xaxis.label, axis.yaxis.label, *drawn_tick_labels(axis.xaxis),
                  *drawn_tick_labels(axis.yaxis)]
    for text in texts:
        if text.get_visible() and text.get_text():
            assert inside(text.get_window_extent(renderer), frame), text.get_text()
    legend_box = legend.get_window_extent(renderer)
    assert inside(legend_box, frame)
    assert not any(legend_box.overlaps(axis.get_window_extent(renderer)) for axis in figure.axes)

    labels = [text for axis in figure.axes for text in axis.texts if text.get_gid() == LABEL_GID]
    boxes = [words(label, renderer) for label in labels]
    for axis in figure.axes:
        mine = [text for text in axis.texts if text.get_gid() == LABEL_GID]
        assert any("baseline" in text.get_text() for text in mine)  # the uncompressed point, in every panel
        assert all(inside(words(text, renderer), axis.get_window_extent(renderer)) for text in mine)
    for i, box in enumerate(boxes):
        for other, label in zip(boxes[i + 1:], labels[i + 1:]):
            assert not box.overlaps(other), (labels[i].get_text(), label.get_text())
    # The legend names every method drawn, and every model where there are several.
    names = {text.get_text() for text in legend.get_texts()}
    assert {method for _, method, _ in legend_entries(points)} <= names
    models = {point.model for point in points}
    assert len(models) == 1 or models <= names


def test_one_task_fills_the_width_and_labels_every_trained_run():
    pytest.importorskip("matplotlib")
    figure = pareto_figure(pareto_points(trained_rows()))
    figure.canvas.draw()
    left, right = figure.axes  # one row: tokens, then FLOPs
    assert left.get_position().y0 == right.get_position().y0
    assert left.get_position().width + right.get_position().width > 0.55  # the legend takes the rest
    for axis in figure.axes:
        labelled = " | ".join(text.get_text() for text in axis.texts if text.get_gid() == LABEL_GID)
        assert all(name in labelled for name, *_ in TRAINED), labelled
    assert "trained (filled)" in {text.get_text() for text in figure.legends[0].get_texts()}


def test_relative_accuracy_is_drawn_as_a_share_of_the_uncompressed_one():
    pytest.importorskip("matplotlib")
    points = [ParetoPoint("m", "t", "baseline", (), 0.5, 36, 1.0, accuracy_rel=1.0),
              ParetoPoint("m", "t", "pvtc-r4", ("pvtc",), 0.4, 9, 0.4, accuracy_rel=0.8)]
    figure = pareto_figure(points, relative=True)
    axis = figure.axes[0]
    assert axis.get_ylabel() == "accuracy relative to uncompressed"
    assert [tuple(c.get_offsets()[0]) for c in axis.collections] == [(36, 1.0), (9, 0.8)]
    with pytest.raises(ValueError, match="every uncompressed accuracy is 0"):
        pareto_figure([ParetoPoint("m", "t", "baseline", (), 0.0, 36, 1.0)], relative=True)


def test_legend_entries_name_each_method_by_its_marker_in_words():
    assert legend_entries(POINTS) == [("uncompressed", "uncompressed", "star"), ("vtc components", "pvtc", "circle"),
                                      ("vtc components", "several components", "diamond")]


def test_pareto_writes_one_panel_per_task_and_cost(tmp_path):
    pytest.importorskip("matplotlib")
    path = pareto(POINTS, tmp_path / "plots" / "pareto.png")
    with Image.open(path) as image:
        width, height = image.size
    assert path.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    assert width > height  # two tasks side by side, two cost rows


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(vtc.plots, "plotting_available", lambda: False)
    with pytest.raises(ImportError, match=r"vtc\[plot\]"):
        pareto(POINTS, tmp_path / "pareto.png")
