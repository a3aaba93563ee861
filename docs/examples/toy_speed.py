"""The shipped toy pair on held-out prompts: tau and tokens/s, plain vs EAGLE-3 (greedy).

A first look, not the benchmark (that is `eagle3-ref bench`, still to come). Run:
    python docs/examples/toy_speed.py [--prompts 8] [--new-tokens 64]
"""

import argparse
import time

import torch

from eagle3_ref import TreeConfig, autoregressive_generate, speculative_generate
from eagle3_ref.toy import held_out_prompts, load_toy


def main(prompts: int = 8, new_tokens: int = 64) -> dict:
    torch.manual_seed(0)
    target, tokenizer, head = load_toy()
    chosen = held_out_prompts(tokenizer, count=prompts)
    speculative_generate(target, head, chosen[0][None], max_new_tokens=8)  # warm-up
    rows = {}
    for name, tree in [("plain", None), ("chain (top_k=1, 6 deep)", TreeConfig.chain(6)),
                       ("tree 60/8/10 (EAGLE default)", TreeConfig()), ("tree 16/4/4", TreeConfig(16, 4, 4))]:
        lengths, seconds = [], 0.0
        for prompt in chosen:
            start = time.perf_counter()
            if tree is None:
                out = autoregressive_generate(target, prompt[None], max_new_tokens=new_tokens)
            else:
                out = speculative_generate(target, head, prompt[None], max_new_tokens=new_tokens, tree=tree)
                plain = autoregressive_generate(target, prompt[None], max_new_tokens=new_tokens)
                assert torch.equal(out.sequences, plain.sequences)  # lossless
            seconds += time.perf_counter() - start if tree is None else out_time(out)
            lengths += out.accepted_lengths or [1]
        rows[name] = (sum(lengths) / len(lengths), prompts * new_tokens / seconds)
        print(f"{name:<30} tau {rows[name][0]:4.2f}   {rows[name][1]:6.1f} tokens/s")
    return rows


def out_time(out) -> float:
    return sum(out.timings.values())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    main(args.prompts, args.new_tokens)
