"""The ablation behind `vtc ablate`: the accuracy of every configuration of a grid against what it costs.

    rows = evaluate_grid(model, processor, default_grid(), {"majority-colour": samples}, family="my-model")
    print(format_table(rows)); print(legend(rows, samples_per_task=64))

Each configuration is applied with `vtc.compress` once per model and scored with `vtc.evaluate` on every task's
samples; its prefill FLOPs are relative to the same model's `baseline` row on the same task. A configuration the model
refuses (`ConfigError`, e.g. RVTC on a family with one fixed resolution) gets a skipped row per task, with a one-line
reason. Latency is joined in only where it means something (a real checkpoint, `add_latency`): on tiny models it
measures Python overhead, not compute.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .api import compress, unpatch
from .bench import AblationRow
from .config import LVTCConfig, PVTCConfig, RVTCConfig, VTCConfig
from .errors import ConfigError
from .evaluate import evaluate
from .tasks import Sample

__all__ = ["ConfigResult", "add_latency", "components", "default_grid", "evaluate_grid", "format_table", "legend",
           "write_pareto", "write_rows"]

BASELINE = "baseline"
COMPONENTS = ("pvtc", "lvtc", "rvtc")
#: Where no latency is measured, the legend says why.
NO_LATENCY = ("latency of models this small measures Python overhead, not compute: measure it on a real checkpoint "
              "with --model")


def default_grid() -> dict[str, VTCConfig]:
    """The training-free configurations `vtc ablate` evaluates, by row name; `baseline` is the uncompressed model."""
    # LVTC from layer 1 to the last layer: valid on every model with 2+ decoder layers and at most 1 layer of
    # injected visual features.
    def lvtc(ratio: int, restore: str = "delta") -> LVTCConfig:
        return LVTCConfig(compress_layer=1, restore_layer=-1, ratio=ratio, restore=restore)

    grid = {BASELINE: VTCConfig()}
    # PVTC warm-started: the model's own projector on window means, so it works before any training.
    grid.update({f"pvtc-r{r}": VTCConfig(pvtc=PVTCConfig(ratio=r)) for r in (4, 16)})
    grid.update({f"lvtc-r{r}-{restore}": VTCConfig(lvtc=lvtc(r, restore))
                 for r in (4, 16) for restore in LVTCConfig.RESTORES})
    # RVTC, up to 6 tiles per image: the released edge-length rule and the area rule. A family with one fixed
    # resolution has no tiles to choose: its rows are skipped, with the reason.
    grid.update({f"rvtc-{mode}": VTCConfig(rvtc=RVTCConfig(mode=mode)) for mode in ("edge", "area")})
    grid["pvtc-r4+lvtc-r4"] = VTCConfig(pvtc=PVTCConfig(ratio=4), lvtc=lvtc(4))
    return grid


def components(config: VTCConfig) -> tuple[str, ...]:
    """The components `config` enables, e.g. `("pvtc", "lvtc")`; empty for the uncompressed model."""
    return tuple(name for name in COMPONENTS if getattr(config, name) is not None)


@dataclass
class ConfigResult:
    """One configuration on one task of one model. `flops_rel` is relative to the `baseline` row of the same model
    and task; the latency fields are `None` unless measured (`add_latency`). A skipped row has `skipped` set to the
    reason and `None` for every measurement."""

    family: str
    task: str
    config_name: str
    config: dict[str, Any]
    n: int
    accuracy: float | None
    visual_tokens: float | None
    prefill_flops: float | None
    flops_rel: float | None = None
    latency_ms: float | None = None
    latency_rel: float | None = None
    kv_cache_mb: float | None = None
    peak_mem_mb: float | None = None
    skipped: str | None = None


def skip_reason(error: ConfigError) -> str:
    """The short form of why a configuration does not apply: the value's repr and the hints would make it a
    paragraph."""
    return f"{error.field} expects {error.allowed}"


def evaluate_grid(
    model: nn.Module,
    processor: Any,
    grid: Mapping[str, VTCConfig],
    tasks: Mapping[str, Sequence[Sample]],
    *,
    family: str,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[ConfigResult]:
    """Score every configuration of `grid` on every task's samples; one row per (task, configuration), by task.

    Args:
        grid: name -> config; must hold `baseline`, the reference of `flops_rel`.
        tasks: task name -> its samples.
        progress: called with the number of samples done after each evaluation (or skip).

    The model and processor are left uncompressed.
    """
    if BASELINE not in grid:
        raise ConfigError("grid", sorted(grid), f"a grid with a {BASELINE!r} row",
                          hint="It is the reference of the relative FLOPs.")
    rows = []
    for name, config in grid.items():
        try:  # once per model, not per task: compress is atomic, and a refusal holds for every task
            compress(model, config, processor=processor)
        except ConfigError as error:
            rows += [ConfigResult(family, task, name, config.to_dict(), len(samples), None, None, None,
                                  skipped=skip_reason(error)) for task, samples in tasks.items()]
            if progress is not None:
                progress(sum(map(len, tasks.values())))
            continue
        for task, samples in tasks.items():
            result = evaluate(model, processor, samples, batch_size=batch_size, progress=False)
            rows.append(ConfigResult(family, task, name, config.to_dict(), result.n, result.accuracy,
                                     result.visual_tokens, result.prefill_flops))
            if progress is not None:
                progress(len(samples))
    unpatch(model)
    baseline_flops = {row.task: row.prefill_flops for row in rows if row.config_name == BASELINE}
    for row in rows:
        if row.skipped is None:
            row.flops_rel = row.prefill_flops / baseline_flops[row.task]
    order = {task: index for index, task in enumerate(tasks)}
    return sorted(rows, key=lambda row: order[row.task])  # stable: the grid's order within a task


def add_latency(rows: Iterable[ConfigResult], measured: Iterable[AblationRow]) -> None:
    """Copy the latency, KV cache and peak memory of `vtc.bench.measure_configs` rows into the rows of the same
    configuration."""
    by_name = {row.config_name: row for row in measured}
    for row in rows:
        timing = by_name[row.config_name]
        row.latency_ms, row.latency_rel = timing.latency_ms, timing.latency_rel
        row.kv_cache_mb, row.peak_mem_mb = timing.kv_cache_mb, timing.peak_mem_mb


TABLE_COLUMNS = (
    ("family", "family", "{}"),
    ("task", "task", "{}"),
    ("config", "config_name", "{}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("visual tokens", "visual_tokens", "{:.1f}"),
    ("FLOPs rel", "flops_rel", "{:.3f}"),
)
LATENCY_COLUMNS = (
    ("prefill ms", "latency_ms", "{:.2f}"),
    ("latency rel", "latency_rel", "{:.3f}"),
    ("KV MiB", "kv_cache_mb", "{:.2f}"),
    ("peak MiB", "peak_mem_mb", "{:.1f}"),
)
_NAMES = ("family", "task", "config_name")


def _has_latency(rows: Sequence[ConfigResult]) -> bool:
    return any(row.latency_ms is not None for row in rows)


def _cell(row: ConfigResult, attribute: str, fmt: str) -> str:
    if row.skipped and attribute not in _NAMES:
        return "skipped" if attribute == "accuracy" else "-"
    value = getattr(row, attribute)
    return "n/a" if value is None else fmt.format(value)


def format_table(rows: Sequence[ConfigResult]) -> str:
    """The rows as an aligned text table; the latency columns only where latency was measured."""
    columns = TABLE_COLUMNS + (LATENCY_COLUMNS if _has_latency(rows) else ())
    header = [title for title, _, _ in columns]
    body = [[_cell(row, attr, fmt) for _, attr, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def legend(rows: Sequence[ConfigResult], latency_setup: str | None = None) -> str:
    """What each column of `format_table(rows)` means and relative to what, then why a row was skipped (once per
    model and configuration). `latency_setup` says what the latency columns timed; `None`: latency was not measured.
    """
    sizes = sorted({row.n for row in rows})
    lines = [
        f"accuracy       mean score (vtc.tasks.score) on {'/'.join(map(str, sizes))} test samples per task: exact "
        "match, or for grid-readout the fraction of cells right",
        "visual tokens  mean image placeholders per sample at the language model's input",
        "FLOPs rel      analytic prefill FLOPs per sample (vtc.flops) relative to the same model's baseline on the "
        "same task",
    ]
    if latency_setup is None:
        lines.append(f"latency        not reported: {NO_LATENCY}")
    else:
        lines += [
            f"prefill ms     median prefill time over interleaved rounds, {latency_setup}",
            "latency rel    prefill ms relative to the baseline",
            "KV MiB         the KV cache the prefill leaves",
            "peak MiB       peak device memory of one prefill above the model's own (CUDA only, n/a elsewhere)",
        ]
    lines.append("skipped        the configuration does not apply to the model; the reason is below")
    reasons = {(row.family, row.config_name): row.skipped for row in rows if row.skipped}
    lines += [f"skipped {family} {name}: {reason}" for (family, name), reason in reasons.items()]
    return "\n".join(lines)


def write_rows(rows: Sequence[ConfigResult], out_dir: Path, environment: dict[str, Any]) -> tuple[Path, Path]:
    """Write the rows to `ablate.jsonl` (with the environment) and `ablate.csv` under `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, csv_path = out_dir / "ablate.jsonl", out_dir / "ablate.csv"
    records = [dataclasses.asdict(row) for row in rows]
    with jsonl.open("w") as f:
        for record in records:
            f.write(json.dumps({**record, "environment": environment}) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({**record, "config": json.dumps(record["config"])} for record in records)
    return jsonl, csv_path


def write_pareto(rows: Sequence[ConfigResult], grid: Mapping[str, VTCConfig], path: Path) -> Path:
    """Draw the measured rows with `vtc.plots.pareto` (needs matplotlib) to `path`; return it."""
    from .plots import ParetoPoint, pareto

    return pareto([ParetoPoint(row.family, row.task, row.config_name, components(grid[row.config_name]),
                               row.accuracy, row.visual_tokens, row.flops_rel)
                   for row in rows if row.skipped is None], path)
