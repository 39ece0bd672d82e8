"""LVTC's own work per prefill, as its profiler ranges see it: the first prefill of a batch structure and a repeat.

LVTC's work between the decoder layers is of two kinds. Host work (Python, building the group index and masks,
dispatching tensor ops) is what a GPU waits for when the decoder is fast; arithmetic (pooling, the residual, the
restore, rotary embeddings at the pooled positions: a few passes over the `(batch, sequence, width)` hidden states) is
what a CPU spends most of it on, and on a GPU runs asynchronously. The script measures the CPU time one prefill
spends in the ranges `vtc_lvtc_compress` and `vtc_lvtc_restore` and splits it: "in ops" is the time inside the tensor
ops directly under the ranges (their arithmetic and dispatch), "host" the rest (Python, the structure cache, index
building); "ops" counts those tensor ops (on a GPU, each launches one or a few kernels). The model is `lvtc_speed.py`'s
with a 3-layer decoder and a narrow MLP (K=1, L=2; the work in the ranges depends on neither), at the real width (896)
and at width 64, where the arithmetic nearly vanishes. Each configuration is measured on the first prefill of a
structure (a structure-cache miss: the group index and masks are built on the host and copied to the device) and,
median over repeats, on a repeat of it (a hit); with and without left padding.

    python benchmarks/lvtc_host_work.py                       # CPU: a few minutes
    python benchmarks/lvtc_host_work.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import statistics

import torch
from common import describe_run, parser_with_common_options, print_table
from lvtc_speed import build_model, make_inputs

import vtc
from vtc.lvtc import COMPRESS_RANGE, RESTORE_RANGE

LAYERS, K, L, MLP = 3, 1, 2, 64
WIDTHS = (896, 64)
PADDING = 5  # left-padding positions in every other row of a padded batch


def lvtc_work(model, inputs) -> tuple[float, float, int]:
    """One prefill's CPU ms in LVTC's profiler ranges, the ms of it inside tensor ops, and the number of those ops."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        model(**inputs, use_cache=True, logits_to_keep=1)
    ranges = [e for e in profile.events() if e.name in (COMPRESS_RANGE, RESTORE_RANGE)]
    ops = [child for e in ranges for child in e.cpu_children if child.name.startswith("aten::")]
    return (sum(e.cpu_time_total for e in ranges) / 1e3, sum(op.cpu_time_total for op in ops) / 1e3, len(ops))


def padded(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mask = torch.ones_like(inputs["input_ids"])
    mask[::2, :PADDING] = 0
    return {**inputs, "attention_mask": mask}


def main() -> None:
    parser = parser_with_common_options(__doc__)
    parser.set_defaults(batch=16, repeats=10)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    ratios = [1, *(int(r) for r in args.ratios.split(","))]
    print(f"{describe_run(args)}; LVTC K={K}, L={L} of {LAYERS} layers; CPU ms per prefill in LVTC's profiler "
          "ranges (host: outside tensor ops)")
    header = ("config", "padding", "width", "first: range", "first: host", "repeat: range", "repeat: in ops",
              "repeat: host", "ops")
    rows = []
    for width in WIDTHS:
        model = build_model(args.device, dtype, args.attn, width=width, layers=LAYERS, intermediate=MLP)
        base = make_inputs(args.batch, args.device, dtype)
        for ratio in ratios:
            for restore in ("delta", "add"):
                config = vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=K, restore_layer=L, ratio=ratio,
                                                           restore=restore))
                for pad_name, inputs in (("none", base), ("left", padded(base))):
                    inputs = {k: v.to(args.device) for k, v in inputs.items()}
                    with torch.inference_mode():
                        vtc.compress(model, config)  # a fresh structure cache
                        first = lvtc_work(model, inputs)
                        repeats = [lvtc_work(model, inputs) for _ in range(args.repeats)]
                        vtc.unpatch(model)
                    total, in_ops = (statistics.median(r[i] for r in repeats) for i in (0, 1))
                    rows.append((f"lvtc r={ratio} {restore}", pad_name, width, f"{first[0]:.2f}",
                                 f"{first[0] - first[1]:.2f}", f"{total:.2f}", f"{in_ops:.2f}",
                                 f"{total - in_ops:.2f}", repeats[-1][2]))
        del model
    print_table(header, rows)


if __name__ == "__main__":
    main()
