"""`vtc make-tiny FAMILY FOLDER`: a tiny random model of a family and its processor, saved to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import UsageError, non_negative_int, tiny_family
from .common import quiet_transformers

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    from vtc.testing import build_tiny_model, build_tiny_processor

    folder: Path = args.folder
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"argument FOLDER: {folder} is a file; give the folder to write the checkpoint into")
    if folder.is_dir() and any(folder.iterdir()) and not args.force:
        raise UsageError(f"argument FOLDER: {folder} is not empty; give a new or empty folder, or add --force to "
                         "write into it")
    quiet_transformers()
    build_tiny_model(args.family, seed=args.seed).save_pretrained(folder)
    build_tiny_processor(args.family).save_pretrained(folder)
    print(f"wrote a tiny random {args.family} model (seed {args.seed}) and its processor to {folder}")
    print(f"measure it with: vtc ablate --model {folder}")
    return 0


def add_parser(commands, parents: list[argparse.ArgumentParser]) -> None:
    make_tiny = commands.add_parser("make-tiny", parents=parents,
                                    help="write a tiny random model of a family and its processor to a folder")
    make_tiny.add_argument("family", type=tiny_family, metavar="FAMILY",
                           help="a supported model type (`vtc info` lists them)")
    make_tiny.add_argument("folder", type=Path, metavar="FOLDER", help="where to save it (new or empty)")
    make_tiny.add_argument("--seed", type=non_negative_int, default=0, help="the random weights' seed (default 0)")
    make_tiny.add_argument("--force", action="store_true",
                           help="write into a folder that is not empty (files of the same names are replaced)")
    make_tiny.set_defaults(func=run)
