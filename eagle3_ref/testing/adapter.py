"""The one narrow seam through which the property tests reach an implementation.

Every core property test calls an :class:`Eagle3Adapter`, never ``eagle3_ref`` directly.
By default it is :class:`ReferenceAdapter` (this project); point the suite at another
implementation (vLLM's, SGLang's, a CUDA kernel's, a student's) with
``pytest --eagle3-impl=package.module`` or ``EAGLE3_IMPL=package.module``, where the module
defines ``ADAPTER``, an object with the methods below (``package.module:NAME`` picks another
name). The suite itself is :mod:`eagle3_ref.testing.conformance`.

The seam speaks the *official checkpoint format* and plain tensors: a head is handed over
as its ``config.json`` dict plus a state dict with the official keys (see
:mod:`eagle3_ref.checkpoint`), so any implementation that can load an EAGLE-3 head can be
checked. Caches are opaque: whatever ``head_step`` returns is passed back in unchanged.

Conventions every method shares: batch-first tensors, ``B`` batch, ``T`` sequence,
``H_t`` target hidden size, ``H`` head hidden size, ``V`` target vocabulary, ``V_d``
draft vocabulary; layer ids are Hugging Face ``hidden_states`` indices.

What an adapter declares besides its methods (all optional):

* ``name``: how reports name the implementation (default: its class name).
* ``pieces``: the pieces it implements, among :data:`PIECES` (default: all). The suite runs only those and
  reports the others as skipped, "not implemented by NAME", never as failures. A piece that is
  not implemented needs no methods: ``load_adapter`` checks only the declared pieces' ones.
* ``precision``: ``"float64"`` (exact, the default), ``"float32"`` (float32 internals, e.g. RMSNorm, RoPE or
  the softmax computed in float32 whatever the weights' dtype) or ``"bfloat16"``. The
  tolerances of every numeric comparison follow from it (:func:`tolerance`).
* ``head_shapes``: ``"production"`` (default: three distinct tapped layers, hidden size =
  heads x head_dim, as every engine builds heads) or ``"any"`` (also the exotic shapes the
  reference supports); the suite draws heads accordingly.
* out of scope: any method may raise :class:`Unsupported` ``(reason)`` for a configuration
  the implementation does not handle (a head shape it refuses, say), and ``supports_head(config:
  dict) -> bool | str`` may refuse an official head config before ``load_head``. The suite
  then filters the example (hypothesis ``assume``) and counts it; the counts and reasons
  close the report.
"""

from __future__ import annotations

import importlib
import functools
import os
from collections import Counter
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from . import ENV_VAR
from .handle import AdapterHead, implementation_module, reference_head

__all__ = ["Eagle3Adapter", "ReferenceAdapter", "load_adapter", "ENV_VAR", "PIECES", "PRECISIONS", "Unsupported",
           "CheckedAdapter", "tolerance", "FILTERED", "declared_pieces", "adapter_name", "implementation_module"]

# The pieces of EAGLE-3 an implementation may implement (the conformance suite's markers).
PIECES = ("fusion", "head", "vocab", "ttt", "tree", "verify", "generate")

# Methods each piece needs (an adapter that does not declare a piece need not have them).
PIECE_METHODS = {
    "fusion": ("default_aux_layer_ids", "collect_features"),
    "head": ("load_head", "head_fuse", "head_step"),
    "vocab": ("build_vocab", "draft_to_target", "target_to_draft", "load_head", "head_step"),
    "ttt": ("load_head", "ttt_forward", "ttt_loss"),
    "tree": ("load_head", "build_tree"),
    "verify": ("verify_greedy", "verify_sampling", "load_head", "generate"),
    "generate": ("load_head", "generate"),
}


class Unsupported(Exception):
    """Raise from any adapter method for a configuration out of the implementation's scope:
    the suite filters that example (and counts it) instead of failing it."""


# Examples filtered as out of scope in this session, by reason (the plugin reports them).
FILTERED: Counter = Counter()

# ----------------------------------------------------------------------------------------
# Precision: the tolerances of every numeric comparison, by the implementation's declared
# precision. float64: the reference's own exact agreement. float32, calibrated (docs/testing.md)
# on the reference run in float32 (eagle3_ref.testing.adapters.float32) against its float64
# self, 150 random heads of the strategies: largest differences fc 3.5e-6, logits 1.2e-5, pre-norm
# hidden 6.3e-5 (values ~10), TTT logits 1.0e-5, TTT loss 4.5e-7, tree scores 3.1e-6; the
# rtol + atol below leave 8-70x room over those, and the smallest divergence a buggy
# implementation shows once hypothesis shrinks it (TTT mask seeing the future: 0.031) is 300x
# beyond. bfloat16 (8 bits of mantissa) is scaled from float32 by its epsilon, not measured.
# ----------------------------------------------------------------------------------------

PRECISIONS = ("float64", "float32", "bfloat16")
_TOLERANCES = {  # quantity -> (rtol, atol) per precision
    "float64": {"fc": (1e-12, 1e-12), "logits": (1e-9, 1e-9), "tree_logits": (1e-10, 1e-10), "scores": (1e-9, 1e-9),
                "ttt_logits": (1e-10, 1e-10), "loss": (1e-10, 1e-12), "grad": (1e-9, 1e-11), "vocab_logits": (0.0, 1e-12)},
    "float32": {"fc": (1e-5, 1e-5), "logits": (1e-4, 1e-4), "tree_logits": (1e-4, 1e-4), "scores": (1e-4, 1e-4),
                "ttt_logits": (1e-4, 1e-4), "loss": (1e-5, 1e-6), "grad": (1e-3, 1e-5), "vocab_logits": (0.0, 1e-5)},
    "bfloat16": {"fc": (2e-2, 2e-2), "logits": (5e-2, 5e-2), "tree_logits": (5e-2, 5e-2), "scores": (5e-2, 5e-2),
                 "ttt_logits": (5e-2, 5e-2), "loss": (1e-2, 1e-3), "grad": (1e-1, 1e-3), "vocab_logits": (0.0, 1e-2)},
}


def tolerance(impl: Any, quantity: str) -> dict[str, float]:
    """``dict(rtol=, atol=)`` for comparing ``quantity`` of ``impl`` with the reference, by
    the precision ``impl`` declares (default float64)."""
    precision = getattr(impl, "precision", "float64")
    if precision not in _TOLERANCES:
        raise ValueError(f"adapter precision must be one of {PRECISIONS}, got {precision!r}")
    rtol, atol = _TOLERANCES[precision][quantity]
    return dict(rtol=rtol, atol=atol)



@runtime_checkable
class Eagle3Adapter(Protocol):
    name: str  # how reports name the implementation
    pieces: tuple[str, ...]  # optional: the pieces implemented (default all of PIECES)
    head_shapes: str  # optional: "production" (default) or "any" (see strategies.HEAD_SHAPES)
    precision: str  # optional: "float64" (default), "float32" or "bfloat16"

    # -- fusion --------------------------------------------------------------------------
    def default_aux_layer_ids(self, num_hidden_layers: int) -> tuple[int, ...]:
        """EAGLE-3's default tapped layers for an ``N``-layer target; raise ``ValueError``
        where they collide or leave ``[0, N-1]``."""

    def collect_features(self, target: nn.Module, input_ids: Tensor, layer_ids: tuple[int, ...],
                         attention_mask: Tensor | None = None) -> Tensor:
        """``input_ids (B, T)`` (+ padding mask ``(B, T)``) -> ``(B, T, k*H_t)``, the residual
        stream entering each tapped layer, concatenated low to high."""

    # -- draft head ----------------------------------------------------------------------
    def load_head(self, config: dict, state_dict: dict[str, Tensor], embed_weight: Tensor | None) -> Any:
        """Build a head from an official config dict and official-key weights; the token
        embedding ``(V, H)`` is the target's (None if the head owns one). Returns a handle."""

    def head_fuse(self, head: Any, features: Tensor) -> Tensor:
        """``fc``: target features ``(B, T, k*H_t)`` -> hidden inputs ``(B, T, H)``."""

    def head_step(self, head: Any, input_ids: Tensor, hidden: Tensor, position_ids: Tensor,
                  cache: Any, attention_mask: Tensor | None) -> tuple[Tensor, Tensor, Any]:
        """One forward of the head over ``q`` new slots.

        ``input_ids (B, q)``, ``hidden (B, q, H)``, ``position_ids (B, q)``; ``cache`` is
        None or what a previous call returned (``S`` slots); ``attention_mask`` is None
        (causal) or bool ``(B, 1, q, S + q)``, True = may attend, keys ordered cache first.
        Returns ``(logits (B, q, V_d), pre-norm hidden (B, q, H), new cache with S + q slots)``.
        """

    # -- draft vocabulary ------------------------------------------------------------------
    def build_vocab(self, token_counts: Tensor, draft_vocab_size: int) -> tuple[Tensor, Tensor]:
        """Counts ``(V,)`` -> ``(d2t (V_d,) int64 offsets, t2d (V,) bool)``."""

    def draft_to_target(self, draft_ids: Tensor, d2t: Tensor) -> Tensor: ...

    def target_to_draft(self, target_ids: Tensor, d2t: Tensor, vocab_size: int) -> Tensor:
        """``-1`` for tokens outside the draft vocabulary."""

    # -- dynamic draft tree -------------------------------------------------------------------
    def build_tree(self, head: Any, features: Tensor, input_ids: Tensor, num_nodes: int, max_depth: int,
                   top_k: int) -> Any:
        """EAGLE's ``topK_genrate`` on a first call: ``features (1, T, k*H_t)``, ``input_ids
        (1, T+1)`` whose last token is the root. ``num_nodes`` includes the root, ``max_depth``
        is the deepest level (EAGLE depth + 1). Returns an object with ``tokens (n,)`` (target
        ids, root first), ``parents (n,)`` (-1 for the root), ``scores (n,)`` (cumulative
        log-probs), ``tree_mask (n, n)`` bool, ``tree_position_ids (n,)``,
        ``retrieve_indices (leaves, max_depth+1)`` (-1 padded), nodes in EAGLE's pool order."""

    # -- training-time test --------------------------------------------------------------------
    def ttt_forward(self, head: Any, features: Tensor, input_ids: Tensor, steps: int,
                    attention_mask: Tensor | None) -> list[Tensor]:
        """The parallel K-step forward: ``features (B, T, k*H_t)``, ``input_ids (B, T)``,
        padding mask ``(B, T)``. Returns ``steps`` logits ``(B, T, V_d)``; step ``k``, slot ``i``
        fed token ``x_{i+k+1}`` at position ``i+k`` predicts ``x_{i+k+2}``. Differentiable."""

    def ttt_loss(self, logits: list[Tensor], target_logits: Tensor, loss_mask: Tensor, t2d: Tensor,
                 d2t: Tensor) -> Tensor:
        """Scalar: sum_k 0.8**k * soft CE to the target restricted to the draft vocabulary;
        slot i of step k counts iff loss_mask[i+k], i+k+1 < T and t2d[argmax target_logits[i+k+1]];
        each step's sum divided by B*T."""

    # -- verification -----------------------------------------------------------------------
    def verify_greedy(self, tree: Any, target_logits: Tensor) -> tuple[list[int], int]:
        """``tree``: a :class:`eagle3_ref.tree.DraftTree`; ``target_logits (n, V)``.
        Returns (accepted node indices, root first; bonus token)."""

    def verify_sampling(self, tree: Any, target_probs: Tensor, sampler: Any) -> tuple[list[int], int]:
        """``target_probs (n, V)`` processed. All randomness must come from ``sampler``:
        ``sampler.accept(prob) -> bool`` and ``sampler.draw(probs (V,)) -> int``."""

    # -- the decoding loop -----------------------------------------------------------------
    def generate(self, target: nn.Module, head: Any, input_ids: Tensor, *, max_new_tokens: int, num_nodes: int,
                 max_depth: int, top_k: int, eos_token_id: int | None = None, temperature: float = 0.0,
                 generator: Any = None, sampling_top_k: int = 0, sampling_top_p: float = 1.0
                 ) -> tuple[Tensor, list[int]]:
        """Speculative decoding, batch 1. ``top_k`` is the tree's branching; the target's
        sampling takes ``temperature``, ``sampling_top_k`` (0 = off) and ``sampling_top_p``,
        applied (as transformers' warpers do) to *every* distribution a token is drawn
        from: accepting a draft, the residual after a rejection, and the bonus token.
        Returns (sequences (1, T + new), tokens appended per target forward after the prefill)."""

    # optional: an implementation without it is reported "batch 1 only", not failed
    def generate_batch(self, target: nn.Module, head: Any, input_ids: Tensor, attention_mask: Tensor, *,
                       max_new_tokens: int, num_nodes: int, max_depth: int, top_k: int,
                       eos_token_id: int | None = None, pad_token_id: int | None = None, temperature: float = 0.0,
                       generator: Any = None, sampling_top_k: int = 0, sampling_top_p: float = 1.0
                       ) -> tuple[Tensor, list[list[int]]]:
        """Speculative decoding of a left-padded batch ``input_ids (B, T)`` with its
        ``attention_mask (B, T)``, all rows verified in one target forward per cycle, each
        accepting its own number of tokens and stopping on its own. Returns (sequences
        ``(B, T + new)``, as ``generate`` gives them: finished rows padded with
        ``pad_token_id``; per row, the tokens appended by each target forward). Greedy at
        ``temperature=0``; sampling as in :meth:`generate`, with one ``generator`` for the
        batch. An adapter whose ``generate_batch`` takes no ``temperature`` is judged on
        greedy batches only."""


def _loop_drafter(adapter, head):
    """The loop's drafter for ``adapter``'s head handle: the reference head itself, or another
    engine's head driven through ``adapter``'s head methods; and its tapped layers. (A
    function, not a method: other adapters borrow ReferenceAdapter's loop with themselves.)"""
    from eagle3_ref.tree import HeadDrafter

    head = reference_head(adapter, head)
    if not isinstance(head, AdapterHead):
        return head, None
    if head.aux_layer_ids is None:
        raise ValueError("the head handle's config names no tapped layers (in any convention "
                         "eagle3_ref.checkpoint.config_from_dict reads): the loop will not guess them "
                         "(eagle3_ref/testing/handle.py)")
    return HeadDrafter(head), head.aux_layer_ids


class ReferenceAdapter:
    """:class:`Eagle3Adapter` over this project's own implementation."""

    name = "eagle3_ref"
    pieces = PIECES
    precision = "float64"
    head_shapes = "any"  # the reference also handles 1-2 tapped layers and head_dim not dividing hidden

    def __init__(self, attn_implementation: str = "sdpa", package: str = "eagle3_ref") -> None:
        self.attn_implementation = attn_implementation
        self.package = package  # another copy of this code under another name: a student's (assignment.py)

    def default_aux_layer_ids(self, num_hidden_layers):
        return implementation_module(self, "fusion").default_aux_layer_ids(num_hidden_layers)

    def collect_features(self, target, input_ids, layer_ids, attention_mask=None):
        return implementation_module(self, "fusion").collect_features(target, input_ids, layer_ids, attention_mask)

    def load_head(self, config, state_dict, embed_weight):
        cfg = implementation_module(self, "checkpoint").config_from_dict(config)
        ref = next(iter(state_dict.values()))
        head = implementation_module(self, "draft_head").Eagle3DraftHead(cfg, attn_implementation=self.attn_implementation)
        head = head.to(device=ref.device, dtype=state_dict["fc.weight"].dtype)
        head.load_state_dict(state_dict, strict=True)
        if embed_weight is not None:
            head.attach_embedding(embed_weight)
        return head

    def head_fuse(self, head, features):
        return head.fuse(features)

    def head_step(self, head, input_ids, hidden, position_ids, cache, attention_mask):
        out = head(input_ids, hidden, position_ids, cache=cache, attention_mask=attention_mask)
        return out.logits, out.hidden, out.cache

    def build_vocab(self, token_counts, draft_vocab_size):
        return tuple(implementation_module(self, "vocab").build_vocab_mapping(token_counts, draft_vocab_size))

    def draft_to_target(self, draft_ids, d2t):
        return implementation_module(self, "vocab").draft_to_target(draft_ids, d2t)

    def target_to_draft(self, target_ids, d2t, vocab_size):
        return implementation_module(self, "vocab").target_to_draft(target_ids, d2t, vocab_size)

    def build_tree(self, head, features, input_ids, num_nodes, max_depth, top_k):
        tree = implementation_module(self, "tree")
        return tree.build_draft_tree(reference_head(self, head), features, input_ids,
                                     tree.TreeConfig(num_nodes, max_depth, top_k))

    def ttt_forward(self, head, features, input_ids, steps, attention_mask):
        return implementation_module(self, "ttt").ttt_forward(head, features, input_ids, steps, attention_mask).logits

    def ttt_loss(self, logits, target_logits, loss_mask, t2d, d2t):
        return implementation_module(self, "ttt").ttt_loss(logits, target_logits, loss_mask, t2d, d2t).loss

    def verify_greedy(self, tree, target_logits):
        return tuple(implementation_module(self, "verify").verify_greedy(tree, target_logits))

    def verify_sampling(self, tree, target_probs, sampler):
        return tuple(implementation_module(self, "verify").verify_sampling(tree, target_probs, sampler))

    def generate(self, target, head, input_ids, *, max_new_tokens, num_nodes, max_depth, top_k, eos_token_id=None,
                 temperature=0.0, generator=None, sampling_top_k=0, sampling_top_p=1.0):
        speculative_generate = implementation_module(self, "generate").speculative_generate
        TreeConfig = implementation_module(self, "tree").TreeConfig
        drafter, layer_ids = _loop_drafter(self, head)
        out = speculative_generate(target, drafter, input_ids, max_new_tokens=max_new_tokens,
                                   tree=TreeConfig(num_nodes, max_depth, top_k), eos_token_id=eos_token_id,
                                   temperature=temperature, top_k=sampling_top_k, top_p=sampling_top_p,
                                   generator=generator, aux_layer_ids=layer_ids)
        return out.sequences, out.accepted_lengths

    def generate_batch(self, target, head, input_ids, attention_mask, *, max_new_tokens, num_nodes, max_depth, top_k,
                       eos_token_id=None, pad_token_id=None, temperature=0.0, generator=None, sampling_top_k=0,
                       sampling_top_p=1.0):
        speculative_generate = implementation_module(self, "decoding").speculative_generate
        TreeConfig = implementation_module(self, "tree").TreeConfig
        drafter, layer_ids = _loop_drafter(self, head)
        out = speculative_generate(target, drafter, input_ids, attention_mask=attention_mask,
                                   max_new_tokens=max_new_tokens, tree=TreeConfig(num_nodes, max_depth, top_k),
                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, aux_layer_ids=layer_ids,
                                   temperature=temperature, generator=generator, top_k=sampling_top_k,
                                   top_p=sampling_top_p)
        return out.sequences, out.accepted_lengths


ADAPTER = ReferenceAdapter()
ADAPTER_METHODS = ("default_aux_layer_ids", "collect_features", "load_head", "head_fuse", "head_step",
                   "build_vocab", "draft_to_target", "target_to_draft", "build_tree", "ttt_forward", "ttt_loss", "verify_greedy",
                   "verify_sampling", "generate", "generate_batch")


def declared_pieces(adapter: Any) -> tuple[str, ...]:
    """The pieces ``adapter`` implements (all of :data:`PIECES` unless it says otherwise)."""
    pieces = tuple(getattr(adapter, "pieces", PIECES))
    unknown = [p for p in pieces if p not in PIECES]
    if unknown:
        raise ValueError(f"adapter {adapter_name(adapter)}: pieces {unknown} are not among {PIECES}")
    return pieces


def adapter_name(adapter: Any) -> str:
    """How reports name an adapter: its ``name``, else its class."""
    return str(getattr(adapter, "name", None) or type(adapter).__name__)


class CheckedAdapter:
    """What the suite's tests receive as ``impl``: the adapter itself, except that a
    configuration out of its scope (:class:`Unsupported` raised, or ``supports_head``
    refusing a head config) filters the example and is counted in :data:`FILTERED`."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    def __getattr__(self, name: str):
        value = getattr(self.adapter, name)
        if name not in ADAPTER_METHODS or not callable(value):
            return value

        @functools.wraps(value)  # inspect.signature sees the adapter's own parameters
        def call(*args, **kwargs):
            if name == "load_head" and callable(getattr(self.adapter, "supports_head", None)):
                verdict = self.adapter.supports_head(args[0] if args else kwargs["config"])
                if verdict is not True:
                    _out_of_scope(self.adapter, verdict if isinstance(verdict, str) else "supports_head refused")
            try:
                return value(*args, **kwargs)
            except Unsupported as err:
                _out_of_scope(self.adapter, str(err) or f"{name} raised Unsupported")

        return call

    def __repr__(self) -> str:
        return f"<{adapter_name(self.adapter)}>"


def _out_of_scope(adapter: Any, reason: str) -> None:
    import pytest
    from hypothesis import assume
    from hypothesis.control import currently_in_test_context

    FILTERED[reason] += 1
    if currently_in_test_context():
        assume(False)  # hypothesis draws another example
    pytest.skip(f"out of scope for {adapter_name(adapter)}: {reason}")


def load_adapter(spec: str | None = None) -> Eagle3Adapter:
    """The adapter named by ``spec``, else by ``$EAGLE3_IMPL``, else the reference.

    ``spec`` is ``package.module`` (its ``ADAPTER`` is used) or ``package.module:NAME``.
    The adapter must have the methods of the pieces it declares (:data:`PIECE_METHODS`).
    """
    spec = spec or os.environ.get(ENV_VAR) or "eagle3_ref.testing.adapter"
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"implementation {spec!r}: cannot import {module_name!r} ({err})") from err
    adapter = getattr(module, attr or "ADAPTER", None)
    if adapter is None:
        raise ValueError(f"implementation {spec!r}: module {module_name} defines no {attr or 'ADAPTER'} "
                         "(an Eagle3Adapter instance)")
    needed = dict.fromkeys(m for piece in declared_pieces(adapter) for m in PIECE_METHODS[piece])
    missing = [m for m in needed if not callable(getattr(adapter, m, None))]
    if missing:
        raise ValueError(f"{spec}.ADAPTER is not an Eagle3Adapter: it lacks {missing}, which the pieces it "
                         f"declares ({', '.join(declared_pieces(adapter))}) need")
    tolerance(adapter, "logits")  # a bad precision is named now, not in the first test
    return adapter


def state_dict_of(head: nn.Module) -> dict[str, Tensor]:
    """Official-key weights of a reference head, detached (to hand to ``load_head``)."""
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def official_config_of(head: nn.Module) -> dict:
    from eagle3_ref.checkpoint import config_to_dict

    return config_to_dict(head.config, head.fc.weight.dtype)

