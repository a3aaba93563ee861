"""``eagle3-ref bench --shape``: the cost side of a real model's shape, with random weights
(:mod:`eagle3_ref.tools.shapes`): each fixed tree's cycle against a plain step, and the cost model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import OptionError, device_dtype

CALIBRATION_PROMPTS, TEMPERATURES = 8, "0,1"  # bench's defaults, which --shape does not use


def run_shape(args: argparse.Namespace) -> int:
    """``bench --shape``: the cost side of a target shape with random weights (eagle3_ref.tools.shapes)."""
    from .._checks import check_output_dir
    from ..tools import bench, shapes

    given = {"--target": args.target, "--draft": args.draft, "--prompts-file": args.prompts_file,
             "--assistant": args.assistant, "--batch-sizes": args.batch_sizes, "--chat": args.chat,
             "--no-profile": args.no_profile, "--no-auto": args.no_auto,
             "--calibration-prompts": args.calibration_prompts != CALIBRATION_PROMPTS}
    for flag, value in given.items():
        if value:
            raise OptionError(f"{flag} does not apply with --shape: it times a random-weight target and head")
    if args.temperatures != TEMPERATURES:
        raise OptionError("--temperatures does not apply with --shape: it times greedy cycles (a fixed tree drafts and "
                          "verifies as much at any temperature)")
    if args.max_new_tokens < shapes.MIN_NEW_TOKENS:
        raise OptionError(f"--max-new-tokens must be at least {shapes.MIN_NEW_TOKENS} with --shape (cycles are timed "
                          f"between 2 new tokens and it), got {args.max_new_tokens}")
    if args.out:
        check_output_dir("--out", args.out)
    config = shapes.shape_config(args.shape, args.shape_layers)
    device, dtype = device_dtype(args)
    try:
        target, head = shapes.random_pair(config, device=device, dtype=dtype, seed=args.seed,
                                          draft_vocab_size=shapes.DRAFT_VOCAB.get(args.shape))
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds here
        raise OptionError(f"--shape {args.shape}: cannot build a causal LM and an EAGLE-3 head of this shape "
                          f"({str(err).strip().splitlines()[0]})") from None
    trees = {m.name: m.tree for m in bench.default_methods(with_sps=False, with_auto=False) if m.kind == "eagle3"}
    log = (lambda line: print(line, file=sys.stderr)) if not args.quiet else None
    timing = shapes.time_shape(target, head, trees, prompts=args.prompts, new_tokens=args.max_new_tokens,
                               runs=args.runs, seed=args.seed, progress=log)
    text = shapes.shape_report(timing, args.shape)
    print(text)
    if args.out:
        print("\nwritten: " + ", ".join(str(f) for f in shapes.write_shape(Path(args.out), args.shape, timing, text)))
    return 0
