"""The reduced draft vocabulary (d2t offsets, t2d mask).

Proofs: the mapping keeps the most frequent tokens (a plain-Python oracle), sorted by id,
also with fewer distinct tokens than the draft vocabulary; draft -> target -> draft
round-trips; a full-vocabulary head and a reduced one sliced from it agree on every token
both can emit.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eagle3_ref.draft_head import Eagle3Config
from eagle3_ref.testing.adapter import official_config_of, state_dict_of
from eagle3_ref.testing.strategies import build_draft_head, seeds
from eagle3_ref.vocab import count_tokens, identity_mapping, validate_vocab_mapping

pytestmark = pytest.mark.vocab


def naive_draft_vocab(counts: list[int], n: int) -> list[int]:
    """Sort (count desc, id asc), keep n, sort by id. Written without torch."""
    ranked = sorted(range(len(counts)), key=lambda t: (-counts[t], t))
    return sorted(ranked[:n])


@st.composite
def counts_and_size(draw):
    V = draw(st.integers(1, 80))
    # Few distinct values -> many ties; many zeros -> fewer distinct tokens than V_d.
    counts = draw(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 50]), min_size=V, max_size=V))
    return counts, draw(st.integers(1, V))


@given(counts_and_size())
def test_keeps_the_most_frequent_tokens_sorted_by_id(impl, cn):
    counts, n = cn
    d2t, t2d = impl.build_vocab(torch.tensor(counts), n)
    kept = (torch.arange(n) + d2t).tolist()
    assert kept == naive_draft_vocab(counts, n)
    assert d2t.dtype == torch.int64 and d2t.shape == (n,)
    assert t2d.dtype == torch.bool and int(t2d.sum()) == n and t2d.nonzero().flatten().tolist() == kept
    validate_vocab_mapping(d2t, t2d, len(counts), n)


def test_fewer_distinct_tokens_than_the_draft_vocabulary(impl):
    # Only 3 distinct tokens appear, the draft vocabulary has 6 slots: the official recipe
    # crashes here. The seen tokens must be in, the rest filled with unseen ids.
    counts = torch.zeros(10, dtype=torch.long)
    counts[[9, 4, 7]] = torch.tensor([5, 1, 2])
    d2t, t2d = impl.build_vocab(counts, 6)
    kept = (torch.arange(6) + d2t).tolist()
    assert {4, 7, 9} <= set(kept) and len(set(kept)) == 6 and kept == sorted(kept)


def test_full_size_draft_vocabulary_is_the_identity(impl):
    d2t, t2d = impl.build_vocab(torch.randint(0, 9, (33,)), 33)
    assert torch.equal(d2t, identity_mapping(33).d2t) and bool(t2d.all())


@given(counts_and_size())
def test_draft_target_round_trip(impl, cn):
    counts, n = cn
    V = len(counts)
    d2t, t2d = impl.build_vocab(torch.tensor(counts), n)
    draft = torch.arange(n)
    target = impl.draft_to_target(draft, d2t)
    assert torch.equal(impl.target_to_draft(target, d2t, V), draft)
    back = impl.target_to_draft(torch.arange(V), d2t, V)
    assert torch.equal(back >= 0, t2d)  # -1 exactly for tokens outside the draft vocabulary
    assert torch.equal(impl.draft_to_target(back[t2d], d2t), torch.arange(V)[t2d])


def test_count_tokens_respects_masks():
    ids = [torch.tensor([1, 2, 2, 3]), torch.tensor([[3, 3]])]
    masks = [torch.tensor([1, 1, 0, 0]), torch.tensor([[1, 0]])]
    assert count_tokens(ids, 5).tolist() == [0, 1, 2, 3, 0]
    assert count_tokens(ids, 5, masks).tolist() == [0, 1, 1, 1, 0]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        count_tokens([torch.tensor([3])], 3)


@pytest.mark.parametrize(
    "d2t, t2d, message",
    [
        (torch.tensor([0, 5]), torch.tensor([1, 0, 0, 0, 0], dtype=torch.bool), "outside the target vocabulary"),
        (torch.tensor([0, 1]), torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool), "t2d marks 3 tokens"),
        (torch.tensor([0, 0]), torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool), "disagree"),
        (torch.tensor([0, 0]), torch.tensor([1, 1, 0, 0], dtype=torch.bool), r"shape \(5,\)"),
        (torch.tensor([0.0, 0.0]), torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool), "d2t must be an integer"),
    ],
)
def test_invalid_mappings_are_named(d2t, t2d, message):
    with pytest.raises(ValueError, match=message):
        validate_vocab_mapping(d2t, t2d, 5, 2)


@given(V=st.integers(2, 40), data=st.data(), seed=seeds)
def test_reduced_head_agrees_with_the_full_head_on_shared_tokens(impl, V, data, seed):
    full_cfg = Eagle3Config(hidden_size=8, intermediate_size=12, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=V)
    embed = torch.randn(V, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    full = build_draft_head(full_cfg, seed, embed)
    n = data.draw(st.integers(1, V))
    counts = torch.tensor(data.draw(st.lists(st.integers(0, 4), min_size=V, max_size=V)))
    d2t, t2d = impl.build_vocab(counts, n)
    kept = impl.draft_to_target(torch.arange(n), d2t)
    # Slice the full head's weights down to the kept tokens: the same head, fewer outputs.
    small_sd = state_dict_of(full)
    small_sd.update(**{"lm_head.weight": small_sd["lm_head.weight"][kept], "d2t": d2t, "t2d": t2d})
    small_cfg = official_config_of(full)
    small_cfg["draft_vocab_size"] = n
    full_h = impl.load_head(official_config_of(full), state_dict_of(full), embed)
    small_h = impl.load_head(small_cfg, small_sd, embed)

    T = data.draw(st.integers(1, 6))
    ids = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(seed))
    feats = torch.randn(1, T, 24, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pos = torch.arange(T)[None]
    big = impl.head_step(full_h, ids, impl.head_fuse(full_h, feats), pos, None, None)[0]
    small = impl.head_step(small_h, ids, impl.head_fuse(small_h, feats), pos, None, None)[0]
    torch.testing.assert_close(small, big[..., kept], rtol=0, atol=1e-12)
    # The reduced head's greedy token, mapped to target ids, is the full head's best kept token.
    best_small = impl.draft_to_target(small.argmax(-1), d2t)
    assert torch.equal(best_small, kept[big[..., kept].argmax(-1)])
