"""The `vtc` console script: `main(argv)` runs a command line and returns its exit status.

`vtc --help` (the docstring of `vtc.cli.parser`) lists the commands. Each command is a module of its own (`info`,
`ablate`, `make_tiny`, `eval`, `train`): its options, and a `run` that checks what argparse cannot and calls the
library; `arguments` holds the argument types. `python -m vtc.cli.train_reference FAMILY` trains a reference model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from vtc.errors import VTCError

from .arguments import UsageError
from .parser import build_parser

__all__ = ["main"]


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
    args.command_line = ["vtc", *(sys.argv[1:] if argv is None else argv)]  # what a command's report quotes
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
