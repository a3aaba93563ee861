"""The EAGLE-2-style draft head: the baseline EAGLE-3 improves on.

EAGLE (Li et al. 2024, arXiv 2401.15077) and EAGLE-2 (arXiv 2406.16858, which changed
only the tree) draft from the target's *top-layer feature* ``f``, the final normed state
that the target's LM head reads, and train the head to predict the *next feature*. Tokens
are read off the predicted feature with the target's own LM head. One step, for input
token ``x`` and feature ``f`` (both of width ``H``, the target's)::

    e   = embed(x)                                          # (B, q, H)  the target's, frozen
    z   = fc([e ; f])                                       # (B, q, H)  fc = Linear(2H, H), with bias
    z'  = z + o_proj(Attn(q_proj(z), k_proj(z), v_proj(z))) # no input norm (EAGLE's first layer has none)
    f^  = z' + MLP(post_attention_layernorm(z'))            # the predicted next feature
    logits = lm_head_target(f^)                             # (B, q, V)  the full vocabulary

Training (EAGLE's ``train/main.py``): slot ``i`` pairs ``f_i`` with ``x_{i+1}`` (as in
:mod:`eagle3_ref.ttt`, step 0 only) and is trained toward the next feature::

    loss = 1.0 * SmoothL1(f^_i, f_{i+1}) + 0.1 * CE(softmax(lm_head(f_{i+1})), log_softmax(lm_head(f^_i)))

over the slots the loss mask counts, each term divided by their number, with uniform
noise ``(U(0, 1) - 1/2) * 0.2 * 512 / T`` added to the *input* features (never the
regression target): EAGLE's answer to drafting from its own, imperfect features. The
optimiser is this project's loop (:func:`eagle3_ref.train.train_head`, ``head="eagle2"``:
AdamW, gradients clipped by norm where EAGLE clips by value), so that every head of the
ablation shares one optimiser, data order and budget.

What differs from EAGLE-3's head (:mod:`eagle3_ref.draft_head`), and nothing else:

| | EAGLE-2-style (this file) | EAGLE-3 |
|---|---|---|
| feature | top layer: ``hidden_states[N]`` | low, mid, high, fused |
| ``fc`` | ``Linear(2H, H)`` on ``[embed ; feature]``, every step | ``Linear(3 H_t, H)`` on target features only |
| attention input | the ``fc`` output (``H``) | ``[norm(embed) ; norm(hidden)]`` (``2H``) |
| residual | the ``fc`` output | the hidden input |
| output | a feature, read by the target's LM head (full vocabulary) | pre-norm hidden; ``lm_head(norm(h))`` over the draft vocabulary |
| training | feature regression + 0.1 token loss, noisy input features, no TTT | token loss only, K steps of training-time test |

Drafting and verification are the same code: :func:`eagle3_ref.tree.build_draft_tree`,
:class:`eagle3_ref.tree.HeadDrafter` and :func:`eagle3_ref.generate.speculative_generate`
take this head as they take EAGLE-3's (the same ``forward(input_ids, hidden, position_ids,
cache, mask) -> DraftOutput``, ``fuse``, ``compute_logits``, ``d2t``). In later draft steps
the hidden fed back is the predicted feature ``f^``, exactly where EAGLE-3 feeds its own
pre-norm output. ``config.aux_layer_ids`` is ``(N,)``, the top-layer feature
(:func:`eagle3_ref.fusion.top_feature_id`), so the decoding loop taps the right state.

Saved in this project's own small format (``config.json`` with ``"architectures":
["Eagle2StyleDraftHead"]`` and ``model.safetensors`` without the target's embedding and LM
head): the baseline of the ablation, not a head for an engine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .draft_head import ATTENTION, DraftOutput, Eagle3Attention, Eagle3Config, Eagle3MLP, KVCache, RMSNorm, causal_mask
from .fusion import num_decoder_layers, top_feature_id
from .ttt import shift_left

__all__ = ["Eagle2DraftHead", "Eagle2Loss", "eagle2_config", "eagle2_loss", "uniform_noise", "save_eagle2_head",
           "load_eagle2_head", "FEATURE_WEIGHT", "TOKEN_WEIGHT", "NOISE_STD", "ARCHITECTURE"]

FEATURE_WEIGHT, TOKEN_WEIGHT = 1.0, 0.1  # EAGLE's v_w and p_w
NOISE_STD = 0.2  # EAGLE's uniform data noise
ARCHITECTURE = "Eagle2StyleDraftHead"


def eagle2_config(target: nn.Module, **overrides) -> Eagle3Config:
    """The baseline's shape for ``target``: one decoder layer of the target's shape, the full
    vocabulary, and the top-layer feature ``(N,)``."""
    n = num_decoder_layers(target)
    fields = dict(draft_vocab_size=None, aux_layer_ids=(top_feature_id(n),))
    fields.update(overrides)
    return Eagle3Config.for_target(target.config, **fields)


class Eagle2DraftHead(nn.Module):
    """EAGLE-1/2's feature-predicting head: ``fc``, one decoder layer; the target's LM head.

    ``config``: an :class:`Eagle3Config` (see :func:`eagle2_config`) whose ``hidden_size``
    equals the target's and whose draft vocabulary is the full vocabulary. The target's
    embedding and LM head are attached with :meth:`attach_target` (frozen, never saved).
    """

    def __init__(self, config: Eagle3Config, attn_implementation: Literal["sdpa", "naive"] = "sdpa") -> None:
        super().__init__()
        c = self.config = config
        if attn_implementation not in ATTENTION:
            raise ValueError(f"attn_implementation must be one of {sorted(ATTENTION)}, got {attn_implementation!r}")
        if c.hidden_size != c.target_hidden_size or c.draft_vocab_size != c.vocab_size or c.num_aux_layers != 1:
            raise ValueError("an EAGLE-2-style head predicts the target's own feature: hidden_size must equal "
                             "target_hidden_size, draft_vocab_size the vocab_size, and it reads one layer "
                             f"(got {c.hidden_size}, {c.target_hidden_size}, {c.draft_vocab_size}, {c.vocab_size}, "
                             f"{c.num_aux_layers} layers)")
        H = c.hidden_size
        self.fc = nn.Linear(2 * H, H, bias=True)
        self.self_attn = Eagle3Attention(c, attn_implementation, in_features=H)
        self.post_attention_layernorm = RMSNorm(H, c.rms_norm_eps)
        self.mlp = Eagle3MLP(c)
        # The full vocabulary: the identity mapping, so the tree code reads it like any head's.
        self.register_buffer("d2t", torch.zeros(c.vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(c.vocab_size, dtype=torch.bool))
        self.register_buffer("embed_weight", None, persistent=False)
        self.register_buffer("lm_head_weight", None, persistent=False)

    def attach_target(self, target: nn.Module) -> "Eagle2DraftHead":
        """Use the target's token embedding and LM head (frozen, in the head's dtype)."""
        c = self.config
        embed = target.get_input_embeddings().weight.detach()
        lm_head = target.get_output_embeddings().weight.detach()
        for name, w in (("embedding", embed), ("LM head", lm_head)):
            if tuple(w.shape) != (c.vocab_size, c.hidden_size):
                raise ValueError(f"the target's {name} has shape {tuple(w.shape)}, the head expects "
                                 f"(vocab_size, hidden_size) = ({c.vocab_size}, {c.hidden_size})")
        dtype = self.fc.weight.dtype
        self.embed_weight, self.lm_head_weight = embed.to(dtype), lm_head.to(dtype)
        return self

    def embed(self, input_ids: Tensor) -> Tensor:
        if self.embed_weight is None:
            raise RuntimeError("no token embedding: call attach_target(target) first")
        return F.embedding(input_ids, self.embed_weight).to(self.fc.weight.dtype)

    def fuse(self, features: Tensor) -> Tensor:
        """The top-layer feature *is* the hidden input: no fusion, only a width check."""
        if features.shape[-1] != self.config.hidden_size:
            raise ValueError(f"features have last dim {features.shape[-1]}, the EAGLE-2-style head reads the "
                             f"top-layer feature of width {self.config.hidden_size}")
        return features

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """A (predicted) feature ``(..., H)`` -> the target's logits ``(..., V)``."""
        if self.lm_head_weight is None:
            raise RuntimeError("no LM head: call attach_target(target) first")
        return F.linear(hidden, self.lm_head_weight.to(hidden.dtype))

    def forward(
        self,
        input_ids: Tensor,  # (B, q)
        hidden: Tensor,  # (B, q, H) target features, or the head's own predicted features
        position_ids: Tensor,  # (B, q)
        cache: KVCache | None = None,
        attention_mask: Tensor | None = None,  # bool (B, 1, q, S + q); None = causal
    ) -> DraftOutput:
        B, q_len = input_ids.shape
        if hidden.shape != (B, q_len, self.config.hidden_size):
            raise ValueError(f"hidden has shape {tuple(hidden.shape)}, expected (B, q, H) = "
                             f"({B}, {q_len}, {self.config.hidden_size})")
        past = 0 if cache is None else cache.length
        if attention_mask is None:
            attention_mask = causal_mask(q_len, past, B, input_ids.device)
        z = self.fc(torch.cat([self.embed(input_ids), hidden], dim=-1))  # embedding first, as EAGLE
        attn, cache = self.self_attn(z, position_ids, cache, attention_mask)
        h = z + attn
        predicted = h + self.mlp(self.post_attention_layernorm(h))
        return DraftOutput(self.compute_logits(predicted), predicted, cache)


# ----------------------------------------------------------------------------------------
# Training: feature regression + token cross entropy
# ----------------------------------------------------------------------------------------


class Eagle2Loss(NamedTuple):
    loss: Tensor  # FEATURE_WEIGHT * feature_loss + TOKEN_WEIGHT * token_loss
    feature_loss: Tensor  # smooth L1 to the next feature, mean over H, per counted slot
    token_loss: Tensor  # soft cross entropy to the target's next distribution, per counted slot
    step_accuracy: list[float]  # [top-1 accuracy against the target's argmax]: one step, no TTT
    step_counts: list[int]


def uniform_noise(features: Tensor, std: float = NOISE_STD, generator: torch.Generator | None = None) -> Tensor:
    """EAGLE's data noise: ``(U(0, 1) - 1/2) * std * 512 / T``, ``features (B, T, H)``."""
    u = torch.rand(features.shape, generator=generator, device=features.device, dtype=features.dtype)
    return (u - 0.5) * std * 512 / features.shape[1]


def eagle2_loss(head: Eagle2DraftHead, features: Tensor, input_ids: Tensor, target_logits: Tensor,
                loss_mask: Tensor, noise_std: float = NOISE_STD) -> Eagle2Loss:
    """One training forward and its loss. ``features (B, T, H)``: the target's top-layer
    features at positions 0..T-1; ``input_ids``, ``loss_mask (B, T)``; ``target_logits
    (B, T, V)`` (= ``lm_head(features)``). Slot ``i`` predicts ``f_{i+1}`` and counts where
    ``loss_mask[i]`` is set and ``i + 1 < T`` (EAGLE's alignment)."""
    B, T = input_ids.shape
    noisy = features + uniform_noise(features, noise_std) if noise_std else features
    positions = torch.arange(T, device=input_ids.device)[None].expand(B, T)
    out = head(shift_left(input_ids, 1), head.fuse(noisy), positions)
    inside = (torch.arange(T, device=input_ids.device) + 1 < T)[None]
    counted = inside & loss_mask.bool()  # (B, T)
    n = max(1, int(counted.sum()))
    wide = torch.promote_types(out.hidden.dtype, torch.float32)
    smooth = F.smooth_l1_loss(out.hidden.to(wide), shift_left(features, 1).to(wide), reduction="none").mean(-1)
    feature_loss = torch.where(counted, smooth, 0.0).sum() / n
    next_logits = shift_left(target_logits, 1)
    p = torch.softmax(next_logits.to(wide), dim=-1)
    cross = -(p * torch.log_softmax(out.logits.to(wide), dim=-1)).sum(-1)
    token_loss = torch.where(counted, cross, 0.0).sum() / n
    hits = (out.logits.argmax(-1) == next_logits.argmax(-1)) & counted
    accuracy = float(hits.sum()) / int(counted.sum()) if counted.any() else float("nan")
    return Eagle2Loss(FEATURE_WEIGHT * feature_loss + TOKEN_WEIGHT * token_loss, feature_loss, token_loss,
                      [accuracy], [int(counted.sum())])


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------


def save_eagle2_head(head: Eagle2DraftHead, path: str | os.PathLike) -> None:
    """``path/config.json`` and ``path/model.safetensors`` (no embedding, no LM head)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [ARCHITECTURE], **head.config.to_dict()}
    config["aux_layer_ids"] = list(head.config.aux_layer_ids)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, path / "model.safetensors")


def load_eagle2_head(path: str | os.PathLike, target: nn.Module, dtype: torch.dtype = torch.float32,
                     device=None) -> Eagle2DraftHead:
    """The head saved by :func:`save_eagle2_head`, attached to ``target``."""
    path = Path(path)
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} holds no readable EAGLE-2-style head config.json ({err})") from None
    if raw.pop("architectures", None) != [ARCHITECTURE]:
        raise ValueError(f"{path / 'config.json'} is not an EAGLE-2-style head (architectures != [{ARCHITECTURE!r}])")
    raw["aux_layer_ids"] = tuple(raw["aux_layer_ids"])
    head = Eagle2DraftHead(Eagle3Config(**raw))
    head.load_state_dict(load_file(path / "model.safetensors"))
    device = device if device is not None else next(target.parameters()).device
    return head.to(device=device, dtype=dtype).attach_target(target)
