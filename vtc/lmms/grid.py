"""An ablation grid scored through lmms-eval: every configuration's accuracy on the harness's tasks, as table rows.

    rows = evaluate_grid_lmms(model, processor, default_grid(), ["mme", "gqa"], family="my-model", limit=500)

The rows are `vtc.bench.AblationRow`s, the rows `vtc ablate` writes and plots (`vtc ablate --lmms TASKS` joins them
to its table and picture). Each configuration compresses the model once (`VTCModel.from_model`) and runs every task
through `lmms_eval.evaluator.simple_evaluate`; the plugin's own record of each request gives the visual tokens and
prefill FLOPs per document. The accuracy column holds the task's first metric as lmms-eval reports it (its
`metric_list` entry, unfiltered): a fraction for most tasks, a score on the task's own scale for some (MME's perception
score); `accuracy_rel`, the fraction of the uncompressed row, compares across both. A configuration the model refuses
is a skipped row per task with the reason, as in `vtc ablate`. No latency: lmms-eval's loop, not the model, sets it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ..ablate import BASELINE, skip_reason
from ..api import unpatch
from ..bench import AblationRow
from ..config import VTCConfig
from ..errors import ConfigError, DataError
from .model import VTCModel

__all__ = ["evaluate_grid_lmms", "primary_metric"]


def primary_metric(results: Mapping[str, Any], task: str) -> tuple[str, float]:
    """`(name, value)` of `task`'s first metric in a `simple_evaluate` result (its config's `metric_list[0]`, under
    the first filter that reports it)."""
    scores = results["results"].get(task)
    metrics = results.get("configs", {}).get(task, {}).get("metric_list") or []
    if scores is None or not metrics:
        raise DataError(f"lmms-eval reported no score for task {task!r}: is it a group? Name its tasks "
                        "(e.g. 'mme' rather than a tag) with --lmms")
    name = metrics[0]["metric"]
    for key, value in scores.items():
        if key.split(",")[0] == name and isinstance(value, (int, float)):
            return name, float(value)
    raise DataError(f"lmms-eval reported no {name!r} for task {task!r}; it reported: {', '.join(scores)}")


def evaluate_grid_lmms(
    model: nn.Module,
    processor: Any,
    grid: Mapping[str, VTCConfig],
    tasks: Sequence[str],
    *,
    family: str,
    limit: int | None = None,
    batch_size: int = 1,
    include_path: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[AblationRow]:
    """Score every configuration of `grid` on every lmms-eval task; one row per (task, configuration), by task.

    Args:
        grid: name -> config; must hold `baseline`, the reference of the relative columns.
        tasks: lmms-eval task names (groups are not split: name their tasks).
        limit: documents per task (`--limit`), `None` for all.
        include_path: a folder of extra task YAMLs (lmms-eval's `--include_path`).
        progress: called with each configuration's name before it runs.

    The model is left uncompressed.
    """
    from lmms_eval import evaluator
    from lmms_eval.tasks import TaskManager

    if BASELINE not in grid:
        raise ConfigError("grid", sorted(grid), f"a grid with a {BASELINE!r} row",
                          hint="It is the reference of the relative accuracy and FLOPs.")
    task_manager = TaskManager("WARNING", include_path=include_path)
    rows: list[AblationRow] = []
    try:
        for name, config in grid.items():
            if progress is not None:
                progress(name)
            unpatch(model)
            try:
                lm = VTCModel.from_model(model, processor, config=config, batch_size=batch_size)
            except ConfigError as error:
                rows += [AblationRow(family, task, name, config.to_dict(), 0, None, None, None,
                                     skipped=skip_reason(error)) for task in tasks]
                continue
            results = evaluator.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=task_manager)
            costs = lm.costs()
            for task in tasks:
                _, value = primary_metric(results, task)
                cost = costs.get(task, {})
                rows.append(AblationRow(family, task, name, config.to_dict(), int(cost.get("documents", 0)), value,
                                        cost.get("visual_tokens"), cost.get("prefill_flops")))
    finally:
        unpatch(model)
    baseline = {row.task: row for row in rows if row.config_name == BASELINE and row.skipped is None}
    for row in rows:
        reference = baseline.get(row.task)
        if row.skipped is None and reference is not None:
            if row.prefill_flops is not None and reference.prefill_flops:
                row.flops_rel = row.prefill_flops / reference.prefill_flops
            if row.accuracy is not None and reference.accuracy:
                row.accuracy_rel = row.accuracy / reference.accuracy
    order = {task: index for index, task in enumerate(tasks)}
    return sorted(rows, key=lambda row: order[row.task])
