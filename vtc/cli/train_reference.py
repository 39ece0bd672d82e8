"""Train the reference models: tiny real-class multimodal LLMs that solve the synthetic tasks, built from scratch.

    python -m vtc.cli.train_reference FAMILY [--out DIR] [--steps N] [--seed S]

The command line of `vtc.tasks.train_reference` (`train`, then `save`). The run stops as soon as the greedy test scores reach the targets (`TARGETS`) at `--confirm` evaluations in a row, or
at `--steps`; it writes the model, its processor and `training.json` into `--out` (default: where
`vtc.tasks.reference_model` loads it from).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .arguments import non_negative_int, positive_float, positive_int
from .parser import OneLineErrorParser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from vtc.tasks.train_reference import reference_folder, save, train
    from vtc.testing import REFERENCE_FAMILIES

    parser = OneLineErrorParser(prog="python -m vtc.cli.train_reference", description=__doc__.split("\n")[0])
    parser.add_argument("family", choices=REFERENCE_FAMILIES)
    parser.add_argument("--out", default=None, help="output folder (default: vtc/tasks/reference/FAMILY)")
    parser.add_argument("--steps", type=positive_int, default=3000, help="step cap (default 3000)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=2e-3)
    parser.add_argument("--eval-every", type=non_negative_int, default=100, help="0: no evaluation")
    parser.add_argument("--eval-size", type=positive_int, default=128)
    parser.add_argument("--confirm", type=positive_int, default=2,
                        help="stop once the targets are met at this many evaluations in a row (default 2)")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train(args.family, steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                   eval_every=args.eval_every, eval_size=args.eval_size, confirm=args.confirm)
    out = args.out or reference_folder(args.family)
    save(result, out, family=args.family, seed=args.seed,
         extra=dict(eval_size=args.eval_size, batch_size=args.batch_size, lr=args.lr, confirm=args.confirm,
                    threads=args.threads))
    print(f"saved {out}: {result['steps']} steps, {result['wall_seconds']:.0f}s, scores {result['scores']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
