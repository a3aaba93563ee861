"""``eagle3-ref toy``: the toy world: a small target trained on the Python standard library."""

from __future__ import annotations

import argparse

from .common import fail


def add_parser(sub) -> None:
    toy = sub.add_parser("toy", help="the toy world: a small target trained on the Python standard library")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND", required=True)
    tt = toy_sub.add_parser("train-target", help="train the toy target from scratch (CPU: about an hour; resumable)")
    tt.add_argument("--out", required=True)
    tt.add_argument("--layers", type=int, default=16,
                    help="decoder layers (16: the toy target; 2: the small draft LM of the SpS baseline)")
    tt.add_argument("--tokenizer", help="reuse this directory's tokenizer (a draft LM must share its target's)")
    tt.add_argument("--steps", type=int, default=1600)
    tt.add_argument("--batch-size", type=int, default=16)
    tt.add_argument("--seq-len", type=int, default=256)
    tt.add_argument("--lr", type=float, default=2e-3)
    tt.add_argument("--seed", type=int, default=0)
    group = tt.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true")
    group.add_argument("--overwrite", action="store_true")
    tt.add_argument("--quiet", action="store_true")
    tt.set_defaults(func=run, command_name="toy train-target",
                    aliases={"num_layers": "--layers", "tokenizer_dir": "--tokenizer"})


def run(args: argparse.Namespace) -> int:
    from ..toy import train_target

    try:
        train_target(args.out, num_layers=args.layers, tokenizer_dir=args.tokenizer, steps=args.steps,
                     batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, seed=args.seed, resume=args.resume,
                     overwrite=args.overwrite, progress=not args.quiet)
    except ValueError as err:
        return fail(args, err)
    return 0
