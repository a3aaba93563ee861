"""Training-time test.

Proofs (DESIGN "what proven means" 3, the heart of the paper):
* the parallel K-step logits equal test-time drafting unrolled step by step: for every
  slot i and step k, a chain drafted with the KV-cached head from the prefix ending at
  slot i, k steps deep, on the ground-truth tokens, gives the same logits (float64,
  padding included);
* the gradients of the loss with respect to every head parameter agree too;
* the loss equals a naive per-position, per-step computation;
* and each of these equals the reference's on the same weights (not only the
  implementation's own unrolled drafting: an implementation consistently wrong in both
  would agree with itself).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eagle3_ref.testing.adapter import official_config_of, state_dict_of, tolerance
from eagle3_ref.testing.divergence import assert_same
from eagle3_ref.testing.strategies import build_draft_head, head_configs, seeds, target_configs
from eagle3_ref.ttt import ttt_forward, ttt_loss, ttt_loss_naive

pytestmark = pytest.mark.ttt


@st.composite
def ttt_cases(draw, padding=("none", "right", "any")):
    config = draw(target_configs(max_layers=3).flatmap(head_configs))
    B, T = draw(st.integers(1, 2)), draw(st.integers(1, 7))
    K = draw(st.integers(1, min(4, T)))  # ttt_forward refuses steps past the sequence
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


def case_heads(impl, case, device):
    """(reference head, the implementation's handle on the same weights)."""
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


def unrolled(impl, head, case, device):
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
    ref, head = case_heads(impl, case, device)
    feats, ids, mask = (case[n].to(device) for n in ("features", "input_ids", "attention_mask"))
    logits = impl.ttt_forward(head, feats, ids, case["K"], mask)
    assert len(logits) == case["K"], f"ttt_forward returned {len(logits)} steps, asked for {case['K']}"
    with torch.no_grad():
        reference = ttt_forward(ref, feats, ids, case["K"], mask).logits  # the same weights
    for (b, k, i), want in unrolled(impl, head, case, device).items():
        assert_same(logits[k][b, i], want, f"TTT step {k}, batch {b}, slot {i}: parallel logits against "
                    f"drafting {k} step(s) from the prefix ending at slot {i}", **tolerance(impl, "ttt_logits"),
                    where=("draft token",))
        assert_same(logits[k][b, i], reference[k][b, i], f"TTT step {k}, batch {b}, slot {i}: parallel logits "
                    "against the reference's on the same weights", **tolerance(impl, "ttt_logits"),
                    where=("draft token",))


@settings(max_examples=8)
@given(case=ttt_cases(padding=("none", "right")))
def test_gradients_equal_the_unrolled_computation(impl, case):
    ref, head = case_heads(impl, case, "cpu")
    B, T = case["input_ids"].shape
    loss_mask = case["attention_mask"].clone()
    loss = impl.ttt_loss(impl.ttt_forward(head, case["features"], case["input_ids"], case["K"], case["attention_mask"]),
                         case["target_logits"], loss_mask, ref.t2d, ref.d2t)
    params = [p for p in head.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    # The same loss assembled from unrolled chains: slots a chain cannot reach get zeros
    # (ttt_loss never counts them: their input token lies beyond the sequence or is padding).
    chains = unrolled(impl, head, case, "cpu")
    steps = [torch.stack([torch.stack([chains.get((b, k, i), torch.zeros(ref.config.draft_vocab_size,
                                                                          dtype=torch.float64))
                                       for i in range(T)]) for b in range(B)]) for k in range(case["K"])]
    loss2 = impl.ttt_loss(steps, case["target_logits"], loss_mask, ref.t2d, ref.d2t)
    assert_same(loss, loss2, "TTT loss of the parallel forward against the unrolled chains", **tolerance(impl, "loss"))
    if not chains:  # no chain fits in the sequence: nothing is trained
        assert all(g is None or not g.any() for g in grads), "no chain fits, yet the parallel loss has gradients"
        return
    assert loss2.requires_grad, ("head_step returned logits without gradients: this test drafts the unrolled chains "
                                 "with it, so it must be differentiable (docs/testing.md, the head handle)")
    names = [n for n, p in head.named_parameters() if p.requires_grad]
    for name, p, g, g2 in zip(names, params, grads, torch.autograd.grad(loss2, params, allow_unused=True)):
        g = torch.zeros_like(p) if g is None else g
        g2 = torch.zeros_like(p) if g2 is None else g2
        assert_same(g, g2, f"gradient of {name}", **tolerance(impl, "grad"))

    # Against the reference on the same weights: the loss, and every gradient of a parameter
    # the implementation names with an official key (a handle need not be an nn.Module with
    # the official names; then only the loss is compared).
    ref_loss = ttt_loss(ttt_forward(ref, case["features"], case["input_ids"], case["K"], case["attention_mask"]).logits,
                        case["target_logits"], loss_mask, ref.t2d, ref.d2t).loss
    assert_same(loss, ref_loss, "TTT loss against the reference's on the same weights", **tolerance(impl, "loss"))
    ref_params = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    shared = [(n, g) for n, g in zip(names, grads) if n in ref_params]
    if shared and ref_loss.requires_grad:
        ref_grads = torch.autograd.grad(ref_loss, [ref_params[n] for n, _ in shared], allow_unused=True)
        for (name, g), g_ref in zip(shared, ref_grads):
            g = torch.zeros_like(ref_params[name]) if g is None else g
            g_ref = torch.zeros_like(ref_params[name]) if g_ref is None else g_ref
            assert_same(g, g_ref, f"gradient of {name} against the reference's", **tolerance(impl, "grad"))


@pytest.mark.ungraded  # the loss is not a region of the course assignment: the skeleton hands it out whole
@given(case=ttt_cases(padding=("none", "right")))
def test_loss_equals_the_naive_loss(impl, case):
    ref, _ = case_heads(impl, case, "cpu")
    logits = ttt_forward(ref, case["features"], case["input_ids"], case["K"], case["attention_mask"]).logits
    mask = case["attention_mask"]
    got = impl.ttt_loss(logits, case["target_logits"], mask, ref.t2d, ref.d2t)
    assert_same(got, ttt_loss_naive(logits, case["target_logits"], mask, ref.t2d), "TTT loss against the naive "
                "per-slot, per-step loss", **tolerance(impl, "loss"))
