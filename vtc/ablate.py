"""The ablation behind `vtc ablate`: the accuracy of every configuration of a grid against what it costs.

    rows = evaluate_grid(model, processor, default_grid(), {"majority-colour": samples}, family="my-model")
    print(format_table(rows)); print(legend(rows))

Each configuration is applied with `vtc.compress` once per model and scored with `vtc.evaluate` on every task's
samples; its accuracy and prefill FLOPs are relative to the same model's `baseline` row on the same task too. A configuration the model
refuses (`ConfigError`, e.g. RVTC on a family with one fixed resolution) gets a skipped row per task, with a one-line
reason. Latency is joined in only where it means something (a real checkpoint, `add_latency`): on tiny models it
measures Python overhead, not compute. Every row is a `vtc.bench.AblationRow` (`ConfigResult` is the same class).

Trained runs (`vtc train` output folders, `vtc ablate --trained`) join the table as rows of their own:

    runs = [TrainedRun.read("runs/pvtc-r4")]            # what each compresses with and how it was trained
    trained = evaluate_trained_runs(runs, tasks)        # each loaded in turn (LoRA merged) and scored
    rows = join_trained(rows, trained)                  # each right after the grid row of its configuration
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .api import compress, unpatch
from .bench import AblationRow
from .config import LVTCConfig, PruneConfig, PVTCConfig, RVTCConfig, VTCConfig
from .errors import ConfigError, VTCError
from .evaluate import evaluate
from .tasks import Sample
from .training.trained import TrainedRun

if TYPE_CHECKING:
    from .plots import ParetoPoint

__all__ = ["AblationRow", "ConfigResult", "RunLoadError", "TrainedRun", "add_latency", "budget_grid", "column_legend",
           "components", "config_label", "default_grid", "evaluate_grid", "evaluate_trained", "evaluate_trained_runs",
           "format_cell", "format_table", "join_trained", "legend", "pareto_points", "split_by_task",
           "trained_row_name", "write_pareto", "write_rows"]

#: A table row: the same class as `AblationRow`, under a second name.
ConfigResult = AblationRow

BASELINE = "baseline"
COMPONENTS = ("pvtc", "lvtc", "rvtc", "prune")
#: The training-free baselines of the grids, in the order their rows appear (`vtc.PruneConfig.METHODS`).
BASELINES = ("pool", "random", "divprune", "visionzip", "downsample", "fastv", "pdrop", "dart")
#: The visual tokens the default grid's baselines keep: as many as PVTC r4 and LVTC r4 leave.
DEFAULT_KEEP = 0.25
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
    # The baselines at PVTC r4's token count; a family a method does not apply to skips its row, with the reason.
    grid.update({_name(config): config for config in _baselines(DEFAULT_KEEP)})
    return grid


def _baselines(keep: int | float) -> list[VTCConfig]:
    return [VTCConfig(prune=PruneConfig(method=method, keep=keep)) for method in BASELINES]


def _keep_label(keep: int | float) -> str:
    """`keep` as a row name spells it: an int as is, a fraction to two significant decimals (`0.25`, `0.33`)."""
    return str(keep) if isinstance(keep, int) else f"{keep:.2g}"


def budget_grid(budgets: Sequence[int | float], native_tokens: int) -> dict[str, VTCConfig]:
    """The grid of `vtc ablate --budgets`: the baseline, then per budget every method at that many visual tokens per
    image, so that equal-token rows sit together.

    A budget is visual tokens per image (an int) or a fraction of the `native_tokens` an image makes (a float in
    (0, 1)). At each budget: PVTC at the square ratio that leaves exactly that many tokens, where one exists (64 of 576
    is r9, and so is 1/9 of any image; 192 of 576 has none), LVTC at the integer ratio that pools to it (from layer 1
    to the last, `delta`), and every baseline (`BASELINES`) with `keep` the budget.

    Raises:
        ConfigError: a budget that is neither an int in `1..native_tokens` nor a fraction in (0, 1).
    """
    grid = {BASELINE: VTCConfig()}
    for budget in budgets:
        keep = PruneConfig(method="pool", keep=budget).keep  # the same validation as the baselines' own
        if isinstance(keep, int) and keep > native_tokens:
            raise ConfigError("budgets", budget, f"at most the {native_tokens} visual tokens an image makes")
        # A fraction 1/n is ratio n on every image; an int is a ratio of this model's native tokens.
        ratio = (1 / Fraction(keep).limit_denominator(1000) if isinstance(keep, float)
                 else Fraction(native_tokens, keep))
        rows = []
        if ratio.denominator == 1 and ratio > 1:
            if math.isqrt(int(ratio)) ** 2 == int(ratio):
                rows.append(VTCConfig(pvtc=PVTCConfig(ratio=int(ratio))))
            rows.append(VTCConfig(lvtc=LVTCConfig(compress_layer=1, restore_layer=-1, ratio=int(ratio))))
        for config in rows + _baselines(keep):
            grid[_name(config)] = config
    return grid


def components(config: VTCConfig | Mapping[str, Any]) -> tuple[str, ...]:
    """The components `config` (or its `to_dict()`) enables, e.g. `("pvtc", "lvtc")`, a pruning baseline named by its
    method (`("divprune",)`); empty for the uncompressed model."""
    if not isinstance(config, Mapping):
        config = config.to_dict()
    return tuple(config[name]["method"] if name == "prune" else name
                 for name in COMPONENTS if config.get(name) is not None)


def _name(config: VTCConfig) -> str:
    """A configuration's row name from its main settings (`config_label` without the clash check)."""
    parts = []
    if config.pvtc is not None:
        default_init = type(config.pvtc)().init
        parts.append(f"pvtc-r{config.pvtc.ratio}" + ("" if config.pvtc.init == default_init else f"-{config.pvtc.init}"))
    if config.lvtc is not None:
        parts.append(f"lvtc-r{config.lvtc.ratio}-{config.lvtc.restore}")
    if config.rvtc is not None:
        parts.append(f"rvtc-{config.rvtc.mode}")
    if config.prune is not None:
        layer = config.prune.layer  # None: the method's default layers; PyramidDrop's stages joined by dots
        layers = "" if layer is None else "-L" + ".".join(map(str, layer if isinstance(layer, tuple) else (layer,)))
        parts.append(f"{config.prune.method}-{_keep_label(config.prune.keep)}{layers}")
    return "+".join(parts) or BASELINE


def config_label(config: VTCConfig) -> str:
    """A row name for a configuration outside the grid, from its main settings, e.g. `pvtc-r9+lvtc-r4-add`,
    `pvtc-r4-paper` (a PVTC init other than the default) or `divprune-0.25` (a baseline and its `keep`). Where that
    spells a grid row's name (the same main settings, others different), `-custom` is added: a row name of the grid
    always means exactly that row's configuration."""
    name = _name(config)
    grid = default_grid()
    return f"{name}-custom" if name in grid and grid[name] != config else name


def skip_reason(error: ConfigError) -> str:
    """The short form of why a configuration does not apply: the value's repr and the hints would make it a
    paragraph."""
    return f"{error.field} expects {error.allowed}"


def split_by_task(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """The samples by their `task` field, in the order the tasks first appear: the tasks of an ablation on a file
    (`vtc.tasks.load_jsonl` names a row without a task after the file)."""
    tasks: dict[str, list[Sample]] = {}
    for sample in samples:
        tasks.setdefault(sample.task, []).append(sample)
    return tasks


def _relative(value: float | None, reference: float | None) -> float | None:
    """`value / reference`; `None` where either is missing or the reference is 0 (a baseline that scores nothing)."""
    return None if value is None or not reference else value / reference


def evaluate_grid(
    model: nn.Module,
    processor: Any,
    grid: Mapping[str, VTCConfig],
    tasks: Mapping[str, Sequence[Sample]],
    *,
    family: str,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[AblationRow]:
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
            rows += [AblationRow(family, task, name, config.to_dict(), len(samples), None, None, None,
                                 skipped=skip_reason(error)) for task, samples in tasks.items()]
            if progress is not None:
                progress(sum(map(len, tasks.values())))
            continue
        for task, samples in tasks.items():
            result = evaluate(model, processor, samples, batch_size=batch_size, progress=False)
            rows.append(AblationRow(family, task, name, config.to_dict(), result.n, result.accuracy,
                                    result.visual_tokens, result.prefill_flops))
            if progress is not None:
                progress(len(samples))
    unpatch(model)
    baseline = {row.task: row for row in rows if row.config_name == BASELINE}
    for row in rows:
        if row.skipped is None:
            row.flops_rel = row.prefill_flops / baseline[row.task].prefill_flops
            row.accuracy_rel = _relative(row.accuracy, baseline[row.task].accuracy)
    order = {task: index for index, task in enumerate(tasks)}
    return sorted(rows, key=lambda row: order[row.task])  # stable: the grid's order within a task


# ------------------------------------------------------------------------------------------------------ trained runs
def trained_row_name(run: TrainedRun, others: Sequence[TrainedRun] = ()) -> str:
    """The row name of a trained run: the grid row of the same configuration (else `config_label`) plus the stage and
    steps, e.g. `pvtc-r4 +full 1500 steps`. Where another of `others` would get the same name, the folder's name is
    added in brackets."""
    def plain(candidate: TrainedRun) -> str:
        same = next((name for name, config in default_grid().items() if config == candidate.config), None)
        return f"{same or config_label(candidate.config)} {candidate.suffix}"

    name = plain(run)
    clash = any(other.folder != run.folder and plain(other) == name for other in others)
    return f"{name} ({run.folder.name})" if clash else name


def evaluate_trained(
    model: nn.Module,
    processor: Any,
    run: TrainedRun,
    tasks: Mapping[str, Sequence[Sample]],
    *,
    family: str,
    name: str,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[AblationRow]:
    """Score the trained model of `run` (as `run.load()` returns it) on every task's samples, one row per task, as
    `evaluate_grid` scores a configuration. `flops_rel` is left to `join_trained`."""
    rows = []
    for task, samples in tasks.items():
        result = evaluate(model, processor, samples, batch_size=batch_size, progress=False)
        rows.append(AblationRow(family, task, name, run.config.to_dict(), result.n, result.accuracy,
                                result.visual_tokens, result.prefill_flops, trained=run.trained,
                                run=str(run.folder)))
        if progress is not None:
            progress(len(samples))
    return rows


class RunLoadError(VTCError, OSError):
    """A trained run whose model does not load (`TrainedRun.load`); `run` is the run, the cause says why."""

    def __init__(self, run: TrainedRun, reason: Exception):
        super().__init__(f"{run.folder} does not load: {reason}")
        self.run = run


def evaluate_trained_runs(
    runs: Sequence[TrainedRun],
    tasks: Mapping[str, Sequence[Sample]],
    *,
    family: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    starting: Callable[[str], None] | None = None,
) -> list[AblationRow]:
    """The rows of every run of `runs` on every task's samples (`evaluate_trained`), under its row name
    (`trained_row_name` among `runs`). Each run is loaded in turn (`run.load`, a LoRA adapter merged) on `device` in
    `dtype`, and let go before the next: one trained model in memory at a time.

    Args:
        family: the family of every row, e.g. the model type of the checkpoint the runs started from; default: each
            run's reference family (`TrainedRun.reference_family`).
        progress: called with the number of samples done after each task of each run.
        starting: called with a run's row name before it loads.

    Raises:
        RunLoadError: a run's model does not load.
    """
    rows = []
    for run in runs:
        name = trained_row_name(run, runs)
        if starting is not None:
            starting(name)
        try:
            model, processor = run.load(dtype=dtype, attn_implementation=attn_implementation)
        except (OSError, ValueError) as error:  # transformers' reasons
            raise RunLoadError(run, error) from error
        rows += evaluate_trained(model.to(device), processor, run, tasks, family=family or run.reference_family(),
                                 name=name, batch_size=batch_size, progress=progress)
        del model, processor
    return rows


def join_trained(rows: Sequence[AblationRow], trained: Iterable[AblationRow]) -> list[AblationRow]:
    """The training-free `rows` with the `trained` rows among them: each right after the last row of the same family,
    task and configuration (the training-free one, then trained ones before it), else at the end of its family and
    task, else at the end. Sets each trained row's `flops_rel` and `accuracy_rel` against the `baseline` row of its
    family and task."""
    baseline = {(row.family, row.task): row for row in rows
                if row.config_name == BASELINE and row.trained is None and row.skipped is None}
    out = list(rows)
    for row in trained:
        reference = baseline.get((row.family, row.task))
        row.flops_rel = None if reference is None else _relative(row.prefill_flops, reference.prefill_flops)
        row.accuracy_rel = None if reference is None else _relative(row.accuracy, reference.accuracy)
        block = [i for i, other in enumerate(out) if (other.family, other.task) == (row.family, row.task)]
        same = [i for i in block if out[i].config == row.config]
        out.insert((same or block)[-1] + 1 if block else len(out), row)
    return out


def add_latency(rows: Iterable[AblationRow], measured: Iterable[AblationRow]) -> None:
    """Copy the latency, KV cache and peak memory of `vtc.bench.measure_configs` rows into the rows of the same
    configuration. Trained rows are left untimed."""
    by_name = {row.config_name: row for row in measured}
    for row in rows:
        if row.trained is not None:
            continue
        timing = by_name[row.config_name]
        row.latency_ms, row.latency_rel = timing.latency_ms, timing.latency_rel
        row.kv_cache_mb, row.peak_mem_mb = timing.kv_cache_mb, timing.peak_mem_mb


TABLE_COLUMNS = (
    ("family", "family", "{}"),
    ("task", "task", "{}"),
    ("config", "config_name", "{}"),
    ("trained", "trained", "{}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("accuracy rel", "accuracy_rel", "{:.3f}"),
    ("visual tokens", "visual_tokens", "{:.1f}"),
    ("FLOPs rel", "flops_rel", "{:.3f}"),
)
LATENCY_COLUMNS = (
    ("prefill ms", "latency_ms", "{:.2f}"),
    ("latency rel", "latency_rel", "{:.3f}"),
    ("KV MiB", "kv_cache_mb", "{:.2f}"),
    ("peak MiB", "peak_mem_mb", "{:.1f}"),
)
_NAMES = ("family", "task", "config_name", "trained")


def _has_latency(rows: Sequence[AblationRow]) -> bool:
    return any(row.latency_ms is not None for row in rows)


def _has_trained(rows: Sequence[AblationRow]) -> bool:
    return any(row.trained is not None for row in rows)


def format_cell(row: AblationRow, attribute: str, fmt: str) -> str:
    """One cell of the table: `row`'s `attribute` in `fmt`; `skipped`, `-` or `n/a` where there is no value."""
    if row.skipped and attribute not in _NAMES:
        return "skipped" if attribute == "accuracy" else "-"
    value = getattr(row, attribute)
    if value is None:
        return "-" if attribute == "trained" else "n/a"  # a training-free row
    return fmt.format(value)


def format_table(rows: Sequence[AblationRow]) -> str:
    """The rows as an aligned text table; the `trained` column only where there are trained rows, the latency
    columns only where latency was measured."""
    columns = tuple(column for column in TABLE_COLUMNS if column[1] != "trained" or _has_trained(rows))
    columns += LATENCY_COLUMNS if _has_latency(rows) else ()
    header = [title for title, _, _ in columns]
    body = [[format_cell(row, attr, fmt) for _, attr, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def legend(rows: Sequence[AblationRow], latency_setup: str | None = None) -> str:
    """What each column of `format_table(rows)` means and relative to what (`column_legend`), then why a row was
    skipped (once per model and configuration) and each trained row's folder."""
    lines = column_legend(rows, latency_setup)
    reasons = {(row.family, row.config_name): row.skipped for row in rows if row.skipped}
    lines += [f"skipped {family} {name}: {reason}" for (family, name), reason in reasons.items()]
    runs = {(row.family, row.config_name): row.run for row in rows if row.trained is not None}
    lines += [f"trained {family} {name}: {folder}" for (family, name), folder in runs.items()]
    return "\n".join(lines)


def column_legend(rows: Sequence[AblationRow], latency_setup: str | None = None) -> list[str]:
    """One line per column of `format_table(rows)`: what it means and relative to what. `latency_setup` says what the
    latency columns timed; `None`: latency was not measured."""
    sizes = sorted({row.n for row in rows})
    lines = [
        f"accuracy       mean score (vtc.tasks.score) on {'/'.join(map(str, sizes))} test samples per task: exact "
        "match, or for grid-readout the fraction of cells right",
        "accuracy rel   accuracy as a fraction of the same model's baseline on the same task (n/a where the baseline "
        "scores 0)",
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
    if _has_trained(rows):
        untimed = "; not timed" if latency_setup is not None else ""
        lines += [
            "trained        a trained run (--trained): stage, steps and objective of its vtc_training.json; '-': "
            "training-free",
            "               its row name is the grid row of the same configuration (or one built from the "
            "configuration) plus +STAGE N steps, and it sits right after that row; scored like the others, FLOPs "
            f"relative to the same baseline{untimed}",
        ]
    return lines


#: The columns of `ablate.jsonl` and `ablate.csv`: a row's fields up to `run`, without the per-sample and per-layer
#: lists of a timed prefill.
FILE_COLUMNS = ("family", "task", "config_name", "config", "n", "accuracy", "accuracy_rel", "visual_tokens",
                "prefill_flops", "flops_rel", "latency_ms", "latency_rel", "kv_cache_mb", "peak_mem_mb", "skipped",
                "trained", "run")


def write_rows(rows: Sequence[AblationRow], out_dir: Path, environment: dict[str, Any]) -> tuple[Path, Path]:
    """Write the rows to `ablate.jsonl` (with the environment) and `ablate.csv` under `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, csv_path = out_dir / "ablate.jsonl", out_dir / "ablate.csv"
    records = [{column: getattr(row, column) for column in FILE_COLUMNS} for row in rows]
    with jsonl.open("w") as f:
        for record in records:
            f.write(json.dumps({**record, "environment": environment}) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(FILE_COLUMNS))
        writer.writeheader()
        writer.writerows({**record, "config": json.dumps(record["config"])} for record in records)
    return jsonl, csv_path


def pareto_points(rows: Sequence[AblationRow]) -> list[ParetoPoint]:
    """The `vtc.plots.ParetoPoint` of every measured row (skipped rows have none), training-free and trained; a
    trained point has `trained` set to its row name, the label drawn next to it."""
    from .plots import ParetoPoint

    return [ParetoPoint(row.family, row.task, row.config_name, components(row.config), row.accuracy,
                        row.visual_tokens, row.flops_rel, trained=None if row.trained is None else row.config_name,
                        accuracy_rel=row.accuracy_rel)
            for row in rows if row.skipped is None]


def write_pareto(rows: Sequence[AblationRow], path: Path, *, relative: bool = False) -> Path:
    """Draw `pareto_points(rows)` with `vtc.plots.pareto` (needs matplotlib) to `path`, with the accuracy relative to
    the baseline's where `relative`; return it."""
    from .plots import pareto

    return pareto(pareto_points(rows), path, relative=relative)
