"""The head handle: what the suite, the tree builder and the decoding loop need from a head.

An adapter's ``load_head`` returns a *handle*: whatever object its engine uses for a loaded
head. The conformance suite treats it as opaque and hands it back only to that adapter's own
methods (``head_fuse``, ``head_step``, ``build_tree``, ``ttt_forward``, ``generate``), with
two exceptions, which are the whole contract:

1. The TTT gradient test (``test_gradients_equal_the_unrolled_computation``) differentiates
   the loss with respect to ``handle.parameters()``, so the handle must be an ``nn.Module``
   (or have ``parameters()`` and ``named_parameters()``). Parameters named with the official
   checkpoint keys (``fc.weight``, ``midlayer.self_attn.q_proj.weight``, ...) also have their
   gradients compared with the reference's; other names only take part in the loss. That
   test drafts the unrolled chains with ``head_step``, so ``head_step`` must be
   differentiable (no ``torch.no_grad`` inside).
2. The reference's tree builder and decoding loop (``ReferenceAdapter.build_tree`` and
   ``.generate``, inherited by an adapter that overrides only the head methods) drive a
   handle that is not a reference head through :class:`AdapterHead`, which calls the
   adapter's ``head_fuse`` and ``head_step``. From the handle itself they need ``d2t``
   (the draft-to-target offsets, ``(V_d,)``) and, for the loop, the tapped layers: a
   ``config`` whose official dict (``config.to_dict()`` or a plain dict) names them in any
   convention :func:`eagle3_ref.checkpoint.config_from_dict` reads (ours, vLLM's, SGLang's
   ``eagle_config``). Without them the loop refuses by name, rather than guessing the
   default layers of a target the head was not trained on.

Everything else about the handle is the adapter's business.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["AdapterHead", "reference_head", "implementation_module"]


def implementation_module(adapter, name: str):
    """``eagle3_ref.<name>``, or the same module of the package ``adapter`` runs (a student's copy,
    for the grader); a function, so that adapters borrowing ReferenceAdapter's methods get the reference."""
    return importlib.import_module(f"{getattr(adapter, 'package', 'eagle3_ref')}.{name}")


class _Cache(NamedTuple):
    """The adapter's opaque cache, with the slot count the tree builder reads."""

    inner: Any
    length: int


class _Step(NamedTuple):
    logits: Tensor  # (B, q, V_d)
    hidden: Tensor  # (B, q, H) pre-norm
    cache: _Cache


class AdapterHead:
    """The reference head's duck type over any adapter's ``head_fuse`` / ``head_step``: what
    :func:`eagle3_ref.tree.build_draft_tree` and :class:`eagle3_ref.tree.HeadDrafter` call.

    ``head(input_ids (B, q), hidden (B, q, H), position_ids (B, q), cache=None,
    attention_mask=None)`` returns ``.logits``, ``.hidden`` and ``.cache`` (with
    ``.length``); ``head.fuse(features)``; ``head.d2t``; ``head.dtype``."""

    def __init__(self, adapter: Any, handle: Any, d2t: Tensor, aux_layer_ids: tuple[int, ...] | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.adapter, self.handle, self.d2t, self.aux_layer_ids = adapter, handle, d2t, aux_layer_ids
        self.dtype = dtype

    @classmethod
    def of(cls, adapter: Any, handle: Any) -> "AdapterHead":
        """Read ``d2t``, the tapped layers and the dtype off ``handle`` (see the module docstring)."""
        d2t = getattr(handle, "d2t", None)
        if not isinstance(d2t, Tensor):
            raise TypeError(f"the head handle {type(handle).__name__} has no d2t tensor: the reference's tree builder "
                            "maps draft ids to target ids with it (eagle3_ref/testing/handle.py)")
        dtype = next((p.dtype for p in handle.parameters()), None) if hasattr(handle, "parameters") else None
        return cls(adapter, handle, d2t, _tapped_layers(getattr(handle, "config", None)), dtype)

    def fuse(self, features: Tensor) -> Tensor:
        return self.adapter.head_fuse(self.handle, features)

    def __call__(self, input_ids: Tensor, hidden: Tensor, position_ids: Tensor, cache: _Cache | None = None,
                 attention_mask: Tensor | None = None) -> _Step:
        logits, out, inner = self.adapter.head_step(self.handle, input_ids, hidden, position_ids,
                                                    None if cache is None else cache.inner, attention_mask)
        return _Step(logits, out, _Cache(inner, (0 if cache is None else cache.length) + input_ids.shape[1]))


def _tapped_layers(config: Any) -> tuple[int, ...] | None:
    from eagle3_ref.checkpoint import config_from_dict

    d = config.to_dict() if hasattr(config, "to_dict") else config
    if not isinstance(d, dict):
        return None
    try:
        return config_from_dict(d).aux_layer_ids
    except (ValueError, TypeError):
        return None


def reference_head(adapter: Any, head: Any) -> Any:
    """``head`` itself if it is a reference :class:`~eagle3_ref.draft_head.Eagle3DraftHead` (of the
    package the adapter runs, for a :class:`ReferenceAdapter` over a student's copy), else the
    :class:`AdapterHead` that drives it through ``adapter``."""
    draft_head = implementation_module(adapter, "draft_head")
    return head if isinstance(head, draft_head.Eagle3DraftHead) else AdapterHead.of(adapter, head)
