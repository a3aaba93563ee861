"""The EAGLE-2-style baseline head (eagle3_ref/eagle2.py).

Proofs, in float64 on random tiny targets:
* one forward is EAGLE's formula, written out position by position from the weights: ``fc``
  over ``[embed ; feature]`` on every input, no input norm, the ``fc`` output as the
  residual, and the *predicted feature* as the hidden output that later steps are fed;
* drafting a tree with the cached, tree-masked head equals the brute-force builder that runs
  the head on every path from scratch;
* decoding with it is lossless: identical to transformers' greedy ``generate``;
* its loss is EAGLE's formula, written out one slot at a time;
* the saved head loads back equal, and only as what it is.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from eagle3_ref.checkpoint import save_draft_head
from eagle3_ref.decoding import speculative_generate
from eagle3_ref.draft_head import Eagle3Config
from eagle3_ref.eagle2 import (
    NOISE_STD,
    Eagle2DraftHead,
    eagle2_config,
    eagle2_loss,
    load_eagle2_head,
    save_eagle2_head,
    uniform_noise,
)
from eagle3_ref.fusion import collect_features, top_feature_id
from eagle3_ref.testing.conformance.test_generate import hf_greedy, tree_configs
from eagle3_ref.testing.conformance.test_tree import check_invariants
from eagle3_ref.testing.plugin import examples_per_architecture
from eagle3_ref.testing.strategies import build_draft_head, build_target, seeds, target_configs
from eagle3_ref.tree import build_draft_tree, build_draft_tree_naive

pytestmark = pytest.mark.head


def random_head(target, seed: int) -> Eagle2DraftHead:
    """Random weights wide enough (std 0.3, norms 1 +- 0.25) that the head's argmaxes move."""
    head = Eagle2DraftHead(eagle2_config(target))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3 if p.dim() >= 2 else 1 + 0.5 * (torch.rand(p.shape, generator=gen) - 0.5))
    return head.to(torch.float64).attach_target(target)


def naive_forward(head: Eagle2DraftHead, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """EAGLE-1's draft layer, one position at a time, from the weights (one sequence, causal).
    Returns the predicted features ``(T, H)``."""
    c, attn = head.config, head.self_attn
    T, nh, nkv, d = ids.shape[0], c.num_attention_heads, c.num_key_value_heads, c.head_dim
    z = torch.cat([head.embed_weight[ids], features], -1) @ head.fc.weight.T + head.fc.bias  # (T, H)
    inv = 1.0 / c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)

    def rope(x, pos):  # x (heads, d): rotate the two halves by angle pos * inv
        a, b = x[..., : d // 2], x[..., d // 2:]
        cos, sin = torch.cos(pos * inv), torch.sin(pos * inv)
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    q = [rope((z[i] @ attn.q_proj.weight.T).view(nh, d), i) for i in range(T)]
    k = [rope((z[i] @ attn.k_proj.weight.T).view(nkv, d), i) for i in range(T)]
    v = [(z[i] @ attn.v_proj.weight.T).view(nkv, d) for i in range(T)]
    out = []
    for i in range(T):
        heads = []
        for h in range(nh):
            g = h // (nh // nkv)
            scores = torch.stack([q[i][h] @ k[j][g] for j in range(i + 1)]) / d**0.5
            heads.append(sum(w * v[j][g] for j, w in enumerate(torch.softmax(scores, 0))))
        x = z[i] + torch.cat(heads) @ attn.o_proj.weight.T  # residual: the fc output
        n = head.post_attention_layernorm.weight * x / torch.sqrt(x.pow(2).mean() + c.rms_norm_eps)
        mlp = head.mlp
        out.append(x + (torch.nn.functional.silu(n @ mlp.gate_proj.weight.T) * (n @ mlp.up_proj.weight.T))
                   @ mlp.down_proj.weight.T)
    return torch.stack(out)


@given(tc=target_configs(max_layers=2), seed=seeds, T=st.integers(1, 6))
def test_one_forward_is_eagles_formula(tc, seed, T):
    target = build_target(tc, seed)
    head = random_head(target, seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, tc.vocab_size, (T,), generator=gen)
    features = torch.randn(T, tc.hidden_size, generator=gen, dtype=torch.float64)
    out = head(ids[None], features[None], torch.arange(T)[None])
    want = naive_forward(head, ids, features)
    torch.testing.assert_close(out.hidden[0], want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.logits[0], want @ target.get_output_embeddings().weight.T, rtol=1e-9, atol=1e-9)


@settings(max_examples=3 * examples_per_architecture())  # 9 in ci, 30 in dev, 150 in thorough
@given(tc=target_configs(max_layers=3), seed=seeds, T=st.integers(1, 6), data=st.data())
def test_drafting_equals_running_the_head_on_every_path(tc, seed, T, data):
    target = build_target(tc, seed)
    head = random_head(target, seed)
    ids = torch.randint(0, tc.vocab_size, (1, T + 1), generator=torch.Generator().manual_seed(seed))
    features = collect_features(target, ids[:, :T], (top_feature_id(tc.num_hidden_layers),))
    config = data.draw(tree_configs(tc.vocab_size))
    got = build_draft_tree(head, features, ids, config)
    want = build_draft_tree_naive(head, features, ids, config)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.parents, want.parents), (got, want)
    torch.testing.assert_close(got.scores.double(), want.scores, rtol=1e-9, atol=1e-9)
    check_invariants(got, config.num_nodes)


@settings(max_examples=3 * examples_per_architecture())
@given(tc=target_configs(max_layers=4, max_vocab=16), seed=seeds, new=st.integers(1, 16), data=st.data())
def test_decoding_with_it_is_lossless(tc, seed, new, data):
    target = build_target(tc, seed)
    head = random_head(target, seed + 1)
    prompt = torch.tensor([data.draw(st.lists(st.integers(0, tc.vocab_size - 1), min_size=1, max_size=8))])
    eos = data.draw(st.none() | st.integers(0, tc.vocab_size - 1))
    out = speculative_generate(target, head, prompt, max_new_tokens=new, tree=data.draw(tree_configs(tc.vocab_size)),
                               eos_token_id=eos)
    assert torch.equal(out.sequences, hf_greedy(target, prompt, new, eos))


def test_its_tokens_are_the_target_lm_head_of_its_feature():
    """The target's own top-layer feature, read by the head, gives the target's logits: the
    head drafts tokens in the target's vocabulary through the target's LM head, with no norm
    or head of its own in between."""
    from transformers import LlamaConfig

    target = build_target(LlamaConfig(vocab_size=12, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64), 5)
    head = random_head(target, 5)
    out = target(input_ids=torch.tensor([[1, 2, 3, 4]]), output_hidden_states=True)
    features = collect_features(target, torch.tensor([[1, 2, 3, 4]]), (2,))
    assert torch.equal(features, out.hidden_states[-1])
    torch.testing.assert_close(head.compute_logits(head.fuse(features)), out.logits)


@given(seed=seeds, B=st.integers(1, 3), T=st.integers(2, 7))
def test_the_loss_is_eagles_formula_slot_by_slot(seed, B, T):
    from transformers import LlamaConfig

    gen = torch.Generator().manual_seed(seed)
    target = build_target(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64), seed)
    head = random_head(target, seed)
    ids = torch.randint(0, 11, (B, T), generator=gen)
    mask = torch.randint(0, 2, (B, T), generator=gen)
    out = target(input_ids=ids, output_hidden_states=True)
    features, logits = out.hidden_states[-1], out.logits
    got = eagle2_loss(head, features, ids, logits, mask, noise_std=0.0)
    v_sum, p_sum, n = 0.0, 0.0, 0
    for b in range(B):
        for i in range(T - 1):  # slot i: feature i with token i+1, predicts feature i+1
            if not mask[b, i]:
                continue
            row_ids = torch.cat([ids[b, 1:i + 2]])[None]
            pred = head(row_ids, features[b:b + 1, :i + 1], torch.arange(i + 1)[None]).hidden[0, -1]
            v_sum = v_sum + F.smooth_l1_loss(pred, features[b, i + 1], reduction="mean")
            p = torch.softmax(logits[b, i + 1], -1)
            p_sum = p_sum - (p * torch.log_softmax(head.lm_head_weight @ pred, -1)).sum()
            n += 1
    n = max(n, 1)
    torch.testing.assert_close(got.feature_loss, torch.as_tensor(v_sum / n, dtype=torch.float64))
    torch.testing.assert_close(got.token_loss, torch.as_tensor(p_sum / n, dtype=torch.float64))
    torch.testing.assert_close(got.loss, got.feature_loss + 0.1 * got.token_loss)


def test_noise_is_eagles_uniform_noise_on_the_inputs_only():
    x = torch.zeros(2, 256, 8, dtype=torch.float64)
    noise = uniform_noise(x)
    bound = NOISE_STD * 512 / 256 / 2
    assert noise.abs().max() <= bound and noise.abs().max() > 0.9 * bound and abs(float(noise.mean())) < 0.01
    from transformers import LlamaConfig

    target = build_target(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64), 0)
    head = random_head(target, 0)
    ids = torch.randint(0, 11, (2, 6))
    out = target(input_ids=ids, output_hidden_states=True)
    torch.manual_seed(0)
    noisy = eagle2_loss(head, out.hidden_states[-1], ids, out.logits, torch.ones_like(ids))
    clean = eagle2_loss(head, out.hidden_states[-1], ids, out.logits, torch.ones_like(ids), noise_std=0.0)
    assert not torch.equal(noisy.loss, clean.loss)


def test_saved_head_loads_back_equal_and_only_as_itself(tmp_path):
    from transformers import LlamaConfig

    target = build_target(LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=12, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64), 1)
    head = random_head(target, 1).float()
    save_eagle2_head(head, tmp_path / "e2")
    loaded = load_eagle2_head(tmp_path / "e2", target)
    assert loaded.config.aux_layer_ids == (3,)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in head.state_dict().items())
    eagle3 = build_draft_head(Eagle3Config.for_target(target.config, aux_layer_ids=(0, 1, 2)), 1)
    save_draft_head(eagle3, tmp_path / "e3")
    with pytest.raises(ValueError, match="not an EAGLE-2-style head"):
        load_eagle2_head(tmp_path / "e3", target)
    with pytest.raises(ValueError, match="target_hidden_size"):
        Eagle2DraftHead(Eagle3Config.for_target(target.config, hidden_size=4, aux_layer_ids=(3,)))
