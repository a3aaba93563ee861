"""SpecForge 0.2.0's EAGLE-3 draft head, judged by the conformance suite (first cut: the head).

SpecForge (the SGLang team's training framework, ``pip install --no-deps specforge==0.2.0``)
builds its draft model, ``LlamaForCausalLMEagle3``, from a ``LlamaConfig`` and loads the
official checkpoint keys. Written from its public methods only (nothing of it is copied):

* ``project_hidden_states(features)``: the ``fc`` (it asserts exactly three tapped layers);
* ``embed_input_ids(ids)``; ``backbone(input_embeds, hidden_states, cache_hidden,
  attention_mask, position_ids)``: the decoder layer, pre-norm output; ``compute_logits``.

Conventions translated:

* Precision: float32 internals. SpecForge's RMSNorm computes in float32 whatever the weights'
  dtype (as transformers' Llama does), so this adapter declares ``precision = "float32"``.
* Its ``cache_hidden`` is a training-time-test device (step-0 keys plus the diagonal of later
  steps), not a KV cache that a tree mask can address. ``head_step`` therefore keeps the
  inputs of every slot seen so far and runs the backbone over all of them, with the given
  mask on the new rows. This is exact: a slot's key and value depend only on its own inputs.
* Masks: SpecForge's own causal-mask builder fills a float32 tensor with the minimum of the
  model's dtype and overflows for a float64 model (see docs/testing.md). The adapter passes
  additive 4D masks it builds itself.
* ``torch.compile``: SpecForge compiles its RMSNorm (``@torch.compile(dynamic=True)``). On a
  CPU that is an inductor build of about 30 s per process, and the math is the same, so the
  adapter switches dynamo off while it runs SpecForge.

Not implemented here (reported "not implemented" by the suite): fusion (SpecForge captures
features inside SGLang), vocab, ttt, tree, verify, generate.
"""

from __future__ import annotations

import warnings

import torch

from eagle3_ref.testing.adapter import Unsupported

__all__ = ["SpecForgeAdapter", "ADAPTER"]


def _specforge_head_class():
    with warnings.catch_warnings():  # "flash_attn is not found, falling back to flex_attention"
        warnings.simplefilter("ignore")
        from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
    return LlamaForCausalLMEagle3


class _History:
    """What ``head_step`` hands back as its cache: every slot's inputs so far."""

    def __init__(self, embeds, hidden, positions):
        self.embeds, self.hidden, self.positions = embeds, hidden, positions  # (B, S, H), (B, S, H), (B, S)

    @property
    def length(self) -> int:
        return self.positions.shape[1]


class SpecForgeAdapter:
    name = "specforge 0.2.0"
    pieces = ("head",)
    precision = "float32"
    head_shapes = "production"

    def load_head(self, config, state_dict, embed_weight):
        from transformers import LlamaConfig

        if config.get("eagle3_ref", {}).get("num_aux_layers", 3) != 3:
            raise Unsupported("SpecForge's fc takes exactly three tapped layers")
        fields = {k: v for k, v in config.items() if k != "eagle3_ref"}
        dtype = state_dict["fc.weight"].dtype
        head = _specforge_head_class()(LlamaConfig(**fields)).to(device=state_dict["fc.weight"].device, dtype=dtype)
        missing, unexpected = head.load_state_dict(state_dict, strict=False)
        if unexpected or set(missing) - {"embed_tokens.weight"}:
            raise AssertionError(f"SpecForge's head does not take the official keys: missing {missing}, "
                                 f"unexpected {unexpected}")
        if embed_weight is not None:
            with torch.no_grad():
                head.embed_tokens.weight.copy_(embed_weight)
        return head.eval()

    def head_fuse(self, head, features):
        with torch.no_grad(), torch._dynamo.config.patch(disable=True):
            return head.project_hidden_states(features)

    def head_step(self, head, input_ids, hidden, position_ids, cache, attention_mask):
        B, q = input_ids.shape
        with torch.no_grad(), torch._dynamo.config.patch(disable=True):
            embeds = head.embed_input_ids(input_ids).to(hidden.dtype)
            if cache is not None:
                embeds = torch.cat([cache.embeds, embeds], 1)
                hidden = torch.cat([cache.hidden, hidden], 1)
                position_ids = torch.cat([cache.positions, position_ids], 1)
            n = position_ids.shape[1]
            S = n - q
            new_rows = torch.ones(B, 1, q, n, dtype=torch.bool, device=hidden.device)
            if attention_mask is None:  # causal: every cached slot, and the new ones up to itself
                new_rows[..., S:] = torch.ones(q, q, dtype=torch.bool, device=hidden.device).tril()
            else:
                new_rows = attention_mask.expand(B, 1, q, n)
            old_rows = torch.eye(S, n, dtype=torch.bool, device=hidden.device).expand(B, 1, S, n)  # not read
            allowed = torch.cat([old_rows, new_rows], dim=2)
            mask = torch.zeros(B, 1, n, n, dtype=hidden.dtype, device=hidden.device)
            mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)
            out = head.backbone(embeds, hidden, None, mask, position_ids)
            logits = head.compute_logits(out)
        return logits[:, S:], out[:, S:], _History(embeds, hidden, position_ids)


ADAPTER = SpecForgeAdapter()
