"""Tie-aware comparison of a greedy output with plain greedy decoding, for bf16 / fp16.

In low precision a batched tree forward and a one-token-at-a-time forward round
differently, so at a near-tie the two can pick different argmaxes; the production systems
accept 60-66 % exact matches and call it fine. The reference does better: it checks
*every* emitted token against the plain target, teacher-forced on the emitted text (one
full-sequence forward), and lets a token differ from the plain argmax only where the
plain run's logit of its argmax exceeds the emitted token's by less than ``epsilon``. Each
such divergence is reported; any other is an error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Divergence", "tie_aware_greedy_check"]


class Divergence(NamedTuple):
    position: int  # index into the sequence
    emitted: int  # the token the implementation produced
    argmax: int  # the plain run's choice there
    margin: float  # logit[argmax] - logit[emitted] under the plain run (>= 0)


@torch.no_grad()
def tie_aware_greedy_check(target: nn.Module, sequence: Tensor, prompt_length: int, epsilon: float) -> list[Divergence]:
    """Return the near-tie divergences of ``sequence (1, T)``; raise ``AssertionError``
    naming the first divergence whose margin is ``>= epsilon``."""
    logits = target(sequence[:, :-1]).logits[0].float()  # (T-1, V): plain next-token logits
    divergences = []
    for pos in range(prompt_length, sequence.shape[1]):
        row, emitted = logits[pos - 1], int(sequence[0, pos])
        best = int(row.argmax())
        if emitted == best:
            continue
        margin = float(row[best] - row[emitted])
        if margin >= epsilon:
            raise AssertionError(f"position {pos}: emitted {emitted}, plain argmax {best}, margin {margin:.4g} "
                                 f">= epsilon {epsilon}: not a near-tie")
        divergences.append(Divergence(pos, emitted, best, margin))
    return divergences
