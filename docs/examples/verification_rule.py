"""How much the verification rule itself limits acceptance at temperature 1.

EAGLE's tree verification tries the draft's top-k tokens as deterministic candidates
(q = 1): a candidate x is accepted with the target's probability p(x), a rejected one's mass
is removed and the next sibling tried, so a node accepts *some* child with probability
``sum of p over its top-k children``, however good the draft is. Speculative sampling (SpS)
draws one token from the draft's q and accepts it with min(1, p/q): probability
``sum_x min(p(x), q(x)) = 1 - TV(p, q)``, which tends to 1 as q tends to p.

This measures both first-step acceptance rates for the toy head at every position of
held-out code (teacher-forced: the target's features of the real text), at temperature 1,
plus what each rule would give with a perfect draft (q = p). docs/bench.md records them.

    python docs/examples/verification_rule.py      # a few seconds
"""

from __future__ import annotations

import argparse

import torch

from eagle3_ref.fusion import collect_features
from eagle3_ref.toy import held_out_prompts, load_toy


@torch.no_grad()
def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    target, tokenizer, head = load_toy()
    sums: dict[str, float] = {}
    count = 0
    for ids in held_out_prompts(tokenizer, count=args.prompts, length=128):
        ids = ids[None]
        p = torch.softmax(target(ids).logits[0, :-1].double() / args.temperature, -1)  # (T-1, V): next token
        features = collect_features(target, ids, head.config.aux_layer_ids)
        T = ids.shape[1] - 1
        out = head(ids[:, 1:], head.fuse(features[:, :T]), torch.arange(T)[None])  # slot i predicts token i + 2
        q_draft = torch.softmax(out.logits[0].double() / args.temperature, -1)  # (T, V_d)
        q = torch.zeros(T, p.shape[-1], dtype=torch.float64)
        q[:, torch.arange(q_draft.shape[-1]) + head.d2t.cpu()] = q_draft
        p_next, q_next = p[1:], q[:-1]  # both: the distribution of token i + 2
        for k in (1, 4, 10):
            top = q_next.topk(k, -1).indices
            sums[f"EAGLE rule, draft top-{k}"] = sums.get(f"EAGLE rule, draft top-{k}", 0.0) + \
                float(p_next.gather(-1, top).sum(-1).sum())
            top_ideal = p_next.topk(k, -1).indices
            sums[f"EAGLE rule, perfect draft top-{k}"] = sums.get(f"EAGLE rule, perfect draft top-{k}", 0.0) + \
                float(p_next.gather(-1, top_ideal).sum(-1).sum())
        sums["SpS rule, this draft (1 - TV)"] = sums.get("SpS rule, this draft (1 - TV)", 0.0) + \
            float(torch.minimum(p_next, q_next).sum(-1).sum())
        count += p_next.shape[0]
    rates = {name: total / count for name, total in sums.items()}
    rates["SpS rule, perfect draft"] = 1.0
    print(f"first-step acceptance at temperature {args.temperature:g}, {count} positions of held-out code:")
    for name, rate in sorted(rates.items(), key=lambda kv: kv[1]):
        print(f"  {rate:.3f}  {name}")
    return rates


if __name__ == "__main__":
    main()
