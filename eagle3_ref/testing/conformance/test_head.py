"""The token-predicting draft head.

Proofs:
* the head computes DESIGN's equations: an independent, loop-by-loop textbook version
  written from the official weights (embedding first in the concat, residual = hidden
  only, RoPE on (x_j, x_{j+d/2}) pairs, query head h reading kv head h // group);
* cached, tree-masked incremental logits equal re-running the head without cache on
  every root-to-node path (float64, random trees: DESIGN "what proven means" 2).
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eagle3_ref.draft_head import Eagle3Config
from eagle3_ref.testing.adapter import ReferenceAdapter, official_config_of, state_dict_of, tolerance
from eagle3_ref.testing.divergence import assert_same
from eagle3_ref.testing.strategies import build_draft_head, head_configs, seeds, target_configs, trees

pytestmark = pytest.mark.head


def setup_head(impl, config, seed, device, dtype=torch.float64, attn="sdpa"):
    """A random reference head, handed to ``impl`` in the official format."""
    gen = torch.Generator().manual_seed(seed + 1)
    embed = None if config.owns_embedding else torch.randn(config.vocab_size, config.hidden_size, generator=gen)
    ref = build_draft_head(config, seed, embed, dtype, device, attn)
    handle = impl.load_head(official_config_of(ref), state_dict_of(ref), ref.embed_weight)
    return ref, handle


def random_prefix(config, seed, T, device, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(0, config.vocab_size, (1, T), generator=gen).to(device)
    feats = torch.randn(1, T, config.num_aux_layers * config.target_hidden_size, generator=gen, dtype=dtype)
    return ids, feats.to(device), torch.arange(T, device=device)[None]


# -- the equations, written out independently -----------------------------------------------


def textbook_head(sd: dict, c: Eagle3Config, emb: torch.Tensor, hidden: torch.Tensor, pos: torch.Tensor):
    """One sequence, causal, no cache, every sum written out. emb, hidden: (T, H); pos: (T,)."""

    def rms(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps)

    def rope(x, p):  # x: (heads, d) at position p
        half = c.head_dim // 2
        out = x.clone()
        for j in range(half):
            angle = p * c.rope_theta ** (-2 * j / c.head_dim)
            a, b = x[:, j], x[:, j + half]
            out[:, j], out[:, j + half] = a * math.cos(angle) - b * math.sin(angle), b * math.cos(angle) + a * math.sin(angle)
        return out

    T, d, nh, nkv = emb.shape[0], c.head_dim, c.num_attention_heads, c.num_key_value_heads
    a = torch.cat([rms(emb, sd["midlayer.input_layernorm.weight"]), rms(hidden, sd["midlayer.hidden_norm.weight"])], -1)
    q = (a @ sd["midlayer.self_attn.q_proj.weight"].T).view(T, nh, d)
    k = (a @ sd["midlayer.self_attn.k_proj.weight"].T).view(T, nkv, d)
    v = (a @ sd["midlayer.self_attn.v_proj.weight"].T).view(T, nkv, d)
    q = torch.stack([rope(q[t], float(pos[t])) for t in range(T)])
    k = torch.stack([rope(k[t], float(pos[t])) for t in range(T)])
    out = torch.zeros(T, nh, d, dtype=emb.dtype)
    for t in range(T):
        for h in range(nh):
            g = h // (nh // nkv)
            scores = torch.stack([q[t, h] @ k[s, g] / math.sqrt(d) for s in range(t + 1)])
            w = torch.softmax(scores, 0)
            out[t, h] = sum(w[s] * v[s, g] for s in range(t + 1))
    h1 = hidden + out.reshape(T, nh * d) @ sd["midlayer.self_attn.o_proj.weight"].T
    x = rms(h1, sd["midlayer.post_attention_layernorm.weight"])
    gate, up = x @ sd["midlayer.mlp.gate_proj.weight"].T, x @ sd["midlayer.mlp.up_proj.weight"].T
    h2 = h1 + (torch.nn.functional.silu(gate) * up) @ sd["midlayer.mlp.down_proj.weight"].T
    return rms(h2, sd["norm.weight"]) @ sd["lm_head.weight"].T, h2


@given(config=st.deferred(lambda: target_configs(max_layers=3).flatmap(head_configs)), seed=seeds,
       T=st.integers(1, 6))
def test_head_computes_the_eagle3_equations(impl, config, seed, T):
    ref, handle = setup_head(impl, config, seed, "cpu")
    ids, feats, pos = random_prefix(config, seed, T, "cpu")
    hidden = impl.head_fuse(handle, feats)
    sd = state_dict_of(ref)
    assert_same(hidden, feats @ sd["fc.weight"].T, "fc(features)", **tolerance(impl, "fc"),
                where=("batch", "slot", "channel"))
    logits, out_hidden, _ = impl.head_step(handle, ids, hidden, pos, None, None)
    want_logits, want_hidden = textbook_head(sd, config, ref.embed(ids)[0], hidden[0], pos[0])
    assert_same(logits[0], want_logits, "head logits", **tolerance(impl, "logits"), where=("slot", "draft token"))
    assert_same(out_hidden[0], want_hidden, "head's pre-norm hidden output", **tolerance(impl, "logits"),
                where=("slot", "channel"))


# -- cached, tree-masked drafting == uncached re-runs --------------------------------------


def depths_of(parents: list[int]) -> list[int]:
    depth = [0] * len(parents)
    for i in range(1, len(parents)):
        depth[i] = depth[parents[i]] + 1
    return depth


def is_ancestor_or_self(parents: list[int], a: int, b: int) -> bool:
    while b != -1:
        if a == b:
            return True
        b = parents[b]
    return False


def draft_tree_incrementally(impl, handle, ids, hidden, parents, tokens, device):
    """Prefix once, then the tree level by level through the cache under a tree mask.

    Node 0 is the root: the last prefix slot. A node at depth d runs at position
    T - 1 + d with its parent's output hidden; it sees every prefix slot, its ancestors
    and itself. Returns {node: logits (V_d,)}.
    """
    T = ids.shape[1]
    logits, out, cache = impl.head_step(handle, ids, hidden, torch.arange(T, device=device)[None], None, None)
    node_logits, node_hidden = {0: logits[0, -1]}, {0: out[0, -1]}
    depth, fed = depths_of(parents), []
    for d in range(1, max(depth) + 1):
        level = [i for i in range(len(parents)) if depth[i] == d]
        keys = fed + level
        mask = torch.zeros(1, 1, len(level), T + len(keys), dtype=torch.bool, device=device)
        mask[..., :T] = True
        for r, i in enumerate(level):
            for c, j in enumerate(keys):
                mask[0, 0, r, T + c] = is_ancestor_or_self(parents, j, i)
        lg, out, cache = impl.head_step(
            handle,
            torch.tensor([[tokens[i] for i in level]], device=device),
            torch.stack([node_hidden[parents[i]] for i in level])[None],
            torch.full((1, len(level)), T - 1 + d, device=device),
            cache,
            mask,
        )
        for r, i in enumerate(level):
            node_logits[i], node_hidden[i] = lg[0, r], out[0, r]
        fed = keys
    return node_logits


def path_logits_without_cache(impl, handle, ids, hidden, path_tokens):
    """The naive oracle: re-run the whole sequence from scratch for every step of a path,
    feeding each step the previous step's output hidden (no cache, plain causal mask)."""
    ids, hidden = ids.clone(), hidden.clone()
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    logits, out, _ = impl.head_step(handle, ids, hidden, pos, None, None)
    for tok in path_tokens:
        ids = torch.cat([ids, torch.tensor([[tok]], device=ids.device)], 1)
        hidden = torch.cat([hidden, out[:, -1:]], 1)
        pos = torch.cat([pos, pos[:, -1:] + 1], 1)
        logits, out, _ = impl.head_step(handle, ids, hidden, pos, None, None)
    return logits[0, -1]


@given(config=st.deferred(lambda: target_configs(max_layers=3).flatmap(head_configs)), seed=seeds,
       T=st.integers(1, 8), parents=trees(max_nodes=10), data=st.data())
def test_cached_tree_drafting_equals_uncached_paths(impl, device, config, seed, T, parents, data):
    ref, handle = setup_head(impl, config, seed, device)
    ids, feats, _ = random_prefix(config, seed, T, device)
    hidden = impl.head_fuse(handle, feats)
    tokens = [None] + [data.draw(st.integers(0, config.vocab_size - 1)) for _ in parents[1:]]
    incremental = draft_tree_incrementally(impl, handle, ids, hidden, parents, tokens, device)
    reference = ReferenceAdapter()  # the same weights, the reference's own head
    for node in range(len(parents)):
        path, n = [], node
        while n > 0:
            path.append(tokens[n])
            n = parents[n]
        naive = path_logits_without_cache(impl, handle, ids, hidden, path[::-1])
        assert_same(incremental[node], naive, f"cached tree-masked logits of node {node} (parents {parents}) "
                    "against an uncached re-run of its path", **tolerance(impl, "tree_logits"), where=("draft token",))
        want = path_logits_without_cache(reference, ref, ids, ref.fuse(feats), path[::-1])
        assert_same(incremental[node], want, f"cached tree-masked logits of node {node} (parents {parents}) "
                    "against the reference head's on the same weights", **tolerance(impl, "tree_logits"),
                    where=("draft token",))
