"""Training-time test, the reference's own tests: the diagonal form equals the dense mask,
the mask as drawn, a wrong mask breaks the proof, one step is plain training. (The proof
itself, parallel TTT == unrolled drafting with gradients, runs for any implementation in
``eagle3_ref/testing/conformance/test_ttt.py``.)
"""

import pytest
import torch
from hypothesis import given

from eagle3_ref.draft_head import Eagle3Config
from eagle3_ref.testing.adapter import ReferenceAdapter
from eagle3_ref.testing.conformance.test_ttt import case_heads, ttt_cases, unrolled_chain_logits
from eagle3_ref.testing.strategies import build_draft_head
from eagle3_ref.ttt import STEP_WEIGHT, ttt_attention_mask, ttt_forward, ttt_loss

pytestmark = pytest.mark.ttt


@given(case=ttt_cases())
def test_diagonal_form_equals_the_dense_mask(device, case):
    head, _ = case_heads(type("R", (), {"load_head": lambda *a: None})(), case, device)
    args = (head, case["features"].to(device), case["input_ids"].to(device), case["K"], case["attention_mask"].to(device))
    for a, b in zip(ttt_forward(*args, implementation="diagonal").logits, ttt_forward(*args, implementation="dense").logits):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


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


def test_the_mask_is_built_on_the_attention_masks_device():
    # The first gpu-check (H200) found the padded mask built on the CPU for a CUDA attention
    # mask: training with padding on a GPU raised. The meta device stands in for CUDA here: a
    # CPU tensor met on the way raises as it does there.
    mask = ttt_attention_mask(4, 3, torch.ones(2, 4, device="meta"))
    assert mask.device.type == "meta" and mask.shape == (2, 1, 12, 12)


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
def test_a_wrong_mask_breaks_the_proof(kind):
    config = Eagle3Config(hidden_size=8, intermediate_size=12, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=20, draft_vocab_size=9)
    head = build_draft_head(config, 0, torch.randn(20, 8, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    ids, feats = torch.randint(0, 20, (1, 5), generator=gen), torch.randn(1, 5, 24, generator=gen, dtype=torch.float64)
    good = ttt_forward(head, feats, ids, 2).logits[1][0, 1]
    bad = ttt_forward(head, feats, ids, 2, dense_mask=_broken(kind, 5, 2)).logits[1][0, 1]
    want = unrolled_chain_logits(ReferenceAdapter(), head, feats[0], ids[0], torch.ones(5), 1, 1)
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


def test_steps_past_the_sequence_are_refused_before_any_work():
    # ttt_forward(..., steps=10**6) on 6 tokens once grew to 22 GB before it was killed.
    from eagle3_ref.draft_head import Eagle3Config, Eagle3DraftHead

    config = Eagle3Config(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=10, target_hidden_size=8)
    head = Eagle3DraftHead(config, torch.randn(10, 8))
    ids, feats = torch.randint(0, 10, (1, 6)), torch.randn(1, 6, 24)
    assert len(ttt_forward(head, feats, ids, 6).logits) == 6  # as many steps as tokens: allowed
    with pytest.raises(ValueError, match=r"steps \(1000000\) must be at most the sequence length \(6\)"):
        ttt_forward(head, feats, ids, 10**6)
