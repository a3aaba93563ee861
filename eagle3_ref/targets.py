"""Targets beyond Llama: what each decoder layer may see, and what that means for a tree.

A tree verification must give every layer of the target exactly the visibility that plain
decoding (``generate``) gives it. The tree mask says which *nodes* a node may see (itself
and its ancestors, EAGLE-2's ``tree_mask``); each layer then adds its own rule on
*positions*, and a key is visible only when both allow it. Node ``i`` sits at position
``q = prefix_len + depth(i)`` (the tree's ``position_ids``), its ancestors at their
depths, and prefix key ``j`` at position ``j``.

| layer type | models | key at position ``k`` visible when | its cache layer (transformers 5) |
|---|---|---|---|
| ``full_attention`` | Llama, Qwen, DeepSeek-V3, OLMo 2 | ``k <= q`` | ``DynamicLayer``: every key |
| ``sliding_attention`` | Mistral, Qwen2 (window on), Gemma 2/3, gpt-oss, Cohere2 | ``q - w < k <= q`` (window ``w``) | ``DynamicSlidingWindowLayer``: the last ``w - 1`` keys |
| ``chunked_attention`` | Llama 4 | ``k // c == q // c`` and ``k <= q`` (chunk ``c``) | ``DynamicSlidingWindowLayer(c)``: the last ``c - 1`` keys |

So for each layer type present, the tree mask becomes one 4D mask ``(1, 1, n, held + n)``
over the ``held`` prefix keys that type's cache layers keep (the whole prefix, or its last
``w - 1``), followed by the ``n`` tree nodes:

```
allowed[i, j] = (j is a held prefix key, or node j is node i or one of its ancestors)
                and rule(q = prefix_len + depth(i), k = position of key j)
```

A window can cut a deep tree: with ``w = 4``, a node 5 levels down no longer sees the root.
A model whose layers are of more than one type takes a dict of these masks keyed by layer
type (transformers hands a prepared 4D mask to the layers as it is); a model with one type
takes the tensor itself. No modeling code is forked. The rules are transformers' own
(``sliding_window_overlay`` and ``chunked_overlay`` in ``transformers.masking_utils``), and
the tests check them against those.

The cache. A sliding-window cache layer keeps only the last ``w - 1`` keys, so a tree
forward of ``n`` nodes would push out prefix keys that the accepted path still needs.
transformers' own rollback switch (``activate_past_recording``, made for assisted
decoding; transformers >= 5.15) keeps every key until the caller trims. After the
compaction, :func:`trim_to_window` leaves what plain decoding would hold: the last
``w - 1`` keys of the accepted text.

What cannot verify a tree: recurrent and linear-attention layers (Qwen3-Next's
``linear_attention``, Mamba-style state). Their state after a token is a running sum, not
keys that a mask can hide, so one forward over a tree would mix the branches.
:func:`check_tree_verifiable` refuses them by name.

Attention sinks (gpt-oss) are learned per-head logits in the softmax's denominator: they
change no visibility, so nothing here treats them specially. Neither do mixture-of-experts
layers nor multi-head latent attention (DeepSeek-V3).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache as _memoize

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .tree import DraftTree, tree_buffers

__all__ = ["LayerRule", "TREE_LAYER_TYPES", "layer_types", "layer_rules", "check_tree_verifiable", "visible",
           "cache_kwargs", "new_target_cache", "trim_to_window", "held_prefix_slots", "exact_tree_nodes",
           "keep_first_nodes", "text_config"]

# The layer types a tree mask can express. Anything else is refused by name.
TREE_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention")


@dataclass(frozen=True)
class LayerRule:
    """One layer type's visibility rule on positions."""

    layer_type: str  # one of TREE_LAYER_TYPES
    window: int | None = None  # sliding window w, or chunk size c; None for full attention


def text_config(target: nn.Module):
    config = target.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def layer_types(target: nn.Module) -> list[str]:
    """The attention type of each decoder layer: ``config.layer_types`` where the model has
    it, else inferred as transformers infers it for the cache (``sliding_window`` set:
    sliding; ``attention_chunk_size`` set: chunked; else full)."""
    config = text_config(target)
    types = getattr(config, "layer_types", None)
    if types is not None:
        return list(types)
    if getattr(config, "sliding_window", None) is not None:
        kind = "sliding_attention"
    elif getattr(config, "attention_chunk_size", None) is not None:
        kind = "chunked_attention"
    else:
        kind = "full_attention"
    return [kind] * config.num_hidden_layers


def check_tree_verifiable(target: nn.Module) -> None:
    """Raise ``ValueError`` naming the model class and the layers where a layer cannot be
    given a tree mask (recurrent / linear attention, or a type this module does not know)."""
    bad: dict[str, list[int]] = {}
    for i, kind in enumerate(layer_types(target)):
        if kind not in TREE_LAYER_TYPES:
            bad.setdefault(kind, []).append(i)
    if bad:
        found = "; ".join(f"layers {ids} are {kind!r}" for kind, ids in bad.items())
        raise ValueError(
            f"{type(target).__name__} cannot verify a draft tree: {found}. A recurrent or linear-attention layer "
            f"carries a running state, not keys a tree mask can hide, so one forward over a tree would mix its "
            f"branches. Layer types a tree can be verified with: {', '.join(TREE_LAYER_TYPES)}."
        )


def layer_rules(target: nn.Module) -> dict[str, LayerRule]:
    """The rule of each layer type present in ``target`` (checked verifiable first)."""
    check_tree_verifiable(target)
    config = text_config(target)
    rules = {}
    for kind in layer_types(target):
        if kind == "sliding_attention":
            rules[kind] = LayerRule(kind, int(config.sliding_window))
        elif kind == "chunked_attention":
            rules[kind] = LayerRule(kind, int(config.attention_chunk_size))
        else:
            rules[kind] = LayerRule(kind)
    return rules


def visible(rule: LayerRule, q_positions: Tensor, k_positions: Tensor) -> Tensor:
    """``(q, k)`` bool: may a query at each of ``q_positions (q,)`` see a key at each of
    ``k_positions (k,)`` under ``rule``? (Causality itself comes from the tree mask.)
    Leading batch dimensions broadcast: ``(B, q)`` and ``(B, k)`` give ``(B, q, k)``."""
    q, k = q_positions[..., :, None], k_positions[..., None, :]
    # rule by rule, as transformers.masking_utils writes them
    if rule.layer_type == "sliding_attention":  # sliding_window_overlay: kv_idx > q_idx - window
        return k > q - rule.window
    if rule.layer_type == "chunked_attention":  # chunked_overlay (no left padding at batch size 1)
        return torch.div(k, rule.window, rounding_mode="floor") == torch.div(q, rule.window, rounding_mode="floor")
    return torch.ones(torch.broadcast_shapes(q.shape, k.shape), dtype=torch.bool, device=q_positions.device)


# ----------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------


@_memoize
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters  # through transformers' deprecation wrapper
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(target: nn.Module, cache: DynamicCache | None) -> dict[str, DynamicCache | None]:
    """The keyword that hands ``cache`` to a forward of ``target``: ``{"cache": cache}``.

    transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old name warns on
    every call and goes in 5.40); the releases before take only ``past_key_values``. Read from the
    forward's own signature, per model class, so every version the project allows gets the name it
    takes: ``target(input_ids=ids, **cache_kwargs(target, cache), use_cache=True)``."""
    return {_cache_argument(type(target)): cache}


def new_target_cache(target: nn.Module) -> DynamicCache:
    """The cache ``generate`` would make for ``target`` (``DynamicCache(config=...)``: sliding
    and chunked layers keep a window), with past recording on in the windowed layers so a
    tree forward keeps every key until :func:`trim_to_window`."""
    cache = DynamicCache(config=target.config)
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicSlidingWindowLayer:
            layer.activate_past_recording()
        elif type(layer) is not DynamicLayer:
            raise ValueError(f"{type(target).__name__}: cache layer {i} is a {type(layer).__name__}; only "
                             "DynamicLayer and DynamicSlidingWindowLayer can be compacted after a tree")
    return cache


def trim_to_window(layer, length: int) -> None:
    """After the cache of a windowed layer was changed by hand, make it hold what plain
    decoding of ``length`` tokens would: the last ``window - 1`` keys (every key, if fewer).
    A full-attention layer is left as it is."""
    if isinstance(layer, DynamicSlidingWindowLayer):
        held = min(layer.keys.shape[-2], max(layer.sliding_window - 1, 0))
        layer.keys = layer.keys[..., layer.keys.shape[-2] - held:, :]
        layer.values = layer.values[..., layer.values.shape[-2] - held:, :]
        layer.cumulative_length = length


def held_prefix_slots(cache: DynamicCache, target: nn.Module) -> dict[str, int]:
    """How many prefix keys the cache layers of each layer type hold (before a forward):
    the whole prefix for full attention, at most ``window - 1`` for a windowed layer."""
    held: dict[str, int] = {}
    for kind, layer in zip(layer_types(target), cache.layers):
        held.setdefault(kind, 0 if layer.keys is None or not layer.is_initialized else layer.keys.shape[-2])
    return held


# ----------------------------------------------------------------------------------------
# A transformers quirk: Llama 4's attention temperature reads positions from the cache
# ----------------------------------------------------------------------------------------


def exact_tree_nodes(target: nn.Module, prefix_len: int, tree_position_ids: Tensor) -> int:
    """How many leading tree nodes ``target`` verifies exactly in one forward: all of them,
    except in one case.

    Llama 4's NoPE layers scale queries by ``log1p(floor((pos + 1) / floor_scale))``
    ("attention temperature tuning"), and transformers computes that ``pos`` as
    ``past_seen_tokens + arange(q_len)``, from the cache, not from ``position_ids``. A tree
    node at index ``i`` and depth ``d`` is then scaled as if it sat at ``prefix_len + i``
    rather than ``prefix_len + d``. The two give the same scale unless a multiple of
    ``floor_scale`` falls between them. So in the rare cycle where one does, only the nodes
    before the first such node are verified (a chain always passes: its index is its
    depth). Since every parent comes before its children, the nodes kept form a tree.
    """
    n = tree_position_ids.shape[0]
    config = text_config(target)
    nope_layers = 0 in (getattr(config, "no_rope_layers", None) or [])
    if not (getattr(config, "attn_temperature_tuning", False) and nope_layers):
        return n
    scale = config.floor_scale
    by_index = (prefix_len + torch.arange(n, device=tree_position_ids.device) + 1) // scale
    by_depth = (prefix_len + tree_position_ids + 1) // scale
    wrong = (by_index != by_depth).nonzero()
    return n if wrong.numel() == 0 else int(wrong[0])


def keep_first_nodes(tree: DraftTree, count: int) -> DraftTree:
    """The tree of nodes ``0 .. count - 1`` (closed under ancestors: parents come first)."""
    if count >= tree.num_nodes:
        return tree
    parents = tree.parents[:count]
    mask, depth, retrieve = tree_buffers(parents.cpu())
    return tree._replace(tokens=tree.tokens[:count], parents=parents, scores=tree.scores[:count],
                         tree_mask=mask.to(tree.tree_mask.device), tree_position_ids=depth.to(tree.tree_position_ids.device),
                         retrieve_indices=retrieve.to(tree.retrieve_indices.device))
