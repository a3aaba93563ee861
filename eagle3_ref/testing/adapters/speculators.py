"""speculators 0.9.0's EAGLE-3 draft model and draft vocabulary, judged by the conformance suite.

speculators (vLLM's project, ``pip install --no-deps speculators==0.9.0`` plus ``openai datasets
hs-connectors loguru``) defines the format vLLM loads EAGLE-3 heads in, and trains them. Its
draft is ``speculators.models.eagle3.core.Eagle3DraftModel``: ``fc``, a first decoder layer
(``LlamaDecoderEagle3FirstLayer``: transformers' Llama layer with q/k/v widened to ``2H`` and
its own ``forward``, which splits ``[embeds ; hidden]``, normalises each half and keeps the
hidden half as the residual), ``norm``, ``lm_head``. The adapter builds that model with
speculators' own classes (``Eagle3SpeculatorConfig``, ``Eagle3DraftModel``) from the official
head's config, loads the official weights under speculators' names (``layers.0.*`` for
``midlayer.*``), and runs its modules. Nothing of speculators is copied.

Pieces: ``head`` and ``vocab`` (``build_vocab_mappings_from_distribution``). Not implemented
here: fusion (speculators reads features that vLLM captures), ttt (its training forward
returns argmax drafts and a loss, and feeds its own shifted ids), tree, verify and generate
(vLLM drafts and verifies).

Conventions translated, and limits:

* ``head_step``: ``Eagle3DraftModel.forward`` is its training-time-test loop over a packed
  batch (document ids, no external cache or mask). One step of it is: embed, concatenate
  ``[embeds ; hidden]``, rotary embedding at the given positions, its decoder layer(s), then
  ``lm_head(norm(h))`` (``norm_output`` false). The adapter runs exactly those modules, in that
  order, with a transformers ``DynamicCache`` and the suite's boolean masks (keys: cache first),
  at ``_attn_implementation = "sdpa"`` (its default, flex attention, needs a GPU).
* Positions: its ``forward`` numbers positions from 1 when given none; the suite gives them.
* Precision: transformers' Llama RMSNorm and RoPE compute in float32, so ``precision =
  "float32"``.
* Width: its ``fc`` is ``k x H`` with the draft's own width, and its embedding is the
  verifier's: a head that owns its embedding (narrower or wider than its target) is
  ``Unsupported``.
* Vocabulary: ``build_vocab_mappings_from_distribution(freq, V_d, V)`` sorts tokens by
  ``(-count, id)``, fills from ``range(V_d)`` and sorts by id: the official convention. The
  adapter hands it the tokens seen (count > 0), as a dictionary of counts.
"""

from __future__ import annotations

import warnings

import torch

from eagle3_ref.testing.adapter import Unsupported
from eagle3_ref.testing.adapters.transformers_layer import (
    llama_layer_config,
    num_aux_layers,
    step_cache_and_mask,
    target_to_draft_from_d2t,
)

__all__ = ["SpeculatorsAdapter", "ADAPTER", "speculators_draft_model"]


def speculators_draft_model(config: dict, state_dict: dict, embed_weight: torch.Tensor):
    """speculators' ``Eagle3DraftModel`` for an official head config and official-key weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from speculators.config import SpeculatorsConfig, VerifierConfig
        from speculators.models.eagle3.config import Eagle3SpeculatorConfig
        from speculators.models.eagle3.core import Eagle3DraftModel
        from speculators.proposals.greedy import GreedyTokenProposalConfig

    layer = llama_layer_config(config, "speculators' fc and embedding have the draft's width")
    k = num_aux_layers(config)
    layer._attn_implementation = "sdpa"  # its default, flex attention, needs a GPU
    verifier = VerifierConfig(name_or_path=None, architectures=["LlamaForCausalLM"])
    spec = Eagle3SpeculatorConfig(
        transformer_layer_config=layer, draft_vocab_size=config.get("draft_vocab_size", config["vocab_size"]),
        norm_before_residual=False, eagle_aux_hidden_state_layer_ids=list(range(1, k + 1)),  # their number sizes fc
        speculators_config=SpeculatorsConfig(algorithm="eagle3", proposal_methods=[GreedyTokenProposalConfig()],
                                             default_proposal_method="greedy", verifier=verifier))
    model = Eagle3DraftModel(spec)
    weights = {("layers.0." + name[len("midlayer."):]) if name.startswith("midlayer.") else name: tensor
               for name, tensor in state_dict.items()}
    weights["embed_tokens.weight"] = embed_weight
    if spec.draft_vocab_size == layer.vocab_size:  # speculators registers no d2t/t2d for a full vocabulary
        d2t, t2d = weights.pop("d2t", None), weights.pop("t2d", None)
        if (d2t is not None and bool(d2t.any())) or (t2d is not None and not bool(t2d.all())):
            raise AssertionError("a full-size draft vocabulary whose d2t/t2d are not the identity")
    dtype, device = state_dict["fc.weight"].dtype, state_dict["fc.weight"].device
    model = model.to(dtype=dtype, device=device)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not m.startswith("verifier_")]  # the verifier's lm_head and norm: training only
    if unexpected or missing:
        raise AssertionError(f"speculators' Eagle3DraftModel does not take the official keys: missing {missing}, "
                             f"unexpected {unexpected}")
    return model.eval()


class SpeculatorsAdapter:
    name = "speculators 0.9.0"
    pieces = ("head", "vocab")
    precision = "float32"
    head_shapes = "production"

    def load_head(self, config, state_dict, embed_weight):
        if embed_weight is None:
            raise Unsupported("a head that owns its embedding (speculators' fc and embedding have the draft's width)")
        return speculators_draft_model(config, state_dict, embed_weight)

    def head_fuse(self, head, features):
        return head.fc(features)

    def head_step(self, head, input_ids, hidden, position_ids, cache, attention_mask):
        B, q = input_ids.shape
        cache, S, mask = step_cache_and_mask(cache, attention_mask, B, q, hidden.device)
        # One step of Eagle3DraftModel.forward, its own modules in its order (see the module docstring).
        x = torch.cat([head.embed_tokens(input_ids).to(hidden.dtype), hidden], dim=-1)
        position_embeddings = head.rotary_emb(x, position_ids)
        for layer in head.layers:
            x = layer(x, attention_mask=mask, position_ids=position_ids,
                      past_key_values=cache, use_cache=True,
                      cache_position=torch.arange(S, S + q, device=hidden.device),
                      position_embeddings=position_embeddings)
        return head.lm_head(head.norm(x)), x, cache

    # -- the reduced vocabulary -------------------------------------------------------------
    def build_vocab(self, token_counts, draft_vocab_size):
        from speculators.train.vocab_mapping import build_vocab_mappings_from_distribution

        freq = {t: int(c) for t, c in enumerate(token_counts.tolist()) if c > 0}
        return build_vocab_mappings_from_distribution(freq, draft_vocab_size, token_counts.shape[0])

    def draft_to_target(self, draft_ids, d2t):
        return draft_ids + d2t[draft_ids]  # its stored offset: target = draft + d2t[draft]

    def target_to_draft(self, target_ids, d2t, vocab_size):
        return target_to_draft_from_d2t(target_ids, d2t, vocab_size)


ADAPTER = SpeculatorsAdapter()
