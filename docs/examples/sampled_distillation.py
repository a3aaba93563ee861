"""Self-distillation with greedy against sampled continuations: what each buys at T = 0 and 1.

Two EAGLE-3 heads for the toy target, identical but for their data: the target rewrites
each training sequence after 64 tokens, greedily for one head and sampling at temperature 1
for the other (``TrainConfig.regenerate_temperature``, ``eagle3-ref train
--regenerate-temperature 1``). Both are measured on the same held-out prompts at
temperature 0 and 1 (tau with the default tree). docs/bench.md records the numbers.

    python docs/examples/sampled_distillation.py --out runs/distil   # about 30 min on 2 CPU cores
    python docs/examples/sampled_distillation.py --out runs/distil --only sampled   # one head per process

Each head is a resumable ``train_head`` run under OUT/<kind>; run again to continue.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from eagle3_ref import TreeConfig, speculative_generate
from eagle3_ref.checkpoint import load_draft_head
from eagle3_ref.fusion import default_aux_layer_ids
from eagle3_ref.toy import corpus_text, held_out_prompts, load_toy, split_modules, stdlib_files
from eagle3_ref.train import TrainConfig, prepare_data, train_head

KINDS = {"greedy": 0.0, "sampled": 1.0}


def train(out: Path, kind: str, sequences: int, steps: int) -> Path:
    target, tokenizer, _ = load_toy()
    train_files, _ = split_modules(stdlib_files())
    config = TrainConfig(out_dir=str(out / kind), seq_len=256, batch_size=8, max_steps=steps, lr=1e-3, warmup_steps=30,
                         regenerate_prompt_tokens=64, regenerate_temperature=KINDS[kind], max_sequences=sequences,
                         save_every=50, resume=(out / kind / "latest").exists(), cache_dir=str(out / f"cache-{kind}"))
    layer_ids = default_aux_layer_ids(target.config.num_hidden_layers)
    data = prepare_data(target, corpus_text(train_files), tokenizer, config, layer_ids, progress=True)
    train_head(target, data, config, progress=True)
    return out / kind


@torch.no_grad()
def measure(head_dir: Path, prompts: int, new_tokens: int) -> dict[str, float]:
    target, tokenizer, _ = load_toy()
    head = load_draft_head(head_dir, target)
    result = {}
    for temperature in (0.0, 1.0):
        lengths = []
        generator = torch.Generator().manual_seed(0)
        for ids in held_out_prompts(tokenizer, count=prompts):
            out = speculative_generate(target, head, ids[None], max_new_tokens=new_tokens, tree=TreeConfig(),
                                       temperature=temperature, generator=generator)
            lengths += out.accepted_lengths
        result[f"tau_T{temperature:g}"] = statistics.fmean(lengths)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", choices=sorted(KINDS))
    parser.add_argument("--sequences", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = {}
    for kind in [args.only] if args.only else KINDS:
        head_dir = train(out, kind, args.sequences, args.steps)
        results[kind] = measure(head_dir, args.prompts, args.new_tokens)
        (out / f"{kind}.json").write_text(json.dumps(results[kind], indent=1) + "\n")
        print(kind, results[kind])
    return results


if __name__ == "__main__":
    main()
