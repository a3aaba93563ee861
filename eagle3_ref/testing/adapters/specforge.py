"""SpecForge 0.2.0's EAGLE-3 draft head, vocabulary and training-time test, judged by the conformance suite.

SpecForge (the SGLang team's training framework, ``pip install --no-deps specforge==0.2.0``)
builds its draft model, ``LlamaForCausalLMEagle3``, from a ``LlamaConfig`` and loads the
official checkpoint keys. The adapter calls SpecForge's own code (nothing of it is copied):

* ``project_hidden_states(features)``: the ``fc`` (it asserts exactly three tapped layers);
* ``embed_input_ids(ids)``; ``backbone(input_embeds, hidden_states, cache_hidden,
  attention_mask, position_ids)``: the decoder layer, pre-norm output; ``compute_logits``;
* ``prepare_decoder_attention_mask`` (causal + padding, additive);
* the training loss: ``_compute_target_p`` and ``_compute_target_p_padded``
  (``specforge/algorithms/eagle3/model.py``) and ``_compute_loss``, the pure-torch
  reference of its triton loss kernel (``specforge/core/loss.py``).

Pieces: ``head``, ``vocab`` (``process_token_dict_to_mappings``, compiled from its source: its
module imports ``datasets``) and ``ttt``. Not implemented here (the suite says "not
implemented"): fusion (SpecForge captures features inside SGLang), tree, verify and generate
(SpecForge trains heads; SGLang drafts with them).

Conventions translated:

* Precision: float32 internals. SpecForge's RMSNorm computes in float32 whatever the weights'
  dtype (as transformers' Llama does), its training-time-test attention softmaxes in float32,
  and its loss casts logits and target to float32. So ``precision = "float32"``.
* Training-time test (``OnlineEagle3Model.forward``): its data pipeline hands the forward the
  input ids and the target logits *shifted left once* (``TargetHead.preprocess``) and zeroes
  the *last loss slot* (``algorithms/eagle3/data.py``); each step shifts the ids, the loss mask
  and the position mask left once more; the positions stay ``0..T-1`` and the attention adds
  the number of cached steps (``position_ids + lck``); the trainer weighs step ``k`` by
  ``0.8 ** k`` (``ploss_decay``). ``ttt_forward`` runs those steps through the draft model's
  methods because ``forward`` itself computes its loss with a triton kernel
  (``LogSoftmaxLoss``): on a machine without a GPU it cannot run, and it returns losses, not
  the logits the suite compares.
* Its ``cache_hidden`` is that training-time-test device (step-0 keys plus the diagonal of
  later steps), not a KV cache that a tree mask can address. ``head_step`` therefore keeps the
  inputs of every slot seen so far and runs the backbone over all of them, with the given
  mask on the new rows. This is exact: a slot's key and value depend only on its own inputs.
* Position ids: SpecForge's RoPE table is cut to the number of slots and then indexed by
  position id, so a forward whose position ids reach the slot count raises ``IndexError``
  (docs/peers.md). ``head_step`` refuses such calls as out of scope (:data:`ROPE_DEFECT`):
  the suite counts them, and ``tests/test_peers.py`` keeps the defect as a strict xfail.
* Vocabulary: SpecForge counts the tokens it sees in a ``Counter`` and keeps
  ``most_common(V_d)``, sorted by id; ties go by insertion order, and the adapter inserts by id.
  With fewer distinct tokens seen than draft slots it pads from ``range(V_d)`` in *set
  iteration order*, not the lowest unseen ids (docs/peers.md): ``build_vocab`` refuses the
  calls where that order decides (:data:`FILL_DEFECT`), and ``tests/test_peers.py`` keeps the
  defect as a strict xfail. ``draft_to_target`` is SpecForge's own expression, ``ids + d2t[ids]``;
  ``target_to_draft`` writes out its column selection ``target[..., t2d]``.
* Masks: SpecForge's causal-mask builder fills a float32 tensor with the minimum of the
  model's dtype and overflows for a float64 model (docs/peers.md). ``ttt_forward`` builds
  the mask with SpecForge's own builder on a float32 probe and casts it to the model's dtype;
  ``head_step`` passes tree masks it builds itself.
* The loss functions' modules import ``triton`` at load time (GPU only), and the vocabulary
  builder's imports ``datasets``. The adapter compiles just the functions it calls from
  SpecForge's installed source files, without their decorators (``torch.compile``: the same
  math), and imports neither module.
* ``torch.compile``: SpecForge compiles its RMSNorm and RoPE (``@torch.compile(dynamic=True)``).
  On a CPU that is an inductor build of about 30 s per process, and the math is the same, so
  the adapter switches dynamo off while it runs SpecForge.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import warnings
from collections import Counter
from functools import cache
from typing import Tuple

import torch

from eagle3_ref.fusion import to_convention
from eagle3_ref.testing.adapter import Unsupported

__all__ = ["SpecForgeAdapter", "ADAPTER", "specforge_head_class", "specforge_functions"]


def specforge_head_class():
    with warnings.catch_warnings():  # "flash_attn is not found, falling back to flex_attention"
        warnings.simplefilter("ignore")
        from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
    return LlamaForCausalLMEagle3


# SpecForge 0.2.0 cuts its RoPE table to the number of slots, then indexes it by position id.
ROPE_DEFECT = "position ids beyond the slot count (SpecForge 0.2.0's RoPE defect, docs/peers.md)"


# With fewer distinct tokens seen than draft slots, SpecForge 0.2.0 picks the unseen fillers in set order.
FILL_DEFECT = "a choice of unseen fillers (SpecForge 0.2.0 picks them in set order, docs/peers.md)"


@cache
def specforge_functions(module: str, *names: str) -> tuple:
    """SpecForge's own functions ``names`` compiled from the installed source of ``module``
    without importing it (its imports need triton or datasets), decorators dropped."""
    path = importlib.util.find_spec(module).origin  # finding it imports the parent packages only
    tree = ast.parse(open(path).read())
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {d.name for d in defs}
    if missing:
        raise RuntimeError(f"{module} of this SpecForge defines no {sorted(missing)}: the adapter is for 0.2.0")
    for d in defs:
        d.decorator_list = []
    namespace = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional, "Counter": Counter, "Tuple": Tuple}
    exec(compile(ast.Module(body=defs, type_ignores=[]), path, "exec"), namespace)
    return tuple(namespace[n] for n in names)


class _History:
    """What ``head_step`` hands back as its cache: every slot's inputs so far."""

    def __init__(self, embeds, hidden, positions):
        self.embeds, self.hidden, self.positions = embeds, hidden, positions  # (B, S, H), (B, S, H), (B, S)

    @property
    def length(self) -> int:
        return self.positions.shape[1]


class SpecForgeAdapter:
    name = "specforge 0.2.0"
    pieces = ("head", "vocab", "ttt")
    precision = "float32"
    head_shapes = "production"

    def load_head(self, config, state_dict, embed_weight):
        from transformers import LlamaConfig

        if config.get("eagle3_ref", {}).get("num_aux_layers", 3) != 3:
            raise Unsupported("SpecForge's fc takes exactly three tapped layers")
        fields = {k: v for k, v in config.items() if k != "eagle3_ref"}
        ids = config.get("eagle3_ref", {}).get("aux_layer_ids")
        # Where SpecForge reads the tapped layers from a draft config, in SGLang's ids (ours - 1; the
        # embeddings, our 0, have none: the head then names no layers, and only the loop minds).
        if ids is not None and min(ids) >= 1:
            fields["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(to_convention(ids, "sglang"))}
        dtype = state_dict["fc.weight"].dtype
        head = specforge_head_class()(LlamaConfig(**fields)).to(device=state_dict["fc.weight"].device, dtype=dtype)
        missing, unexpected = head.load_state_dict(state_dict, strict=False)
        if unexpected or set(missing) - {"embed_tokens.weight"}:
            raise AssertionError(f"SpecForge's head does not take the official keys: missing {missing}, "
                                 f"unexpected {unexpected}")
        if embed_weight is not None:
            with torch.no_grad():
                head.embed_tokens.weight.copy_(embed_weight)
        return head.eval()

    def head_fuse(self, head, features):
        with torch._dynamo.config.patch(disable=True):
            return head.project_hidden_states(features)

    def head_step(self, head, input_ids, hidden, position_ids, cache, attention_mask):
        B, q = input_ids.shape
        with torch._dynamo.config.patch(disable=True):  # differentiable: the TTT gradient test drafts with it
            embeds = head.embed_input_ids(input_ids).to(hidden.dtype)
            if cache is not None:
                embeds = torch.cat([cache.embeds, embeds], 1)
                hidden = torch.cat([cache.hidden, hidden], 1)
                position_ids = torch.cat([cache.positions, position_ids], 1)
            n = position_ids.shape[1]
            if int(position_ids.max()) >= n:  # e.g. a chain drafted over a padded prefix
                raise Unsupported(ROPE_DEFECT)
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

    # -- the reduced vocabulary -------------------------------------------------------------
    def build_vocab(self, token_counts, draft_vocab_size):
        (mappings,) = specforge_functions("specforge.data.preprocessing", "process_token_dict_to_mappings")
        # SpecForge counts the tokens it sees; ties among equal counts go by insertion order, here by id.
        seen = Counter({t: int(c) for t, c in enumerate(token_counts.tolist()) if c > 0})
        candidates = set(range(draft_vocab_size)) - set(seen)  # where SpecForge takes its fillers from
        if len(candidates) > draft_vocab_size - len(seen) > 0:  # a choice among them: set order decides
            raise Unsupported(FILL_DEFECT)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its coverage ratio
            d2t, t2d = mappings(seen, draft_vocab_size, token_counts.shape[0])
        return d2t, t2d

    def draft_to_target(self, draft_ids, d2t):
        return draft_ids + d2t[draft_ids]  # SpecForge's own expression (OnlineEagle3Model._acc_and_loss)

    def target_to_draft(self, target_ids, d2t, vocab_size):
        # SpecForge has no such function: its loss selects the draft columns as target[..., t2d],
        # in target id order, which puts the i-th kept target id at draft id i.
        kept = torch.arange(d2t.shape[0], device=d2t.device) + d2t
        t2d = torch.zeros(vocab_size, dtype=torch.bool, device=d2t.device)
        t2d[kept] = True
        draft_of = torch.where(t2d, torch.cumsum(t2d, 0) - 1, -1)
        return draft_of[target_ids]

    # -- training-time test ----------------------------------------------------------------
    def ttt_forward(self, head, features, input_ids, steps, attention_mask):
        from specforge.modeling.draft.llama3_eagle import prepare_decoder_attention_mask
        from specforge.utils import padding

        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.long, device=input_ids.device)
        with torch._dynamo.config.patch(disable=True):
            hidden = head.project_hidden_states(features)
            probe = torch.empty(B, T, 1, dtype=torch.float32, device=hidden.device)  # the float64 defect
            mask = prepare_decoder_attention_mask(attention_mask, (B, T), probe, 0).to(hidden.dtype)
            positions = torch.arange(T, device=input_ids.device)[None].expand(B, T)
            ids = padding(input_ids, left=False)  # the data pipeline's shift
            cache_hidden, logits = [[], []], []
            for _ in range(steps):
                embeds = head.embed_input_ids(ids).to(hidden.dtype)
                hidden = head.backbone(embeds, hidden, cache_hidden, mask, positions, None, True)
                logits.append(head.compute_logits(hidden))
                ids = padding(ids, left=False)  # each step's shift
        return logits

    def ttt_loss(self, logits, target_logits, loss_mask, t2d, d2t):
        from specforge.utils import padding

        target_p_padded, _ = specforge_functions("specforge.algorithms.eagle3.model", "_compute_target_p_padded",
                                                  "_compute_target_p")
        (compute_loss,) = specforge_functions("specforge.core.loss", "_compute_loss")
        steps = len(logits)
        loss_mask = loss_mask.clone()
        loss_mask[:, -1] = 0  # the data pipeline's last loss slot
        with torch._dynamo.config.patch(disable=True):
            target_p, _, _, position_mask = target_p_padded(padding(target_logits, left=False), t2d,
                                                            loss_mask[..., None], steps)
            T = loss_mask.shape[1]
            total = 0.0
            for k in range(steps):
                step_loss = compute_loss(logits[k], target_p[:, k:k + T], position_mask)
                total = total + 0.8 ** k * step_loss  # the trainer's weight, ploss_decay ** k
                position_mask = padding(position_mask, left=False)
        return total


ADAPTER = SpecForgeAdapter()
