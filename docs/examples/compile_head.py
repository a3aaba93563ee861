"""Does ``torch.compile`` of the draft head's forward pay on this machine?

Times greedy decoding of held-out prompts with the toy pair (default tree and the 24/6/4
tree), with the head eager and with ``head.forward`` compiled (``dynamic=True``: the frontier,
the cache length and the number of new slots change from call to call). Compilation time is
reported apart; the timed runs come after a warm-up that compiles. docs/bench.md records the
numbers; the project does not compile by default because they do not show a gain here.

    python docs/examples/compile_head.py            # about 2-4 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time

import torch

from eagle3_ref import TreeConfig, speculative_generate
from eagle3_ref.toy import held_out_prompts, load_toy


def tokens_per_second(target, head, prompts, tree, new_tokens: int) -> float:
    start, n = time.perf_counter(), 0
    for ids in prompts:
        n += len(speculative_generate(target, head, ids, max_new_tokens=new_tokens, tree=tree).new_tokens)
    return n / (time.perf_counter() - start)


@torch.no_grad()
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    target, tokenizer, head = load_toy()
    prompts = [ids[None] for ids in held_out_prompts(tokenizer, count=args.prompts)]
    trees = {"60/8/10": TreeConfig(), "24/6/4": TreeConfig(24, 6, 4)}
    results = {}
    for name, tree in trees.items():
        tokens_per_second(target, head, prompts[:1], tree, 16)  # warm-up
        results[(name, "eager")] = tokens_per_second(target, head, prompts, tree, args.new_tokens)
    eager_forward = head.forward
    head.forward = torch.compile(eager_forward, dynamic=True)
    start = time.perf_counter()
    for tree in trees.values():  # compiles (and recompiles for the shapes a decode meets)
        tokens_per_second(target, head, prompts[:2], tree, args.new_tokens)
    compile_seconds = time.perf_counter() - start
    for name, tree in trees.items():
        results[(name, "compiled")] = tokens_per_second(target, head, prompts, tree, args.new_tokens)
    head.forward = eager_forward
    for name in trees:
        eager, compiled = results[(name, "eager")], results[(name, "compiled")]
        print(f"tree {name}: eager {eager:.1f} tokens/s, compiled head {compiled:.1f} tokens/s "
              f"({compiled / eager:.2f}x)")
    print(f"compiling (warm-up decodes included): {compile_seconds:.0f} s")
    return {"results": results, "compile_seconds": compile_seconds}


if __name__ == "__main__":
    main()
