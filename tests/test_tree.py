"""The dynamic draft tree, the reference's own tests: buffers from any parent array, the
algorithm is indifferent to where proposals come from (a perfect or an always-wrong
proposer), the config and its converters, tie-breaking. (The builder equals a brute-force
builder for any implementation in ``eagle3_ref/testing/conformance/test_tree.py``.)
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eagle3_ref.testing.conformance.test_tree import check_invariants, tree_configs
from eagle3_ref.testing.drafters import confident_logprobs, path_proposer
from eagle3_ref.testing.strategies import seeds, trees
from eagle3_ref.tree import Pool, TreeConfig, grow_tree, rerank, tree_buffers

pytestmark = pytest.mark.tree


@given(parents=trees(max_nodes=16))
def test_buffers_from_any_parent_array(parents):
    mask, depth, retrieve = tree_buffers(torch.tensor(parents))
    fake = type("T", (), {})()
    fake.tokens, fake.parents, fake.tree_mask = torch.zeros(len(parents)), torch.tensor(parents), mask
    fake.tree_position_ids, fake.retrieve_indices, fake.scores = depth, retrieve, -depth.double()
    check_invariants(fake)


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


@given(rows=st.integers(1, 4), width=st.one_of(st.integers(1, 40), st.integers(257, 300)), few=st.booleans(),
       data=st.data())
def test_best_breaks_ties_by_index(rows, width, few, data):
    # Values from a handful of integers (and -inf, as a masked logit): ties everywhere,
    # including across the k-th place, where torch.topk alone may pick any of the equals.
    # Rows past 256 take stable_top_k's topk path (a vocabulary), shorter ones a stable sort; values
    # from a thousand integers let the topk path run without a tie at the cut.
    from eagle3_ref.tree import stable_top_k

    k = data.draw(st.integers(1, width if width <= 40 else 12))
    value = st.sampled_from([0.0, -1.0, -2.0, -float("inf")]) if few else st.integers(-1000, 0).map(float)
    values = torch.tensor(data.draw(st.lists(st.lists(value, min_size=width, max_size=width), min_size=rows,
                                             max_size=rows)))
    got = stable_top_k(values, k)
    for row, chosen in zip(values.tolist(), got.tolist()):
        assert chosen == sorted(range(width), key=lambda i: (-row[i], i))[:k]


def test_rerank_by_other_values_keeps_the_path_scores_and_refuses_an_orphan():
    # the cost-aware tree ranks by calibrated acceptance; the tree still carries path scores
    pool = Pool([5, 1, 2, 3], [-1, 0, 0, 1], [0, 1, 1, 2])
    scores = torch.tensor([0.0, -0.5, -1.0, -2.0], dtype=torch.float64)
    tree = rerank(pool, scores, 3, rank_by=torch.tensor([1.0, 0.4, 0.2, 0.3], dtype=torch.float64))
    assert tree.tokens.tolist() == [5, 1, 3] and tree.parents.tolist() == [-1, 0, 1]
    assert tree.scores.tolist() == [0.0, -0.5, -2.0]
    assert rerank(pool, scores, 3).tokens.tolist() == [5, 1, 2]  # by score
    with pytest.raises(ValueError, match="rank_by must never be higher in a child than in its parent"):
        rerank(pool, scores, 2, rank_by=torch.tensor([1.0, 0.2, 0.1, 0.9], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"rank_by has shape \(3,\), scores \(4,\)"):
        rerank(pool, scores, 2, rank_by=torch.tensor([1.0, 0.2, 0.1], dtype=torch.float64))
