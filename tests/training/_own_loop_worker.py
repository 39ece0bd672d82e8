"""A user's own training loop on compressed tiny models, one process of several, for tests/training/test_own_loop.py.

Run it under `python -m torch.distributed.run --nproc_per_node 2 tests/training/_own_loop_worker.py RESULTS`. For each
family and configuration of `RUNS` it compresses a fresh tiny model, wraps it in a plain
`DistributedDataParallel(model)` (all of its parameters that require grad, `find_unused_parameters=False`) and takes
`STEPS` optimizer steps of `model(**batch, labels=...)`, each rank on a batch of its own. A parameter that requires
grad but gets no gradient makes DDP raise at the second step. Each rank writes `RESULTS/rankR.json`: per run, the
losses and a checksum of the trained weights (the ranks' must agree: DDP averaged their gradients).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import vtc
from vtc.testing import make_tiny, tiny_batch
from vtc.training.run import end_distributed

PVTC = vtc.PVTCConfig(ratio=4)
LVTC = vtc.LVTCConfig(compress_layer=1, restore_layer=3, ratio=4, restore="add")  # with a trainable gate
# families whose unpatched models use every parameter (LLaVA's vision towers do not: transformers' own doing)
RUNS = {f"{family}/{name}": (family, config)
        for family in ("qwen2_vl", "internvl")
        for name, config in (("pvtc", vtc.VTCConfig(pvtc=PVTC)), ("pvtc+lvtc", vtc.VTCConfig(pvtc=PVTC, lvtc=LVTC)))}
STEPS = 3


def train(family: str, config: vtc.VTCConfig, rank: int) -> dict[str, object]:
    torch.manual_seed(0)  # the same random compressor on every rank, as DDP expects
    model, processor = make_tiny(family)
    vtc.compress(model, config, processor=processor)
    model.train()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=1e-2)
    sizes = [(32 + 8 * rank, 32), (40, 32 + 8 * rank)]  # each rank trains on images of its own
    batch = tiny_batch(family, processor, batch=2, image_sizes=sizes)
    losses = []
    for _ in range(STEPS):
        loss = ddp(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    checksum = sum(p.double().sum().item() for p in model.parameters() if p.requires_grad)
    return {"losses": losses, "checksum": checksum}


def main(results: Path) -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        record = {name: train(family, config, rank) for name, (family, config) in RUNS.items()}
    except BaseException:
        end_distributed(wait_for_every_process=False)
        raise
    (results / f"rank{rank}.json").write_text(json.dumps(record))
    end_distributed(wait_for_every_process=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(Path(sys.argv[1])))
