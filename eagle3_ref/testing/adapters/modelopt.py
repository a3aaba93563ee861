"""NVIDIA ModelOpt 0.47.0's EAGLE-3 draft module and draft vocabulary, judged by the conformance suite.

ModelOpt (``pip install --no-deps nvidia-modelopt==0.47.0`` plus ``omegaconf pulp nvidia-ml-py
ninja``) trains EAGLE-3 heads inside a converted Hugging Face model
(``mtsp.convert(model, mode=[("eagle", EAGLE3_DEFAULT_CFG["config"])])``). Its draft is
``modelopt.torch.speculative.plugins.modeling_eagle.EagleModule``: transformers'
``LlamaDecoderLayer`` whose q/k/v projections it widens to ``2H`` and whose attention input it
rebuilds in a forward pre-hook (``input_layernorm(embeds)`` concatenated with
``hidden_norm(hidden)``), then ``norm`` and its own ``lm_head``. The adapter builds that module
with ModelOpt's own code from the official head's config, loads the official weights under
ModelOpt's names (``layers.0.*`` for ``midlayer.*``; it keeps no ``t2d``), and runs its
``forward``. Nothing of ModelOpt is copied. (Reading ModelOpt's *exported files* is
``eagle3-ref convert``'s business, judged by ``tests/test_peers.py`` against ModelOpt's own
exporter and greedy chain.)

Pieces: ``head`` and ``vocab`` (``calibrate_frequent_vocab``). Not implemented here: fusion
(ModelOpt captures features with forward hooks on the target's layers inside its own converted
model), ttt (its training forward computes its loss inside ``HFEagleModel.forward``), tree,
verify and generate (ModelOpt's only drafting loop is ``pseudo_speculative_generate``, a greedy
chain without verification; ``tests/test_peers.py`` compares that chain with the reference's).

The suite's ``head`` properties fail on ModelOpt, as they should: its module applies
``hidden_norm`` to the hidden input *after* the decoder layer's ``input_layernorm`` (a defect,
docs/peers.md). Where that is silent, ``input_layernorm`` at 1 as ModelOpt initialises it,
``tests/test_peers.py`` shows the rest of the head to be EAGLE-3's, cache and tree masks included.

Conventions translated, and limits:

* Precision: transformers' Llama RMSNorm and rotary embedding compute in float32 whatever the
  weights' dtype, so ``precision = "float32"``.
* Width: ModelOpt sizes ``fc`` as ``len(layer ids) x H`` with the *draft's* width and takes the
  target's embedding: a head narrower or wider than its target (one that owns its embedding)
  cannot be built (``Unsupported``).
* Cache: ``forward`` passes ``past_key_values`` to the decoder layer; the adapter hands it a
  transformers ``DynamicCache`` and the suite's boolean masks (keys: cache first).
* Rotary embedding: ``EagleModule._maybe_init_rope`` calls ``LlamaRotaryEmbedding(config=...,
  device=...)``, which transformers 5.15+ no longer takes (ModelOpt 0.47 pins
  ``transformers<5.15`` for its ``hf`` extra; this machine has a newer one). The adapter builds
  the rotary embedding itself from the same config, in the open, as ModelOpt's own code asks
  callers to (``rotary_emb must be pre-initialized by the caller``).
* Vocabulary: ``calibrate_frequent_vocab`` counts a token list with ``Counter`` and keeps
  ``most_common(V_d)`` *in frequency order* (its ``d2t`` is not sorted by target id, and it keeps
  no ``t2d``). The suite gives counts, not text: the adapter writes each token ``count`` times in
  id order, so ties go to the lower id (in real use they go to the token seen first), and
  returns the mapping in the official order (sorted by target id), with ``t2d`` built from it.
  With fewer distinct tokens than draft slots ModelOpt refuses ("Not enough vocabs to
  calibrate"): ``Unsupported``.
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

__all__ = ["ModelOptAdapter", "ADAPTER", "modelopt_eagle_module", "modelopt_modules"]


def modelopt_modules():
    """ModelOpt's ``modeling_eagle`` module and ``calibrate_frequent_vocab``, imported without
    its warning about an untested transformers version."""
    with warnings.catch_warnings():  # "transformers 5.x is not tested with current version of modelopt"
        warnings.simplefilter("ignore")
        from modelopt.torch.speculative.plugins import modeling_eagle
        from modelopt.torch.speculative.utils import calibrate_frequent_vocab
    return modeling_eagle, calibrate_frequent_vocab


def modelopt_eagle_module(config: dict, state_dict: dict, attn_implementation: str = "sdpa"):
    """ModelOpt's ``EagleModule`` for an official head config and official-key weights."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    modeling_eagle, _ = modelopt_modules()
    llama = llama_layer_config(config, "ModelOpt sizes fc and the embedding by the target's width")
    k = num_aux_layers(config)
    # The fields ModelOpt's HFEagleModel sets on the draft's config before building the module
    # (EAGLE3_DEFAULT_CFG's architecture config): only the number of tapped layers sizes fc.
    for name, value in dict(use_aux_hidden_state=True, use_input_layernorm_in_first_layer=True,
                            use_last_layernorm=True, use_mtp_layernorm=False, eagle_aux_hidden_state_layer_ids=list(
                                range(k)), draft_vocab_size=config.get("draft_vocab_size", config["vocab_size"]),
                            has_lm_head=True, eagle_decoder_type="llama").items():
        setattr(llama, name, value)
    llama._attn_implementation = attn_implementation
    module = modeling_eagle.EagleModule(llama, LlamaDecoderLayer)
    module.rotary_emb = LlamaRotaryEmbedding(config=llama)  # see the module docstring
    weights = {("layers.0." + name[len("midlayer."):]) if name.startswith("midlayer.") else name: tensor
               for name, tensor in state_dict.items() if name not in ("t2d", "embed_tokens.weight")}
    if llama.draft_vocab_size == llama.vocab_size:
        weights.pop("d2t", None)  # ModelOpt registers no d2t for a full draft vocabulary
    module = module.to(dtype=state_dict["fc.weight"].dtype, device=state_dict["fc.weight"].device)
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if unexpected or missing:
        raise AssertionError(f"ModelOpt's EagleModule does not take the converted keys: missing {missing}, "
                             f"unexpected {unexpected}")
    return module.eval()


class _Head:
    def __init__(self, module, embed_weight):
        self.module, self.embed_weight = module, embed_weight


class ModelOptAdapter:
    name = "modelopt 0.47.0"
    pieces = ("head", "vocab")
    precision = "float32"
    head_shapes = "production"

    def load_head(self, config, state_dict, embed_weight):
        if embed_weight is None:
            raise Unsupported("a head that owns its embedding (ModelOpt sizes fc and the embedding by the target's "
                              "width)")
        return _Head(modelopt_eagle_module(config, state_dict), embed_weight)

    def head_fuse(self, head, features):
        return head.module.fc(features)

    def head_step(self, head, input_ids, hidden, position_ids, cache, attention_mask):
        B, q = input_ids.shape
        cache, _, mask = step_cache_and_mask(cache, attention_mask, B, q, hidden.device)
        embeds = torch.nn.functional.embedding(input_ids, head.embed_weight).to(hidden.dtype)
        post, pre, cache = head.module(hidden, embeds, mask, position_ids=position_ids, past_key_values=cache,
                                       use_cache=True)
        return head.module.lm_head(post), pre, cache

    # -- the reduced vocabulary -------------------------------------------------------------
    def build_vocab(self, token_counts, draft_vocab_size):
        _, calibrate = modelopt_modules()
        counts = token_counts.tolist()
        if sum(c > 0 for c in counts) < draft_vocab_size:
            raise Unsupported("fewer distinct tokens than draft slots (ModelOpt refuses: 'Not enough vocabs to "
                              "calibrate')")
        tokens = [t for t, c in enumerate(counts) for _ in range(c)]  # id order: ties to the lower id

        class Tokens:  # what calibrate_frequent_vocab asks of a tokenizer: the ids of a conversation
            @staticmethod
            def apply_chat_template(conversations, **_):
                return list(conversations)

        d2t = calibrate(Tokens(), tokens, draft_vocab_size)  # in ModelOpt's own order: by frequency
        kept = (torch.arange(draft_vocab_size) + d2t).sort().values  # the official order
        t2d = torch.zeros(len(counts), dtype=torch.bool)
        t2d[kept] = True
        return kept - torch.arange(draft_vocab_size), t2d

    def draft_to_target(self, draft_ids, d2t):
        return draft_ids + d2t[draft_ids]  # ModelOpt's own expression (pseudo_speculative_generate)

    def target_to_draft(self, target_ids, d2t, vocab_size):
        # ModelOpt selects draft columns as full_logits[..., arange + d2t] (_map_logits_to_draft_vocab).
        return target_to_draft_from_d2t(target_ids, d2t, vocab_size)


ADAPTER = ModelOptAdapter()
