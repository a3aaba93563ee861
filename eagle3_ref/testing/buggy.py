"""Deliberately buggy EAGLE-3 implementations: one classic bug per core piece, and bugs the field shipped.

Each is the reference with exactly one thing done wrong, the way real implementations get
it wrong. They exist to show that the conformance suite catches each bug and says where:

    python -m pytest --pyargs eagle3_ref.testing.conformance -m fusion \\
        --eagle3-impl=eagle3_ref.testing.buggy:OFF_BY_ONE_LAYER

| adapter | piece | the bug |
|---|---|---|
| ``OFF_BY_ONE_LAYER`` | ``fusion`` | reads ``hidden_states[i + 1]``: the *output* of layer i (SpecForge's convention) where EAGLE-3 means the input |
| ``TTT_SEES_FUTURE`` | ``ttt`` | the training-time-test mask lets step k >= 1 at slot i see the step-0 key of slot i + 1 |
| ``TREE_POSITION_PLUS_1`` | ``tree`` | ``tree_position_ids = tree_mask.sum(-1)``, the missing ``- 1`` (EAGLE's own buffers subtract it) |
| ``SAMPLING_NO_RENORM`` | ``verify`` | after rejecting a child, accepts the next with ``p(x)`` instead of ``p(x)`` renormalised |
| ``CACHE_NOT_COMPACTED`` | ``generate`` | keeps the first ``len(accepted)`` tree slots of the target's KV cache instead of the accepted nodes' |
| ``BONUS_FROM_RAW_SOFTMAX`` | ``verify`` | after a fully accepted path, draws the bonus token from the raw softmax instead of the distribution after temperature / top-k / top-p (the official code shipped this) |
| ``ROW_OFFSET_FROM_WIDTH`` | ``generate`` | batched only: every row's tree at the widest row's length + depth, one offset for the batch |

Each is also exported declaring float32 internals (``OFF_BY_ONE_LAYER_FLOAT32``, ...): judged
by the float32 tolerances, every bug must still be caught.

``tests/test_oracle.py`` runs the suite against each and checks it fails, naming the
implementation, the counterexample and the first divergence.
"""

from __future__ import annotations

from unittest import mock

import torch

from eagle3_ref.testing.adapter import ReferenceAdapter

__all__ = ["OFF_BY_ONE_LAYER", "TTT_SEES_FUTURE", "TREE_POSITION_PLUS_1", "SAMPLING_NO_RENORM", "CACHE_NOT_COMPACTED",
           "BONUS_FROM_RAW_SOFTMAX", "ROW_OFFSET_FROM_WIDTH", "BUGS", "BEYOND_VECTORS", "declaring"]


class OffByOneLayer(ReferenceAdapter):
    name = "buggy: off-by-one layer id"

    def collect_features(self, target, input_ids, layer_ids, attention_mask=None):
        out = target(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        return torch.cat([out.hidden_states[i + 1] for i in layer_ids], dim=-1)  # BUG: + 1


class TTTSeesFuture(ReferenceAdapter):
    name = "buggy: TTT mask sees the future"

    def ttt_forward(self, head, features, input_ids, steps, attention_mask):
        from eagle3_ref.ttt import ttt_attention_mask, ttt_forward

        B, T = input_ids.shape
        mask = ttt_attention_mask(T, steps, attention_mask).clone()  # (B or 1, 1, K*T, K*T)
        for k in range(1, steps):
            for i in range(T - 1):
                mask[:, :, k * T + i, i + 1] = True  # BUG: step k, slot i sees slot i + 1's step-0 key
        return ttt_forward(head, features, input_ids, steps, attention_mask, dense_mask=mask).logits


class TreePositionPlusOne(ReferenceAdapter):
    name = "buggy: tree position ids off by one"

    def build_tree(self, head, features, input_ids, num_nodes, max_depth, top_k):
        tree = super().build_tree(head, features, input_ids, num_nodes, max_depth, top_k)
        return tree._replace(tree_position_ids=tree.tree_mask.sum(-1))  # BUG: forgot the - 1


class SamplingNoRenorm(ReferenceAdapter):
    name = "buggy: sampling verification without renormalising the residual"

    def verify_sampling(self, tree, target_probs, sampler):
        node, accepted = 0, [0]
        while True:
            p = target_probs[node].clone()
            for child in tree.children(node):
                x = int(tree.tokens[child])
                if sampler.accept(float(target_probs[node, x])):  # BUG: p[x] / p.sum() is right
                    node = child
                    break
                p[x] = 0
            else:
                return accepted, sampler.draw(p / p.sum())
            accepted.append(node)


def _crop_instead_of_compact(cache, prefix_len, keep):
    """BUG: what a chain-only implementation does: keep the first ``len(keep)`` tree slots."""
    for layer in cache.layers:
        layer.keys = layer.keys[..., : prefix_len + len(keep), :]
        layer.values = layer.values[..., : prefix_len + len(keep), :]


class CacheNotCompacted(ReferenceAdapter):
    name = "buggy: KV cache not compacted after acceptance"

    def generate(self, *args, **kwargs):
        with mock.patch("eagle3_ref.generate.compact_cache", _crop_instead_of_compact):
            return super().generate(*args, **kwargs)


class BonusFromRawSoftmax(ReferenceAdapter):
    name = "buggy: bonus token after a fully accepted path from the raw softmax"

    def generate(self, *args, **kwargs):
        from eagle3_ref.verify import Picker
        from eagle3_ref.verify import (
            Verdict,
            target_probs,
            verify_greedy,
            verify_sampling,
        )

        def verify(picker, tree, logits):
            if picker.greedy:
                return verify_greedy(tree, logits)
            verdict = verify_sampling(tree, target_probs(logits, **picker.warp), picker.sampler)
            last = verdict.accepted[-1]
            if not tree.children(last):  # BUG: at a leaf, the bonus from softmax(logits), unwarped
                return Verdict(verdict.accepted, picker.sampler.draw(torch.softmax(logits[last].double(), -1)))
            return verdict

        with mock.patch.object(Picker, "verify", verify):
            return super().generate(*args, **kwargs)


class RowOffsetFromWidth(ReferenceAdapter):
    name = "buggy: batched positions from the widest row"

    def generate_batch(self, *args, **kwargs):
        import eagle3_ref.batch as batch

        def positions(lengths, depth):  # BUG: one offset for the batch, the widest row's
            return lengths.max() + depth

        with mock.patch.object(batch, "tree_positions", positions):
            return super().generate_batch(*args, **kwargs)


def declaring(adapter: ReferenceAdapter, precision: str) -> ReferenceAdapter:
    """``adapter``, declaring another compute precision (so judged by looser tolerances)."""
    twin = type(adapter)()
    twin.precision = precision
    return twin


OFF_BY_ONE_LAYER = OffByOneLayer()
TTT_SEES_FUTURE = TTTSeesFuture()
TREE_POSITION_PLUS_1 = TreePositionPlusOne()
SAMPLING_NO_RENORM = SamplingNoRenorm()
CACHE_NOT_COMPACTED = CacheNotCompacted()
BONUS_FROM_RAW_SOFTMAX = BonusFromRawSoftmax()
# Batched decoding only (so not in BUGS, whose adapters fail a whole piece): the per-row offset.
ROW_OFFSET_FROM_WIDTH = RowOffsetFromWidth()

# adapter name -> the marker of the piece whose tests must catch it
BUGS = {"OFF_BY_ONE_LAYER": "fusion", "TTT_SEES_FUTURE": "ttt", "TREE_POSITION_PLUS_1": "tree",
        "SAMPLING_NO_RENORM": "verify", "CACHE_NOT_COMPACTED": "generate", "BONUS_FROM_RAW_SOFTMAX": "verify"}

# Bugs the golden vectors cannot see (they hold greedy and single-cycle cases), with why.
BEYOND_VECTORS = {"BONUS_FROM_RAW_SOFTMAX": "shows only when sampling end to end with a logits warper"}

# The same bugs, declaring float32 internals: judged by float32 tolerances, still caught.
for _name in list(BUGS):
    globals()[f"{_name}_FLOAT32"] = declaring(globals()[_name], "float32")
