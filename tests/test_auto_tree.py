"""The cost-aware tree (auto_tree.py) and its cost model (costs.py).

Proofs:
* the tree it builds in a cycle is a subtree of EAGLE-2's candidate pool on the same head
  and features, closed under ancestors: its nodes of highest calibrated acceptance, capped
  by their parents' (against a naive computation over the whole pool), so every
  losslessness proof of fixed trees covers it;
* end to end, greedy decoding with an auto tree equals transformers' ``generate`` (random
  targets, heads, cost models and calibrations), and sampling with one follows the target's
  law exactly (every random choice of a cycle enumerated, against what transformers'
  generate samples from);
* the decisions are the ones the module docstring states: the budget maximises calibrated
  tokens per ms (against brute force); free verification and free drafting grow the tree to
  its limits; a head dearer than anything it could win stops at one level;
* calibration rates never rise as scores fall; cost models and calibrations survive a round
  trip through JSON;
* the drafting gain is the best fixed depth of the pool at a chain's cost (against the naive
  formula), never above the oracle's bound, and a tree whose gain is below 1 decodes plainly
  without a head forward.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig

from eagle3_ref import Eagle3Config, TreeConfig, autoregressive_generate, build_draft_tree, speculative_generate
from eagle3_ref.costaware.auto_tree import (
    EDGES,
    RANKS,
    AutoTreeConfig,
    Calibration,
    acceptance_rates,
    calibrate,
    level_ranks,
    speedup_bound,
)
from eagle3_ref.costaware.costs import CostModel, measure_costs, nondecreasing_fit, nonincreasing_fit
from eagle3_ref.testing.adapter import ReferenceAdapter
from eagle3_ref.testing.conformance.test_generate import assert_same_tokens, hf_greedy
from eagle3_ref.testing.conformance.test_verify import tempered_pair
from eagle3_ref.testing.strategies import build_draft_head, build_target, head_configs, seeds, target_configs
from eagle3_ref.tree import DraftTree, grow_tree

pytestmark = pytest.mark.generate


@st.composite
def cost_models(draw, top_k: int):
    """Any machine: verification from flat (GPU-like) to steep (CPU-like), any head price."""
    one = draw(st.floats(1.0, 20.0))
    slope = draw(st.floats(0.0, 2.0))
    level = draw(st.floats(0.0, 5.0))
    return CostModel({1: one, 64: one + 63 * slope}, {1: level + 0.1, 8: 8 * level + 0.1},
                     draw(st.floats(0.0, 2.0)), top_k)


@st.composite
def calibrations(draw, top_k: int, temperature: float = 0.0):
    """One row of rates for every node, or a table by depth and rank in the level (where a
    deep node may be rated above its parent, and the cap by the parent's rate matters)."""
    def row():
        return tuple(sorted((draw(st.floats(0.0, 1.0)) for _ in EDGES), reverse=True))

    rates = row() if draw(st.booleans()) else tuple(tuple(row() for _ in RANKS) for _ in range(draw(st.integers(1, 4))))
    return Calibration(temperature, rates, draw(st.floats(0.0, 1.0)), top_k)


@st.composite
def auto_trees(draw, draft_vocab: int, temperature: float = 0.0):
    k = draw(st.integers(1, min(3, draft_vocab)))
    return AutoTreeConfig.from_calibration(draw(cost_models(k)), draw(calibrations(k, temperature)),
                           max_depth=draw(st.integers(1, 4)), max_nodes=draw(st.integers(2, 16)))


def _pair(tc, seed, data):
    target = build_target(tc, seed)
    config = data.draw(head_configs(tc))
    embed = None if config.owns_embedding else target.get_input_embeddings().weight
    return target, build_draft_head(config, seed, embed)


def capped_acceptance(tree: DraftTree, calibration: Calibration) -> np.ndarray:
    """Naive: each node's calibrated rate (its depth, its score's rank among the nodes of its
    depth, ties to the earlier node), capped by its parent's capped rate; the root 1."""
    depth, scores = tree.tree_position_ids.tolist(), tree.scores.double().numpy()
    raw = np.ones(len(depth))
    for d in range(1, max(depth) + 1):
        level = [i for i in range(len(depth)) if depth[i] == d]
        ranks = sorted(range(len(level)), key=lambda j: (-scores[level[j]], j))
        rank_of = {level[j]: r for r, j in enumerate(ranks)}
        for i in level:
            raw[i] = calibration.p(scores[i:i + 1], d, [rank_of[i]])[0]
    capped = raw.copy()
    for i in range(1, len(depth)):
        capped[i] = min(raw[i], capped[int(tree.parents[i])])
    return capped


def best_by_acceptance(pool: DraftTree, calibration: Calibration, n: int) -> tuple[list[int], np.ndarray]:
    """The root and the ``n - 1`` nodes of highest capped acceptance (ties to the earlier
    node), in pool order; and every node's capped acceptance."""
    accept = capped_acceptance(pool, calibration)
    return [0] + sorted(sorted(range(1, pool.num_nodes), key=lambda i: (-accept[i], i))[: n - 1]), accept


@given(tc=target_configs(min_layers=2, max_layers=4), seed=seeds, data=st.data())
def test_an_auto_tree_is_the_subtree_of_eagle2s_pool_of_highest_acceptance(tc, seed, data):
    target, head = _pair(tc, seed, data)
    tree = data.draw(auto_trees(head.config.draft_vocab_size))
    T = data.draw(st.integers(1, 6))
    ids = torch.randint(0, tc.vocab_size, (1, T + 1), generator=torch.Generator().manual_seed(seed))
    features = torch.randn(1, T, head.fc.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    auto = build_draft_tree(head, features, ids, tree)
    depth, n, k = int(auto.tree_position_ids.max()), auto.num_nodes, tree.top_k
    assert 1 <= depth <= tree.max_depth and 2 <= n <= tree.num_nodes, f"shape {n}/{depth} outside {tree.describe()}"
    # EAGLE-2's whole pool to that depth (node i = pool entry i), and its n - 1 best nodes by
    # capped acceptance, ties to the earlier node
    pool = build_draft_tree(head, features, ids, TreeConfig(num_nodes=1 + k + (depth - 1) * k * k, max_depth=depth,
                                                            top_k=k))
    kept, _ = best_by_acceptance(pool, tree.calibration, n)
    new_index = {old: new for new, old in enumerate(kept)}
    assert all(int(pool.parents[i]) in new_index for i in kept[1:]), "the kept set is not closed under ancestors"
    assert torch.equal(auto.tokens, pool.tokens[kept])
    assert torch.equal(auto.scores, pool.scores[kept])
    assert auto.parents.tolist() == [-1] + [new_index[int(pool.parents[i])] for i in kept[1:]]
    assert torch.equal(auto.tree_mask, pool.tree_mask[kept][:, kept])
    assert torch.equal(auto.tree_position_ids, pool.tree_position_ids[kept])


@settings(max_examples=5 * settings().max_examples)  # cheap (no model), and the budget's order rarely matters
@given(data=st.data())
def test_the_kept_nodes_and_the_budget_are_the_ones_the_docstring_states(data):
    # proposals from a fixed table of log-probs, looked up by frontier entry: the same for the
    # auto tree and for EAGLE-2's whole pool as deep as the auto tree drafted
    k, V = data.draw(st.integers(1, 3)), data.draw(st.integers(3, 6))
    assume(k <= V)
    seed = data.draw(seeds)
    table = torch.log_softmax(3 * torch.randn(17, V, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)), -1)
    tree = AutoTreeConfig.from_calibration(data.draw(cost_models(k)), data.draw(calibrations(k)), max_depth=data.draw(st.integers(1, 5)),
                           max_nodes=data.draw(st.integers(2, 30)))
    levels = [1]

    def propose(frontier, pool):
        levels[0] += 1
        return table[torch.tensor(frontier) % 16]

    auto = tree.grow(0, table[16], propose)
    drafted = levels[0]
    pool = grow_tree(0, table[16], propose, TreeConfig(num_nodes=1 + k + (drafted - 1) * k * k, max_depth=drafted,
                                                       top_k=k))
    kept, accept = best_by_acceptance(pool, tree.calibration, auto.num_nodes)
    assert torch.equal(auto.tokens, pool.tokens[kept]) and torch.equal(auto.scores, pool.scores[kept])
    assert torch.equal(auto.tree_mask, pool.tree_mask[kept][:, kept])
    candidates = np.sort(accept[1:])[::-1][: tree.num_nodes - 1]
    assert auto.num_nodes == tree.best_budget(candidates, drafted)[0]


def test_a_child_rated_above_its_parent_waits_for_it():
    # depth 2 is rated far above depth 1: uncapped, the children would be kept before the
    # parents they cannot be accepted without
    rates = (tuple([0.3] * len(EDGES)),) * len(RANKS), (tuple([0.9] * len(EDGES)),) * len(RANKS)
    built = _decide(CostModel({1: 10.0, 64: 10.0}, {1: 0.0, 8: 0.0}, 0.0, 2), rates, max_depth=2, max_nodes=4)
    assert built.parents.tolist() == [-1, 0, 0, 1] and built.tree_position_ids.tolist() == [0, 1, 1, 2]


@given(tc=target_configs(min_layers=2, max_layers=5), seed=seeds, data=st.data())
def test_greedy_with_an_auto_tree_equals_transformers_generate(tc, seed, data):
    target, head = _pair(tc, seed, data)
    tree = data.draw(auto_trees(head.config.draft_vocab_size))
    prompt = torch.tensor([data.draw(st.lists(st.integers(0, tc.vocab_size - 1), min_size=1, max_size=6))])
    max_new = data.draw(st.integers(2, 20))
    eos = data.draw(st.one_of(st.none(), st.integers(0, tc.vocab_size - 1)))
    got = speculative_generate(target, head, prompt, max_new_tokens=max_new, tree=tree, eos_token_id=eos)
    assert_same_tokens(got.sequences, hf_greedy(target, prompt, max_new, eos), prompt.shape[1],
                       f"{tree.describe()}, eos {eos}")


@pytest.mark.parametrize("warp", [dict(temperature=1.0), dict(temperature=0.7, top_k=3, top_p=0.9)],
                         ids=["temperature-1", "warped"])
def test_sampling_with_an_auto_tree_is_what_generate_samples(warp):
    # Exact, not statistical: every random choice of the prefill (the first token) and of one
    # cycle with a cost-aware tree, enumerated through a scripted sampler; each emitted token's
    # law given the tokens before it must be what transformers' generate samples from for the
    # same config (eagle3_ref.testing.law, which shares no code with the reference's warpers).
    from eagle3_ref.testing.law import assert_a_cycle_follows_the_generation_law
    from eagle3_ref.tree import HeadDrafter

    target, head = tempered_pair(ReferenceAdapter(), 4, 7)
    # costs and rates under which the tree changes shape with the drafted scores
    tree = AutoTreeConfig.from_calibration(CostModel({1: 10.0, 64: 20.0}, {1: 1.0, 8: 8.0}, 0.5, 2),
                                           Calibration(warp["temperature"], tuple(0.9 - 0.06 * i for i in range(len(EDGES))),
                                                       0.6, 2), max_depth=3, max_nodes=7)
    outcomes = assert_a_cycle_follows_the_generation_law(target, HeadDrafter(head), [1, 3, 2], tree, (0, 1, 2), warp,
                                                         what=f"an auto tree at {warp}")
    assert max(len(tokens) for _, tokens in outcomes) >= 3  # some cycles accepted drafts


def test_a_tree_no_depth_pays_for_decodes_plainly(monkeypatch):
    costs = CostModel({1: 8.0, 2: 10.0, 64: 20.0}, {1: 2.0, 8: 9.0}, 0.5, 2)
    rates = tuple(0.9 - 0.06 * i for i in range(len(EDGES)))

    def tree(pool_tau):
        return AutoTreeConfig.from_calibration(costs, Calibration(1.0, rates, 0.6, 2, pool_tau=pool_tau), max_depth=3, max_nodes=7)

    # depth 1: 1.2 tokens for 2 + 10 + 0.5 ms; depth 2: 1.3 for 3 + 10 + 10/62 + 0.5 ms; a plain step 8 ms
    low = tree((1.2, 1.3))
    assert low.drafting_gain == pytest.approx(max(1.2 / 12.5, 1.3 / (13.5 + 10 / 62)) * 8)
    assert low.drafting_gain < 1 and not low.drafts and low.describe()["drafts"] is False
    assert tree((2.0, 3.0)).drafts and tree((1.2, 1.3, 3.0)).drafts  # a deeper depth that pays is enough
    assert tree(()).drafting_gain == math.inf and tree(()).drafts  # no pool measured: the tree decides per cycle

    target, head = tempered_pair(ReferenceAdapter(), 6, 7)
    calls = []
    monkeypatch.setattr(head, "forward", lambda *a, **k: calls.append(1))  # a head that must not run
    prompt = torch.tensor([[1, 4, 2]])
    out = speculative_generate(target, head, prompt, max_new_tokens=5, tree=low, temperature=1.0,
                               generator=torch.Generator().manual_seed(3))
    plain = autoregressive_generate(target, prompt, max_new_tokens=5, temperature=1.0,
                                    generator=torch.Generator().manual_seed(3))
    assert not calls and torch.equal(out.sequences, plain.sequences) and out.accepted_lengths == [1] * 4
    assert set(out.timings) == {"prefill", "draft", "verify", "accept"}


@given(data=st.data())
def test_the_budget_maximises_calibrated_tokens_per_ms(data):
    k = data.draw(st.integers(1, 4))
    tree = AutoTreeConfig.from_calibration(data.draw(cost_models(k)), data.draw(calibrations(k)), max_depth=4,
                           max_nodes=data.draw(st.integers(2, 30)))
    p = data.draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40))  # in the order the tree keeps them
    levels = data.draw(st.integers(1, 4))
    n, rate = tree.best_budget(np.array(p), levels)
    brute = max(((1 + sum(p[:m - 1])) / tree.costs.cycle(levels, m), m)
                for m in range(2, min(len(p) + 1, tree.num_nodes) + 1))
    assert math.isclose(rate, brute[0], rel_tol=1e-9), f"budget {n} at {rate} tokens/ms; brute force: {brute}"


def keep_drafting_naive(tree, p, frontier_p, levels) -> bool:
    """The lookahead as the docstring states it: for j = 1, 2, ... levels more, add one
    virtual node per frontier node (acceptance child_rate^i times the frontier node's),
    re-sort by acceptance, and ask the best budget."""
    _, now = tree.best_budget(p, levels)
    all_p = [p]
    for i in range(1, tree.max_depth - levels + 1):
        all_p.append(tree.calibration.child_rate**i * frontier_p)
        merged = np.concatenate(all_p)
        order = sorted(range(len(merged)), key=lambda j: -merged[j])
        if tree.best_budget(merged[order], levels + i)[1] > now:
            return True
    return False


@given(data=st.data())
def test_the_depth_decision_is_the_lookahead_it_states(data):
    k = data.draw(st.integers(1, 4))
    max_depth = data.draw(st.integers(1, 6))
    tree = AutoTreeConfig.from_calibration(data.draw(cost_models(k)), data.draw(calibrations(k)), max_depth=max_depth,
                           max_nodes=data.draw(st.integers(2, 40)))
    rates = st.floats(0.0, 1.0)
    p = np.array(sorted(data.draw(st.lists(rates, min_size=1, max_size=30)), reverse=True))
    frontier_p = np.array(data.draw(st.lists(rates, min_size=k, max_size=k)))
    levels = data.draw(st.integers(1, max_depth))
    assert tree.keep_drafting(p, frontier_p, levels) == keep_drafting_naive(tree, p, frontier_p, levels)


def _decide(costs, rates, child_rate=0.9, max_depth=6, top_k=2, max_nodes=60):
    tree = AutoTreeConfig.from_calibration(costs, Calibration(0.0, rates, child_rate, top_k), max_depth=max_depth, max_nodes=max_nodes)
    torch.manual_seed(0)
    logprobs = torch.log_softmax(torch.tensor([4.0, 3.0, 0.0, -1.0], dtype=torch.float64), -1)
    return tree.grow(0, logprobs, lambda frontier, pool: logprobs.expand(len(frontier), -1), None)


def test_free_verification_and_drafting_grow_the_tree_to_its_limits():
    built = _decide(CostModel({1: 10.0, 64: 10.0}, {1: 0.0, 8: 0.0}, 0.0, 2), tuple([0.5] * len(EDGES)))
    assert int(built.tree_position_ids.max()) == 6 and built.num_nodes == 1 + 2 + 5 * 4  # the whole pool


def test_a_head_dearer_than_anything_it_could_win_stops_at_one_level():
    built = _decide(CostModel({1: 10.0, 64: 10.0}, {1: 1.0, 8: 1000.0}, 0.0, 2), tuple([0.5] * len(EDGES)))
    assert int(built.tree_position_ids.max()) == 1


def test_looking_one_level_ahead_only_is_not_enough():
    # one more level costs more than its own gain, two more levels pay: a one-step
    # lookahead (the first version) stopped at level 1 here
    costs = CostModel({1: 10.0, 64: 10.0}, {1: 1.0, 2: 12.0, 3: 12.5, 8: 15.0}, 0.0, 2)
    built = _decide(costs, tuple([0.95] * len(EDGES)), child_rate=1.0, max_depth=3)
    assert int(built.tree_position_ids.max()) == 3


def test_calibration_rates_never_rise_as_scores_fall():
    assert nonincreasing_fit([0.9, 0.5, 0.7, 0.1], [10, 10, 10, 10]) == pytest.approx([0.9, 0.6, 0.6, 0.1])
    with pytest.raises(ValueError, match="must not increase"):
        Calibration(0.0, tuple([0.1] + [0.5] * (len(EDGES) - 1)), 0.5, 2)


@given(st.lists(st.sampled_from([0.0, -0.5, -1.0, -2.5, -7.0]), max_size=12))
def test_level_ranks_and_the_calibrated_lookup(scores):
    # ranks: by score, ties to the earlier node (EAGLE-2's order)
    naive = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    assert level_ranks(np.array(scores)).tolist() == [naive.index(i) for i in range(len(scores))]
    # the lookup reads cell [depth - 1][rank bucket][score bin], past the table's end its last entries
    table = np.array([[[round(1 - (100 * d + 10 * r + b) / 1000, 3) for b in range(len(EDGES))]
                       for r in range(len(RANKS))] for d in range(2)])
    cal = Calibration(0.0, table.tolist(), 0.5, 2)
    for depth in (1, 2, 5):
        for rank in (0, 1, 3, 4, 9, 10, 29, 30, 500):
            bucket = max(i for i, start in enumerate(RANKS) if rank >= start)
            for b, score in enumerate((0.0, -0.06, -0.15, -0.3, -0.4, -0.6, -0.9, -1.2, -1.7, -2.5, -3.5, -5, -8, -10)):
                got = cal.p(np.array([score]), depth, np.array([rank]))[0]
                assert got == table[min(depth, 2) - 1, bucket, b], (depth, rank, score)


def test_a_sparse_cell_leans_on_its_depth_and_bad_tables_are_refused():
    # one node, accepted, in a cell whose depth accepts 1 in 100 for that score: 1/1 would rate
    # every such node certain; with 2 pseudo-nodes of the depth's rate it is about a third
    hits, totals = np.zeros((1, len(RANKS), len(EDGES)), int), np.zeros((1, len(RANKS), len(EDGES)), int)
    hits[0, 0, 5], totals[0, 0, 5], totals[0, 1, 5] = 1, 1, 99
    depth_rate = (1 + 2 * (1 / 100)) / (100 + 2)
    rates = acceptance_rates(hits, totals)
    assert rates[0, 0, 5] == pytest.approx((1 + 2 * depth_rate) / 3)
    assert (np.diff(rates, axis=-1) <= 0).all() and rates[0, 1, 5] < 0.02
    with pytest.raises(ValueError, match="one bucket per start in ranks"):
        Calibration(0.0, [[[0.5] * len(EDGES)] * 3], 0.5, 2)  # 3 rank buckets, 6 starts
    with pytest.raises(ValueError, match="rank bucket"):
        Calibration(0.0, [[[0.5] * len(EDGES)], [[0.5] * 3]], 0.5, 2)  # ragged


def test_calibrating_a_tiny_pair_and_the_bound():
    tc = LlamaConfig(vocab_size=12, hidden_size=8, intermediate_size=16, num_hidden_layers=7, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=128)
    target = build_target(tc, 0)
    head = build_draft_head(Eagle3Config.for_target(tc), 0, target.get_input_embeddings().weight)
    prompts = [torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]])]
    cal = calibrate(target, head, prompts, top_k=2, max_depth=3, max_new_tokens=12)
    counts, hits, accept = np.array(cal.counts), np.array(cal.hits), np.array(cal.accept)
    assert counts.shape == hits.shape == accept.shape == (3, len(RANKS), len(EDGES))
    assert (np.diff(accept, axis=-1) <= 0).all(), "a rate rises as scores fall"
    assert len(cal.pool_tau) == 3 and 1.0 <= cal.pool_tau[0] <= cal.pool_tau[1] <= cal.pool_tau[2] <= 4.0
    # the cells count every pool node of every cycle (2 + 2 * 4 = 10 a cycle: 2, 4, 4 per depth),
    # and their accepted nodes add up to the pool's accepted drafts: pool_tau - 1 a cycle
    cycles = counts.sum() / 10
    assert cycles == int(cycles) and list(counts.sum((1, 2))) == [2 * cycles, 4 * cycles, 4 * cycles]
    assert hits.sum() == pytest.approx((cal.pool_tau[2] - 1) * cycles, rel=1e-9)
    # level ranks: depth 1 holds ranks 0 and 1 once a cycle, deeper levels ranks 0 to 3
    assert list(counts[0].sum(-1)) == [cycles, cycles, 0, 0, 0, 0]
    assert list(counts[1].sum(-1)) == [cycles, cycles, 2 * cycles, 0, 0, 0]
    costs = measure_costs(target, head, top_k=2, max_depth=3, sizes=(1, 4, 8), prefix=8, repeats=2)
    bound, plan = speedup_bound(costs, cal)
    tree = AutoTreeConfig.from_calibration(costs, cal)
    assert len(plan) == 4 and bound >= tree.drafting_gain * (1 - 1e-9)  # the oracle may draft the best fixed depth
    out = speculative_generate(target, head, prompts[0], max_new_tokens=8, tree=tree)
    assert out.sequences.shape[1] == 3 + 8


@given(data=st.data())
def test_the_bound_is_the_best_plan_of_an_oracle_that_knows_each_cycle(data):
    # brute force: every plan j_a <= a (verify j of the a drafts the target would accept); the
    # bound must be the best of them, no plan may beat it (a plan letting j exceed a, or a
    # drafting cycle priced as a plain step, would), and it bounds every fixed-depth chain
    depth = data.draw(st.integers(1, 4))
    at_least = sorted((data.draw(st.floats(0.0, 1.0)) for _ in range(depth)), reverse=True)  # P(a >= d)
    cal = Calibration(0.0, tuple([0.5] * len(EDGES)), 0.5, 2, pool_tau=tuple(1 + np.cumsum(at_least)))
    costs = data.draw(cost_models(2))
    share = -np.diff([1.0] + at_least + [0.0])
    for may_skip in (False, True):
        c = [costs.plain_ms if may_skip else costs.cycle(1, 1)] + [costs.cycle(j, j + 1) for j in range(1, depth + 1)]
        best = max(sum(h * (1 + j) for h, j in zip(share, plan)) / sum(h * c[j] for h, j in zip(share, plan))
                   for plan in itertools.product(*(range(a + 1) for a in range(depth + 1))))
        bound, plan = speedup_bound(costs, cal, may_skip=may_skip)
        assert bound == pytest.approx(best * costs.plain_ms, rel=1e-9)
        assert all(0 <= j <= a for a, j in enumerate(plan))
        chains = max(tau * costs.plain_ms / costs.cycle(d, d + 1) for d, tau in enumerate(cal.pool_tau, 1))
        assert bound >= chains * (1 - 1e-9)
        assert AutoTreeConfig.from_calibration(costs, cal).drafting_gain == pytest.approx(chains, rel=1e-12)  # the best fixed depth
    assert speedup_bound(costs, cal, may_skip=True)[0] >= speedup_bound(costs, cal)[0] * (1 - 1e-9)


def test_the_bound_beats_the_best_fixed_depth_when_cycles_differ():
    # half the cycles accept nothing, half accept 3: a fixed depth pays for 3 levels in all of
    # them, the oracle drafts one level where nothing will be accepted
    costs = CostModel({1: 10.0, 4: 12.0}, {1: 2.0, 3: 6.0}, 1.0, 2)
    cal = Calibration(0.0, tuple([0.5] * len(EDGES)), 0.5, 2, pool_tau=(1.5, 2.0, 2.5))
    bound, plan = speedup_bound(costs, cal)
    assert (plan[0], plan[3]) == (0, 3)  # (a = 1 and 2 never happen: any plan for them)
    assert bound == pytest.approx((0.5 * 1 + 0.5 * 4) * 10.0 / (0.5 * (2 + 10 + 1) + 0.5 * (6 + 12 + 1)))
    assert bound > AutoTreeConfig.from_calibration(costs, cal).drafting_gain  # the best fixed depth
    assert speedup_bound(costs, cal, may_skip=True)[0] == pytest.approx(25 / (0.5 * 10 + 0.5 * 19))


def test_a_measured_curve_never_falls():
    # a noisy dip (verify 4 tokens "cheaper" than 2) would be a sweet spot every cycle picks
    assert nondecreasing_fit({1: 7.0, 2: 10.0, 4: 9.0, 8: 9.5, 16: 12.0}) == pytest.approx(
        {1: 7.0, 2: 9.5, 4: 9.5, 8: 9.5, 16: 12.0})


def test_cost_models_and_calibrations_round_trip(tmp_path):
    costs = CostModel({1: 8.0, 16: 10.0}, {1: 1.0, 8: 8.5}, 0.6, 10, "here")
    costs.save(tmp_path / "costs.json")
    assert CostModel.load(tmp_path / "costs.json") == costs
    assert costs.verify(8) == pytest.approx(8.0 + 2.0 * 7 / 15) and costs.draft(4) == pytest.approx(1.0 + 7.5 * 3 / 7)
    cal = Calibration(1.0, tuple(1.0 - i / 20 for i in range(len(EDGES))), 0.5, 10, pool_tau=(1.2, 1.3))
    cal.save(tmp_path / "cal.json")
    assert Calibration.load(tmp_path / "cal.json") == cal
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a saved CostModel"):
        CostModel.load(tmp_path / "bad.json")


def test_an_auto_tree_refuses_another_temperature_and_batches():
    tc = LlamaConfig(vocab_size=12, hidden_size=8, intermediate_size=16, num_hidden_layers=7, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=64)
    target = build_target(tc, 0)
    head = build_draft_head(Eagle3Config.for_target(tc), 0, target.get_input_embeddings().weight)
    tree = AutoTreeConfig.from_calibration(CostModel({1: 1.0}, {1: 1.0}, 0.0, 2), Calibration(0.0, tuple([0.5] * len(EDGES)), 0.5, 2))
    with pytest.raises(ValueError, match="tree was calibrated at temperature 0, this decoding runs at 1"):
        speculative_generate(target, head, torch.tensor([[1, 2]]), max_new_tokens=4, tree=tree, temperature=1.0)
    with pytest.raises(ValueError, match="batches take a fixed TreeConfig"):
        speculative_generate(target, head, torch.tensor([[1, 2], [3, 4]]), max_new_tokens=4, tree=tree)
    with pytest.raises(ValueError, match="measure both with the same top_k"):
        AutoTreeConfig.from_calibration(CostModel({1: 1.0}, {1: 1.0}, 0.0, 3), tree.calibration)
    with pytest.raises(TypeError, match="costs must be a CostModel"):
        AutoTreeConfig.from_calibration({1: 1.0}, tree.calibration)
    with pytest.raises(TypeError, match="max_nodes must be an int"):
        AutoTreeConfig.from_calibration(tree.costs, tree.calibration, max_nodes="many")
    with pytest.raises(ValueError, match="max_depth must be >= 1"):
        AutoTreeConfig.from_calibration(tree.costs, tree.calibration, max_depth=0)
    assert isinstance(tree, AutoTreeConfig)


def test_a_calibration_at_temperature_t_predicts_decoding_at_t():
    # The cost-aware tree at temperature 1 decides from a calibration at temperature 1. Were
    # calibrate to verify greedily whatever its temperature (storing greedy rates under T's label),
    # every decision at T = 1 would rest on acceptance twice too high (2.56 against 1.29 tokens a
    # cycle for this pool of the toy pair; decoding at T = 1 measured 1.35), and no test compared a
    # calibration at T > 0 with acceptance measured at T. pool_tau[d - 1] is what the whole pool,
    # d deep, accepts a cycle. Mutated to calibrate greedily at any T, this goes red.
    from eagle3_ref.toy import held_out_prompts, load_toy

    target, tokenizer, head = load_toy()
    prompts = [p[None] for p in held_out_prompts(tokenizer, count=4)]
    k, depth, new = 2, 3, 32
    pool = TreeConfig(num_nodes=1 + k + (depth - 1) * k * k, max_depth=depth, top_k=k)  # every candidate kept
    greedy = calibrate(target, head, prompts, temperature=0.0, top_k=k, max_depth=depth, max_new_tokens=new)
    sampled = calibrate(target, head, prompts, temperature=1.0, top_k=k, max_depth=depth, max_new_tokens=new, seed=0)
    lengths = [n for seed in (1, 2) for i, p in enumerate(prompts)
               for n in speculative_generate(target, head, p, max_new_tokens=new, tree=pool, temperature=1.0,
                                             generator=torch.Generator().manual_seed(100 * seed + i)).accepted_lengths]
    measured = sum(lengths) / len(lengths)
    # over other seeds and prompts, measured taus spread by about 0.07 around the calibration: 0.15 is twice that
    assert abs(measured - sampled.pool_tau[-1]) < 0.15, (measured, sampled.pool_tau)
    assert greedy.pool_tau[-1] - sampled.pool_tau[-1] > 0.5, (greedy.pool_tau, sampled.pool_tau)  # the laws differ
    assert (greedy.temperature, sampled.temperature) == (0.0, 1.0)
