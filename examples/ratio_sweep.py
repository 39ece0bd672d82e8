"""A small ablation from Python: accuracy and cost of PVTC and LVTC at a few ratios, against the uncompressed model.

Runs on the shipped LLaVA reference model and one synthetic task; `vtc ablate` does the same from the command line,
over larger grids. Without training the compressors start warm (PVTC reuses the model's own projector), so the
accuracy here is what compression costs before any training.

    python examples/ratio_sweep.py --samples 64
"""

from __future__ import annotations

import argparse

import vtc
from vtc.tasks import reference_model, synthetic


def configs(ratios: list[int]) -> dict[str, vtc.VTCConfig | None]:
    """The rows of the sweep by name; `None` is the uncompressed model."""
    rows: dict[str, vtc.VTCConfig | None] = {"none": None}
    for ratio in ratios:
        rows[f"pvtc x{ratio}"] = vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=ratio))
    for ratio in ratios:  # decoder layers 1..2 of the reference model's 4 run on the pooled visual tokens
        rows[f"lvtc x{ratio}"] = vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=-1, ratio=ratio))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="majority-colour", choices=vtc.tasks.available())
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--ratios", type=int, nargs="+", default=[4, 9])
    args = parser.parse_args(argv)

    model, processor = reference_model("llava")
    samples = synthetic(args.task, "test", args.samples)
    rows = []
    print(f"{'config':<10} {'accuracy':>8} {'visual tokens':>13} {'prefill MFLOPs':>14}")
    for name, config in configs(args.ratios).items():
        if config is not None:
            vtc.compress(model, config, processor=processor)  # on a compressed model it undoes the previous config
        elif vtc.is_compressed(model):
            vtc.unpatch(model)
        result = vtc.evaluate(model, processor, samples, progress=False)
        rows.append({"config": name, "accuracy": result.accuracy, "visual_tokens": result.visual_tokens,
                     "prefill_flops": result.prefill_flops})
        print(f"{name:<10} {result.accuracy:>8.3f} {result.visual_tokens:>13.1f} {result.prefill_flops / 1e6:>14.2f}")
    vtc.unpatch(model)
    return rows


if __name__ == "__main__":
    main()
