"""Golden vectors: the reference's inputs and outputs on disk, for implementations outside
Python (C++, CUDA, Rust) and for anyone who wants a check without hypothesis.

``export(dir)`` writes, from fixed seeds::

    manifest.json              schema version, conventions, models, and one entry per case
    models/<name>/             tiny random models: HF targets (save_pretrained) and EAGLE-3
                               heads in the official format (config.json + model.safetensors)
    cases/<case>.safetensors   the case's tensors: "input.<name>", "output.<name>" and, where
                               only some elements are meaningful, "compare.<name>" (bool,
                               same shape as the output: True = compared)

``check(dir, adapter)`` runs an :class:`~eagle3_ref.testing.adapter.Eagle3Adapter` on every
case and reports the first divergence of each output. The schema is documented in
``docs/vectors.md``; bump :data:`SCHEMA_VERSION` on any incompatible change.

Weights are stored in float32; expected outputs were computed in float64 from exactly
those weights, and the stated tolerances are for float64. A float32 implementation needs
looser ones for the float outputs, and its discrete outputs (tree tokens, accepted paths)
may then differ only where two candidates tie to float32 precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .divergence import assert_same
from .sampling import enumerate_verifier

__all__ = ["SCHEMA_VERSION", "export", "check", "CaseResult"]

SCHEMA_VERSION = 1
CONVENTIONS = {
    "layer_ids": "Hugging Face output_hidden_states indices: 0 = the embeddings, i = the residual stream "
                 "entering decoder layer i; features are concatenated low to high on the last dim",
    "draft_vocab": "target_id = draft_id + d2t[draft_id]; t2d[target_id] is True iff the token is in the draft "
                   "vocabulary; the kept tokens are the most frequent, ties to the lower id, sorted by id",
    "masks": "bool, True = may attend; keys ordered cache first, then the new slots",
    "tree": "num_nodes counts the root; max_depth = EAGLE's depth + 1; nodes in EAGLE's pool order "
            "(root, then by level, each level in order of cumulative draft log-prob)",
    "tree_position_ids": "the node's depth (root 0); the target sees position prefix_length + depth",
    "ttt": "step k, slot i is fed token x[i+k+1] at position i+k and predicts x[i+k+2]; loss weight 0.8**k",
    "padding": "-1 pads ragged integer outputs (accepted paths, retrieve indices, token sequences)",
}
FLOAT = dict(compare="close", rtol=1e-9, atol=1e-9)
EXACT = dict(compare="exact")
# What each dimension of an output means, so a divergence can be said in words.
DIMS = {
    ("fusion", "features"): ["batch", "slot", "channel"],
    ("head", "hidden"): ["batch", "slot", "channel"], ("head", "hidden_out"): ["batch", "slot", "channel"],
    ("head", "step2_hidden_out"): ["batch", "slot", "channel"],
    ("head", "logits"): ["batch", "slot", "draft token"], ("head", "step2_logits"): ["batch", "slot", "draft token"],
    ("vocab", "d2t"): ["draft id"], ("vocab", "t2d"): ["target id"],
    ("ttt", "logits"): ["step", "batch", "slot", "draft token"],
    ("tree", "tokens"): ["node"], ("tree", "parents"): ["node"], ("tree", "scores"): ["node"],
    ("tree", "tree_mask"): ["node", "key node"], ("tree", "tree_position_ids"): ["node"],
    ("tree", "retrieve_indices"): ["leaf row", "depth"],
    ("verify", "accepted"): ["accepted depth"], ("verify", "sequences"): ["outcome", "emitted token"],
    ("verify", "probabilities"): ["outcome"],
    ("generate", "sequences"): ["batch", "position"], ("generate", "accepted_lengths"): ["target forward"],
}


# -- the models -------------------------------------------------------------------------------


def _models() -> dict[str, Any]:
    """Two targets and their heads, built from fixed seeds, weights rounded to float32."""
    from transformers import LlamaConfig, Qwen2Config

    from eagle3_ref.draft_head import Eagle3Config
    from eagle3_ref.testing.strategies import build_draft_head, build_target

    def f32(model):  # store float32, compute float64 from exactly those values
        return model.float().double()

    llama = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=7,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    qwen2 = Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=128)
    small = LlamaConfig(vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    models = {"target_llama": f32(build_target(llama, 11)), "target_qwen2": f32(build_target(qwen2, 12)),
              "target_small": f32(build_target(small, 13))}
    # A GQA head with a draft vocabulary smaller than the target's, on the default layers (2, 3, 4).
    models["head"] = f32(build_draft_head(Eagle3Config.for_target(llama, draft_vocab_size=24), 14,
                                          models["target_llama"].get_input_embeddings().weight))
    # Every token in the draft vocabulary, so every token can be drafted (and accepted).
    models["head_small"] = f32(build_draft_head(Eagle3Config.for_target(small, aux_layer_ids=(0, 1, 2)), 15,
                                                models["target_small"].get_input_embeddings().weight))
    return models


def _save_models(models: dict, root: Path) -> dict:
    from eagle3_ref.checkpoint import save_draft_head

    entries = {}
    for name, model in models.items():
        path = root / "models" / name
        if name.startswith("head"):
            save_draft_head(model.float(), path)
            entries[name] = {"path": f"models/{name}", "format": "eagle3 official (config.json + model.safetensors)",
                             "target": "target_llama" if name == "head" else "target_small",
                             "note": "the token embedding is the target's (embed_tokens.weight)"}
        else:
            model.float().save_pretrained(path)
            model.double()
            entries[name] = {"path": f"models/{name}", "format": "huggingface (save_pretrained)",
                             "architecture": type(model).__name__}
    return entries


def _load_models(root: Path, manifest: dict, adapter) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    models: dict[str, Any] = {}
    for name, entry in manifest["models"].items():
        if not name.startswith("head"):
            models[name] = AutoModelForCausalLM.from_pretrained(root / entry["path"], dtype=torch.float64).eval()
    for name, entry in manifest["models"].items():
        if name.startswith("head"):
            path = root / entry["path"]
            config = json.loads((path / "config.json").read_text())
            state = {k: v.double() if v.is_floating_point() else v for k, v in load_file(path / "model.safetensors").items()}
            embed = models[entry["target"]].get_input_embeddings().weight.detach()
            models[name] = adapter.load_head(config, state, embed)
            models[f"{name}_d2t"], models[f"{name}_t2d"] = state["d2t"], state["t2d"]
    return models


# -- the cases ----------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    piece: str
    description: str
    models: dict[str, str]  # role -> model name
    params: dict[str, Any]
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    compare: dict[str, dict]  # output name -> {"compare": "exact"|"close", rtol, atol}
    masks: dict[str, Tensor] | None = None  # output name -> bool tensor of compared elements

    def entry(self) -> dict:
        return {"name": self.name, "piece": self.piece, "description": self.description, "models": self.models,
                "params": self.params, "file": f"cases/{self.name}.safetensors",
                "inputs": {k: _describe(v) for k, v in self.inputs.items()},
                "outputs": {k: self._output(k, v) for k, v in self.outputs.items()}}

    def _output(self, name: str, value: Tensor) -> dict:
        out = _describe(value) | self.compare[name]
        if (self.piece, name) in DIMS:
            out["dims"] = DIMS[self.piece, name]
        if self.masks and name in self.masks:
            out["compared"] = f"compare.{name}"
        return out


def _describe(t: Tensor) -> dict:
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}


def _tree_from(tokens: Tensor, parents: Tensor):
    from eagle3_ref.tree import DraftTree, tree_buffers

    mask, depth, retrieve = tree_buffers(parents)
    return DraftTree(tokens, parents, -depth.double(), mask, depth, retrieve)


def _pad(rows: list[list[int]], width: int) -> Tensor:
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.long)


def _emitted_law(outcomes, tree, width: int) -> tuple[Tensor, Tensor]:
    """Outcomes -> (emitted token sequences (M, width), their probabilities (M,)), sorted."""
    law: dict[tuple[int, ...], float] = {}
    for prob, accepted, bonus in outcomes:
        seq = tuple(int(tree.tokens[i]) for i in accepted[1:]) + (bonus,)
        law[seq] = law.get(seq, 0.0) + prob
    seqs = sorted(law)
    return _pad([list(s) for s in seqs], width), torch.tensor([law[s] for s in seqs], dtype=torch.float64)


def _cases(models: dict, ref) -> list[Case]:
    """Every case, its expected outputs computed by the reference adapter ``ref``."""
    from eagle3_ref.fusion import collect_features_by_hooks

    gen = torch.Generator().manual_seed(2025)
    llama, head = models["target_llama"], models["head"]
    layer_ids = (2, 3, 4)
    cases = []

    # fusion: GQA Llama with left padding; Qwen2 (q/k/v biases)
    ids = torch.randint(0, 40, (2, 7), generator=gen)
    pad = torch.ones(2, 7, dtype=torch.long)
    pad[1, :3] = 0
    feats = collect_features_by_hooks(llama, ids, layer_ids, pad)
    real = pad.bool()[..., None].expand_as(feats)
    cases.append(Case("fusion_llama_left_padded", "fusion", "collect_features on a GQA Llama, second row left-padded "
                      "by 3; padded slots are not compared", {"target": "target_llama"}, {"layer_ids": list(layer_ids)},
                      {"input_ids": ids, "attention_mask": pad}, {"features": torch.where(real, feats, 0)},
                      {"features": FLOAT}, {"features": real}))
    ids = torch.randint(0, 40, (1, 6), generator=gen)
    cases.append(Case("fusion_qwen2", "fusion", "collect_features on a Qwen2 target, layers (0, 1, 3)",
                      {"target": "target_qwen2"}, {"layer_ids": [0, 1, 3]}, {"input_ids": ids},
                      {"features": collect_features_by_hooks(models["target_qwen2"], ids, (0, 1, 3))}, {"features": FLOAT}))

    # head: fc, a causal step over a prefix, then a tree-masked step through the cache
    T = 5
    ids = torch.randint(0, 40, (1, T), generator=gen)
    feats = torch.randn(1, T, 3 * 16, generator=gen, dtype=torch.float64)
    hidden = ref.head_fuse(head, feats)
    logits, out, cache = ref.head_step(head, ids, hidden, torch.arange(T)[None], None, None)
    new_ids = torch.tensor([[7, 9, 3]])  # two children of the last slot, and a grandchild under the first
    new_hidden = torch.stack([out[0, -1], out[0, -1], out[0, -1] * 0.5])[None]
    new_pos = torch.tensor([[T, T, T + 1]])
    tree = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    mask = torch.cat([torch.ones(3, T, dtype=torch.bool), tree], 1)[None, None]
    logits2, out2, _ = ref.head_step(head, new_ids, new_hidden, new_pos, cache, mask)
    cases.append(Case("head_fuse_and_steps", "head", "head_fuse(features) -> hidden; head_step over the prefix "
                      "(causal, no cache) -> logits, hidden_out; head_step on 3 tree slots through that cache with "
                      "step2_attention_mask -> step2_logits, step2_hidden_out. GQA, draft vocab 24 of 40",
                      {"head": "head"}, {}, {"features": feats, "input_ids": ids, "position_ids": torch.arange(T)[None],
                                              "step2_input_ids": new_ids, "step2_hidden": new_hidden,
                                              "step2_position_ids": new_pos, "step2_attention_mask": mask},
                      {"hidden": hidden, "logits": logits, "hidden_out": out, "step2_logits": logits2,
                       "step2_hidden_out": out2}, dict.fromkeys(["hidden", "logits", "hidden_out", "step2_logits",
                                                                 "step2_hidden_out"], FLOAT)))

    # vocab: ties and zeros, fewer distinct tokens than the draft vocabulary
    counts = torch.tensor([0, 3, 3, 0, 7, 1, 1, 0, 0, 2, 3, 0, 0, 0, 5, 1])
    d2t, t2d = ref.build_vocab(counts, 10)
    cases.append(Case("vocab_ties_and_zeros", "vocab", "build_vocab(counts, 10): 9 distinct tokens seen, ties",
                      {}, {"draft_vocab_size": 10}, {"token_counts": counts}, {"d2t": d2t, "t2d": t2d},
                      {"d2t": EXACT, "t2d": EXACT}))

    # ttt: 3 steps over a right-padded batch of 2
    B, T, K = 2, 8, 3
    ids = torch.randint(0, 40, (B, T), generator=gen)
    feats = torch.randn(B, T, 48, generator=gen, dtype=torch.float64)
    pad = torch.ones(B, T, dtype=torch.long)
    pad[1, 6:] = 0
    target_logits = torch.randn(B, T, 40, generator=gen, dtype=torch.float64) * 3
    with torch.no_grad():
        steps = [x.detach() for x in ref.ttt_forward(head, feats, ids, K, pad)]
        loss = ref.ttt_loss(steps, target_logits, pad, models["head_t2d"], models["head_d2t"]).detach()
    counted = torch.zeros(K, B, T, 24, dtype=torch.bool)
    for k in range(K):
        for i in range(T - k - 1):
            counted[k, :, i] = pad[:, i].bool()[:, None]
    cases.append(Case("ttt_three_steps_padded", "ttt", "ttt_forward(features, input_ids, steps=3, attention_mask) -> "
                      "logits (K, B, T, V_d), compared at real slots whose input token exists; ttt_loss with "
                      "loss_mask = attention_mask and the head's d2t, t2d -> loss", {"head": "head"}, {"steps": K},
                      {"features": feats, "input_ids": ids, "attention_mask": pad, "target_logits": target_logits,
                       "d2t": models["head_d2t"], "t2d": models["head_t2d"]},
                      {"logits": torch.where(counted, torch.stack(steps), 0), "loss": loss},
                      {"logits": FLOAT, "loss": FLOAT}, {"logits": counted}))

    # tree: dynamic and chain, from the same prefix
    T = 6
    ids = torch.randint(0, 40, (1, T + 1), generator=gen)
    feats = torch.randn(1, T, 48, generator=gen, dtype=torch.float64)
    for name, (n, depth, k) in {"tree_dynamic": (16, 4, 3), "tree_chain": (6, 5, 1)}.items():
        t = ref.build_tree(head, feats, ids, n, depth, k)
        outs = {f: getattr(t, f).cpu() for f in ("tokens", "parents", "scores", "tree_mask", "tree_position_ids",
                                                 "retrieve_indices")}
        cases.append(Case(name, "tree", f"build_tree(features, input_ids, num_nodes={n}, max_depth={depth}, top_k={k})",
                          {"head": "head"}, {"num_nodes": n, "max_depth": depth, "top_k": k},
                          {"features": feats, "input_ids": ids}, outs,
                          {f: FLOAT if f == "scores" else EXACT for f in outs}))

    # verify: greedy on the dynamic tree; sampling's exact law on a small tree
    t = ref.build_tree(head, feats, ids, 16, 4, 3)
    logits = torch.randn(16, 40, generator=gen, dtype=torch.float64)
    for node in range(16):  # the target agrees with the tree's first child, so paths get accepted
        kids = t.children(node)
        if kids:
            logits[node, int(t.tokens[kids[0]])] += 6.0
    accepted, bonus = ref.verify_greedy(_tree_from(t.tokens, t.parents), logits)
    cases.append(Case("verify_greedy", "verify", "verify_greedy(tree built from tokens and parents, target_logits) "
                      "-> accepted node indices (root first, -1 padded to n), bonus token", {}, {},
                      {"tokens": t.tokens, "parents": t.parents, "target_logits": logits},
                      {"accepted": _pad([list(accepted)], 16)[0], "bonus": torch.tensor(bonus)},
                      {"accepted": EXACT, "bonus": EXACT}))
    tokens, parents = torch.tensor([1, 0, 2, 3, 2, 0]), torch.tensor([-1, 0, 0, 0, 1, 2])
    from eagle3_ref.verify import target_probs

    probs = target_probs(torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2, temperature=0.8, top_k=4)
    small = _tree_from(tokens, parents)
    seqs, law = _emitted_law(enumerate_verifier(lambda s: ref.verify_sampling(small, probs, s)), small, 3)
    cases.append(Case("verify_sampling_law", "verify", "the exact law of the tokens one sampling-verification cycle "
                      "emits (accepted drafts then the bonus), every random choice enumerated: sequences (M, "
                      "max_depth + 1), -1 padded, sorted, with their probabilities", {}, {},
                      {"tokens": tokens, "parents": parents, "target_probs": probs},
                      {"sequences": seqs, "probabilities": law}, {"sequences": EXACT, "probabilities": FLOAT}))

    # generate: greedy, with EOS; and a tiny vocabulary where every token is drafted (so it accepts)
    for name, target, h, prompt, (n, depth, k), new, eos in [
        ("generate_greedy_eos", "target_llama", "head", [[3, 17, 5, 22]], (12, 4, 3), 24, 28),
        ("generate_every_token_drafted", "target_small", "head_small", [[1, 2]], (37, 3, 4), 20, None),  # whole pool
    ]:
        p = torch.tensor(prompt)
        seq, lengths = ref.generate(models[target], models[h], p, max_new_tokens=new, num_nodes=n, max_depth=depth,
                                    top_k=k, eos_token_id=eos)
        cases.append(Case(name, "generate", f"greedy speculative decoding, tree {n}/{depth}/{k}, max_new_tokens={new}, "
                          f"eos_token_id={eos}: sequences equal the target's plain greedy decoding; accepted_lengths "
                          "are tokens appended per target forward after the prefill",
                          {"target": target, "head": h}, {"num_nodes": n, "max_depth": depth, "top_k": k,
                                                           "max_new_tokens": new, "eos_token_id": eos},
                          {"input_ids": p}, {"sequences": seq, "accepted_lengths": torch.tensor(lengths)},
                          {"sequences": EXACT, "accepted_lengths": EXACT}))

    # generate, batched: three left-padded prompts of different lengths, each row accepting its own
    # number of tokens per cycle and stopping at its own EOS (adapters without generate_batch: "batch 1 only")
    for name, target, h, prompts, (n, depth, k), new, eos in [
        ("generate_batch_ragged", "target_llama", "head", [[3, 17, 5, 22, 9, 1], [4], [8, 2, 30]], (12, 4, 3), 16, 28),
        ("generate_batch_every_token_drafted", "target_small", "head_small", [[1, 2, 3], [2], [3, 1]], (37, 3, 4), 16,
         3),
    ]:
        T = max(map(len, prompts))
        ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
        seq, lengths = ref.generate_batch(models[target], models[h], ids, mask, max_new_tokens=new, num_nodes=n,
                                          max_depth=depth, top_k=k, eos_token_id=eos, pad_token_id=-1)
        cases.append(Case(name, "generate", f"greedy speculative decoding of a left-padded batch (attention_mask), "
                          f"tree {n}/{depth}/{k}, max_new_tokens={new}, eos_token_id={eos}, pad_token_id=-1: each row "
                          "equals the target's plain greedy decoding of that row alone, finished rows padded with -1; "
                          "accepted_lengths (B, cycles), per row, -1 padded",
                          {"target": target, "head": h},
                          {"num_nodes": n, "max_depth": depth, "top_k": k, "max_new_tokens": new, "eos_token_id": eos,
                           "pad_token_id": -1},
                          {"input_ids": ids, "attention_mask": mask},
                          {"sequences": seq, "accepted_lengths": _pad(lengths, max(map(len, lengths)))},
                          {"sequences": EXACT, "accepted_lengths": EXACT}))
    return cases


def _quiet_transformers():
    """transformers' weight-loading progress bars, off (they would bury the report)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def export(directory: str | Path) -> dict:
    """Write the golden vectors to ``directory``; return the manifest."""
    from eagle3_ref import __version__
    from eagle3_ref.testing.adapter import ReferenceAdapter

    _quiet_transformers()
    root = Path(directory)
    (root / "cases").mkdir(parents=True, exist_ok=True)
    models = _models()
    entries = _save_models(models, root)
    # Expected outputs come from the reloaded files, exactly what a checker will see.
    ref = ReferenceAdapter()
    loaded = _load_models(root, {"models": entries}, ref)
    cases = _cases(loaded, ref)
    for case in cases:
        tensors = {f"input.{k}": v for k, v in case.inputs.items()} | {f"output.{k}": v for k, v in case.outputs.items()}
        tensors |= {f"compare.{k}": v for k, v in (case.masks or {}).items()}
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, root / f"cases/{case.name}.safetensors")
    manifest = {"schema_version": SCHEMA_VERSION, "generator": f"eagle3-ref {__version__}",
                "weights": "float32; expected outputs computed in float64 from them", "conventions": CONVENTIONS,
                "models": entries, "cases": [c.entry() for c in cases]}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# -- checking ----------------------------------------------------------------------------------


class BatchOneOnly(Exception):
    """A batched case for an adapter without ``generate_batch``: reported, not failed."""


@dataclass
class CaseResult:
    name: str
    piece: str
    error: str | None  # None: every output agrees (or the case was skipped)
    skipped: str | None = None  # why the case was not run ("batch 1 only")

    @property
    def ok(self) -> bool:
        return self.error is None


def _run(case: dict, x: dict[str, Tensor], params: dict, models: dict, impl) -> dict[str, Any]:
    """The implementation's outputs for one case."""
    piece, m = case["piece"], {role: models[name] for role, name in case["models"].items()}
    if piece == "fusion":
        return {"features": impl.collect_features(m["target"], x["input_ids"], tuple(params["layer_ids"]),
                                                  x.get("attention_mask"))}
    if piece == "head":
        hidden = impl.head_fuse(m["head"], x["features"])
        logits, out, cache = impl.head_step(m["head"], x["input_ids"], hidden, x["position_ids"], None, None)
        logits2, out2, _ = impl.head_step(m["head"], x["step2_input_ids"], x["step2_hidden"], x["step2_position_ids"],
                                          cache, x["step2_attention_mask"])
        return {"hidden": hidden, "logits": logits, "hidden_out": out, "step2_logits": logits2, "step2_hidden_out": out2}
    if piece == "vocab":
        d2t, t2d = impl.build_vocab(x["token_counts"], params["draft_vocab_size"])
        return {"d2t": d2t, "t2d": t2d}
    if piece == "ttt":
        with torch.no_grad():
            steps = impl.ttt_forward(m["head"], x["features"], x["input_ids"], params["steps"], x["attention_mask"])
            loss = impl.ttt_loss(steps, x["target_logits"], x["attention_mask"], x["t2d"], x["d2t"])
        return {"logits": torch.stack(list(steps)), "loss": loss}
    if piece == "tree":
        t = impl.build_tree(m["head"], x["features"], x["input_ids"], params["num_nodes"], params["max_depth"],
                            params["top_k"])
        return {f: getattr(t, f) for f in case["outputs"]}
    if piece == "verify":
        tree = _tree_from(x["tokens"], x["parents"])
        if "target_logits" in x:
            accepted, bonus = impl.verify_greedy(tree, x["target_logits"])
            return {"accepted": _pad([list(accepted)], tree.num_nodes)[0], "bonus": torch.tensor(int(bonus))}
        outcomes = enumerate_verifier(lambda s: impl.verify_sampling(tree, x["target_probs"], s))
        seqs, law = _emitted_law(outcomes, tree, case["outputs"]["sequences"]["shape"][1])
        return {"sequences": seqs, "probabilities": law}
    if piece == "generate" and "attention_mask" in x:
        if not callable(getattr(impl, "generate_batch", None)):
            raise BatchOneOnly("batch 1 only: the adapter has no generate_batch")
        seq, lengths = impl.generate_batch(m["target"], m["head"], x["input_ids"], x["attention_mask"],
                                           max_new_tokens=params["max_new_tokens"], num_nodes=params["num_nodes"],
                                           max_depth=params["max_depth"], top_k=params["top_k"],
                                           eos_token_id=params["eos_token_id"], pad_token_id=params["pad_token_id"])
        lengths = [list(row) for row in lengths]
        return {"sequences": seq, "accepted_lengths": _pad(lengths, max(map(len, lengths), default=0))}
    if piece == "generate":
        seq, lengths = impl.generate(m["target"], m["head"], x["input_ids"], max_new_tokens=params["max_new_tokens"],
                                     num_nodes=params["num_nodes"], max_depth=params["max_depth"], top_k=params["top_k"],
                                     eos_token_id=params["eos_token_id"])
        return {"sequences": seq, "accepted_lengths": torch.tensor(list(lengths))}
    raise ValueError(f"case {case['name']}: unknown piece {piece!r}")


def check(directory: str | Path, impl=None, only: str | None = None) -> list[CaseResult]:
    """Run ``impl`` (default: the reference) on every case of ``directory`` (or those whose
    name or piece is ``only``); one result per case."""
    from eagle3_ref.testing.adapter import (
        ReferenceAdapter,
        adapter_name,
        declared_pieces,
    )

    root = Path(directory)
    if not (root / "manifest.json").exists():
        raise ValueError(f"{root}: no manifest.json (write one with `eagle3-ref vectors export DIR`)")
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), list):
            raise ValueError("no list of cases")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{root}/manifest.json is damaged ({err}): export the vectors again") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{root}/manifest.json: schema_version {manifest.get('schema_version')!r}, this eagle3-ref "
                         f"reads {SCHEMA_VERSION}")
    impl = impl or ReferenceAdapter()
    pieces = declared_pieces(impl)
    _quiet_transformers()
    models = _load_models(root, manifest, impl)
    results = []
    for case in manifest["cases"]:
        if only and only not in (case["name"], case["piece"]):
            continue
        if case["piece"] not in pieces:  # not run: an undeclared piece would run the inherited reference
            results.append(CaseResult(case["name"], case["piece"], None,
                                      f"not implemented by {adapter_name(impl)}: {case['piece']}"))
            continue
        try:
            tensors = load_file(root / case["file"])
        except Exception as err:  # noqa: BLE001 - a missing or truncated case file fails that case alone
            results.append(CaseResult(case["name"], case["piece"],
                                      f"{case['file']} cannot be read ({str(err).splitlines()[0][:120]})"))
            continue
        x = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
        try:
            got = _run(case, x, case["params"], models, impl)
            for name, spec in case["outputs"].items():
                want = tensors[f"output.{name}"]
                have = torch.as_tensor(got[name]).detach().cpu()
                if "compared" in spec and have.shape == want.shape:
                    have = torch.where(tensors[spec["compared"]], have, torch.zeros((), dtype=have.dtype))
                tol = dict(rtol=spec["rtol"], atol=spec["atol"]) if spec["compare"] == "close" else {}
                assert_same(have, want, name, where=spec.get("dims"), **tol)
        except BatchOneOnly as why:
            results.append(CaseResult(case["name"], case["piece"], None, str(why)))
        except Exception as err:  # a crash is a failure of the case too, reported the same way
            results.append(CaseResult(case["name"], case["piece"], f"{type(err).__name__}: {err}"))
        else:
            results.append(CaseResult(case["name"], case["piece"], None))
    return results
