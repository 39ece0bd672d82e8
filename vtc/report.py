"""The report of one `vtc ablate` run, `report.md` beside its files: what ran on what, the picture, and the table a
person reads, grouped by budget with the best row of each marked.

    write_report(rows, out_dir, RunSetup(command="vtc ablate ...", environment=env, model="...", data="..."),
                 picture="pareto.png")

The table holds the numbers of `ablate.csv`, formatted as `vtc.ablate.format_table` formats them; the rows of one
task are grouped by budget, the share of visual tokens a configuration keeps (`budget`), largest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from .ablate import BASELINE, LATENCY_COLUMNS, TABLE_COLUMNS, AblationRow, column_legend, format_cell, pareto_points
from .config import PruneConfig
from .plots import legend_entries

__all__ = ["REPORT_NAME", "RunSetup", "budget", "budget_label", "render_report", "write_report"]

REPORT_NAME = "report.md"
#: The mark of a model's highest accuracy at a budget (ties all marked).
BEST = "**best**"


@dataclass(frozen=True)
class RunSetup:
    """What a report says the rows were measured with.

    Args:
        command: the command line, e.g. `vtc ablate --size 16`.
        environment: the versions and the machine (`vtc`, `torch`, `transformers`, `device`, `dtype`,
            `attn_implementation`, `threads`), as `ablate.jsonl` records them.
        model: the model(s), in words.
        data: the samples, in words.
        latency_setup: what the latency columns timed; `None` where latency was not measured.
    """

    command: str
    environment: Mapping[str, Any]
    model: str
    data: str
    latency_setup: str | None = None


def budget(row: AblationRow, baseline: AblationRow | None) -> float | None:
    """The share of the uncompressed model's visual tokens `row`'s configuration keeps: at the LLM input (PVTC, RVTC,
    the pruning baselines before the LLM), times the share kept inside it from a layer on (LVTC's ratio, the `keep`
    of FastV, PyramidDrop and DART), so that methods that spend an equal budget in different places sit together.
    An integer `keep` inside the LLM counts against the baseline's visual tokens per sample. `None` for a skipped row
    or without a baseline to compare with."""
    if row.skipped is not None or baseline is None or not baseline.visual_tokens:
        return None
    share = row.visual_tokens / baseline.visual_tokens
    lvtc, prune = row.config.get("lvtc"), row.config.get("prune")
    if lvtc is not None:
        share /= lvtc["ratio"]
    if prune is not None and prune["method"] in PruneConfig.IN_LLM_METHODS:
        keep = prune["keep"]
        share *= keep if isinstance(keep, float) else keep / baseline.visual_tokens
    return share


def budget_label(share: float | None) -> str:
    """A budget as a reader knows it: a fraction of denominator up to 16 (`1/4`, `2/9`, `1`) where one is within
    0.001, else 2 decimals."""
    if share is None:
        return "-"
    fraction = Fraction(share).limit_denominator(16)
    return str(fraction) if abs(float(fraction) - share) <= 0.001 else f"{share:.2f}"


def _columns(rows: Sequence[AblationRow]) -> tuple[tuple[str, str, str], ...]:
    """`format_table`'s columns after family and task (the headings): trained where there are trained rows, latency
    where it was measured."""
    columns = tuple(c for c in TABLE_COLUMNS if c[1] not in ("family", "task")
                    and (c[1] != "trained" or any(row.trained is not None for row in rows)))
    return columns + (LATENCY_COLUMNS if any(row.latency_ms is not None for row in rows) else ())


def _table(rows: Sequence[AblationRow]) -> list[str]:
    """One task's measured rows grouped by budget, largest first, each family's best accuracy per budget marked."""
    baselines = {row.family: row for row in rows if row.config_name == BASELINE and row.trained is None}
    families = list(dict.fromkeys(row.family for row in rows))
    keyed = [(round(budget(row, baselines.get(row.family)) or 0.0, 3), families.index(row.family), index, row)
             for index, row in enumerate(rows)]
    keyed.sort(key=lambda item: (-item[0], item[1], item[2]))  # stable: the run's order within a group
    # The best: the highest accuracy, the cheaper of equals (the lower FLOPs); rows equal in both all marked.
    best: dict[tuple[float, str], tuple[float, float]] = {}
    size: dict[tuple[float, str], int] = {}
    for share, _, _, row in keyed:
        merit = (row.accuracy, -round(row.flops_rel or 0.0, 3))
        best[share, row.family] = max(best.get((share, row.family), merit), merit)
        size[share, row.family] = size.get((share, row.family), 0) + 1
    columns = _columns(rows)
    lines = ["| budget | family | " + " | ".join(title for title, _, _ in columns) + " | |",
             "|---" * (len(columns) + 3) + "|"]
    for share, _, _, row in keyed:
        merit = (row.accuracy, -round(row.flops_rel or 0.0, 3))
        marked = size[share, row.family] > 1 and merit == best[share, row.family]
        cells = [budget_label(budget(row, baselines.get(row.family))), row.family,
                 *(format_cell(row, attribute, fmt) for _, attribute, fmt in columns), BEST if marked else ""]
        lines.append(_row(cells))
    return lines


def _row(cells: Sequence[object]) -> str:
    """A markdown table row; a `|` inside a cell (a reason, a folder) is escaped."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def render_report(rows: Sequence[AblationRow], setup: RunSetup, *, picture: str | None = None,
                  picture_note: str | None = None, relative: bool = False) -> str:
    """The text of `report.md` (see `write_report`)."""
    env = setup.environment
    lines = ["# vtc ablate", "", f"`{setup.command}`", "", "| | |", "|---|---|"]
    setting = [("vtc", env.get("vtc")), ("torch", env.get("torch")), ("transformers", env.get("transformers")),
               ("device", f"{env.get('device')} ({env.get('threads')} threads)" if env.get("threads") else
                env.get("device")),
               ("dtype", env.get("dtype")), ("attention", env.get("attn_implementation")),
               ("model", setup.model), ("data", setup.data)]
    lines += [_row(item) for item in setting if item[1] is not None]
    lines += ["", "## Accuracy against cost", ""]
    measured = [row for row in rows if row.skipped is None]
    if picture is not None:
        axis = "accuracy relative to the uncompressed model's" if relative else "accuracy"
        lines += [f"![{axis} against visual tokens and prefill FLOPs]({picture})", "",
                  "Markers (hollow: training-free; filled: trained; the dashed line: each model's Pareto frontier, "
                  "whose points are labelled with the uncompressed and the trained ones):", "",
                  "| marker | method | kind |", "|---|---|---|"]
        lines += [_row((shape, method, family)) for family, method, shape in legend_entries(pareto_points(measured))]
    else:
        lines.append(f"No picture: {picture_note or 'not drawn'}.")
    lines += ["", "## Results", "", "Grouped by budget, the share of visual tokens a configuration keeps (at the LLM "
              "input, and inside it from a layer on for LVTC, FastV, PyramidDrop and DART), largest first; **best**: "
              "the highest accuracy of a model at a budget where it has several rows (of equals, the lowest FLOPs)."]
    for task in dict.fromkeys(row.task for row in measured):
        lines += ["", f"### {task}", "", *_table([row for row in measured if row.task == task])]
    lines += ["", "Columns:", "", "```text", *column_legend(rows, setup.latency_setup), "```"]
    skipped = {(row.family, row.config_name): row.skipped for row in rows if row.skipped}
    if skipped:
        lines += ["", "## Skipped", "", "| family | config | reason |", "|---|---|---|"]
        lines += [_row((family, name, reason)) for (family, name), reason in skipped.items()]
    runs = {(row.family, row.config_name): (row.trained, row.run) for row in rows if row.trained is not None}
    if runs:
        lines += ["", "## Trained runs", "", "| family | row | trained | folder |", "|---|---|---|---|"]
        lines += [_row((family, name, how, folder)) for (family, name), (how, folder) in runs.items()]
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[AblationRow], out_dir: Path, setup: RunSetup, *, picture: str | None = None,
                 picture_note: str | None = None, relative: bool = False) -> Path:
    """Write `report.md` under `out_dir` and return its path: the command, versions, device and dtype, model and data
    (`setup`); the picture `picture` (a path relative to `out_dir`; `None`: `picture_note` says why there is none)
    with its markers in words; every task's measured rows grouped by budget with the best marked; what each column
    means; the skipped rows with their reasons; the trained runs' folders."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_NAME
    path.write_text(render_report(rows, setup, picture=picture, picture_note=picture_note, relative=relative),
                    encoding="utf-8")
    return path
