"""Drafters with known behaviour, for driving the tree and the decoding loop in tests.

The tree algorithm does not care where proposals come from (:func:`eagle3_ref.tree.grow_tree`
takes any ``propose``); these make its outcome predictable: a perfect drafter proposes the
target's own next token with near certainty, an always-wrong one gives it the lowest
probability of all.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from eagle3_ref.tree import Pool

__all__ = ["confident_logprobs", "path_proposer", "OracleDrafter"]


def confident_logprobs(token: int, vocab: int, wrong: bool = False) -> Tensor:
    """Log-probs ``(vocab,)`` that put almost all mass on ``token`` (or, ``wrong``, the least);
    the other tokens get distinct, tie-free values."""
    x = torch.linspace(0, 1, vocab, dtype=torch.float64)
    x[token] = -50.0 if wrong else 50.0
    return torch.log_softmax(x, -1)


def path_proposer(logprobs_of: Callable[[list[int]], Tensor]):
    """A ``propose`` for :func:`grow_tree` from a function of a node's token path."""

    def propose(frontier: list[int], pool: Pool) -> Tensor:
        return torch.stack([logprobs_of([pool.tokens[i] for i in pool.lineage(f)]) for f in frontier])

    return propose


class OracleDrafter:
    """A drafter for :func:`eagle3_ref.generate.speculative_generate` that knows the target's
    greedy continuation (it runs the target on every path): ``wrong=False`` proposes it,
    ``wrong=True`` never does."""

    def __init__(self, target: nn.Module, wrong: bool = False) -> None:
        self.target, self.wrong = target, wrong

    @torch.no_grad()
    def truth(self, input_ids: Tensor, path: list[int]) -> int:
        seq = torch.cat([input_ids, input_ids.new_tensor([path])], 1) if path else input_ids
        return int(self.target(seq).logits[0, -1].argmax())

    def draft(self, features, input_ids, config, state):
        vocab = self.target.config.vocab_size
        logprobs_of = lambda path: confident_logprobs(self.truth(input_ids, path), vocab, self.wrong)  # noqa: E731
        return config.grow(int(input_ids[0, -1]), logprobs_of([]), path_proposer(logprobs_of)), None
