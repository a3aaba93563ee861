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
from eagle3_ref.testing.adapter import official_config_of, state_dict_of, tolerance
from eagle3_ref.testing.divergence import assert_same
from eagle3_ref.testing.strategies import build_draft_head, seeds
from eagle3_ref.vocab import identity_mapping, validate_vocab_mapping

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
    assert d2t.dtype == torch.int64 and d2t.shape == (n,), f"d2t: int64 ({n},), got {d2t.dtype} {tuple(d2t.shape)}"
    assert_same(torch.arange(n) + d2t, naive_draft_vocab(counts, n), "kept target ids (draft id + d2t)",
                where=("draft id",))
    kept = (torch.arange(n) + d2t).tolist()
    assert t2d.dtype == torch.bool, f"t2d must be bool, got {t2d.dtype}"
    assert_same(t2d, torch.isin(torch.arange(len(counts)), torch.tensor(kept)), "t2d", where=("target id",))
    validate_vocab_mapping(d2t, t2d, len(counts), n)


def test_fewer_distinct_tokens_than_the_draft_vocabulary(impl):
    # Only 3 distinct tokens appear, the draft vocabulary has 6 slots: the official recipe
    # crashes here. The seen tokens must be in, the rest filled with unseen ids.
    counts = torch.zeros(10, dtype=torch.long)
    counts[[9, 4, 7]] = torch.tensor([5, 1, 2])
    d2t, t2d = impl.build_vocab(counts, 6)
    kept = (torch.arange(6) + d2t).tolist()
    assert {4, 7, 9} <= set(kept) and len(set(kept)) == 6 and kept == sorted(kept), f"kept target ids {kept}"


def test_full_size_draft_vocabulary_is_the_identity(impl):
    d2t, t2d = impl.build_vocab(torch.randint(0, 9, (33,)), 33)
    assert_same(d2t, identity_mapping(33).d2t, "d2t of a full-size draft vocabulary", where=("draft id",))
    assert bool(t2d.all()), "t2d of a full-size draft vocabulary marks every token"


@given(counts_and_size())
def test_draft_target_round_trip(impl, cn):
    counts, n = cn
    V = len(counts)
    d2t, t2d = impl.build_vocab(torch.tensor(counts), n)
    draft = torch.arange(n)
    target = impl.draft_to_target(draft, d2t)
    assert_same(impl.target_to_draft(target, d2t, V), draft, "draft -> target -> draft", where=("draft id",))
    back = impl.target_to_draft(torch.arange(V), d2t, V)
    # -1 exactly for tokens outside the draft vocabulary
    assert_same(back >= 0, t2d, "target_to_draft(...) >= 0 against t2d", where=("target id",))
    assert_same(impl.draft_to_target(back[t2d], d2t), torch.arange(V)[t2d], "target -> draft -> target")


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
    assert_same(small, big[..., kept], "reduced head's logits against the full head's on the kept tokens", **tolerance(impl, "vocab_logits"),
                where=lambda i: f"slot {i[1]}, draft id {i[2]}")
    # The reduced head's greedy token, mapped to target ids, is the full head's best kept token.
    assert_same(impl.draft_to_target(small.argmax(-1), d2t), kept[big[..., kept].argmax(-1)],
                "reduced head's greedy token (target id)", where=lambda i: f"slot {i[1]}")
