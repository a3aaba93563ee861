"""The target's sampled law, as transformers' ``generate`` computes it: the oracle of every
sampling property.

A lossless sampler must emit each token with the probability that plain sampling would give it:
the softmax of the target's logits after the generation config's warpers. Which warpers apply, and
in which order, is decided by transformers when ``generate(do_sample=True)`` builds its
processor list from a :class:`~transformers.GenerationConfig`; this module asks transformers to
build that same list, so the expected law shares no code with the reference's own
:func:`eagle3_ref.verify.target_probs` (if the reference reordered its warpers, or dropped one,
the two would differ and the sampling properties would fail). ``tests/test_generate.py``
anchors the oracle to ``generate`` itself: its scores equal this law.

:func:`next_token_laws` turns the enumerated outcomes of a sampling cycle (every random choice,
with its probability: :mod:`eagle3_ref.testing.sampling`) into the law of each emitted token
given the tokens before it, which is what the oracle is compared with, whatever the tree.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["assert_a_cycle_follows_the_generation_law", "assert_follows_the_generation_law", "generation_law",
           "next_token_laws", "sequence_law"]


@lru_cache(maxsize=1)
def _any_generating_model():
    # transformers builds the processor list in a method of its generating models; which model
    # does not matter for the sampling warpers (they read only the generation config).
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=2, hidden_size=2, intermediate_size=2, num_hidden_layers=1,
                                        num_attention_heads=1, bos_token_id=None, eos_token_id=None, pad_token_id=None))


def generation_law(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                   min_p: float | None = None) -> Tensor:
    """``logits (..., V)`` -> the distribution ``generate(do_sample=True, temperature=,
    top_k=, top_p=, min_p=)`` draws the next token from, in float64. ``top_k = 0`` and
    ``top_p = 1`` are off, as in a generation config."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    processors = _any_generating_model()._get_logits_processor(generation_config=config, input_ids_seq_length=1,
                                                               logits_processor=None, device=str(logits.device))
    flat = logits.double().reshape(-1, logits.shape[-1])
    return torch.softmax(processors(None, flat), dim=-1).reshape(logits.shape)



def sequence_law(p_next: Callable[[list[int]], Tensor], vocab: int, length: int) -> Tensor:
    """``(vocab,) * length``: the probability of each sequence of ``length`` tokens, the product
    of ``p_next(prefix)[token]`` along it; ``p_next(prefix)`` is the law after the context and
    ``prefix`` (e.g. :func:`generation_law` of the target's logits there). What the statistical
    tests compare sampled sequences with."""
    law = torch.ones((), dtype=torch.float64)
    for _ in range(length):  # extend every prefix by one token
        prefixes = list(itertools.product(range(vocab), repeat=law.dim()))
        step = torch.stack([p_next(list(u)).double() for u in prefixes]).reshape(*law.shape, vocab)
        law = law[..., None] * step
    return law

def next_token_laws(outcomes) -> dict[tuple[int, ...], dict[int, float]]:
    """``outcomes``: ``(probability, emitted tokens)`` pairs covering every way a cycle can go
    (probabilities summing to 1). Returns, for each token prefix ``u`` after which the cycle
    sometimes emits another token, the law of that next token given ``u`` (summing to 1).

    A lossless cycle emits after ``u`` each token ``x`` with the target's probability of ``x``
    after the context and ``u``: whatever tree was drafted, whatever was accepted."""
    reach: dict[tuple[int, ...], float] = {}
    joint: dict[tuple[int, ...], dict[int, float]] = {}
    for prob, tokens in outcomes:
        tokens = [int(t) for t in tokens]
        for i, x in enumerate(tokens):
            u = tuple(tokens[:i])
            reach[u] = reach.get(u, 0.0) + prob
            joint.setdefault(u, {})
            joint[u][x] = joint[u].get(x, 0.0) + prob
    return {u: {x: p / reach[u] for x, p in sorted(laws.items())} for u, laws in joint.items()}


def assert_follows_the_generation_law(outcomes, next_logits: Callable[[list[int]], Tensor], warp: dict,
                                      what: str = "", atol: float = 1e-9) -> None:
    """Every emitted token's law, given the tokens emitted before it (:func:`next_token_laws`),
    equals :func:`generation_law` of the target's logits there: ``next_logits(u)`` is the
    target's ``(V,)`` logits after the context and the emitted tokens ``u``; ``warp`` the
    keyword arguments of :func:`generation_law` (temperature, top_k, top_p). The message names
    the prefix and the token that differ."""
    total = sum(p for p, _ in outcomes)
    assert abs(total - 1.0) < 1e-9, f"{what}: the outcomes have total probability {total}, not 1"
    for u, got in next_token_laws(outcomes).items():
        want = generation_law(next_logits(list(u)), **warp)
        for x in sorted(set(got) | set(torch.nonzero(want > 0).flatten().tolist())):
            if abs(got.get(x, 0.0) - float(want[x])) > atol:
                raise AssertionError(f"{what}: after emitted tokens {list(u)}, token {x} has probability "
                                     f"{got.get(x, 0.0):.6g}, but generate(do_sample=True, {_describe(warp)}) gives "
                                     f"{float(want[x]):.6g}")


def _describe(warp: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in warp.items())


def assert_a_cycle_follows_the_generation_law(target, drafter, prompt: list[int], tree, layer_ids: Sequence[int],
                                              warp: dict, what: str = "") -> list[tuple[float, list[int]]]:
    """The single-sequence loop, exactly: every random choice of the prefill (the first token)
    and of one :func:`eagle3_ref.generate.decode_cycle` with ``tree``, enumerated through a
    scripted sampler, and each emitted token's law checked against :func:`generation_law`.
    Returns the outcomes ``(probability, emitted tokens)``."""
    from ..generate import decode_cycle, prefill
    from ..verify import Picker
    from .sampling import enumerate_runs

    def run(sampler) -> list[int]:
        pick = Picker(warp["temperature"], warp.get("top_k", 0), warp.get("top_p", 1.0))
        pick.sampler = sampler
        state = prefill(target, torch.tensor([prompt]), layer_ids, pick, set(), 100)
        first = int(state.sequence[0, -1])
        state, appended = decode_cycle(target, drafter, state, tree, layer_ids, pick, set(), 100)
        return [first] + appended

    def next_logits(emitted: list[int]) -> Tensor:
        with torch.no_grad():
            return target(torch.tensor([prompt + emitted])).logits[0, -1]

    outcomes = enumerate_runs(run)
    assert_follows_the_generation_law(outcomes, next_logits, warp, what=what or f"one cycle at {warp}")
    return outcomes
