"""The token-predicting draft head, the reference's own tests: the tree mask matters, the
fused attention kernel equals the naive one, dtypes, the cache, errors. (The equations and
cached tree drafting are proven for any implementation in
``eagle3_ref/testing/conformance/test_head.py``.)
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eagle3_ref.draft_head import Eagle3Config, Eagle3DraftHead, KVCache, causal_mask
from eagle3_ref.testing.adapter import ReferenceAdapter
from eagle3_ref.testing.conformance.test_head import random_prefix as _prefix
from eagle3_ref.testing.conformance.test_head import setup_head as _setup
from eagle3_ref.testing.strategies import build_draft_head, head_configs, seeds, target_configs

pytestmark = pytest.mark.head


def test_tree_mask_matters():
    # The property above must fail if the mask is ignored: a sibling's key leaking into a
    # node's attention changes its logits.
    config = Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1, vocab_size=11)
    impl = ReferenceAdapter()
    _, handle = _setup(impl, config, 0, "cpu")
    ids, feats, _ = _prefix(config, 0, 3, "cpu")
    hidden = impl.head_fuse(handle, feats)
    logits, out, cache = impl.head_step(handle, ids, hidden, torch.arange(3)[None], None, None)
    two = dict(input_ids=torch.tensor([[4, 7]]), hidden=out[:, -1:].expand(1, 2, 8), position_ids=torch.full((1, 2), 3))
    tree = torch.tensor([[True, False], [False, True]])
    mask = torch.ones(1, 1, 2, 5, dtype=torch.bool)
    mask[0, 0, :, 3:] = tree
    a = impl.head_step(handle, two["input_ids"], two["hidden"], two["position_ids"], cache, mask)[0]
    b = impl.head_step(handle, two["input_ids"], two["hidden"], two["position_ids"], cache, None)[0]  # causal
    assert torch.allclose(a[0, 0], b[0, 0]) and not torch.allclose(a[0, 1], b[0, 1])


# -- the kernels, the cache, the errors -----------------------------------------------------


@given(config=st.deferred(lambda: target_configs(max_layers=3).flatmap(head_configs)), seed=seeds,
       T=st.integers(1, 8), split=st.integers(0, 8))
def test_sdpa_equals_naive_attention_and_chunking_is_invisible(device, config, seed, T, split):
    fast, _ = _setup(ReferenceAdapter("sdpa"), config, seed, device)
    naive, _ = _setup(ReferenceAdapter("naive"), config, seed, device, attn="naive")
    ids, feats, pos = _prefix(config, seed, T, device)
    whole = fast(ids, fast.fuse(feats), pos)
    torch.testing.assert_close(naive(ids, naive.fuse(feats), pos).logits, whole.logits, rtol=1e-10, atol=1e-10)
    s = min(split, T - 1)
    if s > 0:  # the same sequence in two cached chunks
        first = naive(ids[:, :s], naive.fuse(feats[:, :s]), pos[:, :s])
        second = naive(ids[:, s:], naive.fuse(feats[:, s:]), pos[:, s:], cache=first.cache)
        torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), whole.logits, rtol=1e-10, atol=1e-10)
        assert second.cache.length == T


def test_float32_matches_float64():
    config = Eagle3Config(hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                          vocab_size=30, draft_vocab_size=12)
    h64, _ = _setup(ReferenceAdapter(), config, 3, "cpu")
    h32 = build_draft_head(config, 3, h64.embed_weight.float(), torch.float32)
    ids, feats, pos = _prefix(config, 3, 7, "cpu")
    torch.testing.assert_close(h32(ids, h32.fuse(feats.float()), pos).logits.double(),
                               h64(ids, h64.fuse(feats), pos).logits, rtol=1e-4, atol=1e-4)


def test_kv_cache_crop_and_select():
    k = torch.arange(24.0).view(1, 1, 6, 4)
    cache = KVCache(k, -k)
    assert cache.length == 6 and cache.crop(4).length == 4
    assert torch.equal(cache.select(torch.tensor([0, 5])).key[0, 0, 1], k[0, 0, 5])


def test_causal_mask_sees_cache_and_earlier_slots():
    m = causal_mask(2, 3)
    assert m.shape == (1, 1, 2, 5)
    assert m[0, 0].tolist() == [[True] * 4 + [False], [True] * 5]


def test_head_errors_name_the_argument():
    c = Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1, vocab_size=11)
    head = Eagle3DraftHead(c)
    with pytest.raises(RuntimeError, match="attach_embedding"):
        head(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, 8), torch.zeros(1, 1, dtype=torch.long))
    head.attach_embedding(torch.randn(11, 8))
    with pytest.raises(ValueError, match="hidden has shape"):
        head(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 24), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must be bool"):
        head(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 8), torch.zeros(1, 2, dtype=torch.long),
             attention_mask=torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="embedding has shape"):
        head.attach_embedding(torch.randn(12, 8))
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=3, num_key_value_heads=2, vocab_size=11)
    with pytest.raises(ValueError, match="draft_vocab_size"):
        Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1, vocab_size=11,
                     draft_vocab_size=12)
    with pytest.raises(ValueError, match="attn_implementation"):
        Eagle3DraftHead(c, attn_implementation="flash")


def test_embedding_is_frozen_and_not_saved():
    c = Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1, vocab_size=11)
    head = Eagle3DraftHead(c, torch.randn(11, 8, requires_grad=True))
    assert not head.embed_weight.requires_grad
    assert all("embed" not in k for k in head.state_dict())
    assert all("embed" not in n for n, _ in head.named_parameters())
