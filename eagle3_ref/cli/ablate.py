"""``eagle3-ref ablate``: what each EAGLE-3 idea buys, at toy scale."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import fail, ints


def add_parser(sub) -> None:
    ab = sub.add_parser(
        "ablate", help="what each EAGLE-3 idea buys: train variants on the toy with one budget, measure tau and n-α",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train draft-head variants for the toy target on the same self-distilled data, seed, steps and "
                    "batch, then measure on held-out prompts: tau with the default tree and with a chain of 7, and "
                    "n-α (the acceptance rate of the n-th chain draft, n = 1..7). Writes results.md, results.json, "
                    "tau.png, n_alpha.png (and scaling.png for several --data-sizes) in OUT; every run is "
                    "checkpointed under OUT/runs/ and an interrupted ablation resumes where it stopped.\n\n"
                    "variants:\n"
                    "  eagle3    EAGLE-3: low/mid/high fusion + training-time test, K = 7\n"
                    "  no-ttt    the same fusion, no training-time test (K = 1)\n"
                    "  top-only  training-time test (K = 7) from the top-layer feature alone, no fusion\n"
                    "  eagle2    EAGLE-2-style head: top-layer feature, feature regression (smooth L1) +\n"
                    "            0.1 x token cross entropy, no training-time test\n"
                    "  eagle3-lm (a diagnostic, not run by default) eagle3 with its lm_head started from\n"
                    "            the target's LM head\n\n"
                    "the data-scaling experiment: --variants eagle3,eagle2 --data-sizes 300,600,1200,2400\n"
                    "(with --early-stopping N each run trains until its held-out loss stops falling, --steps\n"
                    "being only a cap, and the head of the lowest held-out loss is measured)")
    ab.add_argument("--out", required=True, help="output directory (resumes what is there)")
    ab.add_argument("--variants", default="eagle3,no-ttt,top-only,eagle2", help="comma-separated (default: all four)")
    ab.add_argument("--data-sizes", default="2400",
                    help="training sequences, comma-separated; nested subsets of one sample (default 2400)")
    ab.add_argument("--steps", type=int, default=400, help="training steps of every run (default 400)")
    ab.add_argument("--batch-size", type=int, default=8)
    ab.add_argument("--seq-len", type=int, default=256)
    ab.add_argument("--lr", type=float, default=1e-3)
    ab.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts (default 8)")
    ab.add_argument("--eval-new-tokens", type=int, default=96, help="tokens generated per prompt (default 96)")
    ab.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    ab.add_argument("--early-stopping", type=int, default=0, metavar="N",
                    help="stop each run after N held-out evaluations without a lower held-out loss and measure the "
                         "head of the lowest (default 0: every run trains exactly --steps)")
    ab.add_argument("--min-improvement", type=float, default=0.0, metavar="FRACTION",
                    help="with --early-stopping: a held-out loss improves only when it is below the best by more "
                         "than this fraction of it (e.g. 0.005; default 0: any lower loss)")
    ab.add_argument("--eval-every", type=int, default=50,
                    help="with --early-stopping: steps between held-out evaluations (default 50)")
    ab.add_argument("--held-out-sequences", type=int, default=64,
                    help="with --early-stopping: held-out sequences for the loss (default 64)")
    ab.add_argument("--seed", type=int, default=0)
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    ab.set_defaults(func=run, command_name="ablate", aliases={"out_dir": "--out"})


def run(args: argparse.Namespace) -> int:
    try:
        from .._checks import check_output_dir
        from ..tools.ablate import AblateConfig

        config = AblateConfig(
            out_dir=args.out, variants=tuple(v.strip() for v in args.variants.split(",")),
            data_sizes=tuple(ints(args.data_sizes, "--data-sizes")), steps=args.steps, batch_size=args.batch_size,
            seq_len=args.seq_len, lr=args.lr, eval_prompts=args.eval_prompts, eval_new_tokens=args.eval_new_tokens,
            seed=args.seed, save_every=args.save_every, early_stopping=args.early_stopping, eval_every=args.eval_every,
            min_improvement=args.min_improvement,
            held_out_sequences=args.held_out_sequences)
        check_output_dir("--out", args.out)
    except ValueError as err:
        return fail(args, err)
    import torch

    from ..tools.ablate import run_ablation
    from ..toy import (
        corpus_text,
        held_out_prompts,
        load_toy,
        split_modules,
        stdlib_files,
    )

    torch.manual_seed(args.seed)
    target, tokenizer, _ = load_toy()
    train_files, held_files = split_modules(stdlib_files())
    prompts = held_out_prompts(tokenizer, count=config.eval_prompts)
    if len(prompts) < config.eval_prompts:  # before anything is written
        return fail(args, f"--eval-prompts {config.eval_prompts}: the held-out modules hold {len(prompts)} prompts; "
                           f"ask for at most {len(prompts)}")
    try:
        run_ablation(target, tokenizer, corpus_text(train_files), prompts, config, progress=not args.quiet,
                     held_out_text=corpus_text(held_files) if config.early_stopping else None)
    except ValueError as err:
        return fail(args, err)
    print((Path(args.out) / "results.md").read_text())
    print(f"results, plots and every run in {args.out}")
    return 0
