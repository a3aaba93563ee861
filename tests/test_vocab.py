"""The reduced draft vocabulary, the reference's own tests: counting tokens, validating a
mapping. (Building and using one is proven for any implementation in
``eagle3_ref/testing/conformance/test_vocab.py``.)
"""

import pytest
import torch

from eagle3_ref.vocab import count_tokens, validate_vocab_mapping

pytestmark = pytest.mark.vocab


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
