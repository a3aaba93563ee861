"""Mutants: the reference with one realistic bug written into its source, to check that the
conformance suite alone catches each.

A peer or a student is judged by the conformance suite and nothing else (``tests/`` is this
project's own). So every bug the project knows how to make in a piece a peer implements
(fusion, head, vocab, TTT, tree, verify, generate, batch) must be caught through the adapter:

    python -m eagle3_ref.testing.mutants            # every mutant, a markdown table
    python -m eagle3_ref.testing.mutants -k FUSION  # those whose name contains FUSION

Each mutant copies the package to a temporary folder, replaces one exact piece of source (it
must occur exactly once: ``tests/test_oracle.py`` checks every mutant still applies), and runs
``pytest --pyargs eagle3_ref.testing.conformance -m PIECE`` there against the reference
adapter, which now runs the mutated code (or against ``adapter``, for code the reference
adapter does not run: the dense TTT mask). The mutant is *caught* when that run fails (exit 1);
a run that cannot even collect (exit 2-4) is reported as broken, not as caught. The table in
docs/testing.md is this module's output.

Where a bug is one the field shipped, ``field`` names the public thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Mutant", "MUTANTS", "MutantResult", "apply", "run_mutant", "markdown", "parser", "main"]

PACKAGE = Path(__file__).resolve().parents[1]  # eagle3_ref/


@dataclass(frozen=True)
class Mutant:
    name: str
    piece: str  # the conformance marker that must catch it
    file: str  # relative to eagle3_ref/
    old: str
    new: str
    bug: str
    field: str = ""  # a public thread where an implementation shipped this bug
    adapter: str = ""  # the adapter that runs the mutated code, if not the reference adapter


MUTANTS: tuple[Mutant, ...] = (
    # -- fusion
    Mutant("FUSION_OUTPUT_OF_LAYER", "fusion", "fusion.py",
           "return torch.cat([hidden_states[i] for i in layer_ids], dim=-1)",
           "return torch.cat([hidden_states[i + 1] for i in layer_ids], dim=-1)",
           "taps the output of layer i (hidden_states[i + 1]) where EAGLE-3 means its input",
           "SpecForge's layer ids are HF index - 1: mixing the conventions"),
    Mutant("FUSION_HIGH_TO_LOW", "fusion", "fusion.py",
           "return torch.cat([hidden_states[i] for i in layer_ids], dim=-1)",
           "return torch.cat([hidden_states[i] for i in reversed(tuple(layer_ids))], dim=-1)",
           "concatenates the tapped layers high to low"),
    Mutant("FUSION_PADDING_IGNORED", "fusion", "fusion.py",
           "out = target(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)",
           "out = target(input_ids=input_ids, attention_mask=None, output_hidden_states=True, use_cache=False)",
           "collects features of a left-padded batch without its attention mask"),
    # -- head
    Mutant("HEAD_HIDDEN_FIRST", "head", "draft_head.py",
           "return torch.cat([self.input_layernorm(emb), self.hidden_norm(hidden)], dim=-1)",
           "return torch.cat([self.hidden_norm(hidden), self.input_layernorm(emb)], dim=-1)",
           "concatenates the hidden input before the embedding in the attention input"),
    Mutant("HEAD_NO_MLP_RESIDUAL", "head", "draft_head.py",
           "return h + self.mlp(self.post_attention_layernorm(h))",
           "return self.mlp(self.post_attention_layernorm(h))",
           "drops the MLP block's residual"),
    Mutant("HEAD_ROPE_THETA_IGNORED", "head", "draft_head.py",
           "return 1.0 / (c.rope_theta**exponents)",
           "return 1.0 / (10000.0**exponents)",
           "the head's RoPE ignores the configured rope_theta (Llama 3: 500000)"),
    # -- vocab
    Mutant("VOCAB_D2T_ABSOLUTE", "vocab", "vocab.py",
           "d2t = kept - torch.arange(draft_vocab_size)",
           "d2t = kept",
           "stores absolute target ids in d2t where the format stores offsets"),
    Mutant("VOCAB_ORDERED_BY_FREQUENCY", "vocab", "vocab.py",
           "kept = order[:draft_vocab_size].sort().values",
           "kept = order[:draft_vocab_size]",
           "orders the draft vocabulary by frequency, not by token id (ModelOpt's d2t order)"),
    # -- ttt
    Mutant("TTT_STEPS_SEE_EARLIER_SLOTS", "ttt", "ttt.py",
           "mask[rows, s * T:(s + 1) * T] = diagonal  # steps 1..k, own slot only",
           "mask[rows, s * T:(s + 1) * T] = causal",
           "step k's queries see every earlier slot's keys of steps 1..k, not only their own slot's (the dense "
           "mask; the reference adapter runs the block-diagonal form, so this one is judged through the dense one)",
           adapter="eagle3_ref.testing.adapters.dense_ttt"),
    Mutant("TTT_POSITION_NOT_ADVANCED", "ttt", "ttt.py",
           "q, key, value = attn.qkv(x, positions + k)  # step k runs at position i + k",
           "q, key, value = attn.qkv(x, positions)",
           "runs every training-time-test step at position i, not i + k"),
    # -- tree
    Mutant("TREE_POSITION_PLUS_1", "tree", "tree.py",
           "depth = mask.sum(1) - 1",
           "depth = mask.sum(1)",
           "tree_position_ids = tree_mask.sum(-1), without the - 1"),
    Mutant("TREE_SCORES_NOT_CUMULATIVE", "tree", "tree.py",
           "scores = (frontier_scores[..., :, None] + logprobs.gather(-1, top)).flatten(-2)",
           "scores = (0 * frontier_scores[..., :, None] + logprobs.gather(-1, top)).flatten(-2)",
           "scores a child by its own log-prob, not its path's"),
    Mutant("TREE_DRAFT_POSITION_PLUS_1", "tree", "tree.py",
           "position = T - 1 + pool.depths[frontier[0]]",
           "position = T + pool.depths[frontier[0]]",
           "drafts each level one RoPE position too far", "sglang #25015"),
    Mutant("TREE_MASK_PARENT_ONLY", "tree", "tree.py",
           "closed = (mask.float() @ mask.float()) > 0",
           "closed = mask",
           "the tree mask lets a node see itself and its parent, not all its ancestors"),
    # -- verify
    Mutant("SAMPLING_NO_RENORM", "verify", "verify.py",
           "if px >= mass or (px > 0 and sampler.accept(px / mass)):",
           "if px >= mass or (px > 0 and sampler.accept(px)):",
           "after a rejection, accepts the next child with p(x), not p(x) renormalised"),
    Mutant("SAMPLING_RESIDUAL_KEEPS_REJECTED", "verify", "verify.py",
           "            p[x] = 0.0\n",
           "            pass\n",
           "a rejected child keeps its mass: the bonus can redraw it (a biased residual)", "vllm #54282"),
    Mutant("GREEDY_BONUS_FROM_THE_ROOT", "verify", "verify.py",
           "            return Verdict(accepted, best[node])",
           "            return Verdict(accepted, best[0])",
           "the greedy bonus is the target's argmax at the root, not at the last accepted node"),
    Mutant("WARPERS_REORDERED", "verify", "verify.py",
           "    if temperature != 1.0:\n        procs.append(TemperatureLogitsWarper(temperature))\n"
           "    if top_k > 0:\n        procs.append(TopKLogitsWarper(top_k))\n"
           "    if top_p < 1.0:\n        procs.append(TopPLogitsWarper(top_p))\n",
           "    if top_k > 0:\n        procs.append(TopKLogitsWarper(top_k))\n"
           "    if top_p < 1.0:\n        procs.append(TopPLogitsWarper(top_p))\n"
           "    if temperature != 1.0:\n        procs.append(TemperatureLogitsWarper(temperature))\n",
           "applies top-k and top-p before the temperature (transformers: temperature first)"),
    # -- generate
    Mutant("CACHE_DENSE_PREFIX", "generate", "generate.py",
           "compact_cache(cache, prefix_len, verdict.accepted)",
           "compact_cache(cache, prefix_len, range(len(verdict.accepted)))",
           "keeps the first len(accepted) tree slots of the target's cache, as if the accepted path were a "
           "dense prefix of the node list", "sglang #15360"),
    Mutant("FEATURES_DENSE_PREFIX", "generate", "generate.py",
           "features = select_features(out.hidden_states, layer_ids)[:, verdict.accepted]",
           "features = select_features(out.hidden_states, layer_ids)[:, :len(verdict.accepted)]",
           "carries the features of the first len(accepted) tree nodes, not the accepted ones"),
    Mutant("TARGET_POSITIONS_BY_INDEX", "generate", "generate.py",
           "position_ids=(prefix_len + depth)[None]",
           "position_ids=(prefix_len + torch.arange(len(depth), device=device))[None]",
           "verifies tree node i at position prefix + i, not prefix + depth"),
    Mutant("VERIFY_SEES_ONLY_THE_PREFIX", "generate", "generate.py",
           "allowed = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool, device=tree_mask.device), tree_mask], dim=1)",
           "allowed = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool, device=tree_mask.device), "
           "torch.eye(n, dtype=torch.bool, device=tree_mask.device)], dim=1)",
           "the verify forward lets each tree node see the prefix and itself, not its ancestors among the tree's "
           "tokens (its key range leaves out the verify tokens)", "the kind of sglang #40214"),
    Mutant("WINDOW_IGNORED_IN_VERIFY", "generate", "generate.py",
           "mask = mask.masked_fill(~visible(rule, q_pos, k_pos)[None, None], torch.finfo(dtype).min)",
           "mask = mask",
           "a sliding-window layer verifies the tree with the full-attention mask: keys beyond its window are read",
           "the kind of sglang #39160 / #39287"),
    Mutant("EOS_MID_BLOCK_MISSED", "generate", "generate.py",
           "        if t in eos:\n            return tokens[: i + 1], True",
           "        if t in eos and i == len(tokens[:room]) - 1:\n            return tokens[: i + 1], True",
           "an EOS accepted in the middle of a cycle's tokens is missed; generation runs past it",
           "transformers #47931"),
    Mutant("MAX_NEW_TOKENS_OVERSHOOT", "generate", "generate.py",
           "return tokens[:room], len(tokens) >= room",
           "return tokens, len(tokens) >= room",
           "appends a whole accepted path past max_new_tokens"),
    # -- batch (judged by the generate marker: batches go through the adapter's generate)
    Mutant("ROW_OFFSET_FROM_WIDTH", "generate", "batch.py",
           "return lengths[:, None] + tree_position_ids",
           "return lengths.max() + tree_position_ids",
           "every row's tree at the widest row's length: one offset for the batch"),
    Mutant("ONE_GENERATOR_LOSES_WARPERS", "generate", "batch.py",
           "return [Picker(temperature, top_k, top_p, g) for g in rows]",
           "return [Picker(temperature, 0, 1.0, g) for g in rows]",
           "a batch sampled with one generator drops top-k and top-p"),
    Mutant("COUNTS_FROM_WRONG_ROWS", "generate", "batch.py",
           "new = batch.new[rows]",
           "new = batch.new[:len(stay)]",
           "when a row finishes, the remaining rows take the leading rows' accepted counts", "vllm-ascend #13864"),
)


def apply(mutant: Mutant, package: Path = PACKAGE, into: Path | None = None) -> Path:
    """Write the mutated source of ``mutant`` into a copy of ``package`` under ``into`` (a new
    temporary folder if None); returns the folder holding the copied ``eagle3_ref``. Raises
    ``ValueError`` unless the mutant's source occurs exactly once."""
    source = (package / mutant.file).read_text()
    if source.count(mutant.old) != 1:
        raise ValueError(f"{mutant.name}: its source occurs {source.count(mutant.old)} times in {mutant.file}, "
                         f"not once: update the mutant to the code")
    root = Path(into or tempfile.mkdtemp(prefix=f"mutant-{mutant.name.lower()}-"))
    shutil.copytree(package, root / "eagle3_ref", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "eagle3_ref" / mutant.file).write_text(source.replace(mutant.old, mutant.new))
    return root


@dataclass(frozen=True)
class MutantResult:
    mutant: Mutant
    outcome: str  # "caught" | "missed" | "broken"
    seconds: float
    first_failure: str


def run_mutant(mutant: Mutant, package: Path = PACKAGE, extra: tuple[str, ...] = (), seed: int = 0) -> MutantResult:
    """Run the conformance suite's ``-m piece`` tests on the mutated package (the reference
    adapter), stopping at the first failure. Hypothesis draws from ``seed``, so a verdict is
    reproducible (the suite's profiles are not derandomised: another seed draws other examples)."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        root = apply(mutant, package, Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("EAGLE3_IMPL", None)
        start = time.perf_counter()
        impl = [f"--eagle3-impl={mutant.adapter}"] if mutant.adapter else []
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
                              f"--hypothesis-seed={seed}", "--pyargs", "eagle3_ref.testing.conformance", "-m", mutant.piece, *impl, *extra],
                             cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    failed = [line.split(" - ")[0] for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    outcome = {0: "missed", 1: "caught"}.get(run.returncode, "broken")
    return MutantResult(mutant, outcome, seconds, failed[0].split("::")[-1] if failed else "")


def markdown(results: list[MutantResult]) -> str:
    lines = ["| piece | mutant | the bug | field | caught by the conformance suite |", "|---|---|---|---|---|"]
    for r in results:
        m = r.mutant
        verdict = f"`{r.first_failure}`" if r.outcome == "caught" else f"**{r.outcome.upper()}**"
        lines.append(f"| {m.piece} ({m.file}) | `{m.name}` | {m.bug} | {m.field} | {verdict} |")
    caught = sum(r.outcome == "caught" for r in results)
    lines.append("")
    lines.append(f"{caught} of {len(results)} mutants caught by the conformance suite alone.")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eagle3_ref.testing.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="only mutants whose name contains this")
    parser.add_argument("--package", type=Path, default=PACKAGE, help="the eagle3_ref folder to mutate")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis' seed for every run (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    results = []
    for mutant in (m for m in MUTANTS if args.k.upper() in m.name):
        results.append(run_mutant(mutant, args.package.resolve(), seed=args.seed))
        r = results[-1]
        print(f"{r.mutant.name:32s} {r.outcome:7s} {r.seconds:6.1f} s  {r.first_failure}", flush=True)
    table = markdown(results)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0 if all(r.outcome == "caught" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
