"""The `vtc` console script.

    vtc info                          supported families, versions, attention backends
    vtc ablate                        accuracy, visual tokens and FLOPs of every configuration of the grid on the
                                      reference models shipped with vtc, on every synthetic task
    vtc ablate --model FOLDER --data task:NAME|FILE.jsonl
                                      the same on a local checkpoint folder (nothing is downloaded), with latency
    vtc ablate --trained RUN [RUN ...]
                                      the same, with trained runs (vtc train output folders) as rows of their own
                                      next to the training-free row of their configuration
    vtc make-tiny FAMILY FOLDER       write a tiny random model of FAMILY and its processor to FOLDER
    vtc eval --model FOLDER --data task:NAME|FILE.jsonl
                                      accuracy, visual tokens and prefill FLOPs of a model on samples with answers
    vtc train --model FOLDER|reference:FAMILY --data task:NAME|FILE.jsonl --config FILE.json --stage STAGE
              --steps N --output FOLDER
                                      train a compressed model (the compressor, the whole language side or LoRA),
                                      with accuracy before and after; `torchrun --nproc_per_node N -m vtc.cli train`
                                      for several processes
    vtc --version
    vtc COMMAND --help                the options of a command

Every argument is checked before a model is built or anything is measured. An error is one line on stderr,
`vtc: error: <what is wrong and what to do>`, with exit status 2 for a wrong command line and 1 for a failure while
running (a checkpoint folder that does not load, a vtc error); Ctrl-C exits with 130. `--debug` (or the environment
variable VTC_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse

from vtc.version import __version__

from . import ablate, info, make_tiny, train
from . import eval as evaluate

__all__ = ["OneLineErrorParser", "build_parser"]


class OneLineErrorParser(argparse.ArgumentParser):
    """Prints a usage error as one line, `vtc: error: <message>`, and exits with status 2. (argparse would print the
    usage block first; `vtc COMMAND --help` shows it.)"""

    def error(self, message: str):
        self.exit(2, f"vtc: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the `vtc` command line (this module's docstring is its description): each command's options come
    from its module, and its `run` is the parsed arguments' `func`."""
    # --debug is accepted before and after the command; SUPPRESS keeps the command's parser from overwriting a
    # --debug given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="on an error, show the traceback instead of one line (also: VTC_DEBUG=1)")

    parser = OneLineErrorParser(prog="vtc", description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                parents=[debug])
    parser.add_argument("--version", action="version", version=f"vtc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (info, ablate, make_tiny, evaluate, train):
        command.add_parser(commands, parents=[debug])
    return parser
