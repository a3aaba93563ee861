"""The token-predicting draft head of EAGLE-3.

EAGLE-1/2 trained their draft to *regress* the target's next feature and read tokens off
it; EAGLE-3 drops the feature loss and trains the draft to predict *tokens* directly
(EAGLE-3, "removing the feature prediction constraint"), which lets it consume the fused
low/mid/high features (:mod:`eagle3_ref.fusion`) and, at test time, its own outputs.

One step of the head, for input token ``x`` and hidden input ``h`` (width ``H``)::

    e   = embed(x)                                        # (B, q, H)   the target's, frozen
    a   = [input_layernorm(e) ; hidden_norm(h)]           # (B, q, 2H)  embedding first
    h'  = h + o_proj(Attn(q_proj(a), k_proj(a), v_proj(a)))   # residual = h only
    h'' = h' + MLP(post_attention_layernorm(h'))          # SiLU-gated MLP
    logits = lm_head(norm(h''))                           # (B, q, V_draft)

``h`` is ``fc([l ; m ; h_target])`` for positions that have target features, and the
head's own *pre-norm* output ``h''`` of the previous draft step otherwise (``fc`` is
skipped then). Names of every module match the official checkpoint keys
(``midlayer.self_attn.q_proj.weight``, ...; see :mod:`eagle3_ref.checkpoint`).

Attention takes an explicit KV cache (returned, never stored on the module) and an
explicit boolean mask, so tree drafting and training-time test can use the same code.
Two attention implementations sit side by side: ``naive`` (matmul, softmax, matmul) and
``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``); a test asserts they agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from .fusion import fuse, make_fc

__all__ = ["Eagle3Config", "Eagle3DraftHead", "KVCache", "DraftOutput", "RMSNorm", "causal_mask"]


@dataclass(frozen=True)
class Eagle3Config:
    """Shape of a draft head. Field names are those of the official ``config.json``."""

    hidden_size: int  # H, the draft's width
    intermediate_size: int  # MLP width
    num_attention_heads: int
    num_key_value_heads: int  # < num_attention_heads is GQA
    vocab_size: int  # the *target's* vocabulary (embedding rows, t2d length)
    draft_vocab_size: int | None = None  # lm_head rows; None -> vocab_size
    target_hidden_size: int | None = None  # H_t; None -> hidden_size
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0  # released heads often omit it: 10000 then, whatever the target uses
    max_position_embeddings: int = 2048
    num_aux_layers: int = 3  # low, mid, high
    aux_layer_ids: tuple[int, ...] | None = None  # hidden_states indices; None -> the default
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # unknown config keys, kept

    def __post_init__(self) -> None:
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
            value = getattr(self, name)  # the required fields first: the defaults below are computed from them
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Eagle3Config.{name} must be a positive int, got {value!r}")
        if self.draft_vocab_size is None:
            fix("draft_vocab_size", self.vocab_size)
        if self.target_hidden_size is None:
            fix("target_hidden_size", self.hidden_size)
        if self.head_dim is None:
            fix("head_dim", self.hidden_size // max(self.num_attention_heads, 1))
        if self.aux_layer_ids is not None:
            fix("aux_layer_ids", tuple(int(i) for i in self.aux_layer_ids))
            if len(self.aux_layer_ids) != self.num_aux_layers:
                fix("num_aux_layers", len(self.aux_layer_ids))
        for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                     "vocab_size", "draft_vocab_size", "target_hidden_size", "head_dim",
                     "max_position_embeddings", "num_aux_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Eagle3Config.{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"Eagle3Config.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"Eagle3Config.head_dim must be even for RoPE, got {self.head_dim}")
        if self.draft_vocab_size > self.vocab_size:
            raise ValueError(
                f"Eagle3Config.draft_vocab_size ({self.draft_vocab_size}) exceeds vocab_size ({self.vocab_size})"
            )

    @property
    def owns_embedding(self) -> bool:
        """The target's embedding has width ``H_t``; a head of another width needs its own
        (saved as ``embed_tokens.weight``, the one case a checkpoint holds an embedding)."""
        return self.target_hidden_size != self.hidden_size

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "extra"}

    @classmethod
    def for_target(cls, target_config, *, draft_vocab_size: int | None = None,
                   aux_layer_ids: tuple[int, ...] | None = None, **overrides) -> "Eagle3Config":
        """A head shaped like one decoder layer of the target (what EAGLE-3 ships)."""
        tc = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
        rope = getattr(tc, "rope_parameters", None) or {}
        fields = dict(
            hidden_size=tc.hidden_size, intermediate_size=tc.intermediate_size,
            num_attention_heads=tc.num_attention_heads,
            num_key_value_heads=getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads,
            vocab_size=tc.vocab_size, draft_vocab_size=draft_vocab_size, target_hidden_size=tc.hidden_size,
            head_dim=getattr(tc, "head_dim", None), rms_norm_eps=getattr(tc, "rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", getattr(tc, "rope_theta", None) or 10000.0)),
            max_position_embeddings=tc.max_position_embeddings, aux_layer_ids=aux_layer_ids,
        )
        fields.update(overrides)
        return cls(**fields)


class KVCache(NamedTuple):
    """The draft's KV cache: keys (after RoPE) and values of every slot seen so far.

    Immutable: :meth:`Eagle3DraftHead.forward` returns a new one. Tree nodes' keys are
    scratch; :meth:`crop` drops them and keeps the prefix slots.
    """

    key: Tensor  # (B, n_kv_heads, S, head_dim)
    value: Tensor  # (B, n_kv_heads, S, head_dim)

    @property
    def length(self) -> int:
        return self.key.shape[2]

    def crop(self, length: int) -> "KVCache":
        return KVCache(self.key[:, :, :length], self.value[:, :, :length])

    def select(self, slots: Tensor) -> "KVCache":
        """Keep the slots at the given indices (``(S',)`` long), in that order."""
        return KVCache(self.key[:, :, slots], self.value[:, :, slots])


class DraftOutput(NamedTuple):
    """One head step: logits over the draft vocabulary, the pre-norm output ``h''`` (the next
    step's hidden input), and the KV cache extended by these ``q`` slots."""

    logits: Tensor  # (B, q, V_draft) over the draft vocabulary
    hidden: Tensor  # (B, q, H) pre-norm output: the next step's hidden input
    cache: KVCache  # the input cache plus these q slots


class RMSNorm(nn.Module):
    """LLaMA's RMSNorm; computes in at least float32 (exact in float64)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def causal_mask(q_len: int, past_len: int, batch: int = 1, device=None) -> Tensor:
    """Boolean ``(B, 1, q, past + q)``: new query ``j`` sees every cached slot and new
    slots ``<= j``. True = may attend."""
    kv = torch.arange(past_len + q_len, device=device)
    q = torch.arange(q_len, device=device)[:, None] + past_len
    return (kv[None, :] <= q).expand(batch, 1, q_len, past_len + q_len)


def attention_naive(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Textbook attention. q: (B, nh, q, d); k, v: (B, nkv, S, d); mask: bool (B, 1, q, S)."""
    k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, nh, q, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float() if q.dtype in (torch.float16, torch.bfloat16) else scores, dim=-1)
    return probs.to(v.dtype) @ v  # (B, nh, q, d)


def attention_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """The same through PyTorch's fused kernel (GQA without materialising repeated KV)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


ATTENTION = {"naive": attention_naive, "sdpa": attention_sdpa}


def rope_inv_freq(c: Eagle3Config, device=None) -> Tensor:
    """RoPE frequencies ``theta^(-2i/d)``, ``(head_dim // 2,)`` float64."""
    exponents = torch.arange(0, c.head_dim, 2, dtype=torch.float64, device=device) / c.head_dim
    return 1.0 / (c.rope_theta**exponents)


class Eagle3Attention(nn.Module):
    """Self-attention whose q/k/v read the ``2H``-wide ``[embed ; hidden]`` input (``in_features``:
    ``H`` for the EAGLE-2-style baseline, whose ``fc`` has already mixed the two)."""

    def __init__(self, c: Eagle3Config, impl: str, in_features: int | None = None) -> None:
        super().__init__()
        width = 2 * c.hidden_size if in_features is None else in_features
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(width, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(width, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(width, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
        self.config, self.impl = c, impl

    def rope(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin of shape (B, q, head_dim); float32 math like HF, float64 when asked."""
        math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        # Recomputed each call (d/2 numbers), never stored, so .to(bfloat16) cannot round it.
        inv_freq = rope_inv_freq(self.config, position_ids.device).to(math_dtype)
        freqs = position_ids[..., None].to(math_dtype) * inv_freq  # (B, q, d/2)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def qkv(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, q, 2H)`` -> q ``(B, nh, q, d)``, k, v ``(B, nkv, q, d)``, RoPE applied."""
        B, q_len, _ = x.shape
        q = self.q_proj(x).view(B, q_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, q_len, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, q_len, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = self.rope(position_ids, x.dtype)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def output(self, attn: Tensor) -> Tensor:
        """``(B, nh, q, d)`` attention result -> ``(B, q, H)``."""
        B, _, q_len, _ = attn.shape
        return self.o_proj(attn.transpose(1, 2).reshape(B, q_len, self.n_heads * self.head_dim))

    def forward(self, x: Tensor, position_ids: Tensor, cache: KVCache | None, mask: Tensor) -> tuple[Tensor, KVCache]:
        q, k, v = self.qkv(x, position_ids)
        if cache is not None:
            k, v = torch.cat([cache.key, k], dim=2), torch.cat([cache.value, v], dim=2)
        return self.output(ATTENTION[self.impl](q, k, v, mask)), KVCache(k, v)


class Eagle3MLP(nn.Module):
    def __init__(self, c: Eagle3Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Eagle3DecoderLayer(nn.Module):
    """The head's single decoder layer (``midlayer`` in the checkpoint)."""

    def __init__(self, c: Eagle3Config, impl: str) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)  # on the embedding
        self.hidden_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)  # on the hidden input
        self.self_attn = Eagle3Attention(c, impl)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = Eagle3MLP(c)

    def attention_input(self, emb: Tensor, hidden: Tensor) -> Tensor:
        """``[input_layernorm(emb) ; hidden_norm(hidden)]``, ``(B, q, 2H)``: embedding first."""
        # --- assignment head: normalise the token embedding with input_layernorm and the hidden input with
        #   hidden_norm, and concatenate them, embedding first: (B, q, 2H).
        return torch.cat([self.input_layernorm(emb), self.hidden_norm(hidden)], dim=-1)
        # --- end assignment

    def finish(self, hidden: Tensor, attn: Tensor) -> Tensor:
        """Residual (the hidden input alone, not the embedding), then the MLP block."""
        # --- assignment head: the residual adds the attention output to the hidden input alone (not to the
        #   embedding); then the usual pre-norm MLP block (post_attention_layernorm, mlp) with its own residual.
        h = hidden + attn
        return h + self.mlp(self.post_attention_layernorm(h))
        # --- end assignment

    def forward(self, emb, hidden, position_ids, cache, mask) -> tuple[Tensor, KVCache]:
        attn, cache = self.self_attn(self.attention_input(emb, hidden), position_ids, cache, mask)
        return self.finish(hidden, attn), cache


class Eagle3DraftHead(nn.Module):
    """EAGLE-3's draft head: ``fc``, one decoder layer, ``norm``, ``lm_head`` (+ d2t/t2d).

    ``embed_weight``: the target's input embedding ``(V, H)`` (frozen, kept as a
    non-persistent buffer, never saved). Pass it here or later with
    :meth:`attach_embedding`. A head whose ``hidden_size`` differs from the target's owns
    a trainable ``embed_tokens`` instead.
    """

    def __init__(self, config: Eagle3Config, embed_weight: Tensor | None = None,
                 attn_implementation: Literal["sdpa", "naive"] = "sdpa") -> None:
        super().__init__()
        if attn_implementation not in ATTENTION:
            raise ValueError(f"attn_implementation must be one of {sorted(ATTENTION)}, got {attn_implementation!r}")
        c = self.config = config
        self.fc = make_fc(c.num_aux_layers, c.target_hidden_size, c.hidden_size)
        self.midlayer = Eagle3DecoderLayer(c, attn_implementation)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.draft_vocab_size, bias=False)
        # Draft vocabulary: target_id = draft_id + d2t[draft_id]; t2d marks target ids in it.
        self.register_buffer("d2t", torch.zeros(c.draft_vocab_size, dtype=torch.long))
        t2d = torch.zeros(c.vocab_size, dtype=torch.bool)
        t2d[: c.draft_vocab_size] = True  # identity mapping until a vocabulary is set
        self.register_buffer("t2d", t2d)
        if c.owns_embedding:
            self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.register_buffer("embed_weight", None, persistent=False)
        if embed_weight is not None:
            self.attach_embedding(embed_weight)

    def attach_embedding(self, embed_weight: Tensor) -> "Eagle3DraftHead":
        """Use the target's token embedding (``target.get_input_embeddings().weight``)."""
        c = self.config
        if c.owns_embedding:
            raise ValueError("this head owns its embedding (hidden_size != target_hidden_size)")
        if tuple(embed_weight.shape) != (c.vocab_size, c.hidden_size):
            raise ValueError(
                f"embedding has shape {tuple(embed_weight.shape)}, the head expects "
                f"(vocab_size, hidden_size) = ({c.vocab_size}, {c.hidden_size})"
            )
        self.embed_weight = embed_weight.detach()
        return self

    def embed(self, input_ids: Tensor) -> Tensor:
        if self.config.owns_embedding:
            return self.embed_tokens(input_ids)
        if self.embed_weight is None:
            raise RuntimeError("no token embedding: pass embed_weight or call attach_embedding(target_embedding)")
        # The target's embedding may be in another dtype (a bf16 target drafting for a float32 head).
        return F.embedding(input_ids, self.embed_weight).to(self.lm_head.weight.dtype)

    def fuse(self, features: Tensor) -> Tensor:
        """Target features ``(B, T, k*H_t)`` -> hidden inputs ``(B, T, H)`` via ``fc``."""
        return fuse(self.fc, features)

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """Pre-norm hidden ``(..., H)`` -> logits over the draft vocabulary."""
        return self.lm_head(self.norm(hidden))

    def forward(
        self,
        input_ids: Tensor,  # (B, q)    the token at each slot
        hidden: Tensor,  # (B, q, H) fused target features, or the head's own previous output
        position_ids: Tensor,  # (B, q)
        cache: KVCache | None = None,  # S slots already seen
        attention_mask: Tensor | None = None,  # bool (B, 1, q, S + q); None = causal
    ) -> DraftOutput:
        B, q_len = input_ids.shape
        if hidden.shape != (B, q_len, self.config.hidden_size):
            raise ValueError(
                f"hidden has shape {tuple(hidden.shape)}, expected (B, q, H) = ({B}, {q_len}, "
                f"{self.config.hidden_size}); fuse target features with head.fuse() first"
            )
        past = 0 if cache is None else cache.length
        if attention_mask is None:
            attention_mask = causal_mask(q_len, past, B, input_ids.device)
        elif attention_mask.dtype != torch.bool or attention_mask.shape != (B, 1, q_len, past + q_len):
            raise ValueError(
                f"attention_mask must be bool of shape (B, 1, q, S+q) = {(B, 1, q_len, past + q_len)}, "
                f"got {attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        out, cache = self.midlayer(self.embed(input_ids), hidden, position_ids, cache, attention_mask)
        return DraftOutput(self.compute_logits(out), out, cache)
