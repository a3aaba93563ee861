"""The dynamic draft tree (EAGLE-2 expansion and reranking).

Proofs (DESIGN "what proven means" 4): the batched, cached builder equals a brute-force
builder that scores every path by running the head on it alone; the buffers satisfy their
invariants; chain drafting (top_k = 1) is the special case it should be; the algorithm is
indifferent to where proposals come from (a perfect or an always-wrong proposer).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eagle3_ref.testing.adapter import official_config_of, state_dict_of
from eagle3_ref.testing.drafters import confident_logprobs, path_proposer
from eagle3_ref.testing.strategies import build_draft_head, head_configs, seeds, target_configs, trees
from eagle3_ref.tree import TreeConfig, build_draft_tree_naive, grow_tree, tree_buffers

pytestmark = pytest.mark.tree


@st.composite
def tree_configs(draw, draft_vocab: int, max_nodes: int = 24, max_depth: int = 4):
    top_k = draw(st.integers(1, min(4, draft_vocab)))
    depth = draw(st.integers(1, max_depth))
    pool = top_k + (depth - 1) * top_k**2
    return TreeConfig(num_nodes=draw(st.integers(2, min(pool, max_nodes) + 1)), max_depth=depth, top_k=top_k)


def _head_and_inputs(impl, config, seed, T, device):
    gen = torch.Generator().manual_seed(seed)
    embed = None if config.owns_embedding else torch.randn(config.vocab_size, config.hidden_size, generator=gen)
    ref = build_draft_head(config, seed, embed, torch.float64, device)
    handle = impl.load_head(official_config_of(ref), state_dict_of(ref), ref.embed_weight)
    ids = torch.randint(0, config.vocab_size, (1, T + 1), generator=gen).to(device)
    feats = torch.randn(1, T, config.num_aux_layers * config.target_hidden_size, generator=gen,
                        dtype=torch.float64).to(device)
    return ref, handle, ids, feats


def check_invariants(tree, num_nodes: int | None = None):
    n = tree.tokens.shape[0]
    parents = tree.parents.tolist()
    assert parents[0] == -1 and all(0 <= parents[i] < i for i in range(1, n)), "ancestor-closed, parents first"
    if num_nodes is not None:
        assert n == num_nodes
    ancestors = [set()] * n
    for i in range(1, n):
        ancestors[i] = ancestors[parents[i]] | {parents[i]}
    for i in range(n):
        assert tree.tree_mask[i].nonzero().flatten().tolist() == sorted(ancestors[i] | {i}), f"mask row {i}"
        assert int(tree.tree_position_ids[i]) == len(ancestors[i]), f"position of {i} = depth"
    leaves = [i for i in range(n) if i not in parents]
    rows = [[j for j in row if j >= 0] for row in tree.retrieve_indices.tolist()]
    assert sorted(row[-1] for row in rows) == leaves, "one row per leaf"
    for row in rows:
        assert row[0] == 0 and all(parents[b] == a for a, b in zip(row, row[1:])), "root-to-leaf chain"
    for i in range(n):  # every node lies on exactly the rows of the leaves below it
        below = {leaf for leaf in leaves if i == leaf or i in ancestors[leaf]}
        assert {row[-1] for row in rows if i in row} == below
    scores = tree.scores.tolist()
    assert all(scores[i] <= scores[parents[i]] + 1e-12 for i in range(1, n)), "a child never outscores its parent"


def _check_builder(impl, device, config, seed, T, tree_config):
    ref, handle, ids, feats = _head_and_inputs(impl, config, seed, T, device)
    got = impl.build_tree(handle, feats, ids, tree_config.num_nodes, tree_config.max_depth, tree_config.top_k)
    want = build_draft_tree_naive(ref, feats, ids, tree_config)
    assert got.tokens.tolist() == want.tokens.tolist()
    assert got.parents.tolist() == want.parents.tolist()
    torch.testing.assert_close(got.scores.cpu().double(), want.scores, rtol=1e-9, atol=1e-9)
    for name in ("tree_mask", "tree_position_ids", "retrieve_indices"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name
    check_invariants(got, tree_config.num_nodes)


@given(config=target_configs(max_layers=3).flatmap(head_configs), seed=seeds, T=st.integers(1, 6), data=st.data())
def test_builder_equals_brute_force(impl, device, config, seed, T, data):
    _check_builder(impl, device, config, seed, T, data.draw(tree_configs(config.draft_vocab_size)))


@given(config=target_configs(max_layers=3).flatmap(head_configs), seed=seeds, T=st.integers(1, 4))
def test_deep_whole_pool_equals_brute_force(impl, device, config, seed, T):
    """Every candidate kept, 5 levels: a level-4 node's draft attention must reach its
    grandparent and great-grandparent too, not only its parent (a bug the random,
    mostly shallow trees above rarely exercise)."""
    k = min(2, config.draft_vocab_size)
    tree_config = TreeConfig(num_nodes=1 + k + 4 * k * k, max_depth=5, top_k=k)
    _check_builder(impl, device, config, seed, T, tree_config)


@given(parents=trees(max_nodes=16))
def test_buffers_from_any_parent_array(parents):
    mask, depth, retrieve = tree_buffers(torch.tensor(parents))
    fake = type("T", (), {})()
    fake.tokens, fake.parents, fake.tree_mask = torch.zeros(len(parents)), torch.tensor(parents), mask
    fake.tree_position_ids, fake.retrieve_indices, fake.scores = depth, retrieve, -depth.double()
    check_invariants(fake)


@given(config=target_configs(max_layers=3).flatmap(head_configs), seed=seeds, length=st.integers(1, 5))
def test_chain_is_greedy_drafting(impl, config, seed, length):
    ref, handle, ids, feats = _head_and_inputs(impl, config, seed, 3, "cpu")
    tree = impl.build_tree(handle, feats, ids, length + 1, length, 1)
    assert tree.parents.tolist() == list(range(-1, length))
    # The chain is what drafting one argmax at a time gives.
    want = build_draft_tree_naive(ref, feats, ids, TreeConfig.chain(length))
    assert tree.tokens.tolist() == want.tokens.tolist()
    assert tree.retrieve_indices.tolist() == [list(range(length + 1))]


def _proposer(truth, vocab, wrong=False):
    """Proposes ``truth(path)`` with near certainty, or, when ``wrong``, least of all."""
    logprobs_of = lambda path: confident_logprobs(truth(path), vocab, wrong)  # noqa: E731
    return logprobs_of([]), path_proposer(logprobs_of)


@given(vocab=st.integers(4, 12), seed=seeds, data=st.data())
def test_perfect_and_always_wrong_proposers(vocab, seed, data):
    config = data.draw(tree_configs(vocab, max_depth=5))
    table = torch.randint(0, vocab, (vocab, 7), generator=torch.Generator().manual_seed(seed))
    truth = lambda path: int(table[path[-1] if path else 0, len(path)])  # noqa: E731 - any function of the path
    root_lp, propose = _proposer(truth, vocab)
    tree = grow_tree(0, root_lp, propose, config)
    check_invariants(tree, config.num_nodes)
    # The true continuation is drafted to the full depth (it is the top-scoring path).
    node, path = 0, []
    for _ in range(min(config.max_depth, config.num_nodes - 1)):
        kids = [c for c in tree.children(node) if int(tree.tokens[c]) == truth(path)]
        assert len(kids) == 1
        node = kids[0]
        path.append(int(tree.tokens[node]))
    root_lp, propose = _proposer(truth, vocab, wrong=True)
    tree = grow_tree(0, root_lp, propose, config)
    if config.top_k < vocab:  # with top_k == vocab even the worst token is proposed
        assert all(int(tree.tokens[c]) != truth([]) for c in tree.children(0))


def test_config_names_and_converters():
    assert TreeConfig() == TreeConfig.from_eagle(total_token=60, depth=7, top_k=10)
    assert TreeConfig() == TreeConfig(num_nodes=60, max_depth=8, top_k=10)
    assert TreeConfig().to_eagle() == {"total_token": 60, "depth": 7, "top_k": 10}
    sg = TreeConfig.from_sglang(speculative_num_steps=5, speculative_eagle_topk=8, speculative_num_draft_tokens=64)
    assert sg == TreeConfig(num_nodes=64, max_depth=5, top_k=8) and TreeConfig(**{"num_nodes": 64, "max_depth": 5,
                                                                                   "top_k": 8}).to_sglang()["speculative_num_steps"] == 5
    assert TreeConfig.chain(4) == TreeConfig(num_nodes=5, max_depth=4, top_k=1)
    assert TreeConfig().pool_size == 10 + 7 * 100


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_nodes=0), "num_nodes must be a positive int"),
    (dict(num_nodes=1), "counts the root"),
    (dict(max_depth=-1), "max_depth"),
    (dict(top_k=0), "top_k"),
    (dict(num_nodes=12, max_depth=2, top_k=2), "only produce 6 candidates"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TreeConfig(**kwargs)


def test_top_k_larger_than_draft_vocab_is_an_error():
    with pytest.raises(ValueError, match="exceeds the draft vocabulary"):
        grow_tree(0, torch.log_softmax(torch.randn(3), -1), lambda f, p: None, TreeConfig(num_nodes=4, max_depth=1, top_k=4))


@given(rows=st.integers(1, 4), width=st.integers(1, 40), data=st.data())
def test_best_breaks_ties_by_index(rows, width, data):
    # Values from a handful of integers (and -inf, as a masked logit): ties everywhere,
    # including across the k-th place, where torch.topk alone may pick any of the equals.
    from eagle3_ref.tree import _best

    k = data.draw(st.integers(1, width))
    values = torch.tensor(data.draw(st.lists(st.lists(st.sampled_from([0.0, -1.0, -2.0, -float("inf")]),
                                                      min_size=width, max_size=width), min_size=rows, max_size=rows)))
    got = _best(values, k)
    for row, chosen in zip(values.tolist(), got.tolist()):
        assert chosen == sorted(range(width), key=lambda i: (-row[i], i))[:k]
