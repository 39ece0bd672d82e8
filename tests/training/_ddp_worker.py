"""One `vtc.training.train_run` per stage on the llava reference model, instrumented for
tests/training/test_distributed.py.

Run it as one process (`python tests/training/_ddp_worker.py ...`) or as several (`python -m torch.distributed.run
--nproc_per_node 2 tests/training/_ddp_worker.py ...`, `accelerate launch --config_file ... tests/training/...`):
`--batch-size` is the global batch either way (train_run splits it over the processes), so every launch trains on
the same samples at every optimizer step.

What it leaves for the test, besides the runs themselves:

* `OUTPUT/STAGE/`: the output folder of each stage, written by rank 0 only. Every rank R > 0 is given
  `OUTPUT.rankR/STAGE/` instead, so that anything a rank > 0 writes shows up there rather than among rank 0's files.
* `LOG/STAGE.rankR.jsonl`: one line per batch the rank's collator built: the ids of its samples (their index in the
  training list) and how often the rank had called each writing function by then.
* `LOG/initial.STAGE.rankR.safetensors`: the vtc tensors as training starts (after `vtc.compress`), and
  `LOG/trainable.STAGE.rankR.json`: the names of the parameters the stage trains.
* rank 0 only: `LOG/grads.STAGE.stepK.safetensors`, the gradients of the trainable parameters at optimizer step K
  (after DDP's reduction and the gradient clipping), and `LOG/history.STAGE.json`, the Trainer's log history (the
  loss and gradient norm of every step).
* `LOG/done.STAGE.rankR.json`: the rank finished the stage: the world size, the process group's backend, the calls to
  the writing functions (the vtc checkpoint, the training record, the processor's files), the seconds of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # No option may be a prefix of one of torchrun's (it would take `--log` for its `--log-dir`).
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--sample-log", required=True, type=Path)
    parser.add_argument("--stages", nargs="+", default=["compressor"], help="train each, into OUTPUT/STAGE")
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-vision", action="store_true", help="RunSpec.train_vision (full and lora stages)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rank = int(os.environ.get("RANK", "0"))
    log_dir = args.sample_log
    log_dir.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from safetensors.torch import save_file
    from transformers import TrainerCallback

    import vtc
    import vtc.checkpoint as checkpoint_module
    import vtc.loading as loading_module
    import vtc.pretrained as pretrained_module
    import vtc.training.run as run_module
    import vtc.training.trainer as trainer_module
    from vtc.training import vtc_state_dict

    calls = {"save_pretrained": 0, "training_record": 0, "processor": 0}
    current = {"stage": None}

    def counted(name, function):
        def wrapper(*a, **k):
            calls[name] += 1
            return function(*a, **k)

        return wrapper

    # Count what this rank writes: the vtc files (every writer goes through checkpoint.write_checkpoint: the
    # checkpoint callback through vtc.save_pretrained, and CheckpointWriter under the Trainer's save_model), the
    # training record, and the processor's files (train_run saves the processor it loaded, which it imports from
    # vtc.loading at call time).
    checkpoint_module.write_checkpoint = counted("save_pretrained", checkpoint_module.write_checkpoint)
    pretrained_module.write_checkpoint = checkpoint_module.write_checkpoint
    run_module.write_training_record = counted("training_record", run_module.write_training_record)
    if hasattr(trainer_module, "write_training_record"):  # the checkpoint callback's record
        trainer_module.write_training_record = counted("training_record", trainer_module.write_training_record)
    load_checkpoint = loading_module.load_checkpoint

    def load_and_count(*a, **k):
        model, processor = load_checkpoint(*a, **k)
        processor.save_pretrained = counted("processor", processor.save_pretrained)
        return model, processor

    loading_module.load_checkpoint = load_and_count

    # The compressor as training starts: the test checks that training moved it, and that the ranks agree on it.
    prepare_stage = run_module.prepare_stage

    def prepare_and_keep_initial(model, stage, **kwargs):
        initial = {name: t.detach().clone().contiguous() for name, t in vtc_state_dict(model).items()}
        save_file(initial, str(log_dir / f"initial.{current['stage']}.rank{rank}.safetensors"))
        model = prepare_stage(model, stage, **kwargs)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        (log_dir / f"trainable.{current['stage']}.rank{rank}.json").write_text(json.dumps(trainable) + "\n")
        return model

    run_module.prepare_stage = prepare_and_keep_initial

    class LoggingCollator(run_module.VTCCollator):
        def __call__(self, items):
            with (log_dir / f"{current['stage']}.rank{rank}.jsonl").open("a") as log:
                log.write(json.dumps({"ids": [item.meta["id"] for item in items], "calls": dict(calls)}) + "\n")
            return super().__call__(items)

    run_module.VTCCollator = LoggingCollator

    class GradientDump(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if rank == 0:
                grads = {name: p.grad.detach().clone().contiguous() for name, p in model.named_parameters()
                         if p.requires_grad and p.grad is not None}
                save_file(grads, str(log_dir / f"grads.{current['stage']}.step{state.global_step}.safetensors"))

    class DumpingTrainer(trainer_module.VTCTrainer):  # train_run imports VTCTrainer at call time
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.add_callback(GradientDump())

    trainer_module.VTCTrainer = DumpingTrainer

    # The three synthetic tasks in turn: answers of 1 to 37 tokens and one or two images, so that the ranks hold
    # different numbers of answer tokens and pad differently (the loss must still weigh every token alike).
    tasks = vtc.tasks.available()
    pools = {task: vtc.tasks.synthetic(task, "train", args.train_size, seed=args.seed) for task in tasks}
    samples = [pools[tasks[index % len(tasks)]][index] for index in range(args.train_size)]
    for index, sample in enumerate(samples):
        sample.meta["id"] = index
    root = args.output if rank == 0 else args.output.with_name(f"{args.output.name}.rank{rank}")
    for stage in args.stages:
        current["stage"] = stage
        (log_dir / f"{stage}.rank{rank}.jsonl").write_text("")
        spec = run_module.RunSpec(
            model="reference:llava",
            config=vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=args.ratio)),
            stage=stage,
            output=str(root / stage),
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            seed=args.seed,
            train_vision=args.train_vision,
            progress=False,
        )
        start = time.perf_counter()
        result = run_module.train_run(spec, samples)
        seconds = time.perf_counter() - start
        if rank == 0:
            history = result["trainer"].state.log_history
            (log_dir / f"history.{stage}.json").write_text(json.dumps(history) + "\n")
        backend = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            backend = str(torch.distributed.get_backend())
        done = {"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "backend": backend,
                "calls": dict(calls), "seconds": seconds}
        (log_dir / f"done.{stage}.rank{rank}.json").write_text(json.dumps(done) + "\n")
    return 0


def run_and_end(argv: list[str] | None = None) -> int:
    """`main`, then the process group torn down as `vtc train` does (a process left to tear it down at exit can
    abort after a successful run)."""
    from vtc.training.run import end_distributed

    finished = False
    try:
        code = main(argv)
        finished = True
        return code
    finally:
        end_distributed(wait_for_every_process=finished)


if __name__ == "__main__":
    sys.exit(run_and_end())
