"""Lossless verification of a draft tree: the output is distributed exactly as the target's.

The target runs once over every tree node (tree mask, ``position = prefix + depth``) and
gives, for each node, its next-token distribution ``p`` (after the logits processors). We
then walk down from the root.

Greedy (temperature 0): follow the child whose token is the target's argmax; when no
child matches, the argmax itself is the *bonus* token. The output is therefore exactly
what plain greedy decoding produces.

Sampling. EAGLE's drafts are deterministic (top-k), so the draft distribution ``q`` is a
point mass on each child, and speculative sampling (Leviathan et al. 2023; Chen et al.
2023) with ``q(x) = 1`` reduces to: at a node, try its children ``x`` in order; accept
``x`` with probability ``p(x)``; on rejection set ``p(x) = 0`` and renormalise ``p``;
if every child is rejected the bonus token is drawn from that residual, else from ``p`` at
the last accepted node. Why exact: the first child is emitted with probability ``p(x1)``;
the second with ``(1 - p(x1)) * p(x2) / (1 - p(x1)) = p(x2)``; and so on; any other token
``y`` with ``(1 - sum_i p(x_i)) * p(y) / (1 - sum_i p(x_i)) = p(y)``.
``eagle3_ref/testing/conformance/test_verify.py`` checks this by enumerating every random choice.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .tree import DraftTree

__all__ = ["Verdict", "Sampler", "TorchSampler", "logits_processors", "target_probs", "verify_greedy",
           "verify_sampling", "Picker"]
# --- not in the skeleton: a naive twin of the verify task
__all__ += ["verify_greedy_naive"]
# --- end not in the skeleton


class Verdict(NamedTuple):
    accepted: list[int]  # node indices of the accepted path, root first
    bonus: int  # the target's own next token after the last accepted node

    def new_tokens(self, tree: DraftTree) -> list[int]:
        """Tokens this cycle appends: accepted drafts (the root was emitted last cycle), then the bonus."""
        return [int(tree.tokens[i]) for i in self.accepted[1:]] + [self.bonus]


def logits_processors(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> LogitsProcessorList:
    """transformers' own warpers, in ``generate``'s order: temperature, top-k, top-p."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature} (use greedy for 0)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    return procs


def target_probs(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """``(n, V)`` logits -> the processed target distribution ``p`` per node (float32 or wider)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.softmax(logits_processors(temperature, top_k, top_p)(None, logits), dim=-1)


# -- greedy --------------------------------------------------------------------------------


def verify_greedy(tree: DraftTree, target_logits: Tensor) -> Verdict:
    """``target_logits (n, V)``: the target's logits at each tree node."""
    # --- assignment verify: walk down from the root: follow the child whose token is the target's argmax at the
    #   current node; when none matches, that argmax is the bonus token. Return Verdict(accepted node indices,
    #   root first; bonus).
    best = target_logits.argmax(-1).tolist()
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    node, accepted = 0, [0]
    while True:
        match = [c for c in range(node + 1, len(tokens)) if parents[c] == node and tokens[c] == best[node]]
        if not match:
            return Verdict(accepted, best[node])
        node = match[0]  # siblings carry distinct tokens, so at most one matches
        accepted.append(node)
    # --- end assignment


# --- not in the skeleton: a naive twin of the verify task
def verify_greedy_naive(tree: DraftTree, target_logits: Tensor) -> Verdict:
    """The same from the retrieve rows: the longest root-to-leaf prefix agreeing with the
    target's argmax at every step."""
    best = target_logits.argmax(-1)
    longest: list[int] = [0]
    for row in tree.retrieve_indices.tolist():
        path = [i for i in row if i >= 0]
        n = 1
        while n < len(path) and int(tree.tokens[path[n]]) == int(best[path[n - 1]]):
            n += 1
        if n > len(longest):
            longest = path[:n]
    return Verdict(longest, int(best[longest[-1]]))
# --- end not in the skeleton


# -- sampling ------------------------------------------------------------------------------


class Sampler(Protocol):
    """Where the verifier's randomness comes from (swappable so tests can enumerate it)."""

    def accept(self, prob: float) -> bool: ...

    def draw(self, probs: Tensor) -> int: ...


class TorchSampler:
    """Randomness from a ``torch.Generator`` (seeded runs are reproducible)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def accept(self, prob: float) -> bool:
        # A CUDA generator draws only on its device (a CPU one, or none, on the CPU).
        device = self.generator.device if self.generator is not None else "cpu"
        return bool(torch.rand((), generator=self.generator, dtype=torch.float64, device=device) < prob)

    def draw(self, probs: Tensor) -> int:
        device = self.generator.device if self.generator is not None else probs.device
        return int(torch.multinomial(probs.to(device), 1, generator=self.generator))


def verify_sampling(tree: DraftTree, target_probs: Tensor, generator: torch.Generator | Sampler | None = None) -> Verdict:
    """``target_probs (n, V)``: the processed target distribution at each tree node."""
    sampler = generator if hasattr(generator, "accept") else TorchSampler(generator)
    # --- assignment verify: at each node try its children in order; accept child x with probability p(x) /
    #   (mass left in p), which is certain when nothing else is left; on rejection set p(x) = 0 (the residual).
    #   When every child is rejected, draw the bonus from the renormalised residual; at a leaf, from p. All
    #   randomness through sampler.accept(prob) and sampler.draw(probs).
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    node, accepted = 0, [0]
    while True:
        p = target_probs[node].clone()
        children = [c for c in range(node + 1, len(tokens)) if parents[c] == node]
        for child in children:
            x = tokens[child]
            mass = float(p.sum())
            px = float(p[x])
            # accept with p(x) under the renormalised residual; certain if nothing else is left
            if px >= mass or (px > 0 and sampler.accept(px / mass)):
                node = child
                break
            p[x] = 0.0
        else:
            return Verdict(accepted, sampler.draw(p / p.sum()))  # every child rejected: the residual
        accepted.append(node)
    # --- end assignment


class Picker:
    """The target's own choices at one temperature and warping: ``picker(logits)`` is the
    next token (argmax, or a sample of ``p``); ``picker.verify(tree, logits)`` is the verdict
    on a tree (:func:`verify_greedy` or :func:`verify_sampling`). The decoding loops hold
    one per sequence, each drawing from its own generator."""

    def __init__(self, temperature: float, top_k: int, top_p: float, generator=None) -> None:
        self.greedy = temperature == 0
        self.warp = dict(temperature=temperature or 1.0, top_k=top_k, top_p=top_p)
        self.sampler = TorchSampler(generator)

    def __call__(self, logits: Tensor) -> int:  # logits (V,)
        if self.greedy:
            return int(logits.argmax())
        return self.sampler.draw(target_probs(logits[None], **self.warp)[0])

    def verify(self, tree: DraftTree, logits: Tensor) -> Verdict:  # logits (n, V)
        if self.greedy:
            return verify_greedy(tree, logits)
        return verify_sampling(tree, target_probs(logits, **self.warp), self.sampler)
