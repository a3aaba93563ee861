"""The reference with its dense training-time-test form: the other of its two TTT implementations.

:func:`eagle3_ref.ttt.ttt_forward` computes the K steps either with the block-diagonal
shortcut (the default, what the reference adapter runs) or with one dense ``(K*T, K*T)``
mask, :func:`eagle3_ref.ttt.ttt_attention_mask`, the mask tutorials draw and engines with
explicit masks build. This adapter judges the dense form through the conformance suite, so a
bug in the mask is caught through an adapter like any peer's::

    python -m pytest --pyargs eagle3_ref.testing.conformance -m ttt --eagle3-impl=eagle3_ref.testing.adapters.dense_ttt
"""

from __future__ import annotations

from eagle3_ref.testing.adapter import ReferenceAdapter
from eagle3_ref.testing.handle import implementation_module

__all__ = ["DenseTTTReference", "ADAPTER"]


class DenseTTTReference(ReferenceAdapter):
    name = "eagle3_ref, dense TTT mask"

    def ttt_forward(self, head, features, input_ids, steps, attention_mask):
        ttt = implementation_module(self, "ttt")
        return ttt.ttt_forward(head, features, input_ids, steps, attention_mask, implementation="dense").logits


ADAPTER = DenseTTTReference()
