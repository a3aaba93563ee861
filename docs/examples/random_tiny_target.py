"""Chain vs tree vs plain decoding on a random tiny Llama target with a random head.

An untrained head drafts noise, so tau stays near 1 and speculative decoding is *slower*
than plain decoding: this shows the machinery works (identical output, the bookkeeping),
not a speedup. Run:  python docs/examples/random_tiny_target.py [--new-tokens N]
"""

import argparse
import time

import torch
from transformers import LlamaConfig

from eagle3_ref import Eagle3Config, TreeConfig, autoregressive_generate, speculative_generate
from eagle3_ref.testing.strategies import build_draft_head, build_target


def main(new_tokens: int = 64, layers: int = 8) -> dict:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    target = build_target(config, seed=0, dtype=torch.float32)
    head = build_draft_head(Eagle3Config.for_target(config, draft_vocab_size=128), seed=0,
                            embed_weight=target.get_input_embeddings().weight, dtype=torch.float32)
    prompt = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    plain = autoregressive_generate(target, prompt, max_new_tokens=new_tokens)  # warm-up
    rows = {}
    for name, tree in [("plain", None), ("chain (top_k=1, 6 deep)", TreeConfig.chain(6)),
                       ("tree (EAGLE default 60/8/10)", TreeConfig()), ("tree (16/4/4)", TreeConfig(16, 4, 4))]:
        start = time.perf_counter()
        if tree is None:
            out = autoregressive_generate(target, prompt, max_new_tokens=new_tokens)
        else:
            out = speculative_generate(target, head, prompt, max_new_tokens=new_tokens, tree=tree)
        seconds = time.perf_counter() - start
        assert torch.equal(out.sequences, plain.sequences), name  # lossless
        rows[name] = (out.tau, new_tokens / seconds, out.timings)
        print(f"{name:<30} tau {out.tau:5.2f}   {new_tokens / seconds:7.1f} tokens/s   "
              + " ".join(f"{k} {v:.3f}s" for k, v in out.timings.items()))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    main(parser.parse_args().new_tokens)
