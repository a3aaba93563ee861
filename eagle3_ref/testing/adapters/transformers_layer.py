"""What the adapters of peers built on transformers' Llama decoder layer share (speculators,
ModelOpt): the layer's ``LlamaConfig`` from an official head config, the KV cache and mask a
cached step runs under, and the draft-vocabulary lookups written from ``d2t``."""

from __future__ import annotations

import torch
from torch import Tensor

from eagle3_ref.testing.adapter import Unsupported

__all__ = ["llama_layer_config", "num_aux_layers", "step_cache_and_mask", "target_to_draft_from_d2t"]


def num_aux_layers(config: dict) -> int:
    """How many tapped layers an official head config fuses (its ``fc`` is that many x wide)."""
    ours = config.get("eagle3_ref") or {}
    return ours.get("num_aux_layers") or len(ours.get("aux_layer_ids") or ()) or 3


def llama_layer_config(config: dict, why: str):
    """The draft's decoder layer as a ``LlamaConfig`` (plain RoPE at the head's theta, no
    biases), for a head of its target's width; ``why`` says, for a head that owns its
    embedding, why the peer cannot take it (``Unsupported``)."""
    from transformers import LlamaConfig

    if config.get("target_hidden_size") not in (None, config["hidden_size"]):
        raise Unsupported(f"a head that owns its embedding ({why})")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    fields = {name: config[name] for name in ("hidden_size", "intermediate_size", "num_attention_heads",
                                              "num_key_value_heads", "head_dim", "rms_norm_eps", "vocab_size",
                                              "max_position_embeddings") if config.get(name) is not None}
    return LlamaConfig(**fields, num_hidden_layers=1, hidden_act="silu", attention_bias=False, mlp_bias=False,
                       rope_parameters={"rope_type": "default",
                                        "rope_theta": config.get("rope_theta", rope.get("rope_theta", 10000.0))})


def step_cache_and_mask(cache, attention_mask: Tensor | None, batch: int, q: int, device) -> tuple:
    """A transformers ``DynamicCache`` (new, or the one a previous step returned), its length
    ``S``, and the boolean mask ``(B, 1, q, S + q)`` of ``q`` new slots: the suite's, or causal
    over the new slots with every cached one visible."""
    from transformers import DynamicCache

    cache = DynamicCache() if cache is None else cache
    S = cache.get_seq_length()
    if attention_mask is None:
        attention_mask = torch.ones(q, S + q, dtype=torch.bool, device=device).tril(S)[None, None]
    return cache, S, attention_mask.expand(batch, 1, q, S + q)


def target_to_draft_from_d2t(target_ids: Tensor, d2t: Tensor, vocab_size: int) -> Tensor:
    """Draft id of each target id, -1 outside the draft vocabulary: the inverse of
    ``draft + d2t[draft]``, the lookup both peers define their vocabulary by."""
    kept = torch.arange(d2t.shape[0], device=d2t.device) + d2t
    draft_of = torch.full((vocab_size,), -1, dtype=torch.long, device=d2t.device)
    draft_of[kept] = torch.arange(d2t.shape[0], device=d2t.device)
    return draft_of[target_ids]
