"""The `vtc` console script.

    vtc info                      supported families, versions, attention backends
    vtc ablate                    every configuration of the grid on tiny random models of every family
    vtc ablate --model PATH       the same on a local checkpoint (no download)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


# ------------------------------------------------------------------------------------------------------------- info
def attention_backends() -> dict[str, bool]:
    """Which attention implementations transformers can use in this environment."""
    import torch
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    return {
        "eager": True,
        "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention"),
        "flash_attention_2": bool(is_flash_attn_2_available()),
        "flash_attention_3": bool(is_flash_attn_3_available()),
        "flex_attention": hasattr(torch.nn.attention, "flex_attention"),
    }


def cmd_info(_args: argparse.Namespace) -> int:
    import torch
    import transformers

    import vtc

    print(f"vtc {vtc.__version__}  python {platform.python_version()}  torch {torch.__version__}  "
          f"transformers {transformers.__version__}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"cuda device: {cuda}")
    print("supported model types: " + ", ".join(vtc.supported_models()))
    backends = attention_backends()
    print("attention backends: " + ", ".join(f"{k} ({'yes' if v else 'no'})" for k, v in backends.items()))
    return 0


# ------------------------------------------------------------------------------------------------------------- ablate
def default_grid() -> dict[str, Any]:
    """The configurations `vtc ablate` measures by default, by row name; `baseline` is the uncompressed model."""
    import vtc

    grid = {"baseline": vtc.VTCConfig()}
    # PVTC, warm-started: ratio 1 is the model itself (the projector's own cost), 4 and 16 compress.
    grid.update({f"pvtc-r{r}": vtc.VTCConfig(pvtc=vtc.PVTCConfig(ratio=r)) for r in (1, 4, 16)})
    # RVTC, up to 6 tiles per image: the released edge-length rule and the area rule. A family with one fixed
    # resolution has no tiles to choose: its rows are skipped, with the reason.
    grid.update({f"rvtc-{mode}": vtc.VTCConfig(rvtc=vtc.RVTCConfig(mode=mode)) for mode in ("edge", "area")})
    # LVTC from layer 1 to the last layer (valid on every model with 2+ decoder layers and at most 1 layer of
    # injected visual features), at ratios 4 and 16, with each restore rule.
    grid.update({
        f"lvtc-r{r}-{restore}": vtc.VTCConfig(lvtc=vtc.LVTCConfig(compress_layer=1, restore_layer=-1, ratio=r,
                                                                  restore=restore))
        for r in (4, 16) for restore in vtc.LVTCConfig.RESTORES
    })
    return grid


TABLE_COLUMNS = (
    ("family", "family", "{}"),
    ("config", "config_name", "{}"),
    ("visual tokens", "visual_tokens", None),
    ("mean layer len", "mean_layer_seq_len", "{:.1f}"),
    ("FLOPs rel", "flops_rel", "{:.3f}"),
    ("prefill ms", "latency_ms", "{:.2f}"),
    ("latency rel", "latency_rel", "{:.3f}"),
    ("KV MiB", "kv_cache_mb", "{:.2f}"),
    ("peak MiB", "peak_mem_mb", "{:.1f}"),
)


def _cell(row: Any, attribute: str, fmt: str | None) -> str:
    if getattr(row, "skipped", None) and attribute not in ("family", "config_name"):
        return "skipped" if attribute == "visual_tokens" else "-"
    value = getattr(row, attribute)
    if value is None:
        return "n/a"
    if fmt is None:
        return "/".join(str(v) for v in value)
    return fmt.format(value)


def format_table(rows: Sequence[Any]) -> str:
    header = [title for title, _, _ in TABLE_COLUMNS]
    body = [[_cell(row, attr, fmt) for _, attr, fmt in TABLE_COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_rows(rows: Sequence[Any], out_dir: Path, environment: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, csv_path = out_dir / "ablate.jsonl", out_dir / "ablate.csv"
    records = [{**dataclasses.asdict(row), "environment": environment} for row in rows]
    with jsonl.open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    flat_fields = [f.name for f in dataclasses.fields(rows[0]) if f.name not in ("config", "extra")]
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*flat_fields, "config"])
        for record in records:
            writer.writerow([
                *("/".join(map(str, v)) if isinstance(v, list) else v for v in (record[k] for k in flat_fields)),
                json.dumps(record["config"]),
            ])
    return jsonl, csv_path


def _environment(device: str, dtype: str, attn: str) -> dict[str, Any]:
    import torch
    import transformers

    import vtc

    return {
        "vtc": vtc.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "dtype": dtype, "attn_implementation": attn, "threads": torch.get_num_threads(),
    }


def _targets(args: argparse.Namespace):
    """Yield `(family, model, processor, inputs_fn)` for each model the ablation covers."""
    import torch

    from vtc.adapters._tiny import (
        TINY_FAMILIES,
        ablation_image_sizes,
        build_tiny_model,
        build_tiny_processor,
        tiny_batch,
    )
    from vtc.registry import get_adapter_class

    dtype = getattr(torch, args.dtype)
    if args.model:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(
            args.model, local_files_only=True, dtype=dtype, attn_implementation=args.attn
        ).to(args.device).eval()
        processor = AutoProcessor.from_pretrained(args.model, local_files_only=True)
        adapter_cls = get_adapter_class(model.config.model_type)
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.image_sizes.split(",")]

        def real_inputs(proc, adapter_cls=adapter_cls, sizes=sizes):
            return adapter_cls.example_inputs(proc, sizes, batch=args.batch or len(sizes))

        yield model.config.model_type, model, processor, real_inputs
        return
    families = args.families.split(",") if args.families else list(TINY_FAMILIES)
    for family in families:
        get_adapter_class(family)  # unknown names fail with the list of supported ones
        model = build_tiny_model(family, args.attn).to(device=args.device, dtype=dtype)
        processor = build_tiny_processor(family)

        # One sample per image size by default: the sizes span several tile grids, so the per-image visual tokens
        # show what resolution-dependent configurations (RVTC) do.
        sizes = ablation_image_sizes(family)
        batch = args.batch or len(sizes)

        def tiny_inputs(proc, family=family, batch=batch, sizes=sizes):
            return tiny_batch(family, proc, batch=batch, image_sizes=[sizes[i % len(sizes)] for i in range(batch)])

        yield family, model, processor, tiny_inputs


def cmd_ablate(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from vtc.adapters._tiny import TINY_FAMILIES
    from vtc.bench import measure_configs

    torch.manual_seed(0)
    grid = default_grid()
    num_models = 1 if args.model else len(args.families.split(",")) if args.families else len(TINY_FAMILIES)
    rows = []
    with tqdm(total=num_models * len(grid) * args.repeats, desc="vtc ablate", unit="prefill",
              disable=args.quiet, file=sys.stderr) as bar:
        for family, model, processor, inputs_fn in _targets(args):
            bar.set_postfix_str(family)
            rows.extend(measure_configs(model, processor, grid, inputs_fn, family=family, repeats=args.repeats,
                                        warmup=args.warmup, progress=bar.update))
    print(format_table(rows))
    for row in rows:
        if row.skipped:
            print(f"skipped {row.family} {row.config_name}: {row.skipped}")
    out_dir = Path(args.out) if args.out else Path("vtc_results") / time.strftime("ablate-%Y%m%d-%H%M%S")
    jsonl, csv_path = write_rows(rows, out_dir, _environment(args.device, args.dtype, args.attn))
    print(f"\nwrote {jsonl} and {csv_path}")
    return 0


# ------------------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtc", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="supported families, versions, attention backends").set_defaults(func=cmd_info)
    ablate = sub.add_parser("ablate", help="measure every configuration of the grid side by side")
    ablate.add_argument("--model", help="path of a local checkpoint (default: tiny random models of every family)")
    ablate.add_argument("--families", help="comma-separated model types for the tiny default (default: all)")
    ablate.add_argument("--batch", type=int, help="samples per prefill, one image each, cycling through the image "
                                                 "sizes (default: one sample per image size)")
    ablate.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported (default 5)")
    ablate.add_argument("--warmup", type=int, default=1, help="untimed prefills per configuration (default 1)")
    ablate.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ablate.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ablate.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    ablate.add_argument("--image-sizes", default="640x480", help="WxH,... images for --model (default 640x480)")
    ablate.add_argument("--out", help="output folder for ablate.jsonl and ablate.csv (default vtc_results/...)")
    ablate.add_argument("--quiet", action="store_true", help="no progress bar")
    ablate.set_defaults(func=cmd_ablate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
