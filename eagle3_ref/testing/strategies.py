"""Hypothesis strategies for EAGLE-3: tiny random targets, head configs, heads, trees.

A library of its own (as in MyGrad): the project's property tests, later issues and
outside users (checking their own EAGLE-3) draw from the same distributions. Everything is
tiny so a CPU runs hundreds of examples a minute, and seeded so a failure replays.

* :func:`target_configs` / :func:`targets` -- random Hugging Face causal LMs, Llama, Qwen2
  and Mistral, with GQA, 1-8 layers and a vocabulary of 8-64 tokens.
* :func:`aux_layer_ids` -- valid tapped layers for an ``N``-layer target.
* :func:`head_configs` -- :class:`Eagle3Config` for a target: GQA, a draft hidden size
  that may differ from the target's, a draft vocabulary smaller than or equal to it.
* :func:`draft_heads` -- a head with random, well-scaled weights and a random vocabulary.
* :func:`trees` -- parent arrays of random draft trees.
"""

from __future__ import annotations

from typing import Sequence

import torch
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config

from eagle3_ref.draft_head import Eagle3Config, Eagle3DraftHead
from eagle3_ref.vocab import build_vocab_mapping

__all__ = [
    "ARCHITECTURES",
    "seeds",
    "target_configs",
    "build_target",
    "targets",
    "aux_layer_ids",
    "head_configs",
    "build_draft_head",
    "draft_heads",
    "trees",
    "token_ids",
]

ARCHITECTURES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}

seeds = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def target_configs(draw, architectures: Sequence[str] = ("llama", "qwen2"), min_layers: int = 1,
                   max_layers: int = 8, max_vocab: int = 64, min_vocab: int = 8) -> PretrainedConfig:
    """A tiny HF config: GQA (kv heads divide heads), even head_dim, RoPE."""
    arch = draw(st.sampled_from(list(architectures)))
    n_kv = draw(st.integers(1, 2))
    n_heads = n_kv * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    hidden = n_heads * head_dim
    kwargs = dict(
        vocab_size=draw(st.integers(min_vocab, max_vocab)),
        hidden_size=hidden,
        intermediate_size=draw(st.integers(4, 48)),
        num_hidden_layers=draw(st.integers(min_layers, max_layers)),
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=draw(st.booleans()),
        rope_theta=draw(st.sampled_from([10000.0, 500000.0])),
    )
    if arch == "qwen2":
        kwargs["use_sliding_window"] = False
    if arch == "mistral":
        kwargs["sliding_window"] = None
    return ARCHITECTURES[arch](**kwargs)


def build_target(config: PretrainedConfig, seed: int, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """A randomly initialised causal LM in eval mode, with SDPA attention.

    (Not "eager": in transformers 5.23 eager attention in float64 turns fully masked,
    left-padded rows into NaN, which then leaks into every real token of later layers.)
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    with torch.no_grad():  # HF inits with std 0.02, which makes every logit ~0: widen it
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.to(device=device, dtype=dtype).eval()


@st.composite
def targets(draw, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", **config_kwargs):
    return build_target(draw(target_configs(**config_kwargs)), draw(seeds), dtype, device)


@st.composite
def aux_layer_ids(draw, num_hidden_layers: int) -> tuple[int, ...] | None:
    """None (EAGLE-3's default, where valid) or 3 distinct increasing ids (fewer if the
    target has fewer than 3 layers)."""
    n = num_hidden_layers
    if n >= 7 and draw(st.booleans()):
        return None
    k = min(3, n)
    ids = draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
    return tuple(sorted(ids))


@st.composite
def head_configs(draw, target_config: PretrainedConfig | None = None) -> Eagle3Config:
    """A head config for ``target_config`` (drawn if None). The draft's hidden size equals
    the target's two times in three (the released heads) and differs otherwise."""
    tc = target_config if target_config is not None else draw(target_configs())
    n_kv = draw(st.integers(1, 2))
    n_heads = n_kv * draw(st.integers(1, 3))
    same_width = draw(st.integers(0, 2)) > 0
    if same_width:
        hidden = tc.hidden_size
        head_dim = draw(st.sampled_from([d for d in (2, 4, 8, hidden) if d % 2 == 0]))
    else:
        head_dim = draw(st.sampled_from([2, 4, 8]))
        hidden = draw(st.sampled_from([h for h in (4, 8, 12, 16, 24) if h != tc.hidden_size]))
    draft_vocab = draw(st.one_of(st.just(tc.vocab_size), st.integers(1, tc.vocab_size)))
    return Eagle3Config(
        hidden_size=hidden,
        intermediate_size=draw(st.integers(4, 48)),
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        vocab_size=tc.vocab_size,
        draft_vocab_size=draft_vocab,
        target_hidden_size=tc.hidden_size,
        rms_norm_eps=1e-6,
        rope_theta=draw(st.sampled_from([10000.0, 500000.0])),
        max_position_embeddings=128,
        aux_layer_ids=draw(aux_layer_ids(tc.num_hidden_layers)),
    )


def build_draft_head(config: Eagle3Config, seed: int, embed_weight: torch.Tensor | None = None,
                     dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                     attn_implementation: str = "sdpa") -> Eagle3DraftHead:
    """A head with random weights (std 0.3; norms 1 +- 0.5) and a random vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    head = Eagle3DraftHead(config, attn_implementation=attn_implementation)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
            else:  # RMSNorm weights
                p.copy_(1.0 + 0.5 * (torch.rand(p.shape, generator=gen, dtype=p.dtype) - 0.5))
        counts = torch.randint(0, 5, (config.vocab_size,), generator=gen)  # many ties and zeros
        d2t, t2d = build_vocab_mapping(counts, config.draft_vocab_size)
        head.d2t.copy_(d2t)
        head.t2d.copy_(t2d)
    head = head.to(device=device, dtype=dtype)
    if embed_weight is not None and not config.owns_embedding:
        head.attach_embedding(embed_weight.to(device=device, dtype=dtype))
    return head


@st.composite
def draft_heads(draw, target: torch.nn.Module, dtype: torch.dtype = torch.float64,
                device: str | torch.device = "cpu") -> Eagle3DraftHead:
    """A random head that fits ``target`` (its embedding attached when widths agree)."""
    config = draw(head_configs(target.config))
    return build_draft_head(config, draw(seeds), target.get_input_embeddings().weight, dtype, device)


@st.composite
def trees(draw, min_nodes: int = 1, max_nodes: int = 12) -> list[int]:
    """``parents`` of a random rooted tree: node 0 is the root (parent -1); every other
    node's parent has a smaller index (so index order is a topological order)."""
    n = draw(st.integers(min_nodes, max_nodes))
    if draw(st.integers(0, 3)) == 0:  # a chain now and then: random parents almost never make a long one
        return [-1] + list(range(n - 1))
    return [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]


def token_ids(vocab_size: int, min_len: int = 1, max_len: int = 12):
    """A 1-D list of token ids."""
    return st.lists(st.integers(0, vocab_size - 1), min_size=min_len, max_size=max_len)
