"""How much of the uncompressed accuracy training gets back, and what the training costs.

For each compression config on a reference model: the accuracy training-free, after the `compressor` stage, and
after the `full` (or `lora`) stage, on every synthetic task, each with its steps and CPU minutes. Half of every batch
is the fine task (grid-readout), the other half the other tasks in equal shares (the global, the two-image and the
two salient ones), so a stage that recovers the fine task is also seen not to lose the others. Then the paper-style row: a model trained from scratch with PVTC r4
against the same recipe without compression, with the training step time of each.

    python benchmarks/train_recovery.py --family llava --out runs/recovery        # every row
    python benchmarks/train_recovery.py --rows pvtc-r4 --stages compressor,full   # some of them

Every run is seeded and written as a `vtc train` output folder under `--out` (so `vtc ablate --trained` and
`vtc.load_trained` read them); the table is printed as Markdown and written to `--out/recovery.json`. Pin the
threads (`OMP_NUM_THREADS=1`) for CPU minutes that compare across rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import vtc
from vtc.tasks import available, synthetic, vocabulary
from vtc.training.run import RunSpec, train_run

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402

FINE = "grid-readout"
STAGE_ORDER = ("compressor", "full", "lora")


def _lvtc(restore: str) -> vtc.LVTCConfig:
    return vtc.LVTCConfig(ratio=4, compress_layer=1, restore_layer=-1, restore=restore)


#: The rows. `init="warm"` (PVTC's default) starts as the model's own projector on window means: good training-free
#: on coarse work, but a window mean loses where in the window each detail was. `init="paper"` (the paper's
#: structure: the local query reads the concatenated window) keeps it, and is what fine detail trains back from.
ROWS = {
    "pvtc-r4": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)),
    "pvtc-r4-paper": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4, init="paper")),
    "pvtc-r16-paper": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=16, init="paper")),
    "lvtc-r4-delta": vtc.VTCConfig(lvtc=_lvtc("delta")),
    "lvtc-r4-add": vtc.VTCConfig(lvtc=_lvtc("add")),
    "pvtc-r4-paper+lvtc-r4": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4, init="paper"), lvtc=_lvtc("delta")),
    # The training-free baselines at PVTC r4's token count: the language model fine-tuned on what they keep (`full`).
    **{f"{method}-0.25": vtc.VTCConfig(prune=vtc.PruneConfig(method=method, keep=0.25))
       for method in ("pool", "random", "divprune")},
}


def training_samples(steps: int, batch: int, seed: int) -> list:
    """Enough samples for `steps` batches: half the fine task, the other half the other tasks in equal shares."""
    total, others = steps * batch, [task for task in available() if task != FINE]
    samples = synthetic(FINE, "train", total // 2 + 1, seed)
    for task in others:
        samples += synthetic(task, "train", total // (2 * len(others)) + 1, seed)
    return samples


def evaluation_samples(size: int) -> list:
    return [sample for task in available() for sample in synthetic(task, "test", size, 0)]


def run(args, name: str, config: vtc.VTCConfig, stage: str, steps: int, lr: float, model: str,
        train_vision: bool = False) -> dict:
    spec = RunSpec(model=model, config=config, stage=stage, steps=steps, lr=lr, batch_size=args.batch,
                   output=str(args.out / f"{args.family}-{name}-{stage}"), seed=args.seed, progress=args.progress,
                   train_vision=train_vision, extra={"row": name})
    try:
        result = train_run(spec, training_samples(steps, args.batch, args.seed + 1),
                           evaluation_samples(args.eval_size))
    except vtc.ConfigError as error:  # e.g. the compressor stage of a config with no trainable tensor
        print(f"{name} {stage}: skipped: {error}", flush=True)
        return {"skipped": str(error)}
    keep = ("before", "after", "steps", "train_seconds", "train_cpu_seconds", "seconds_per_step", "loss_first_last",
            "trainable_parameters", "learning_rate")
    summary = {key: result[key] for key in keep}
    print(f"{name} {stage}: {summary}", flush=True)
    return summary


def from_scratch(args) -> dict:
    """The reference model's architecture from random weights, trained with and without PVTC r4 (paper init): same
    steps, same samples, every parameter training."""
    from vtc.testing import build_reference_model

    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        model, processor = build_reference_model(args.family, vocabulary(), seed=args.seed)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        for name, config in (("uncompressed", vtc.VTCConfig()), ("pvtc-r4-paper", ROWS["pvtc-r4-paper"])):
            rows[name] = run(args, f"scratch-{name}", config, "full", args.scratch_steps, args.scratch_lr, folder,
                             train_vision=True)
    return rows


def step_times(args, rounds: int = 5, steps: int = 10) -> dict[str, float]:
    """Median milliseconds of one `full`-stage training step (forward, backward, AdamW) on one batch, per row and
    uncompressed, in interleaved rounds in this process: the training cost compression saves, side by side."""
    import copy
    import statistics

    from vtc.training import VTCCollator, lm_loss, prepare_stage

    samples = training_samples(1, args.batch, args.seed + 1)[:args.batch]
    setups = {}
    for name in ["uncompressed", *filter(None, args.rows.split(","))]:
        model, processor = vtc.tasks.reference_model(args.family)
        config = vtc.VTCConfig() if name == "uncompressed" else ROWS[name]
        student_processor = copy.deepcopy(processor)
        model = prepare_stage(vtc.compress(model, config, processor=student_processor), "full")
        model.train()
        batch = VTCCollator(student_processor)(samples)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        setups[name] = (model, batch, optimizer)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for round_index in range(rounds + 1):  # the first round warms up and is not counted
        for name, (model, batch, optimizer) in setups.items():
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            start = time.perf_counter()
            for _ in range(steps):
                lm_loss(model(**inputs).logits, batch["labels"]).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if round_index:
                times[name].append((time.perf_counter() - start) / steps * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def percent(value: float, of: float) -> str:
    return f"{100 * value / of:.0f}%" if of else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llava")
    parser.add_argument("--out", type=Path, default=Path("runs/recovery"))
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--stages", default="compressor,full", help="comma-separated: compressor, full, lora")
    parser.add_argument("--compressor-steps", type=int, default=1500)
    parser.add_argument("--full-steps", type=int, default=1500)
    parser.add_argument("--compressor-lr", type=float, default=1e-3)
    parser.add_argument("--full-lr", type=float, default=1e-3)
    parser.add_argument("--scratch-steps", type=int, default=600, help="0 skips the from-scratch rows")
    parser.add_argument("--scratch-lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--step-times", action="store_true",
                        help="only measure the training step time of each of --rows and uncompressed, and exit")
    parser.add_argument("--tables-from", type=Path, nargs="+", metavar="JSON",
                        help="print the tables of earlier runs' recovery.json files (merged) and exit")
    args = parser.parse_args()
    if args.step_times:
        measured = step_times(args)
        (args.out / "step_times.json").parent.mkdir(parents=True, exist_ok=True)
        (args.out / "step_times.json").write_text(json.dumps(measured, indent=2))
        print(f"full-stage training step, batch {args.batch}, {torch.get_num_threads()} thread(s), median of 5 "
              "interleaved rounds of 10 steps:\n")
        print_table(["config", "ms per step", "of uncompressed"],
                    [[name, f"{ms:.1f}", f"{ms / measured['uncompressed']:.2f}x"] for name, ms in measured.items()])
        return
    if args.tables_from:
        merged = merge([json.loads(path.read_text()) for path in args.tables_from])
        (args.out / "recovery.json").parent.mkdir(parents=True, exist_ok=True)
        (args.out / "recovery.json").write_text(json.dumps(merged, indent=2))
        print_tables(merged)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    model, processor = vtc.tasks.reference_model(args.family)
    uncompressed = {task: vtc.evaluate(model, processor, synthetic(task, "test", args.eval_size, 0),
                                       progress=False).accuracy for task in available()}
    results: dict = {"family": args.family, "uncompressed": uncompressed, "rows": {},
                     "threads": torch.get_num_threads(), "batch": args.batch, "eval_size": args.eval_size}
    steps = {"compressor": args.compressor_steps, "full": args.full_steps, "lora": args.full_steps}
    rates = {"compressor": args.compressor_lr, "full": args.full_lr, "lora": args.compressor_lr}
    for name in filter(None, args.rows.split(",")):
        results["rows"][name] = {stage: run(args, name, ROWS[name], stage, steps[stage], rates[stage],
                                            f"reference:{args.family}")
                                 for stage in args.stages.split(",")}
        (args.out / "recovery.json").write_text(json.dumps(results, indent=2))
    if args.scratch_steps:
        results["from_scratch"] = from_scratch(args)
    results["wall_minutes"] = (time.perf_counter() - started) / 60
    (args.out / "recovery.json").write_text(json.dumps(results, indent=2))
    print_tables(results)


def merge(parts: list[dict]) -> dict:
    """One result from runs of the same family that measured different rows (e.g. in parallel processes)."""
    merged = dict(parts[0], rows={})
    merged.pop("wall_minutes", None)  # each part's own
    for part in parts:
        for name, stages in part["rows"].items():
            merged["rows"].setdefault(name, {}).update(stages)
        if "from_scratch" in part:
            merged["from_scratch"] = part["from_scratch"]
    return merged


def _scores(scores: dict[str, float], tasks: list[str], base: dict[str, float]) -> list[str]:
    """Each task's accuracy, the fine task's also as a share of the uncompressed accuracy ("-" where not measured)."""
    cells = []
    for task in tasks:
        cells.append(f"{scores[task]:.3f}" if task in scores else "-")
        if task == FINE:
            cells.append(percent(scores[FINE], base[FINE]) if FINE in scores else "-")
    return cells


def print_tables(results: dict) -> None:
    base = results["uncompressed"]
    tasks = list(base)
    print(f"\n{results['family']} reference model; uncompressed: "
          + ", ".join(f"{task} {accuracy:.3f}" for task, accuracy in base.items())
          + f" ({results['eval_size']} test samples per task, batch {results['batch']}, "
          f"{results['threads']} thread(s))\n")
    columns = [name for task in tasks for name in ([task, "of uncompressed"] if task == FINE else [task])]
    header = ["config", "stage", *columns, "steps", "CPU min", "CPU s/step"]
    rows = []
    for name, stages in results["rows"].items():
        first = next(outcome for outcome in stages.values() if "skipped" not in outcome)
        rows.append([name, "training-free", *_scores(first["before"], tasks, base), "0", "0", "-"])
        for stage, outcome in sorted(stages.items(), key=lambda item: STAGE_ORDER.index(item[0])):
            if "skipped" in outcome:
                rows.append([name, stage, *["-"] * len(columns), "-", "-", "nothing to train"])
                continue
            rows.append([name, stage, *_scores(outcome["after"], tasks, base), str(outcome["steps"]),
                         f"{outcome['train_cpu_seconds'] / 60:.1f}",
                         f"{outcome['train_cpu_seconds'] / outcome['steps']:.3f}"])
    print_table(header, rows)
    scratch = results.get("from_scratch")
    if scratch:
        print("\nFrom scratch (every parameter trains, same samples and steps):\n")
        print_table(["model", *tasks, "steps", "CPU min", "CPU s/step"],
                    [[name, *(f"{o['after'][task]:.3f}" if task in o["after"] else "-" for task in tasks),
                      str(o["steps"]), f"{o['train_cpu_seconds'] / 60:.1f}",
                      f"{o['train_cpu_seconds'] / o['steps']:.3f}"]
                     for name, o in scratch.items()])


if __name__ == "__main__":
    main()
