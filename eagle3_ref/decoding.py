"""The decoding entry points, as a user calls them: one prompt or a batch, any tree.

:func:`speculative_generate` and :func:`autoregressive_generate` (also ``eagle3_ref.speculative_generate``
and ``eagle3_ref.autoregressive_generate``) check every argument, then send one sequence
``(1, T)`` to the loop of :mod:`eagle3_ref.generate` and a batch (``attention_mask`` given, or
more than one row, left-padded as ``generate`` takes them) to :mod:`eagle3_ref.batch`.

A cost-aware tree (:class:`eagle3_ref.costaware.AutoTreeConfig`) is checked here, not in the
loop: it must have been calibrated at the temperature it decodes with (its acceptance
estimates hold only there); it decides per sequence, so a batch takes a fixed tree; and
where its calibration found that no drafting pays on this machine (``tree.drafts`` False),
decoding is plain, one token a cycle.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from . import batch, generate
from ._checks import check_instance
from .generate import GenerationOutput, check_inputs, drafter_for, eos_set, is_batch
from .tree import TreeConfig

__all__ = ["speculative_generate", "autoregressive_generate", "check_calibrated_tree", "pad_token"]


@torch.no_grad()
def speculative_generate(target: nn.Module, head, input_ids: Tensor, *, max_new_tokens: int,
                         tree: TreeConfig = TreeConfig(), temperature: float = 0.0, top_p: float = 1.0,
                         top_k: int = 0, eos_token_id: int | Sequence[int] | None = None,
                         generator: torch.Generator | Sequence[torch.Generator] | None = None,
                         aux_layer_ids: Sequence[int] | None = None, attention_mask: Tensor | None = None,
                         pad_token_id: int | None = None) -> "GenerationOutput | batch.BatchGenerationOutput":
    """EAGLE-3 speculative decoding of ``target`` with draft ``head``: greedy at
    ``temperature=0``, else sampling with transformers' warpers, lossless.

    ``head`` is an :class:`Eagle3DraftHead` (or the EAGLE-2-style baseline of
    :mod:`eagle3_ref.eagle2`, or any object with ``draft(features, input_ids, config, state)
    -> (tree, state)``). One row without a mask gives a :class:`GenerationOutput`; a batch,
    ``input_ids (B, T)`` left-padded with its ``attention_mask (B, T)``, gives a
    :class:`eagle3_ref.batch.BatchGenerationOutput`: each row accepts its own tokens and stops
    on its own, rows padded with ``pad_token_id`` (else the target's, else the EOS). For
    sampling, ``generator`` may be one generator per row (each row then draws only from its own).
    """
    check_inputs(target, input_ids, max_new_tokens, temperature, top_p, top_k, attention_mask, eos_token_id,
                 generator)
    check_instance("tree", tree, TreeConfig, " (e.g. TreeConfig(), TreeConfig.chain(5))")
    rows = is_batch(input_ids, attention_mask)
    check_calibrated_tree(tree, temperature, rows)
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    if rows:
        drafter, layer_ids = drafter_for(target, head, aux_layer_ids)
        eos = eos_set(eos_token_id)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return batch.batched_speculative_generate(target, drafter, input_ids, mask, tree=tree, layer_ids=layer_ids,
                                                  eos=eos, pad_token_id=pad_token(target, pad_token_id, eos),
                                                  generator=generator, **options)
    if not tree.drafts and max_new_tokens > 0:  # a cost-aware tree that found no drafting pays here
        drafter_for(target, head, aux_layer_ids)  # the same refusals as when it drafts
        plain = generate.autoregressive_generate(target, input_ids, eos_token_id=eos_token_id, generator=generator,
                                                 **options)
        timings = {"prefill": 0.0, "draft": 0.0, "verify": plain.timings["total"], "accept": 0.0}  # all forwards
        return GenerationOutput(plain.sequences, plain.accepted_lengths, timings, plain.prompt_length)
    return generate.speculative_generate(target, head, input_ids, tree=tree, eos_token_id=eos_token_id,
                                         generator=generator, aux_layer_ids=aux_layer_ids, **options)


@torch.no_grad()
def autoregressive_generate(target: nn.Module, input_ids: Tensor, *, max_new_tokens: int, temperature: float = 0.0,
                            top_p: float = 1.0, top_k: int = 0, eos_token_id: int | Sequence[int] | None = None,
                            generator: torch.Generator | Sequence[torch.Generator] | None = None,
                            attention_mask: Tensor | None = None, pad_token_id: int | None = None
                            ) -> "GenerationOutput | batch.BatchGenerationOutput":
    """Plain decoding, one target forward per token, with the same output types (tau = 1).
    A batch (``attention_mask`` given, or more than one row) decodes all rows in each
    forward, as ``generate`` does."""
    check_inputs(target, input_ids, max_new_tokens, temperature, top_p, top_k, attention_mask, eos_token_id,
                 generator)
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                   generator=generator)
    if not is_batch(input_ids, attention_mask):
        return generate.autoregressive_generate(target, input_ids, eos_token_id=eos_token_id, **options)
    eos = eos_set(eos_token_id)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    return batch.batched_autoregressive_generate(target, input_ids, mask, eos=eos,
                                                 pad_token_id=pad_token(target, pad_token_id, eos), **options)


def check_calibrated_tree(tree: TreeConfig, temperature: float, batched: bool) -> None:
    """A cost-aware tree decodes at the temperature it was calibrated at, one sequence at a time."""
    calibrated_at = tree.calibrated_temperature
    if calibrated_at is None:  # a fixed tree
        return
    if calibrated_at != temperature:
        raise ValueError(f"tree was calibrated at temperature {calibrated_at:g}, this decoding runs at {temperature:g}: "
                         f"its acceptance estimates would be wrong (calibrate at the temperature you decode with)")
    if batched:
        raise ValueError("tree: a cost-aware tree (AutoTreeConfig) decides per sequence; batches take a fixed "
                         "TreeConfig")


def pad_token(target: nn.Module, pad_token_id: int | None, eos: set[int]) -> int | None:
    """``generate``'s rule: the pad token given, else the target's, else an EOS (the lowest id)."""
    if pad_token_id is None:
        pad_token_id = getattr(getattr(target, "generation_config", None), "pad_token_id", None)
    if pad_token_id is None and eos:
        pad_token_id = min(eos)
    if pad_token_id is not None and (isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int)):
        raise ValueError(f"pad_token_id must be an int token id, got {pad_token_id!r}")
    return pad_token_id
