"""Training-time test.

Proofs (DESIGN "what proven means" 3, the heart of the paper):
* the parallel K-step logits equal test-time drafting unrolled step by step: for every
  slot i and step k, a chain drafted with the KV-cached head from the prefix ending at
  slot i, k steps deep, on the ground-truth tokens, gives the same logits (float64,
  padding included);
* the gradients of the loss with respect to every head parameter agree too;
* the memory-light diagonal form equals the dense mask; the loss equals a naive
  per-position, per-step computation;
* a mask that lets step k see a later slot, or hides a prefix key (the old upstream bug),
  breaks the equality.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eagle3_ref.draft_head import Eagle3Config
from eagle3_ref.testing.adapter import official_config_of, state_dict_of
from eagle3_ref.testing.strategies import build_draft_head, head_configs, seeds, target_configs
from eagle3_ref.ttt import STEP_WEIGHT, ttt_attention_mask, ttt_forward, ttt_loss, ttt_loss_naive

pytestmark = pytest.mark.ttt


@st.composite
def ttt_cases(draw, padding=("none", "right", "any")):
    config = draw(target_configs(max_layers=3).flatmap(head_configs))
    B, T, K = draw(st.integers(1, 2)), draw(st.integers(1, 7)), draw(st.integers(1, 4))
    seed = draw(seeds)
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    kind = draw(st.sampled_from(padding))
    for b in range(B):
        if kind == "right":
            mask[b, draw(st.integers(1, T)):] = 0
        elif kind == "any":
            mask[b] = torch.tensor(draw(st.lists(st.integers(0, 1), min_size=T, max_size=T)))
    return dict(
        config=config, seed=seed, K=K, attention_mask=mask,
        input_ids=torch.randint(0, config.vocab_size, (B, T), generator=gen),
        features=torch.randn(B, T, config.num_aux_layers * config.target_hidden_size, generator=gen, dtype=torch.float64),
        target_logits=torch.randn(B, T, config.vocab_size, generator=gen, dtype=torch.float64) * 3,
    )


def _heads(impl, case, device):
    c = case["config"]
    embed = None if c.owns_embedding else torch.randn(c.vocab_size, c.hidden_size, generator=torch.Generator().manual_seed(1))
    ref = build_draft_head(c, case["seed"], embed, torch.float64, device)
    return ref, impl.load_head(official_config_of(ref), state_dict_of(ref), ref.embed_weight)


def unrolled_chain_logits(impl, head, features, input_ids, real, i, k):
    """Draft from the prefix ending at slot i (its real slots, at their positions), then k
    steps on the ground-truth tokens, each fed the previous step's own hidden."""
    slots = [j for j in range(i + 1) if real[j]]
    pos = torch.tensor([slots], device=input_ids.device)
    logits, hidden, cache = impl.head_step(head, input_ids[None, [j + 1 for j in slots]],
                                           impl.head_fuse(head, features[None, slots]), pos, None, None)
    logits, hidden = logits[:, -1:], hidden[:, -1:]
    for s in range(1, k + 1):
        logits, hidden, cache = impl.head_step(head, input_ids[None, i + s + 1:i + s + 2], hidden,
                                               torch.tensor([[i + s]], device=input_ids.device), cache, None)
    return logits[0, -1]


def _unrolled(impl, head, case, device):
    """{(b, k, i): logits} for every real slot i and step k whose input token exists."""
    feats, ids, mask = (case[n].to(device) for n in ("features", "input_ids", "attention_mask"))
    out = {}
    for b in range(ids.shape[0]):
        for k in range(case["K"]):
            for i in range(ids.shape[1] - k - 1):
                if mask[b, i]:
                    out[b, k, i] = unrolled_chain_logits(impl, head, feats[b], ids[b], mask[b], i, k)
    return out


@given(case=ttt_cases())
def test_parallel_ttt_equals_unrolled_drafting(impl, device, case):
    _, head = _heads(impl, case, device)
    logits = impl.ttt_forward(head, case["features"].to(device), case["input_ids"].to(device), case["K"],
                              case["attention_mask"].to(device))
    assert len(logits) == case["K"]
    for (b, k, i), want in _unrolled(impl, head, case, device).items():
        torch.testing.assert_close(logits[k][b, i], want, rtol=1e-10, atol=1e-10, msg=lambda m: f"step {k} slot {i}: {m}")


@settings(max_examples=8)
@given(case=ttt_cases(padding=("none", "right")))
def test_gradients_equal_the_unrolled_computation(impl, case):
    ref, head = _heads(impl, case, "cpu")
    B, T = case["input_ids"].shape
    loss_mask = case["attention_mask"].clone()
    loss = impl.ttt_loss(impl.ttt_forward(head, case["features"], case["input_ids"], case["K"], case["attention_mask"]),
                         case["target_logits"], loss_mask, ref.t2d, ref.d2t)
    params = [p for p in head.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    # The same loss assembled from unrolled chains: slots a chain cannot reach get zeros
    # (ttt_loss never counts them: their input token lies beyond the sequence or is padding).
    chains = _unrolled(impl, head, case, "cpu")
    steps = [torch.stack([torch.stack([chains.get((b, k, i), torch.zeros(ref.config.draft_vocab_size,
                                                                          dtype=torch.float64))
                                       for i in range(T)]) for b in range(B)]) for k in range(case["K"])]
    loss2 = impl.ttt_loss(steps, case["target_logits"], loss_mask, ref.t2d, ref.d2t)
    torch.testing.assert_close(loss, loss2, rtol=1e-10, atol=1e-12)
    if not loss2.requires_grad:  # no chain fits in the sequence: nothing is trained
        assert all(g is None or not g.any() for g in grads)
        return
    for p, g, g2 in zip(params, grads, torch.autograd.grad(loss2, params, allow_unused=True)):
        g = torch.zeros_like(p) if g is None else g
        g2 = torch.zeros_like(p) if g2 is None else g2
        torch.testing.assert_close(g, g2, rtol=1e-9, atol=1e-11)


@given(case=ttt_cases())
def test_diagonal_form_equals_the_dense_mask(device, case):
    head, _ = _heads(type("R", (), {"load_head": lambda *a: None})(), case, device)
    args = (head, case["features"].to(device), case["input_ids"].to(device), case["K"], case["attention_mask"].to(device))
    for a, b in zip(ttt_forward(*args, implementation="diagonal").logits, ttt_forward(*args, implementation="dense").logits):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@given(case=ttt_cases(padding=("none", "right")))
def test_loss_equals_the_naive_loss(impl, case):
    ref, head = _heads(impl, case, "cpu")
    logits = ttt_forward(ref, case["features"], case["input_ids"], case["K"], case["attention_mask"]).logits
    mask = case["attention_mask"]
    got = impl.ttt_loss(logits, case["target_logits"], mask, ref.t2d, ref.d2t)
    torch.testing.assert_close(got, ttt_loss_naive(logits, case["target_logits"], mask, ref.t2d), rtol=1e-12, atol=1e-12)


def test_the_mask_as_drawn():
    # T = 3 slots, K = 2 steps. Rows: step 0 slots 0..2, then step 1 slots 0..2.
    m = ttt_attention_mask(3, 2)[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0],
                 [1, 0, 0, 1, 0, 0],
                 [1, 1, 0, 0, 1, 0],
                 [1, 1, 1, 0, 0, 1]]
    padded = ttt_attention_mask(3, 2, torch.tensor([[1, 0, 1]]))[0, 0].int()
    assert padded[2].tolist() == [1, 0, 1, 0, 0, 0]  # the real slot 2 never sees padding slot 1
    assert padded[1].tolist() == [1, 1, 0, 0, 0, 0]  # padding slot 1: the real keys before it, and itself


def _broken(kind: str, T: int, K: int) -> torch.Tensor:
    mask = ttt_attention_mask(T, K).clone()
    k, i = 1, 1
    if kind == "sees a later slot":
        mask[0, 0, k * T + i, i + 1] = True  # step 1, slot 1 sees step-0 key of slot 2
    elif kind == "hides a prefix key":
        mask[0, 0, k * T + i, i - 1] = False  # the old upstream bug: step k hides the nearest prefix keys
    elif kind == "sees another slot's step":
        mask[0, 0, k * T + i, k * T + i - 1] = True
    return mask


@pytest.mark.parametrize("kind", ["sees a later slot", "hides a prefix key", "sees another slot's step"])
def test_a_wrong_mask_breaks_the_proof(impl, kind):
    config = Eagle3Config(hidden_size=8, intermediate_size=12, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=20, draft_vocab_size=9)
    head = build_draft_head(config, 0, torch.randn(20, 8, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    ids, feats = torch.randint(0, 20, (1, 5), generator=gen), torch.randn(1, 5, 24, generator=gen, dtype=torch.float64)
    good = ttt_forward(head, feats, ids, 2).logits[1][0, 1]
    bad = ttt_forward(head, feats, ids, 2, dense_mask=_broken(kind, 5, 2)).logits[1][0, 1]
    want = unrolled_chain_logits(impl, head, feats[0], ids[0], torch.ones(5), 1, 1)
    torch.testing.assert_close(good, want, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(bad, want, rtol=1e-6, atol=1e-6)


def test_one_step_is_plain_training():
    config = Eagle3Config(hidden_size=8, intermediate_size=12, num_attention_heads=2, num_key_value_heads=1, vocab_size=20)
    head = build_draft_head(config, 0, torch.randn(20, 8, dtype=torch.float64))
    ids, feats = torch.randint(0, 20, (2, 6)), torch.randn(2, 6, 24, dtype=torch.float64)
    shifted = torch.cat([ids[:, 1:], torch.zeros(2, 1, dtype=torch.long)], 1)
    plain = head(shifted, head.fuse(feats), torch.arange(6)[None].expand(2, 6)).logits
    torch.testing.assert_close(ttt_forward(head, feats, ids, 1).logits[0], plain, rtol=1e-12, atol=1e-12)
    assert STEP_WEIGHT == 0.8


def test_loss_reports_accuracy_in_target_ids():
    config = Eagle3Config(hidden_size=8, intermediate_size=12, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=10, draft_vocab_size=4)
    head = build_draft_head(config, 0, torch.randn(10, 8, dtype=torch.float64))
    kept = (torch.arange(4) + head.d2t).tolist()
    target = torch.full((1, 3, 10), -5.0, dtype=torch.float64)
    target[0, 1, kept[2]] = 5.0  # slot 0 step 0 is trained toward kept[2]
    logits = torch.full((1, 3, 4), -1.0, dtype=torch.float64)
    logits[0, 0, 2] = 1.0  # ... and predicts draft id 2, i.e. target id kept[2]
    out = ttt_loss([logits], target, torch.tensor([[1, 0, 0]]), head.t2d, head.d2t)
    assert out.step_counts == [1] and out.step_accuracy == [1.0]
