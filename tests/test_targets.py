"""Targets beyond Llama (eagle3_ref/targets.py): each layer's visibility in a tree forward,
the cache compaction, refusing what cannot verify a tree, finding the decoder layers.

The central property, for every architecture of the matrix: one tree forward gives *every*
node exactly what plain decoding gives the last token of its root-to-node path (logits and
the whole residual stream), with prompts longer than the window and trees deeper than what
is left of it; and after the compaction the cache is exactly the cache ``generate`` builds
for the accepted text. With the verifier's exactness (test_verify: given the target's
distribution at each node, every emitted token has exactly that law), this makes sampled
decoding exact on every architecture, and greedy decoding equal to ``generate``
(conformance/test_generate.py checks that end to end).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from eagle3_ref.decoding import speculative_generate
from eagle3_ref.fusion import decoder_layers
from eagle3_ref.generate import compact_cache, tree_attention_masks
from eagle3_ref.targets import (
    LayerRule,
    cache_kwargs,
    check_tree_verifiable,
    exact_tree_nodes,
    keep_first_nodes,
    layer_rules,
    new_target_cache,
    trim_to_window,
    visible,
)
from eagle3_ref.testing.conformance.test_verify import token_trees
from eagle3_ref.testing.divergence import assert_same
from eagle3_ref.testing.plugin import examples_per_architecture
from eagle3_ref.testing.strategies import ARCHITECTURES, MATRIX_DTYPE, build_target, seeds, target_configs

pytestmark = pytest.mark.targets


@given(window=st.integers(1, 12), q=st.lists(st.integers(0, 40), min_size=1, max_size=6),
       k=st.lists(st.integers(0, 40), min_size=1, max_size=6))
def test_the_rules_are_transformers_own(window, q, k):
    # Catches an off-by-one in a window (k >= q - w) or a chunk rule on the wrong positions.
    from transformers.masking_utils import chunked_overlay, sliding_window_overlay

    qp, kp = torch.tensor(q), torch.tensor(k)
    assert torch.equal(visible(LayerRule("sliding_attention", window), qp, kp),
                       sliding_window_overlay(window)(0, 0, qp[:, None], kp[None, :]))
    assert torch.equal(visible(LayerRule("chunked_attention", window), qp, kp),
                       chunked_overlay(window, torch.zeros(1, dtype=torch.long))(0, 0, qp[:, None], kp[None, :]))
    assert bool(visible(LayerRule("full_attention"), qp, kp).all())


def _lineage(tree, node: int) -> list[int]:
    return tree.tree_mask[node].nonzero().flatten().tolist()  # ancestors in index order = root to node


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@settings(max_examples=examples_per_architecture())
@given(seed=seeds, data=st.data())
def test_a_tree_forward_gives_every_node_its_plain_decoding_state(arch, device, seed, data):
    tc = data.draw(target_configs(architectures=(arch,), min_layers=2, max_layers=5, max_vocab=24))
    target = build_target(tc, seed, MATRIX_DTYPE, device)
    atol = ARCHITECTURES[arch].atol
    P = data.draw(st.integers(1, 20), label="prompt length")  # windows are drawn 2..12: often crossed
    prompt = torch.tensor([data.draw(st.lists(st.integers(0, tc.vocab_size - 1), min_size=P, max_size=P))],
                          device=device)
    tree = data.draw(token_trees(tc.vocab_size, max_nodes=10))
    tree = keep_first_nodes(tree, exact_tree_nodes(target, P, tree.tree_position_ids))
    tree = tree._replace(tokens=tree.tokens.to(device), tree_mask=tree.tree_mask.to(device),
                         tree_position_ids=tree.tree_position_ids.to(device))
    with torch.no_grad():
        cache = new_target_cache(target)
        target(prompt, **cache_kwargs(target, cache), use_cache=True)
        for layer in cache.layers:
            trim_to_window(layer, P)
        masks = tree_attention_masks(target, cache, tree.tree_mask, tree.tree_position_ids, P, MATRIX_DTYPE)
        out = target(input_ids=tree.tokens[None], **cache_kwargs(target, cache), use_cache=True, attention_mask=masks,
                     position_ids=(P + tree.tree_position_ids)[None], output_hidden_states=True)
        for node in range(tree.num_nodes):
            path = tree.tokens[_lineage(tree, node)]
            plain = target(torch.cat([prompt, path[None]], 1), output_hidden_states=True)
            context = f"{arch}, layer types {layer_rules(target)}, prompt {P}, tree parents {tree.parents.tolist()}"
            assert_same(out.logits[0, node], plain.logits[0, -1], f"logits at tree node {node} ({context})",
                        atol=atol, where=("token",))
            got = torch.stack([h[0, node] for h in out.hidden_states])
            want = torch.stack([h[0, -1] for h in plain.hidden_states])
            assert_same(got, want, f"residual stream at tree node {node} ({context})", atol=atol,
                        where=("hidden_states index", "channel"))

        # Accept a random root-to-node path: the cache must be generate's for the accepted text.
        node = data.draw(st.integers(0, tree.num_nodes - 1), label="accepted node")
        keep = _lineage(tree, node)
        compact_cache(cache, P, keep)
        fresh = DynamicCache(config=target.config)
        target(torch.cat([prompt, tree.tokens[keep][None]], 1), **cache_kwargs(target, fresh), use_cache=True)
    for i, (got, want) in enumerate(zip(cache.layers, fresh.layers)):
        assert got.get_seq_length() == want.get_seq_length(), f"layer {i}: cache length after accepting {keep}"
        assert_same(got.keys, want.keys, f"layer {i} ({type(want).__name__}) keys after accepting nodes {keep}",
                    atol=atol)
        assert_same(got.values, want.values, f"layer {i} values after accepting nodes {keep}", atol=atol)


def test_a_recurrent_target_is_refused_by_name():
    from transformers import Qwen3NextConfig

    from eagle3_ref.draft_head import Eagle3Config
    from eagle3_ref.testing.strategies import build_draft_head

    config = Qwen3NextConfig(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=4,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=8, linear_num_value_heads=2,
                             linear_num_key_heads=1, linear_key_head_dim=8, linear_value_head_dim=8,
                             num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8,
                             shared_expert_intermediate_size=8, max_position_embeddings=64)
    target = build_target(config, 0)
    head = build_draft_head(Eagle3Config.for_target(config, aux_layer_ids=(0, 1, 2)), 0,
                            target.get_input_embeddings().weight)
    with pytest.raises(ValueError, match=r"Qwen3NextForCausalLM cannot verify a draft tree: layers \[0, 1, 2\] "
                                         r"are 'linear_attention'"):
        speculative_generate(target, head, torch.tensor([[1, 2, 3]]), max_new_tokens=4)


def test_an_unknown_layer_type_is_refused_by_name():
    class Config:
        layer_types = ["full_attention", "mamba", "mamba"]
        num_hidden_layers = 3

    class Hybrid(torch.nn.Module):
        config = Config()

    with pytest.raises(ValueError, match=r"Hybrid cannot verify a draft tree: layers \[1, 2\] are 'mamba'"):
        check_tree_verifiable(Hybrid())


def _tiny_llama4(layers: int, **kwargs):
    from transformers import Llama4TextConfig

    return Llama4TextConfig(vocab_size=16, hidden_size=8, head_dim=4, intermediate_size=8, intermediate_size_mlp=8,
                            num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                            num_local_experts=2, num_experts_per_tok=1, attention_chunk_size=4, **kwargs)


def test_decoder_layers_are_found_one_level_down():
    # Llama 4's get_decoder() returns the causal LM itself; a multimodal wrapper keeps the
    # language model under .language_model. Both must find the same ModuleList.
    from transformers import LlamaConfig

    lm = build_target(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=3,
                                  num_attention_heads=2, num_key_value_heads=1), 0)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.language_model = lm

    assert decoder_layers(Wrapper()) is lm.model.layers
    llama4 = build_target(_tiny_llama4(3), 0)
    assert len(decoder_layers(llama4)) == 3

    with pytest.raises(TypeError, match="cannot find the decoder layers of Linear"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_llama4_trees_stop_where_the_temperature_positions_would_differ():
    # The NoPE layers' temperature uses floor((prefix + index + 1) / floor_scale); a node at
    # depth d must get floor((prefix + d + 1) / floor_scale). With floor_scale 4 and a
    # prefix of 5: index 2 gives floor(8/4) = 2, a depth-1 node at index 2 floor(7/4) = 1.
    config = _tiny_llama4(2, no_rope_layers=[1, 0], floor_scale=4)
    target = build_target(config, 0)
    depths = torch.tensor([0, 1, 1, 2])
    assert exact_tree_nodes(target, 5, depths) == 2
    assert exact_tree_nodes(target, 5, torch.tensor([0, 1, 2, 3])) == 4  # a chain: index = depth
    config.attn_temperature_tuning = False
    assert exact_tree_nodes(target, 5, depths) == 4


def test_llama4_quirk_is_real_and_the_cut_tree_is_exact():
    # transformers' Llama 4 really scales a tree node by its index, not its depth: the uncut
    # forward differs from plain decoding at node 2 (if transformers fixes this, this test
    # says so, and eagle3_ref.targets.exact_tree_nodes can go). The nodes kept are exact.
    from eagle3_ref.tree import DraftTree, tree_buffers

    target = build_target(_tiny_llama4(2, no_rope_layers=[0, 0], floor_scale=2, attn_scale=0.5), 0)
    P, prompt = 5, torch.tensor([[1, 5, 2, 7, 3]])
    parents = torch.tensor([-1, 0, 0, 0, 1])
    mask, depth, retrieve = tree_buffers(parents)
    tree = DraftTree(torch.tensor([3, 4, 5, 6, 7]), parents, -depth.double(), mask, depth, retrieve)

    def tree_logits(tree):
        with torch.no_grad():
            cache = new_target_cache(target)
            target(prompt, **cache_kwargs(target, cache), use_cache=True)
            for layer in cache.layers:
                trim_to_window(layer, P)
            masks = tree_attention_masks(target, cache, tree.tree_mask, tree.tree_position_ids, P, torch.float64)
            return target(input_ids=tree.tokens[None], **cache_kwargs(target, cache), attention_mask=masks,
                          position_ids=(P + tree.tree_position_ids)[None]).logits[0]

    def plain_logits(tree, node):
        with torch.no_grad():
            return target(torch.cat([prompt, tree.tokens[_lineage(tree, node)][None]], 1)).logits[0, -1]

    uncut = tree_logits(tree)
    assert (uncut[2] - plain_logits(tree, 2)).abs().max() > 1e-3, "transformers now scales Llama 4 by position_ids"
    kept = keep_first_nodes(tree, exact_tree_nodes(target, P, tree.tree_position_ids))
    assert kept.num_nodes == 2 and kept.parents.tolist() == [-1, 0]
    cut = tree_logits(kept)
    for node in range(kept.num_nodes):
        assert_same(cut[node], plain_logits(kept, node), f"Llama 4 tree node {node} after the cut", atol=1e-5)


def test_the_cache_keyword_is_the_one_the_forward_takes():
    # transformers 5.24 renamed the forward's past_key_values to cache; the floor (5.15) and the
    # GPU machine's 5.17 take only the old name. Handing the new name to an old forward would
    # drop the cache silently (it lands in **kwargs): each class gets the name it declares.
    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, **kwargs):
            return past_key_values

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, **kwargs):
            return cache

    marker = object()
    for model in (Old(), New()):
        assert model(**cache_kwargs(model, marker)) is marker


def test_the_project_calls_transformers_without_deprecated_arguments():
    # Every call the project makes into a target, single and batched, greedy and sampled, the
    # plain loop, the bench's and the cost model's timings: none may raise a DeprecationWarning or
    # FutureWarning (transformers 5.25 warned on every forward given past_key_values, an argument
    # that goes in 5.40: the day it ships, a fresh install would break).
    import warnings

    from transformers import LlamaConfig

    from eagle3_ref.decoding import autoregressive_generate
    from eagle3_ref.draft_head import Eagle3Config
    from eagle3_ref.testing.strategies import build_draft_head
    from eagle3_ref.costaware import costs
    from eagle3_ref.tools import bench
    from eagle3_ref.tree import TreeConfig

    tc = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=256)
    target = build_target(tc, 0, torch.float32)
    head = build_draft_head(Eagle3Config.for_target(tc, aux_layer_ids=(0, 1, 2)), 0,
                            target.get_input_embeddings().weight, torch.float32)
    prompt, tree = torch.tensor([[1, 2, 3]]), TreeConfig(6, 2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        speculative_generate(target, head, prompt, max_new_tokens=6, tree=tree)
        speculative_generate(target, head, prompt, max_new_tokens=6, tree=tree, temperature=1.0,
                             generator=torch.Generator().manual_seed(0))
        speculative_generate(target, head, torch.tensor([[0, 1, 2], [3, 4, 5]]), max_new_tokens=6, tree=tree,
                             attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]), pad_token_id=0)
        autoregressive_generate(target, prompt, max_new_tokens=3)
        autoregressive_generate(target, torch.tensor([[0, 1], [2, 3]]), max_new_tokens=3,
                                attention_mask=torch.tensor([[0, 1], [1, 1]]), pad_token_id=0)
        bench.forward_costs(target, head, sizes=(1, 4), prefix=8, repeats=1)
        costs.measure_costs(target, head, top_k=2, max_depth=2, sizes=(1, 2), prefix=8, repeats=1)
    deprecated = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
                  if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecated == []
