"""Feature fusion, the reference's own tests: explicit ids, the engines' conventions, the
order of the concatenation, the fc. (What any implementation must collect is proven in
``eagle3_ref/testing/conformance/test_fusion.py``.)
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from eagle3_ref.fusion import (
    LAYER_ID_CONVENTIONS,
    default_aux_layer_ids,
    from_convention,
    fuse,
    make_fc,
    select_features,
    to_convention,
    validate_aux_layer_ids,
)
from eagle3_ref.testing.strategies import seeds

pytestmark = pytest.mark.fusion


# -- which layers ------------------------------------------------------------------------


@pytest.mark.parametrize("ids, n", [((0, 0, 1), 4), ((3, 2, 1), 4), ((0, 1, 4), 4), ((-1, 0, 1), 4), ((), 4)])
def test_bad_explicit_ids_are_rejected(ids, n):
    with pytest.raises(ValueError, match="aux_layer_ids"):
        validate_aux_layer_ids(ids, n)


@given(n=st.integers(7, 200))
def test_engine_conventions(n):
    hf = default_aux_layer_ids(n)
    assert to_convention(hf, "vllm") == hf  # vLLM reads hidden_states indices as-is
    assert to_convention(hf, "sglang") == tuple(i - 1 for i in hf)  # SGLang captures at id + 1
    # SpecForge's default [1, N//2 - 1, N - 4] is the same three layers, output-of-layer style.
    assert from_convention((1, n // 2 - 1, n - 4), "specforge") == hf
    for conv in LAYER_ID_CONVENTIONS:
        assert from_convention(to_convention(hf, conv), conv) == hf


def test_unknown_convention_is_named():
    with pytest.raises(ValueError, match="'trtllm'"):
        to_convention((2, 3, 4), "trtllm")


# -- collecting them ---------------------------------------------------------------------


def test_features_are_ordered_low_mid_high():
    # Catches a concatenation in the wrong order (or of the wrong layers), which an
    # equality against hooks on the *same* ids list would also catch, but say it plainly.
    hidden_states = tuple(torch.full((1, 2, 3), float(i)) for i in range(9))
    feats = select_features(hidden_states, (2, 4, 5))
    assert feats[0, 0].tolist() == [2.0] * 3 + [4.0] * 3 + [5.0] * 3


# -- the fc --------------------------------------------------------------------------------


@given(k=st.integers(1, 4), ht=st.integers(1, 8), h=st.integers(1, 8), seed=seeds)
def test_fc_is_one_bias_free_linear_map(k, ht, h, seed):
    torch.manual_seed(seed)
    fc = make_fc(k, ht, h).double()
    assert fc.bias is None and fc.weight.shape == (h, k * ht)
    x = torch.randn(2, 3, k * ht, dtype=torch.float64)
    torch.testing.assert_close(fuse(fc, x), x @ fc.weight.T, rtol=0, atol=1e-12)


def test_fc_rejects_wrong_width():
    with pytest.raises(ValueError, match="fc expects 12"):
        fuse(make_fc(3, 4, 8), torch.zeros(1, 2, 8))
