"""``eagle3-ref demo``: decode a prompt speculatively, accepted tokens marked (the main command)."""

from __future__ import annotations

import argparse
import os
import sys

from .common import (
    TREE_ALIASES,
    add_pair_options,
    add_tree_options,
    calibration_prompts,
    check_max_new_tokens,
    device_dtype,
    fail,
    read_text,
    tree_config,
)


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="decode a prompt speculatively, accepted tokens marked (the main command)",
                          description="EAGLE-3 speculative decoding of one prompt, shown: accepted draft tokens "
                                      "marked, tau, tokens/s against plain decoding, and whether the outputs are "
                                      "equal. With no arguments: the shipped toy pair on a held-out prompt.")
    add_pair_options(demo)
    demo.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    demo.add_argument("--top-p", type=float, default=1.0)
    demo.add_argument("--top-k", type=int, default=0, help="0 = off")
    demo.add_argument("--prompt", help="prompt text (default: a held-out function from the toy world)")
    demo.add_argument("--prompt-file", help="read the prompt from this file")
    demo.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    add_tree_options(demo)
    demo.add_argument("--no-plain", action="store_true", help="skip the plain decoding run (no speedup, no equality)")
    demo.add_argument("--runs", type=int, default=3, help="timed runs of each, after a warm-up: the median and "
                                                          "the range are shown (default 3)")
    demo.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="mark accepted tokens with colour (auto: when printing to a terminal)")
    demo.set_defaults(func=run, command_name="demo", aliases=TREE_ALIASES)


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from .._checks import check_sampling
    from ..tools.demo import (
        DemoError,
        default_prompt,
        encode_prompt,
        load_pair,
        report,
        run_demo,
    )

    try:
        tree = tree_config(args)
        check_max_new_tokens(args.max_new_tokens)
        check_sampling(args.temperature, args.top_p, args.top_k)
        if args.tree == "auto" and args.chain is not None:
            raise DemoError("give --tree auto or --chain, not both")
        if args.runs < 1:
            raise DemoError(f"--runs must be at least 1, got {args.runs}")
        if args.prompt is not None and args.prompt_file is not None:
            raise DemoError("give --prompt or --prompt-file, not both")
        if args.prompt_file is not None:
            prompt = read_text("--prompt-file", args.prompt_file)
            if not prompt.strip():
                raise DemoError(f"--prompt-file {args.prompt_file} holds no text")
        else:
            prompt = args.prompt if args.prompt is not None else default_prompt()
        device, dtype = device_dtype(args)
        target, tokenizer, head = load_pair(args.target, args.draft, device, dtype)
        input_ids = encode_prompt(tokenizer, prompt, args.chat, device)
        limit = getattr(target.config.get_text_config(), "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] >= limit:  # named by where the prompt came from
            source = f"--prompt-file {args.prompt_file}" if args.prompt_file is not None else "--prompt"
            raise DemoError(f"{source}: the prompt is {input_ids.shape[1]} tokens, the target has {limit} positions")
        if args.tree == "auto":
            from ..tools.bench import auto_trees

            start = time.perf_counter()
            trees, _ = auto_trees(target, head, calibration_prompts(tokenizer, args, device)[:4],
                                  (args.temperature,), max_new_tokens=48)
            tree = trees[args.temperature]
            print(f"cost-aware tree: costs measured and calibrated at temperature {args.temperature:g} in "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
        with torch.no_grad():  # not set_grad_enabled(False): main() may run inside a larger program
            result = run_demo(target, tokenizer, head, input_ids, max_new_tokens=args.max_new_tokens, tree=tree,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                              plain=not args.no_plain, runs=args.runs)
    except (DemoError, ValueError) as err:
        return fail(args, err)
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    print(f"eagle3-ref demo: {args.target or 'the toy target'} + {args.draft or 'its EAGLE-3 head'}, "
          f"{device} {args.dtype}, {input_ids.shape[1]}-token prompt")
    print("-" * 72)
    return report(result, tokenizer, tokenizer.decode(input_ids[0]), tree, args.temperature, dtype, colour)
