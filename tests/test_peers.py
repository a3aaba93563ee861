"""Real peer implementations through the conformance suite (docs/peers.md).

SpecForge 0.2.0 (``pip install --no-deps specforge==0.2.0``; CI installs it) is judged at the
precision it computes in, float32 internals, through ``eagle3_ref.testing.adapters.specforge``.
Its real defects are ``xfail(strict=True)`` naming the defect: such a test goes red the day
SpecForge fixes it, or the day it stops reproducing.
"""

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.peers,
              pytest.mark.skipif(importlib.util.find_spec("specforge") is None,
                                 reason="specforge is not installed (pip install --no-deps specforge==0.2.0)")]


def test_specforge_head_conforms_at_its_own_precision(tmp_path, run_conformance):
    code, out = run_conformance("eagle3_ref.testing.adapters.specforge", "head", tmp_path)
    assert code == 0, out[-3000:]
    assert "implementation under test: specforge 0.2.0" in out and "precision float32" in out, out[-2000:]
    assert "2 passed" in out and "not implemented (their tests skipped): fusion, vocab, ttt, tree, verify, generate" \
        in out, out[-2000:]


def test_judged_at_float64_specforge_differs_by_float32_rounding_only():
    # Why precision is declared: at float64 tolerances the same correct head "diverges" by
    # ~4e-8, its float32 RMSNorm; at float32 tolerances it passes (the test above).
    from eagle3_ref.draft_head import Eagle3Config
    from eagle3_ref.testing.adapter import official_config_of, state_dict_of, tolerance
    from eagle3_ref.testing.adapters.specforge import ADAPTER as specforge
    from eagle3_ref.testing.divergence import first_divergence
    from eagle3_ref.testing.strategies import build_draft_head

    config = Eagle3Config(hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=4, vocab_size=40, draft_vocab_size=20, target_hidden_size=12, rms_norm_eps=1e-6,
                          max_position_embeddings=64, aux_layer_ids=(0, 1, 2))
    ref = build_draft_head(config, 0)
    head = specforge.load_head(official_config_of(ref), state_dict_of(ref), ref.embed_weight)
    gen = torch.Generator().manual_seed(0)
    ids, feats = torch.randint(0, 40, (1, 6), generator=gen), torch.randn(1, 6, 36, generator=gen, dtype=torch.float64)
    logits, _, _ = specforge.head_step(head, ids, specforge.head_fuse(head, feats), torch.arange(6)[None], None, None)
    want = ref(ids, ref.fuse(feats), torch.arange(6)[None]).logits
    class Float64:
        precision = "float64"
    assert first_divergence(logits, want, **tolerance(Float64, "logits")) is not None, "float64-exact after all?"
    assert first_divergence(logits, want, **tolerance(specforge, "logits")) is None
    assert 0 < float((logits - want).abs().max()) < 1e-5, "more than float32 rounding"


@pytest.mark.xfail(strict=True, raises=RuntimeError,
                   reason="SpecForge 0.2.0 defect: prepare_decoder_attention_mask (_make_causal_mask) fills a "
                          "float32 tensor with torch.finfo(model dtype).min, which overflows for a float64 model")
def test_specforge_builds_a_causal_mask_for_a_float64_model():
    from specforge.modeling.draft.llama3_eagle import prepare_decoder_attention_mask

    hidden = torch.zeros(1, 3, 4, dtype=torch.float64)
    mask = prepare_decoder_attention_mask(torch.ones(1, 3, dtype=torch.bool), (1, 3), hidden, 0)
    assert mask.shape == (1, 1, 3, 3)
