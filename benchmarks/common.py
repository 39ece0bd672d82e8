"""What the benchmark scripts share: their common command-line options and how they print a result table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch


def parser_with_common_options(description: str) -> argparse.ArgumentParser:
    """An argument parser with `--device`, `--dtype`, `--attn`, `--ratios`, `--repeats` and `--batch`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn", default="sdpa", help="attention implementation (default sdpa)")
    parser.add_argument("--ratios", default="4,16", help="comma-separated compression ratios (default 4,16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (default 5)")
    parser.add_argument("--batch", type=int, default=1, help="prompts, one image each, per prefill (default 1)")
    return parser


def describe_run(args: argparse.Namespace) -> str:
    """One line naming the device, dtype, attention, threads and batch of a run."""
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    return (f"device {device}, {args.dtype}, {args.attn}, threads {torch.get_num_threads()}, batch {args.batch}, "
            f"median of {args.repeats} interleaved rounds (ms)")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with aligned columns."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a Markdown table with aligned columns."""
    print(markdown_table(header, rows))
