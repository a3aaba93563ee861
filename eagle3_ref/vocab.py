"""The reduced draft vocabulary: ``d2t`` and ``t2d``.

EAGLE-3's head predicts over a *draft* vocabulary smaller than the target's (32 000 of
LLaMA-3's 128 256 tokens): the ``lm_head`` shrinks by 4x and the tokens left out are ones
the draft would rarely propose anyway. The mapping travels in the checkpoint as two
buffers, exactly as the official code defines them:

* ``d2t`` (int64, ``[V_draft]``): an **offset**, ``target_id = draft_id + d2t[draft_id]``;
* ``t2d`` (bool, ``[V_target]``): ``t2d[target_id]`` is True iff the token is in the draft
  vocabulary (exactly ``V_draft`` entries are True).

The draft vocabulary is the ``V_draft`` most frequent tokens among the training targets,
sorted by token id (so draft ids are increasing in target id, and ``d2t`` is
non-decreasing). Ties in frequency go to the lower id. If fewer than ``V_draft`` distinct
tokens occur, unseen tokens (lowest ids first) fill the rest: the official recipe crashes
there, and so have two peers. ``V_draft == V_target`` is the identity (``d2t == 0``).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "VocabMapping",
    "count_tokens",
    "build_vocab_mapping",
    "identity_mapping",
    "draft_to_target",
    "target_to_draft",
    "validate_vocab_mapping",
]


class VocabMapping(NamedTuple):
    """The draft vocabulary as the official checkpoint stores it (``d2t`` offsets, ``t2d`` mask)."""

    d2t: Tensor  # int64 (V_draft,): target_id = draft_id + d2t[draft_id]
    t2d: Tensor  # bool  (V_target,): True where the target token is in the draft vocabulary


def count_tokens(token_ids: Iterable[Tensor], vocab_size: int, masks: Iterable[Tensor] | None = None) -> Tensor:
    """Token frequencies ``(V_target,)`` int64 over sequences of target token ids.

    ``masks`` (same shapes, 1 = count it) restrict the count to the positions that are
    training targets (EAGLE counts only the loss-masked, i.e. assistant, tokens).
    """
    counts = torch.zeros(vocab_size, dtype=torch.long)
    masks = iter(masks) if masks is not None else None
    for ids in token_ids:
        ids = torch.as_tensor(ids).reshape(-1).long().cpu()
        if masks is not None:
            ids = ids[torch.as_tensor(next(masks)).reshape(-1).cpu().bool()]
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"token ids must be in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]")
        counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def build_vocab_mapping(token_counts: Tensor, draft_vocab_size: int) -> VocabMapping:
    """The ``draft_vocab_size`` most frequent target tokens, sorted by id, as ``d2t``/``t2d``.

    ``token_counts``: ``(V_target,)`` non-negative counts (e.g. from :func:`count_tokens`).
    """
    counts = torch.as_tensor(token_counts).cpu()
    if counts.dim() != 1 or (counts < 0).any():
        raise ValueError(f"token_counts must be a 1-D tensor of non-negative counts, got shape {tuple(counts.shape)}")
    vocab_size = counts.numel()
    if not 0 < draft_vocab_size <= vocab_size:
        raise ValueError(f"draft_vocab_size must be in [1, {vocab_size}] (the target vocabulary), got {draft_vocab_size}")
    # Stable sort on -count: equal counts keep ascending id order, so ties go to lower ids
    # and, with fewer distinct tokens than draft_vocab_size, unseen ids fill in from 0 up.
    order = torch.sort(-counts.to(torch.float64), stable=True).indices
    kept = order[:draft_vocab_size].sort().values  # target ids of the draft vocabulary, ascending
    d2t = kept - torch.arange(draft_vocab_size)
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[kept] = True
    return VocabMapping(d2t.long(), t2d)


def identity_mapping(vocab_size: int) -> VocabMapping:
    """``V_draft == V_target``: every offset 0, every token in."""
    return VocabMapping(torch.zeros(vocab_size, dtype=torch.long), torch.ones(vocab_size, dtype=torch.bool))


def draft_to_target(draft_ids: Tensor, d2t: Tensor) -> Tensor:
    """Draft ids (any shape) -> target ids: ``draft_id + d2t[draft_id]``."""
    return draft_ids + d2t.to(draft_ids.device)[draft_ids]


def target_to_draft(target_ids: Tensor, d2t: Tensor, vocab_size: int) -> Tensor:
    """Target ids (any shape) -> draft ids, ``-1`` where the token is not in the draft
    vocabulary. The inverse of :func:`draft_to_target`, built from ``d2t`` itself."""
    draft_vocab_size = d2t.numel()
    inverse = torch.full((vocab_size,), -1, dtype=torch.long, device=target_ids.device)
    inverse[draft_to_target(torch.arange(draft_vocab_size, device=target_ids.device), d2t)] = torch.arange(
        draft_vocab_size, device=target_ids.device
    )
    return inverse[target_ids]


def validate_vocab_mapping(d2t: Tensor, t2d: Tensor, vocab_size: int, draft_vocab_size: int) -> None:
    """Raise ``ValueError`` naming the buffer unless ``d2t``/``t2d`` are a valid, mutually
    consistent mapping between a ``vocab_size`` target and a ``draft_vocab_size`` draft."""
    if d2t.dtype not in (torch.int64, torch.int32) or tuple(d2t.shape) != (draft_vocab_size,):
        raise ValueError(f"d2t must be an integer tensor of shape ({draft_vocab_size},), got {d2t.dtype} {tuple(d2t.shape)}")
    if tuple(t2d.shape) != (vocab_size,):
        raise ValueError(f"t2d must have shape ({vocab_size},) (the target vocabulary), got {tuple(t2d.shape)}")
    if t2d.dtype != torch.bool:
        raise ValueError(f"t2d must be bool, got {t2d.dtype}")
    target_ids = torch.arange(draft_vocab_size, device=d2t.device) + d2t.long()
    outside = ((target_ids < 0) | (target_ids >= vocab_size)).nonzero().flatten()
    if outside.numel():
        i = int(outside[0])
        raise ValueError(
            f"d2t points outside the target vocabulary [0, {vocab_size}): draft id {i} + d2t[{i}] "
            f"= {int(target_ids[i])} ({outside.numel()} such entries)"
        )
    n_true = int(t2d.sum())
    if n_true != draft_vocab_size:
        raise ValueError(f"t2d marks {n_true} tokens, but the draft vocabulary has {draft_vocab_size}")
    if not torch.equal(t2d.nonzero().flatten().cpu(), target_ids.sort().values.cpu()):
        raise ValueError("d2t and t2d disagree: the target ids d2t maps to are not the ones t2d marks")
