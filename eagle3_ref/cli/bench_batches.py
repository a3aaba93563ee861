"""``eagle3-ref bench --batch-sizes``: greedy total tokens/s of batched plain decoding and
EAGLE-3 at each batch size (docs/bench.md)."""

from __future__ import annotations

from pathlib import Path


def batch_sizes(text: str) -> tuple[int, ...]:
    from ..tools.demo import DemoError

    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise DemoError(f"--batch-sizes must be comma-separated ints, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise DemoError(f"--batch-sizes must each be >= 1, got {text!r}")
    return sizes


def run_batches(args, sizes, target, head, prompts, tokenizer, device, log) -> int:
    """``bench --batch-sizes``: greedy throughput against batch size (docs/bench.md)."""
    import torch

    from ..tools import bench
    from ..tools.demo import DemoError

    if any(len(prompts) % b for b in sizes):
        raise DemoError(f"--batch-sizes {args.batch_sizes}: each must divide --prompts ({len(prompts)}), "
                        "so every batch size decodes the same prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    with torch.no_grad():
        results = bench.run_batch_bench(target, head, prompts, batch_sizes=sizes, runs=args.runs,
                                        max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=pad, progress=log)
    machine = bench.machine_description(device)
    text = "\n".join([f"Measured on {machine}, {args.dtype}; {len(prompts)} prompts x {args.max_new_tokens} new "
                      f"tokens, greedy, in batches of each size; total tokens/s (mean of {args.runs} runs after a "
                      "warm-up).", "", bench.batch_table(results), "", bench.crossover_line(results)])
    print(text)
    if args.out:
        out = Path(args.out)
        meta = {"machine": machine, "device": str(device), "dtype": args.dtype, "prompts": len(prompts),
                "max_new_tokens": args.max_new_tokens, "runs": args.runs, "batch_sizes": list(sizes)}
        plotted = bench.write_batch_bench(out, text, meta, results)
        print(f"\nwritten: {out / 'bench_batch.md'}, {out / 'bench_batch.json'}"
              + (f", {out / 'bench_batch.png'}" if plotted else " (no plot: pip install matplotlib)"))
    return 0
