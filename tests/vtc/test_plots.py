"""The ablation picture: one panel per task and cost, written as a PNG; a clear error without matplotlib."""

import pytest
from PIL import Image

import vtc.plots
from vtc.plots import ParetoPoint, pareto

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
