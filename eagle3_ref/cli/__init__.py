"""The ``eagle3-ref`` command: one module per subcommand, each with ``add_parser(sub)``
(its options) and the function that runs it; what they share is in :mod:`.common`.

======================  ==============================================================
``info``                versions, devices and dtype support
``train``               train an EAGLE-3 head for a target (training-time test)
``demo``                decode a prompt speculatively, accepted tokens marked
``bench``               tau and speedup against plain decoding and SpS; ``--shape``
``check-head``          validate a head directory
``vectors``             golden vectors: export, check
``assignment``          course assignments: make, grade
``ablate``              what each EAGLE-3 idea buys, at toy scale
``gpu-check``           the GPU check in one bounded command
``toy``                 the toy world: train-target
======================  ==============================================================

The CLI is the outermost layer: it imports the core, the cost-aware tree, the tools and the
testing package; none of them imports it.
"""

from __future__ import annotations

import argparse
import sys

from . import (
    ablate,
    assignment,
    bench,
    check_head,
    convert,
    demo,
    gpu_check,
    info,
    toy,
    train,
    vectors,
)
from .common import version

__all__ = ["build_parser", "main"]

COMMANDS = (info, train, demo, bench, check_head, convert, vectors, assignment, ablate, gpu_check, toy)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle3-ref",
        description="Reference implementation of EAGLE-3 speculative decoding (arXiv 2503.01840).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('eagle3-ref')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])  # as typed, for the hints that repeat it
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)
