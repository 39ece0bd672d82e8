"""The `vtc` console script.

    vtc info                          supported families, versions, attention backends
    vtc ablate                        every configuration of the grid on tiny random models of every family
    vtc ablate --model FOLDER         the same on a local checkpoint folder (nothing is downloaded)
    vtc make-tiny FAMILY FOLDER       write a tiny random model of FAMILY and its processor to FOLDER
    vtc --version
    vtc COMMAND --help                the options of a command

Every argument is checked before a model is built or anything is measured. An error is one line on stderr,
`vtc: error: <what is wrong and what to do>`, with exit status 2 for a wrong command line and 1 for a failure while
running (a checkpoint folder that does not load, a vtc error); Ctrl-C exits with 130. `--debug` (or the environment
variable VTC_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import VTCError

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

    return {
        "vtc": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "dtype": dtype, "attn_implementation": attn, "threads": torch.get_num_threads(),
    }


def _checkpoint_target(args: argparse.Namespace):
    """`(family, model, processor, inputs_fn)` for the checkpoint folder `--model`."""
    import torch

    from vtc.bench import load_checkpoint
    from vtc.registry import get_adapter_class

    try:
        model, processor = load_checkpoint(args.model, dtype=getattr(torch, args.dtype),
                                           attn_implementation=args.attn)
    except (OSError, ValueError) as error:  # transformers' reasons; say which argument they are about
        raise OSError(f"--model {args.model} does not load: {error}") from error
    model = model.to(args.device)
    adapter_cls = get_adapter_class(model.config.model_type)
    sizes = args.image_sizes or [(640, 480)]
    batch = args.batch or len(sizes)

    def real_inputs(proc):
        return adapter_cls.example_inputs(proc, sizes, batch=batch)

    return model.config.model_type, model, processor, real_inputs


def _tiny_targets(args: argparse.Namespace, families: Sequence[str]):
    """Yield `(family, model, processor, inputs_fn)` for the tiny random model of each family, one at a time."""
    import torch

    from vtc.adapters._tiny import ablation_image_sizes, build_tiny_model, build_tiny_processor, tiny_batch

    for family in families:
        model = build_tiny_model(family, args.attn).to(device=args.device, dtype=getattr(torch, args.dtype))
        processor = build_tiny_processor(family)

        # One sample per image size by default: the sizes span several tile grids, so the per-image visual tokens
        # show what resolution-dependent configurations (RVTC) do.
        sizes = ablation_image_sizes(family)
        batch = args.batch or len(sizes)

        def tiny_inputs(proc, family=family, batch=batch, sizes=sizes):
            return tiny_batch(family, proc, batch=batch, image_sizes=[sizes[i % len(sizes)] for i in range(batch)])

        yield family, model, processor, tiny_inputs


def _quiet_transformers() -> None:
    # transformers draws its own progress bars while it reads and writes weights; vtc draws one for the measurement.
    from transformers.utils import logging

    logging.disable_progress_bar()


def cmd_ablate(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from vtc.adapters._tiny import TINY_FAMILIES
    from vtc.bench import measure_configs

    if args.image_sizes and not args.model:
        raise UsageError("argument --image-sizes: applies to --model only; the tiny models come with their own sizes")
    _quiet_transformers()
    torch.manual_seed(0)
    grid = default_grid()
    if args.model:
        # Loaded before the progress bar is drawn, so that a folder that does not load fails before anything else.
        targets = [_checkpoint_target(args)]
        num_models = 1
    else:
        families = args.families or TINY_FAMILIES
        targets, num_models = _tiny_targets(args, families), len(families)
    rows = []
    with tqdm(total=num_models * len(grid) * args.repeats, desc="vtc ablate", unit="prefill",
              disable=args.quiet, file=sys.stderr) as bar:
        for family, model, processor, inputs_fn in targets:
            bar.set_postfix_str(family)
            rows.extend(measure_configs(model, processor, grid, inputs_fn, family=family, repeats=args.repeats,
                                        warmup=args.warmup, progress=bar.update))
    print(format_table(rows))
    for row in rows:
        if row.skipped:
            print(f"skipped {row.family} {row.config_name}: {row.skipped}")
    out_dir = args.out or Path("vtc_results") / time.strftime("ablate-%Y%m%d-%H%M%S")
    jsonl, csv_path = write_rows(rows, out_dir, _environment(args.device, args.dtype, args.attn))
    print(f"\nwrote {jsonl} and {csv_path}")
    return 0


# ---------------------------------------------------------------------------------------------------------- make-tiny
def cmd_make_tiny(args: argparse.Namespace) -> int:
    from vtc.adapters._tiny import build_tiny_model, build_tiny_processor

    folder: Path = args.folder
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"argument FOLDER: {folder} is a file; give the folder to write the checkpoint into")
    if folder.is_dir() and any(folder.iterdir()) and not args.force:
        raise UsageError(f"argument FOLDER: {folder} is not empty; give a new or empty folder, or add --force to "
                         "write into it")
    _quiet_transformers()
    build_tiny_model(args.family, seed=args.seed).save_pretrained(folder)
    build_tiny_processor(args.family).save_pretrained(folder)
    print(f"wrote a tiny random {args.family} model (seed {args.seed}) and its processor to {folder}")
    print(f"measure it with: vtc ablate --model {folder}")
    return 0


# ---------------------------------------------------------------------------------------------------------- arguments
# Each converts one command-line value or raises ArgumentTypeError, which argparse reports as a usage error naming the
# argument: every value is checked before anything is built.
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def image_sizes(text: str) -> list[tuple[int, int]]:
    """`640x480,1280x720` -> `[(640, 480), (1280, 720)]`: (width, height) pairs."""
    sizes = []
    for size in text.split(","):
        width, _, height = size.strip().lower().partition("x")
        if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise argparse.ArgumentTypeError(
                f"expected WxH image sizes in pixels separated by commas, e.g. 640x480,1280x720; got {text!r}")
        sizes.append((int(width), int(height)))
    return sizes


def tiny_family(text: str) -> str:
    from vtc.adapters._tiny import TINY_FAMILIES

    if text not in TINY_FAMILIES:
        raise argparse.ArgumentTypeError(f"unknown family {text!r}; choose from {', '.join(TINY_FAMILIES)}")
    return text


def tiny_families(text: str) -> list[str]:
    """A comma-separated list of tiny families, in the order given, without repeats."""
    return list(dict.fromkeys(tiny_family(name.strip()) for name in text.split(",")))


ATTENTION_CHOICES = ("sdpa", "eager", "flash_attention_2")


def attention_backend(text: str) -> str:
    if text not in ATTENTION_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown attention backend {text!r}; choose from "
                                         f"{', '.join(ATTENTION_CHOICES)}")
    if not attention_backends()[text]:  # sdpa and eager come with every torch vtc supports: this is flash-attn
        raise argparse.ArgumentTypeError(f"{text} is not available in this environment: install flash-attn "
                                         "(pip install -e '.[flash]', needs CUDA), or use sdpa")
    return text


def device(text: str) -> str:
    """A device that torch can use here, as torch spells it (`cpu`, `cuda`, `cuda:1`, `mps`)."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise argparse.ArgumentTypeError(f"{text}: torch sees no CUDA device here (torch {torch.__version__} is "
                                             f"{build}); use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: there are only {count} CUDA devices here, cuda:0 to "
                                             f"cuda:{count - 1}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available here; use --device cpu")
    return str(parsed)


def checkpoint_folder(text: str) -> Path:
    """A folder that holds a saved model (`config.json`)."""
    folder = Path(text)
    if not folder.exists():
        raise argparse.ArgumentTypeError(f"no such folder: {text}; give the path of a local checkpoint folder "
                                         "(nothing is downloaded)")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give the checkpoint's folder")
    if not (folder / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} has no config.json, so it holds no saved model; give a folder "
                                         "written by save_pretrained (or by vtc make-tiny)")
    return folder


def output_folder(text: str) -> Path:
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder for the results")
    return folder


# ------------------------------------------------------------------------------------------------------------- main
class UsageError(Exception):
    """A command line that is wrong in a way only the command can tell (e.g. a folder that is not empty)."""


class _OneLineErrorParser(argparse.ArgumentParser):
    """Prints a usage error as one line, `vtc: error: <message>`, and exits with status 2. (argparse would print the
    usage block first; `vtc COMMAND --help` shows it.)"""

    def error(self, message: str):
        self.exit(2, f"vtc: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before and after the command; SUPPRESS keeps the command's parser from overwriting a
    # --debug given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, show the traceback instead of one line (also: VTC_DEBUG=1)")

    parser = _OneLineErrorParser(prog="vtc", description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                 parents=[debug])
    parser.add_argument("--version", action="version", version=f"vtc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="supported families, versions, attention backends",
                   parents=[debug]).set_defaults(func=cmd_info)

    ablate = sub.add_parser("ablate", help="measure every configuration of the grid side by side", parents=[debug])
    model = ablate.add_mutually_exclusive_group()
    model.add_argument("--model", type=checkpoint_folder, metavar="FOLDER",
                       help="a local checkpoint folder (default: tiny random models of every family)")
    model.add_argument("--families", type=tiny_families, metavar="FAMILY,...",
                       help="comma-separated model types for the tiny default (default: all)")
    ablate.add_argument("--batch", type=positive_int, help="samples per prefill, one image each, cycling through the "
                                                          "image sizes (default: one sample per image size)")
    ablate.add_argument("--repeats", type=positive_int, default=5,
                        help="timed rounds; the median is reported (default 5)")
    ablate.add_argument("--warmup", type=non_negative_int, default=1,
                        help="untimed prefills per configuration (default 1)")
    ablate.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    ablate.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ablate.add_argument("--attn", type=attention_backend, default="sdpa",
                        help=f"attention backend: {', '.join(ATTENTION_CHOICES)} (default sdpa; `vtc info` lists "
                             "what this environment has)")
    ablate.add_argument("--image-sizes", type=image_sizes, metavar="WxH,...",
                        help="the images for --model, one per sample, cycled (default 640x480)")
    ablate.add_argument("--out", type=output_folder, metavar="FOLDER",
                        help="output folder for ablate.jsonl and ablate.csv (default vtc_results/ablate-<time>)")
    ablate.add_argument("--quiet", action="store_true", help="no progress bar")
    ablate.set_defaults(func=cmd_ablate)

    make_tiny = sub.add_parser("make-tiny", parents=[debug],
                               help="write a tiny random model of a family and its processor to a folder")
    make_tiny.add_argument("family", type=tiny_family, metavar="FAMILY",
                           help="a supported model type (`vtc info` lists them)")
    make_tiny.add_argument("folder", type=Path, metavar="FOLDER", help="where to save it (new or empty)")
    make_tiny.add_argument("--seed", type=non_negative_int, default=0, help="the random weights' seed (default 0)")
    make_tiny.add_argument("--force", action="store_true",
                           help="write into a folder that is not empty (files of the same names are replaced)")
    make_tiny.set_defaults(func=cmd_make_tiny)
    return parser


def _error_line(error: Exception) -> str:
    message = " ".join(str(error).split())  # transformers' messages can span several lines
    if not isinstance(error, (UsageError, VTCError, OSError, ValueError)):
        # Not one of the errors a run is expected to meet: name it, and say how to see where it came from.
        message = f"{type(error).__name__}: {message} (run again with --debug for the traceback)"
    return f"vtc: error: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`) and return its exit status: 0, 1 when the run fails,
    2 for a wrong command line, 130 on Ctrl-C."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version or a usage error, already printed
        return stop.code
    debug = getattr(args, "debug", False) or os.environ.get("VTC_DEBUG") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        return 130
    except Exception as error:
        if debug:
            raise
        print(_error_line(error), file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
