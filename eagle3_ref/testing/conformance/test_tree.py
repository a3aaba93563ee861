"""The dynamic draft tree (EAGLE-2 expansion and reranking).

Proofs (DESIGN "what proven means" 4): the batched, cached builder equals a brute-force
builder that scores every path by running the head on it alone; the buffers satisfy their
invariants; chain drafting (top_k = 1) is the special case it should be.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eagle3_ref.testing.adapter import official_config_of, state_dict_of, tolerance
from eagle3_ref.testing.divergence import assert_same
from eagle3_ref.testing.strategies import build_draft_head, head_configs, seeds, target_configs
from eagle3_ref.tree import TreeConfig

# --- not in the skeleton: the brute-force builder is a naive twin of the tree task; its tests are held back
from eagle3_ref.tree import build_draft_tree_naive  # noqa: E402
# --- end not in the skeleton

pytestmark = pytest.mark.tree


@st.composite
def tree_configs(draw, draft_vocab: int, max_nodes: int = 24, max_depth: int = 4):
    top_k = draw(st.integers(1, min(4, draft_vocab)))
    depth = draw(st.integers(1, max_depth))
    pool = top_k + (depth - 1) * top_k**2
    return TreeConfig(num_nodes=draw(st.integers(2, min(pool, max_nodes) + 1)), max_depth=depth, top_k=top_k)


def head_and_inputs(impl, config, seed, T, device):
    gen = torch.Generator().manual_seed(seed)
    embed = None if config.owns_embedding else torch.randn(config.vocab_size, config.hidden_size, generator=gen)
    ref = build_draft_head(config, seed, embed, torch.float64, device)
    handle = impl.load_head(official_config_of(ref), state_dict_of(ref), ref.embed_weight)
    ids = torch.randint(0, config.vocab_size, (1, T + 1), generator=gen).to(device)
    feats = torch.randn(1, T, config.num_aux_layers * config.target_hidden_size, generator=gen,
                        dtype=torch.float64).to(device)
    return ref, handle, ids, feats


def check_invariants(tree, num_nodes: int | None = None):
    """The buffers' invariants, from the parent array alone."""
    n = tree.tokens.shape[0]
    parents = tree.parents.tolist()
    assert parents[0] == -1 and all(0 <= parents[i] < i for i in range(1, n)), \
        f"parents {parents}: the root first (-1), every parent before its child"
    if num_nodes is not None:
        assert n == num_nodes, f"the tree has {n} nodes, asked for {num_nodes} (root included)"
    ancestors = [set()] * n
    for i in range(1, n):
        ancestors[i] = ancestors[parents[i]] | {parents[i]}
    want_mask = torch.tensor([[j in ancestors[i] or j == i for j in range(n)] for i in range(n)])
    assert_same(tree.tree_mask, want_mask, f"tree_mask (= node sees itself and its ancestors; parents {parents})",
                where=("row (node)", "column (key)"))
    assert_same(tree.tree_position_ids, [len(a) for a in ancestors], f"tree_position_ids (= depth; parents {parents})",
                where=("node",))
    leaves = [i for i in range(n) if i not in parents]
    rows = [[j for j in row if j >= 0] for row in tree.retrieve_indices.tolist()]
    assert sorted(row[-1] for row in rows) == leaves, f"retrieve_indices {rows}: one row per leaf {leaves}"
    for row in rows:
        assert row[0] == 0 and all(parents[b] == a for a, b in zip(row, row[1:])), \
            f"retrieve_indices row {row} is not a root-to-leaf chain of parents {parents}"
    for i in range(n):  # every node lies on exactly the rows of the leaves below it
        below = {leaf for leaf in leaves if i == leaf or i in ancestors[leaf]}
        assert {row[-1] for row in rows if i in row} == below, f"node {i} must lie on the rows of leaves {below}"
    scores = tree.scores.tolist()
    bad = [i for i in range(1, n) if scores[i] > scores[parents[i]] + 1e-12]
    assert not bad, f"node {bad[:1]} outscores its parent: cumulative log-probs never rise"


@given(config=target_configs(max_layers=3).flatmap(head_configs), seed=seeds, T=st.integers(1, 6), data=st.data())
def test_buffers_satisfy_their_invariants(impl, device, config, seed, T, data):
    """From the parent array alone, without an oracle: what students see before the brute-force
    comparisons below, which the course assignment holds back."""
    _, handle, ids, feats = head_and_inputs(impl, config, seed, T, device)
    tree_config = data.draw(tree_configs(config.draft_vocab_size))
    check_invariants(impl.build_tree(handle, feats, ids, tree_config.num_nodes, tree_config.max_depth,
                                     tree_config.top_k), tree_config.num_nodes)


# --- not in the skeleton: compared with the brute-force builder (held back from the assignment)
def check_builder(impl, device, config, seed, T, tree_config):
    ref, handle, ids, feats = head_and_inputs(impl, config, seed, T, device)
    got = impl.build_tree(handle, feats, ids, tree_config.num_nodes, tree_config.max_depth, tree_config.top_k)
    want = build_draft_tree_naive(ref, feats, ids, tree_config)
    depth, parent = want.tree_position_ids.tolist(), want.parents.tolist()
    node = lambda i: f"node {i[0]} (depth {depth[i[0]]}, parent {parent[i[0]]})"  # noqa: E731
    assert_same(got.tokens, want.tokens, f"tree tokens ({tree_config})", where=node)
    assert_same(got.parents, want.parents, f"tree parents ({tree_config})", where=node)
    # Tokens and parents agree here: the same tree, scored differently. Say from which depth on,
    # since a score is the sum of log-probs down the path: the shallowest wrong level is where the
    # head's view went wrong (what a node at that depth may attend to: the tree mask, its positions).
    scores, tol = got.scores.cpu().double(), tolerance(impl, "scores")
    wrong = [d for d, ok in zip(depth, torch.isclose(scores, want.scores, **tol).tolist()) if not ok]
    assert_same(scores, want.scores, f"tree scores ({tree_config}; tokens and parents agree, the scores differ from "
                f"depth {min(wrong) if wrong else '-'} on: look at what a node of that depth attends to)",
                **tol, where=node)
    assert_same(got.tree_mask.cpu(), want.tree_mask, "tree_mask", where=("row (node)", "column (key)"))
    assert_same(got.tree_position_ids.cpu(), want.tree_position_ids, "tree_position_ids", where=("node",))
    assert_same(got.retrieve_indices.cpu(), want.retrieve_indices, "retrieve_indices", where=("leaf row", "depth"))
    check_invariants(got, tree_config.num_nodes)


@given(config=target_configs(max_layers=3).flatmap(head_configs), seed=seeds, T=st.integers(1, 6), data=st.data())
def test_builder_equals_brute_force(impl, device, config, seed, T, data):
    check_builder(impl, device, config, seed, T, data.draw(tree_configs(config.draft_vocab_size)))


@given(config=target_configs(max_layers=3).flatmap(head_configs), seed=seeds, T=st.integers(1, 4))
def test_deep_whole_pool_equals_brute_force(impl, device, config, seed, T):
    """Every candidate kept, 5 levels: a level-4 node's draft attention must reach its
    grandparent and great-grandparent too, not only its parent (a bug the random,
    mostly shallow trees above rarely exercise)."""
    k = min(2, config.draft_vocab_size)
    tree_config = TreeConfig(num_nodes=1 + k + 4 * k * k, max_depth=5, top_k=k)
    check_builder(impl, device, config, seed, T, tree_config)


@given(config=target_configs(max_layers=3).flatmap(head_configs), seed=seeds, length=st.integers(1, 5))
def test_chain_is_greedy_drafting(impl, config, seed, length):
    ref, handle, ids, feats = head_and_inputs(impl, config, seed, 3, "cpu")
    tree = impl.build_tree(handle, feats, ids, length + 1, length, 1)
    assert_same(tree.parents, list(range(-1, length)), f"parents of a chain of {length}", where=("node",))
    # The chain is what drafting one argmax at a time gives.
    want = build_draft_tree_naive(ref, feats, ids, TreeConfig.chain(length))
    assert_same(tree.tokens, want.tokens, f"tokens of a chain of {length}", where=("node",))
    assert_same(tree.retrieve_indices, [list(range(length + 1))], "retrieve_indices of a chain", where=("row", "depth"))
# --- end not in the skeleton
