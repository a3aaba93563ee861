"""The reference with float32 internals: a correct implementation judged at float32.

Production heads (SpecForge, vLLM, SGLang) compute in float32 or bf16 even when handed
float64 weights: RMSNorm, RoPE tables and the softmax in float32. The conformance suite
gives every numeric comparison the tolerance of the precision an adapter declares
(:func:`eagle3_ref.testing.adapter.tolerance`). This adapter is the reference's head cast to
float32, with inputs cast in and outputs cast back to the caller's dtype: a correct
float32 implementation. The suite must pass against it (the tolerances are loose enough),
and every buggy implementation must still fail when declaring float32 (they are tight
enough); ``tests/test_oracle.py`` checks both::

    python -m pytest --pyargs eagle3_ref.testing.conformance --eagle3-impl=eagle3_ref.testing.adapters.float32
"""

from __future__ import annotations

import torch

from eagle3_ref.testing.adapter import ReferenceAdapter

__all__ = ["Float32Reference", "ADAPTER"]


def _float(x):
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


class Float32Reference(ReferenceAdapter):
    name = "eagle3_ref computing in float32"
    precision = "float32"

    def load_head(self, config, state_dict, embed_weight):
        return super().load_head(config, {k: _float(v) for k, v in state_dict.items()}, _float(embed_weight))

    def head_fuse(self, head, features):
        return head.fuse(features.float()).to(features.dtype)

    def head_step(self, head, input_ids, hidden, position_ids, cache, attention_mask):
        logits, out_hidden, cache = super().head_step(head, input_ids, hidden.float(), position_ids, cache, attention_mask)
        return logits.to(hidden.dtype), out_hidden.to(hidden.dtype), cache

    def build_tree(self, head, features, input_ids, num_nodes, max_depth, top_k):
        return super().build_tree(head, features.float(), input_ids, num_nodes, max_depth, top_k)

    def ttt_forward(self, head, features, input_ids, steps, attention_mask):
        return [x.to(features.dtype) for x in super().ttt_forward(head, features.float(), input_ids, steps, attention_mask)]


ADAPTER = Float32Reference()
