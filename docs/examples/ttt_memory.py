"""Peak memory of training-time test: the dense (K*T)^2 mask vs the diagonal form.

One forward + backward of the TTT loss per run, each in a fresh subprocess so the peak
resident memory (ru_maxrss) belongs to that run alone. Run:
    python docs/examples/ttt_memory.py [--seq-len 2048] [--steps 7]
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def one_run(implementation: str, seq_len: int, steps: int, hidden: int) -> dict:
    import torch

    from eagle3_ref.draft_head import Eagle3Config, Eagle3DraftHead
    from eagle3_ref.ttt import ttt_forward, ttt_loss

    torch.manual_seed(0)
    config = Eagle3Config(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=4096, draft_vocab_size=2048)
    head = Eagle3DraftHead(config, torch.randn(4096, hidden))
    ids = torch.randint(0, 4096, (1, seq_len))
    feats = torch.randn(1, seq_len, 3 * hidden)
    target = torch.randn(1, seq_len, 4096)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = ttt_forward(head, feats, ids, steps, implementation=implementation)
    ttt_loss(out.logits, target, torch.ones(1, seq_len), head.t2d, head.d2t).loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"implementation": implementation, "seq_len": seq_len, "steps": steps, "hidden": hidden,
            "peak_rss_mib": peak / 1024, "increase_mib": (peak - base) / 1024, "seconds": time.perf_counter() - start}


def main(seq_len: int = 2048, steps: int = 7, hidden: int = 128) -> list[dict]:
    rows = []
    for implementation in ("diagonal", "dense"):
        code = (f"import json, sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); import ttt_memory; "
                f"print(json.dumps(ttt_memory.one_run({implementation!r}, {seq_len}, {steps}, {hidden})))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{implementation:<9} T={seq_len} K={steps} H={hidden}: peak RSS {r['peak_rss_mib']:7.0f} MiB "
              f"(+{r['increase_mib']:6.0f} MiB for forward+backward), {r['seconds']:.1f} s")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=128, help="head width (128 = the toy head)")
    args = parser.parse_args()
    main(args.seq_len, args.steps, args.hidden)
