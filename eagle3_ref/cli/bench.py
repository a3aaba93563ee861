"""``eagle3-ref bench``: tau and speedup of EAGLE-3 against plain decoding and SpS
(``--batch-sizes``: throughput against batch size; ``--shape``: :mod:`.bench_shape`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import bench_batches, bench_shape
from .common import add_pair_options, calibration_prompts, check_max_new_tokens, device_dtype, fail, read_text

CALIBRATION_PROMPTS, TEMPERATURES = bench_shape.CALIBRATION_PROMPTS, bench_shape.TEMPERATURES


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="tau and speedup of EAGLE-3 against plain decoding and SpS",
                           description="Acceptance length and speedup as Spec-Bench defines them, on the toy world's "
                                       "held-out prompts by default: plain transformers generate, the project's plain "
                                       "loop, assisted generation with a small draft LM (SpS), EAGLE-3 chain, small "
                                       "tree and default tree, at each temperature. Plus a per-phase cycle profile.")
    add_pair_options(bench)
    bench.add_argument("--assistant", help="draft LM for the SpS baseline (default: the toy's; none for --target)")
    bench.add_argument("--prompts", type=int, default=8, help="how many prompts (default 8)")
    bench.add_argument("--prompts-file", help="JSON lines with a \"prompt\" field, or one prompt per line")
    bench.add_argument("--chat", action="store_true", help="wrap --prompts-file prompts in the chat template")
    bench.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (default 3)")
    bench.add_argument("--temperatures", default=TEMPERATURES, help=f"comma-separated (default {TEMPERATURES})")
    bench.add_argument("--out", help="write bench.md, bench.json and bench.png here")
    bench.add_argument("--batch-sizes", help="e.g. 1,2,4,8: greedy total tokens/s of batched plain decoding and "
                                             "EAGLE-3 at each batch size instead (each must divide --prompts)")
    bench.add_argument("--no-profile", action="store_true", help="skip the per-phase cycle profile")
    bench.add_argument("--no-auto", action="store_true",
                       help="skip the cost-aware tree (its cost model and per-temperature calibration take ~1 min "
                            "on a CPU)")
    bench.add_argument("--calibration-prompts", type=int, default=CALIBRATION_PROMPTS,
                       help="held-out prompts the cost-aware tree calibrates on, taken from the end of the held-out "
                            f"list (default {CALIBRATION_PROMPTS}; with --prompts above 40 minus this, they overlap "
                            "the measured ones)")
    bench.add_argument("--shape", help="timing only: a target of this shape with random weights and its head "
                                       "(llama-3.1-8b, or a config.json): each fixed tree's cycle against a plain "
                                       "step, and the cost model; tau is a parameter, not measured")
    bench.add_argument("--shape-layers", type=int, help="with --shape: keep only the first N decoder layers")
    bench.add_argument("--quiet", action="store_true", help="no progress lines")
    bench.set_defaults(func=run, command_name="bench", aliases={"temperature": "--temperatures"})


def run(args: argparse.Namespace) -> int:
    import torch

    from .._checks import check_output_dir
    from ..tools import bench
    from ..tools.demo import DemoError, bench_prompts, encode_prompt, load_assistant, load_pair
    from ..toy import TOY_DIR

    try:
        temperatures = _check(args)
        if args.shape is not None:
            return bench_shape.run_shape(args)
        sizes = bench_batches.batch_sizes(args.batch_sizes) if args.batch_sizes is not None else None
        if args.out:  # before the measurement, which takes minutes
            check_output_dir("--out", args.out)
        device, dtype = device_dtype(args)
        target, tokenizer, head = load_pair(args.target, args.draft, device, dtype)
        assistant_dir = args.assistant or (TOY_DIR / "sps" if args.target is None else None)
        assistant = load_assistant(assistant_dir, target, device, dtype) if assistant_dir is not None else None
        if args.prompts_file:
            prompts = [encode_prompt(tokenizer, t, args.chat, device) for t in _read_prompts(args.prompts_file)]
            prompts = prompts[: args.prompts]
        else:  # the toy world's held-out code, in the target's tokenizer
            prompts = bench_prompts(tokenizer, args.prompts, device, reencode=bool(args.target))
        log = (lambda line: print(line, file=sys.stderr)) if not args.quiet else None
        if sizes is not None:
            return bench_batches.run_batches(args, sizes, target, head, prompts, tokenizer, device, log)
        trees = cost_model = None
        if not args.no_auto:  # calibrated on held-out prompts the bench does not measure
            trees, cost_model = bench.auto_trees(
                target, head, calibration_prompts(tokenizer, args, device, args.calibration_prompts), temperatures,
                max_new_tokens=min(64, args.max_new_tokens), progress=log)
        methods = bench.default_methods(with_sps=assistant is not None, with_auto=trees is not None)
        options = dict(max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id)
        with torch.no_grad():
            results = bench.run_bench(target, head, prompts, methods=methods, temperatures=temperatures,
                                      runs=args.runs, assistant=assistant, seed=args.seed, auto_trees=trees,
                                      progress=log, **options)
            profile = costs = auto_profile = None
            if not args.no_profile:
                profile = bench.profile_cycles(target, head, prompts, **options)
                greedy_auto = (trees or {}).get(0.0)
                if greedy_auto is not None and greedy_auto.drafts:  # how far cutting its bookkeeping could go
                    auto_profile = bench.profile_cycles(target, head, prompts, greedy_auto, **options)
                costs = bench.forward_costs(target, head)
    except (DemoError, ValueError) as err:
        return fail(args, err)
    baseline, machine = methods[0].name, bench.machine_description(device)
    text = bench.bench_report(results, baseline, f"Measured on {machine}, {args.dtype}; {len(prompts)} prompts x "
                              f"{args.max_new_tokens} new tokens, {args.runs} runs after a warm-up.", profile, costs,
                              auto_profile, trees)
    print(text)
    if not args.out:
        return 0
    meta = {"machine": machine, "device": str(device), "dtype": args.dtype, "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens, "runs": args.runs, "temperatures": list(temperatures),
            "target": args.target or "toy", "draft": args.draft or "toy", "baseline": baseline,
            "methods": [{"name": m.name, "kind": m.kind, "tree": m.tree and m.tree.describe()} for m in methods]}
    if trees:
        meta["auto"] = {f"{t:g}": tree.describe() for t, tree in trees.items()}
    files = (text, bench.to_json(results, profile, meta, costs, auto_profile), results, baseline, trees, cost_model)
    out, status = Path(args.out), 0
    try:
        plotted = bench.write_bench(out, *files)
    except OSError as err:  # the folder was writable when the bench began: keep minutes of results
        import tempfile

        out, status = Path(tempfile.mkdtemp(prefix="eagle3-bench-")), 1
        plotted = bench.write_bench(out, *files)
        print(f"eagle3-ref bench: error: --out {args.out} could not be written ({err.strerror}); the results are "
              f"in {out}", file=sys.stderr)
    if status == 0:
        print(f"\nwritten: {out / 'bench.md'}, {out / 'bench.json'}"
              + (f", {out / 'bench.png'}" if plotted else " (no plot: pip install matplotlib)"))
    return status


def _check(args: argparse.Namespace) -> tuple[float, ...]:
    """The options' own checks, before anything is loaded; the temperatures."""
    from .._checks import check_sampling
    from ..tools.demo import DemoError

    if args.runs < 1:
        raise DemoError(f"--runs must be at least 1, got {args.runs}")
    if args.prompts < 1:
        raise DemoError(f"--prompts must be at least 1, got {args.prompts}")
    if not 1 <= args.calibration_prompts <= 16:
        raise DemoError(f"--calibration-prompts must be in [1, 16] (the last held-out prompts), got "
                        f"{args.calibration_prompts}")
    check_max_new_tokens(args.max_new_tokens)
    if args.shape is None and args.shape_layers is not None:
        raise DemoError("--shape-layers needs --shape")
    try:
        temperatures = tuple(float(t) for t in args.temperatures.split(","))
    except ValueError:
        raise DemoError(f"--temperatures must be comma-separated numbers, got {args.temperatures!r}") from None
    for t in temperatures:
        check_sampling(t, 1.0, 0)
    if len(set(temperatures)) != len(temperatures):  # the summary would match neither group
        raise DemoError(f"--temperatures names a temperature twice: {args.temperatures}")
    return temperatures


def _read_prompts(path: str) -> list[str]:
    """A prompts file: JSON lines with a "prompt" field, or plain text, one prompt per line."""
    import json

    from ..tools.demo import DemoError

    lines = [line for line in read_text("--prompts-file", path).splitlines() if line.strip()]
    if not lines:
        raise DemoError(f"--prompts-file {path}: no prompts in it")
    if not lines[0].lstrip().startswith("{"):
        return lines
    try:
        return [json.loads(line)["prompt"] for line in lines]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DemoError(f"--prompts-file {path}: every JSON line needs a \"prompt\" field") from None
