"""Training on several processes (torchrun, `accelerate launch`; gloo on CPU) trains like one process.

`train_run` takes the global batch and splits it over the processes; `VTCTrainer` divides the summed answer-token
loss by the answer tokens of the whole optimizer step (counted across the processes) and multiplies it by the
process count, which DDP's gradient averaging divides out again. So two processes given the same global batches must
compute the gradients of one process, step for step, and end with its weights; and only rank 0 may write.

The first test launches `_ddp_worker.py` (one `train_run` per stage: compressor, lora where peft is installed, full;
on the llava reference model: PVTC ratio 4, the three synthetic tasks mixed, global batch 8, 4 steps, lr 1e-3
without warm-up, no dropout, fp32) once alone and once under torchrun with 2 processes, concurrently, and compares
what they logged and wrote.
The second runs the documented `accelerate launch --config_file examples/accelerate/ddp_cpu.yaml -m vtc.cli train`.
Every process has one intra-op thread and runs on the CPU (`CUDA_VISIBLE_DEVICES=""`: gloo even where there are
GPUs).

Tolerances (fp32; in brackets what was measured on 2 shared CPU cores):

* the sample ids: per optimizer step, the two ranks' batches together are exactly the one-process batch (exact);
* the gradients after DDP's reduction and the clipping: `allclose(atol=1e-6, rtol=1e-4)` at the first step, where
  both sides hold the same weights [max |diff| 2e-8; gradients up to 0.04], `atol=1e-5` at the later ones [9e-7];
* the loss and the gradient norm (before clipping) the Trainer logged at every step: `rtol=1e-4` [2e-6]. The norm
  catches a wrong loss scale, which the clipping and Adam would both hide from the gradients and the weights;
* the trained weights: `allclose(atol=1e-5, rtol=1e-4)` for all but 1e-4 of the elements, and none more than
  `2 * lr` apart [compressor: max |diff| 1.6e-4, 6 of 567,552 elements outside, mean |diff| 3e-9; lora: 3.8e-4, 6
  of 706,816; full: 9e-6, none of 1,339,264]. Adam divides each update by the gradient's running size, so an element whose
  gradient is close to zero (as small as the summation-order noise of the reduction) can take a visibly different
  step: a handful of such elements is expected; a bug moves most elements by about the learning rate.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not torch.distributed.is_available(),
                       reason="this torch build has no torch.distributed: nothing can launch several processes"),
]

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_ddp_worker.py")
DDP_CPU_CONFIG = ROOT / "examples" / "accelerate" / "ddp_cpu.yaml"

PROCESSES, STEPS, BATCH, TRAIN_SIZE, LR = 2, 4, 8, 16, 1e-3
STAGES = ("compressor", "lora", "full") if importlib.util.find_spec("peft") else ("compressor", "full")
TIMEOUT_S = 300

# (atol, rtol) of the gradients at the first step (the same weights on both sides) and at the later ones (after the
# few elements Adam moved apart, see WEIGHT_*)
GRAD_TOLERANCE_FIRST, GRAD_TOLERANCE_LATER = (1e-6, 1e-4), (1e-5, 1e-4)
LOGGED_RTOL = 1e-4
WEIGHT_ATOL, WEIGHT_RTOL = 1e-5, 1e-4
WEIGHT_OUTLIER_FRACTION = 1e-4
WEIGHT_MAX_DIFF = 2 * LR

# The files of a run's output folder: the vtc checkpoint and the training record (every stage), and what else each
# stage trains: the fine-tuned backbone (full), the LoRA adapter (lora).
VTC_FILES = {"vtc_config.json", "vtc_weights.safetensors", "vtc_training.json"}
STAGE_WEIGHTS = {"compressor": [], "full": ["model.safetensors"], "lora": ["adapter_model.safetensors"]}

@dataclass
class Run:
    name: str
    returncode: int
    seconds: float
    output: Path  # the output root given to the worker: OUTPUT/STAGE per stage
    log: Path  # the worker's log folder
    console: str

    def tail(self, lines: int = 40) -> str:
        return f"{self.name} exited {self.returncode}; last lines:\n" + "\n".join(self.console.splitlines()[-lines:])

    def done(self, stage: str, rank: int) -> dict | None:
        path = self.log / f"done.{stage}.rank{rank}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def batches(self, stage: str, rank: int) -> list[list[int]]:
        lines = (self.log / f"{stage}.rank{rank}.jsonl").read_text().splitlines()
        return [json.loads(line)["ids"] for line in lines]

    def load(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.log / name))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           and not name.startswith(("ACCELERATE_", "TORCHELASTIC_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    return env


def _worker_arguments(folder: Path, *extra: str) -> list[str]:
    return [str(WORKER), "--output", str(folder / "out"), "--sample-log", str(folder / "log"),
            "--batch-size", str(BATCH), "--train-size", str(TRAIN_SIZE), "--lr", str(LR), "--warmup-steps", "0",
            *extra]


def _launch_all(launches: dict[str, tuple[list[str], Path]]) -> dict[str, Run]:
    """Start every command at once (each in a session of its own), wait for all; kill what outlives TIMEOUT_S."""
    started = {}
    for name, (command, folder) in launches.items():
        folder.mkdir(parents=True, exist_ok=True)
        console = (folder / "console.txt").open("w")
        process = subprocess.Popen(command, cwd=ROOT, env=_environment(), stdout=console, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        started[name] = (process, console, time.perf_counter(), folder)
    deadline = time.perf_counter() + TIMEOUT_S
    runs = {}
    for name, (process, console, start, folder) in started.items():
        try:
            returncode = process.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the workers it started
            returncode = process.wait()
        seconds = time.perf_counter() - start
        console.close()
        runs[name] = Run(name, returncode, seconds, folder / "out", folder / "log",
                         (folder / "console.txt").read_text(errors="replace"))
    return runs


def _assert_same_batches(one: Run, two: Run, stage: str) -> None:
    """At every optimizer step the ranks' micro-batches together are the one-process batch."""
    single = one.batches(stage, 0)
    per_rank = [two.batches(stage, rank) for rank in range(PROCESSES)]
    assert len(single) >= STEPS and all(len(batches) >= STEPS for batches in per_rank), (len(single), per_rank)
    for step in range(STEPS):
        shares = [batches[step] for batches in per_rank]
        assert all(len(share) == BATCH // PROCESSES for share in shares), (stage, step, shares)
        assert sorted(sum(shares, [])) == sorted(single[step]), (
            f"{stage}, step {step}: the ranks trained on {shares}, one process on {single[step]}")


def _assert_close_everywhere(got: dict, expected: dict, atol: float, rtol: float, what: str) -> None:
    assert sorted(got) == sorted(expected), f"{what}: different tensors"
    for name in expected:
        if not torch.allclose(got[name], expected[name], atol=atol, rtol=rtol):
            difference = (got[name] - expected[name]).abs().max().item()
            pytest.fail(f"{what}: {name}: max |diff| {difference:.3g} (atol {atol:g}, rtol {rtol:g})")


def _weight_difference(got: dict, expected: dict, initial: dict) -> dict[str, float]:
    """How far two sets of trained weights are apart, against how far training moved them."""
    assert sorted(got) == sorted(expected), "different tensors"
    difference = torch.cat([(got[n] - expected[n]).abs().flatten() for n in expected])
    size = torch.cat([expected[n].abs().flatten() for n in expected])
    measured = {
        "elements": difference.numel(),
        "max_abs_diff": difference.max().item(),
        "mean_abs_diff": difference.mean().item(),
        "outside": int((difference > WEIGHT_ATOL + WEIGHT_RTOL * size).sum()),
        "max_moved": max((expected[n] - initial[n]).abs().max().item() for n in initial),
    }
    return measured


def _check_stage(one: Run, two: Run, stage: str) -> dict[str, float]:
    """Everything two processes must share with one in `stage`; returns the weight differences measured."""
    for rank in range(PROCESSES):
        done = two.done(stage, rank)
        assert done is not None, f"rank {rank} did not finish the {stage} stage\n{two.tail()}"
        assert (done["world_size"], done["backend"]) == (PROCESSES, "gloo"), done
    assert one.done(stage, 0)["world_size"] == 1

    _assert_same_batches(one, two, stage)

    initial = one.load(f"initial.{stage}.rank0.safetensors")
    for rank in range(PROCESSES):  # the same seed gives every process the same freshly initialised compressor
        _assert_close_everywhere(two.load(f"initial.{stage}.rank{rank}.safetensors"), initial, 0.0, 0.0,
                                 f"{stage}: initial weights of rank {rank}")

    for step in range(STEPS):
        atol, rtol = GRAD_TOLERANCE_FIRST if step == 0 else GRAD_TOLERANCE_LATER
        _assert_close_everywhere(two.load(f"grads.{stage}.step{step}.safetensors"),
                                 one.load(f"grads.{stage}.step{step}.safetensors"), atol, rtol,
                                 f"{stage}: gradients at step {step}")

    history = [json.loads((run.log / f"history.{stage}.json").read_text()) for run in (one, two)]
    logged = [[(entry["loss"], entry["grad_norm"]) for entry in h if "grad_norm" in entry] for h in history]
    assert len(logged[0]) == len(logged[1]) == STEPS, logged
    assert torch.allclose(torch.tensor(logged[1]), torch.tensor(logged[0]), rtol=LOGGED_RTOL, atol=0), (
        f"{stage}: (loss, gradient norm) per step: two processes {logged[1]}, one process {logged[0]}")

    from safetensors.torch import load_file

    files = ["vtc_weights.safetensors", *STAGE_WEIGHTS[stage]]
    got, expected = {}, {}
    for name in files:
        got.update({f"{name}:{k}": v for k, v in load_file(str(two.output / stage / name)).items()})
        expected.update({f"{name}:{k}": v for k, v in load_file(str(one.output / stage / name)).items()})
    measured = _weight_difference(got, expected, {f"vtc_weights.safetensors:{k}": v for k, v in initial.items()})
    assert measured["max_moved"] > LR, f"{stage}: training hardly moved the compressor: {measured}"
    assert measured["max_abs_diff"] <= WEIGHT_MAX_DIFF, f"{stage}: {measured}"
    assert measured["outside"] <= WEIGHT_OUTLIER_FRACTION * measured["elements"], f"{stage}: {measured}"

    _assert_only_rank_zero_wrote(one, two, stage)
    return measured


def _assert_only_rank_zero_wrote(one: Run, two: Run, stage: str) -> None:
    """Rank 0 wrote exactly the files one process writes; ranks > 0 wrote nothing and called no writer."""
    files = sorted(path.name for path in (two.output / stage).iterdir())
    assert VTC_FILES | set(STAGE_WEIGHTS[stage]) <= set(files), files
    assert files == sorted(path.name for path in (one.output / stage).iterdir())
    for rank in range(1, PROCESSES):
        elsewhere = two.output.with_name(f"{two.output.name}.rank{rank}")
        assert not elsewhere.exists(), f"rank {rank} wrote {sorted(map(str, elsewhere.rglob('*')))}"
        calls = two.done(stage, rank)["calls"]
        assert not any(calls.values()), f"rank {rank} called writers: {calls}"
    for run, processes in ((one, 1), (two, PROCESSES)):
        record = json.loads((run.output / stage / "vtc_training.json").read_text())
        assert (record["processes"], record["steps"], record["batch_size"], record["stage"]) == (
            processes, STEPS, BATCH, stage), record


def test_two_processes_train_like_one_process(tmp_path, record_property):
    """torchrun with 2 processes against 1 process, every stage: the same batches, gradients and weights; only rank
    0 writes."""
    arguments = ["--steps", str(STEPS), "--stages", *STAGES]
    runs = _launch_all({
        "one process": ([sys.executable, *_worker_arguments(tmp_path / "one", *arguments)], tmp_path / "one"),
        "torchrun": ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(PROCESSES),
                      "--master_port", str(_free_port()), *_worker_arguments(tmp_path / "two", *arguments)],
                     tmp_path / "two"),
    })
    one, two = runs["one process"], runs["torchrun"]
    print(f"\nwall seconds, launched together: one process {one.seconds:.1f}, torchrun {two.seconds:.1f}")
    assert one.returncode == 0, one.tail()

    for stage in STAGES:
        measured = _check_stage(one, two, stage)
        record_property(f"{stage} weights", measured)
        print(f"{stage}: 2 vs 1 process: {measured}")
    assert two.returncode == 0, two.tail()


def test_accelerate_launch_with_the_ddp_config_runs_vtc_train_on_two_processes(tmp_path):
    """The documented command: `accelerate launch --config_file examples/accelerate/ddp_cpu.yaml -m vtc.cli train`
    trains on two processes; rank 0 alone prints the report and writes one output folder that loads."""
    import vtc

    config = tmp_path / "pvtc.json"
    vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4)).save(config)
    output, steps = tmp_path / "out", 2
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU_CONFIG),
               "-m", "vtc.cli", "train", "--model", "reference:llava", "--data", "task:majority-colour",
               "--data", "task:grid-readout", "--config", str(config), "--stage", "compressor", "--steps", str(steps),
               "--batch", str(BATCH), "--eval-size", "0", "--no-progress", "--output", str(output)]
    run = _launch_all({"accelerate launch": (command, tmp_path / "launch")})["accelerate launch"]
    assert run.returncode == 0, run.tail()
    assert run.console.count("load it with:") == 1, run.tail()
    files = sorted(path.name for path in output.iterdir())
    assert files == sorted(VTC_FILES | {"processor_config.json", "tokenizer.json", "tokenizer_config.json"}), files
    record = json.loads((output / "vtc_training.json").read_text())
    assert (record["processes"], record["steps"], record["batch_size"]) == (PROCESSES, steps, BATCH), record
    model, _ = vtc.load_trained(output)
    assert vtc.get_config(model) == vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=4))
