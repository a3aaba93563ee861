"""Lossless verification.

Proofs (DESIGN "what proven means" 5 and 6):
* greedy picks the unique longest root-to-node path whose tokens follow the target's argmax
  chain, and the bonus is the argmax after it;
* sampling is *exactly* lossless: enumerating every random choice the verifier can make
  (each with its probability), every emitted token, conditioned on the tokens emitted
  before it in the cycle, has exactly the target's processed distribution;
* a seeded statistical end-to-end check on a tiny model (chi-square, alpha = 1e-3).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eagle3_ref.testing.strategies import seeds, trees
from eagle3_ref.tree import DraftTree, tree_buffers
from eagle3_ref.verify import target_probs, verify_greedy_naive

pytestmark = pytest.mark.verify


@st.composite
def token_trees(draw, vocab: int, max_nodes: int = 9) -> DraftTree:
    """A random tree whose siblings carry distinct tokens (as top-k drafting guarantees)."""
    parents = draw(trees(max_nodes=max_nodes))
    tokens = [draw(st.integers(0, vocab - 1))]
    for i in range(1, len(parents)):
        used = {tokens[j] for j in range(1, i) if parents[j] == parents[i]}
        free = [t for t in range(vocab) if t not in used]
        if not free:  # this parent already has a child for every token: draw another tree
            return draw(token_trees(vocab, max_nodes))
        tokens.append(draw(st.sampled_from(free)))
    p = torch.tensor(parents)
    mask, depth, retrieve = tree_buffers(p)
    return DraftTree(torch.tensor(tokens), p, -depth.double(), mask, depth, retrieve)


# -- greedy --------------------------------------------------------------------------------


@given(vocab=st.integers(2, 6), data=st.data(), seed=seeds)
def test_greedy_follows_the_argmax_chain(impl, vocab, data, seed):
    tree = data.draw(token_trees(vocab))
    logits = torch.randn(tree.tokens.shape[0], vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if data.draw(st.booleans()):  # make acceptance likely: the argmax at each node is one of its children
        for node in range(tree.tokens.shape[0]):
            kids = [c for c in range(tree.tokens.shape[0]) if int(tree.parents[c]) == node]
            if kids:
                logits[node, int(tree.tokens[data.draw(st.sampled_from(kids))])] += 10.0
    accepted, bonus = impl.verify_greedy(tree, logits)
    assert (list(accepted), bonus) == tuple(verify_greedy_naive(tree, logits))
    best = logits.argmax(-1)
    assert accepted[0] == 0
    for a, b in zip(accepted, accepted[1:]):
        assert int(tree.parents[b]) == a and int(tree.tokens[b]) == int(best[a])
    last = accepted[-1]
    assert bonus == int(best[last])
    assert all(int(tree.tokens[c]) != bonus for c in range(tree.tokens.shape[0]) if int(tree.parents[c]) == last)


# -- sampling, exactly ---------------------------------------------------------------------


class NeedChoice(Exception):
    def __init__(self, options):
        self.options = options  # [(outcome, probability)], probability > 0


class ScriptedSampler:
    """Replays a fixed list of outcomes; at the first unscripted choice, reports the options."""

    def __init__(self, script):
        self.script, self.i, self.prob = script, 0, 1.0

    def _next(self, options):
        if self.i == len(self.script):
            raise NeedChoice([(o, p) for o, p in options if p > 0])
        outcome, p = self.script[self.i]
        self.i += 1
        self.prob *= p
        return outcome

    def accept(self, prob):
        return self._next([(True, float(prob)), (False, 1.0 - float(prob))])

    def draw(self, probs):
        return self._next([(v, float(probs[v])) for v in range(probs.shape[0])])


def enumerate_verifier(impl, tree, probs):
    """Every (probability, accepted path, bonus) the verifier can produce."""
    outcomes, stack = [], [[]]
    while stack:
        script = stack.pop()
        sampler = ScriptedSampler(script)
        try:
            accepted, bonus = impl.verify_sampling(tree, probs, sampler)
        except NeedChoice as choice:
            stack.extend(script + [option] for option in choice.options)
            continue
        assert sampler.i == len(script), "the verifier must consume exactly its choices"
        outcomes.append((sampler.prob, list(accepted), bonus))
    return outcomes


@st.composite
def target_distributions(draw, n: int, vocab: int):
    """Processed target distributions with real zeros (top-k / top-p) and real peaks."""
    seed = draw(seeds)
    logits = torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    return target_probs(logits, temperature=draw(st.sampled_from([0.5, 1.0, 2.0])),
                        top_k=draw(st.sampled_from([0, 1, 2, vocab])), top_p=draw(st.sampled_from([1.0, 0.8, 0.3])))


@given(vocab=st.integers(2, 5), data=st.data())
def test_sampling_is_exactly_the_target_distribution(impl, vocab, data):
    tree = data.draw(token_trees(vocab, max_nodes=8))
    n = tree.tokens.shape[0]
    probs = data.draw(target_distributions(n, vocab))
    outcomes = enumerate_verifier(impl, tree, probs)
    assert abs(sum(p for p, _, _ in outcomes) - 1.0) < 1e-12

    # For every node u the accepted path can reach: P(next emitted token = v | reached u) = p_u(v).
    reach = torch.zeros(n, dtype=torch.float64)
    next_token = torch.zeros(n, vocab, dtype=torch.float64)
    for prob, accepted, bonus in outcomes:
        emitted = [int(tree.tokens[i]) for i in accepted[1:]] + [bonus]
        for depth, node in enumerate(accepted):
            reach[node] += prob
            next_token[node, emitted[depth]] += prob
    assert reach[0] == pytest.approx(1.0, abs=1e-12)
    for node in range(n):
        if reach[node] > 1e-9:
            torch.testing.assert_close(next_token[node] / reach[node], probs[node], rtol=0, atol=1e-10,
                                       msg=lambda m: f"node {node} of parents {tree.parents.tolist()}: {m}")


def test_sampling_without_renormalising_the_residual_is_caught():
    # The exactness check above must fail for the classic bug: accept the next child with
    # p(x) instead of p(x) / (mass left after the rejections).
    class Buggy:
        def verify_sampling(self, tree, probs, sampler):
            node, accepted = 0, [0]
            while True:
                p = probs[node].clone()
                for child in [c for c in range(tree.tokens.shape[0]) if int(tree.parents[c]) == node]:
                    if sampler.accept(float(probs[node][int(tree.tokens[child])])):  # not renormalised
                        node = child
                        break
                    p[int(tree.tokens[child])] = 0
                else:
                    return accepted, sampler.draw(p / p.sum())
                accepted.append(node)

    p = torch.tensor([-1, 0, 0])
    mask, depth, retrieve = tree_buffers(p)
    tree = DraftTree(torch.tensor([0, 1, 2]), p, -depth.double(), mask, depth, retrieve)
    probs = torch.tensor([[0.2, 0.5, 0.3]] * 3, dtype=torch.float64)
    outcomes = enumerate_verifier(Buggy(), tree, probs)
    second_child = sum(prob for prob, accepted, _ in outcomes if accepted[1:] == [2])
    assert abs(second_child - 0.3) > 0.05  # the bug emits token 2 with 0.5 * 0.3 = 0.15, not 0.3


# -- sampling, statistically, end to end ---------------------------------------------------------


def chi_square_p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    keep = expected > 0
    stat = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


def test_speculative_sampling_matches_the_target_statistically(impl):
    from transformers import LlamaConfig

    from eagle3_ref.draft_head import Eagle3Config
    from eagle3_ref.testing.adapter import official_config_of, state_dict_of
    from eagle3_ref.testing.strategies import build_draft_head, build_target

    V, runs, alpha = 6, 600, 1e-3
    tc = LlamaConfig(vocab_size=V, hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=64)
    target = build_target(tc, 7)
    with torch.no_grad():  # temper the random target so every pair of tokens has visible mass
        target.lm_head.weight.mul_(0.3)
    ref = build_draft_head(Eagle3Config.for_target(tc, aux_layer_ids=(0, 1, 2)), 7, target.get_input_embeddings().weight)
    head = impl.load_head(official_config_of(ref), state_dict_of(ref), ref.embed_weight)
    prompt = torch.tensor([[1, 4, 2]])
    # The exact law of the next two tokens from the target itself.
    with torch.no_grad():
        p1 = torch.softmax(target(prompt).logits[0, -1], -1)
        law = torch.stack([p1[a] * torch.softmax(target(torch.cat([prompt, torch.tensor([[a]])], 1)).logits[0, -1], -1)
                           for a in range(V)]).flatten()
    counts = torch.zeros(V * V, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1234)
    for _ in range(runs):
        seq, _ = impl.generate(target, head, prompt, max_new_tokens=2, num_nodes=6, max_depth=2, top_k=2,
                               temperature=1.0, generator=gen)
        counts[int(seq[0, 3]) * V + int(seq[0, 4])] += 1
    assert chi_square_p_value(counts, law * runs) > alpha
