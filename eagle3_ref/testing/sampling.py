"""Enumerate every random choice a sampling verifier can make, with its probability.

The exact (not statistical) test of lossless sampling verification (Leviathan et al. 2023;
EAGLE's multi-candidate form): an implementation draws all its randomness through a
``sampler`` with two methods, ``accept(prob) -> bool`` and ``draw(probs) -> int``. Replaying
scripted outcomes and branching at each unscripted choice visits every path through the
verifier exactly once, so the law of what it emits is computed, not estimated.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["NeedChoice", "ScriptedSampler", "enumerate_runs", "enumerate_verifier"]


class NeedChoice(Exception):
    """Raised at the first choice the script does not cover; carries its options."""

    def __init__(self, options: list[tuple[Any, float]]):
        super().__init__(f"{len(options)} options")
        self.options = options  # [(outcome, probability)], probability > 0


class ScriptedSampler:
    """Replays a fixed list of ``(outcome, probability)``; multiplies up the probabilities."""

    def __init__(self, script: list[tuple[Any, float]]):
        self.script, self.i, self.prob = script, 0, 1.0

    def _next(self, options):
        if self.i == len(self.script):
            raise NeedChoice([(o, p) for o, p in options if p > 0])
        outcome, p = self.script[self.i]
        self.i += 1
        self.prob *= p
        return outcome

    def accept(self, prob) -> bool:
        return self._next([(True, float(prob)), (False, 1.0 - float(prob))])

    def draw(self, probs) -> int:
        return self._next([(v, float(probs[v])) for v in range(probs.shape[0])])


def enumerate_runs(run: Callable[[Any], Any]) -> list[tuple[float, Any]]:
    """Every ``(probability, result)`` that ``run(sampler)`` can return, drawing all its
    randomness from ``sampler``: a verifier, a whole decoding cycle, a sampling step. Their
    probabilities sum to 1 when ``run`` draws only through ``sampler``."""
    outcomes, stack = [], [[]]
    while stack:
        script = stack.pop()
        sampler = ScriptedSampler(script)
        try:
            result = run(sampler)
        except NeedChoice as choice:
            stack.extend(script + [option] for option in choice.options)
            continue
        if sampler.i != len(script):
            raise AssertionError("the run must draw exactly the choices it was scripted, no fewer")
        outcomes.append((sampler.prob, result))
    return outcomes


def enumerate_verifier(verify: Callable[[Any], tuple[list[int], int]]) -> list[tuple[float, list[int], int]]:
    """Every ``(probability, accepted node indices, bonus token)`` that ``verify(sampler)``
    can return. Their probabilities sum to 1 for a correct verifier."""
    return [(prob, [int(a) for a in accepted], int(bonus)) for prob, (accepted, bonus) in enumerate_runs(verify)]
