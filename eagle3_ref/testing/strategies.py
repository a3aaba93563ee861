"""Hypothesis strategies for EAGLE-3: tiny random targets, head configs, heads, trees.

A library of its own (as in MyGrad): the project's property tests, later issues and
outside users (checking their own EAGLE-3) draw from the same distributions. Everything is
tiny so a CPU runs hundreds of examples a minute, and seeded so a failure replays.

* :data:`ARCHITECTURES` -- the target architectures the suite proves decoding on, each a
  transformers ``model_type`` with what its layers do; ``docs/targets.md`` is generated
  from this table (:func:`architecture_table`).
* :func:`target_configs` / :func:`targets` -- random Hugging Face causal LMs of those
  architectures: GQA, 1-8 layers, a vocabulary of 8-64 tokens, short sliding windows and
  chunks (shorter than the prompts the tests draw), random mixes of sliding and full layers.
* :func:`aux_layer_ids` -- valid tapped layers for an ``N``-layer target.
* :func:`head_configs` -- :class:`Eagle3Config` for a target: GQA, a draft hidden size
  that may differ from the target's, a draft vocabulary smaller than or equal to it.
* :func:`draft_heads` -- a head with random, well-scaled weights and a random vocabulary.
* :func:`trees` -- parent arrays of random draft trees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import transformers
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, PretrainedConfig

from eagle3_ref.draft_head import Eagle3Config, Eagle3DraftHead
from eagle3_ref.vocab import build_vocab_mapping

__all__ = [
    "Architecture",
    "ARCHITECTURES",
    "MATRIX_DTYPE",
    "REFUSED_ARCHITECTURES",
    "architecture_table",
    "seeds",
    "target_configs",
    "build_target",
    "targets",
    "aux_layer_ids",
    "head_configs",
    "HEAD_SHAPES",
    "set_head_shapes",
    "build_draft_head",
    "draft_heads",
    "trees",
    "token_ids",
]


@dataclass(frozen=True)
class Architecture:
    """A transformers architecture the suite draws tiny random targets of."""

    config_class: str  # the transformers config class, by name
    models: str  # released models of this architecture
    attention: str  # what its layers' attention does
    window: str = ""  # "sliding" or "chunked": the config takes a window drawn short; "" none
    hybrid: bool = False  # layer_types mixes windowed and full layers (drawn at random)
    moe: bool = False  # mixture-of-experts MLPs: transformers' eager experts path (float64)
    sdpa: bool = True  # False: transformers implements only eager attention for it
    caveats: str = ""  # what differs from a plain Llama, for docs/targets.md
    # Where transformers computes in float32 even in a float64 model, in a way that depends on
    # the shape of the forward (how many keys a row has, how many rows a matmul takes): a tree
    # forward and plain decoding then agree to float32 rounding only. "" = exact in float64.
    float32_inside: str = ""

    @property
    def atol(self) -> float:
        """How closely a tree forward and plain decoding agree in float64."""
        return 1e-5 if self.float32_inside else 1e-9

    @property
    def greedy_epsilon(self) -> float | None:
        """None: greedy output must equal ``generate`` exactly. Else the tie-aware check's
        epsilon: a token may differ only where plain decoding's top-2 margin is below it."""
        return 1e-5 if self.float32_inside else None


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("LlamaConfig", "Llama 2/3, EAGLE-3's own heads", "full"),
    "qwen2": Architecture("Qwen2Config", "Qwen2, Qwen2.5", "full, or sliding window on a mix of layers",
                          window="sliding", hybrid=True),
    "qwen3": Architecture("Qwen3Config", "Qwen3 dense", "full (q/k norms)"),
    "qwen3_moe": Architecture("Qwen3MoeConfig", "Qwen3-30B-A3B, Qwen3-235B-A22B", "full", moe=True),
    "mistral": Architecture("MistralConfig", "Mistral 7B", "full, or sliding window on every layer",
                            window="sliding"),
    "mixtral": Architecture("MixtralConfig", "Mixtral 8x7B", "full, or sliding window on every layer",
                            window="sliding", moe=True),
    "phi3": Architecture("Phi3Config", "Phi-3, Phi-4", "full, or sliding window on every layer", window="sliding"),
    "gemma2": Architecture("Gemma2Config", "Gemma 2", "sliding and full alternating, logit soft-capping",
                           window="sliding", hybrid=True, sdpa=False,
                           float32_inside="eager attention's softmax",
                           caveats="eager attention only in transformers; with left padding its float64 eager "
                                   "attention turns fully masked rows into NaN, so padded batches are not drawn "
                                   "for it"),
    "gemma3_text": Architecture("Gemma3TextConfig", "Gemma 3 (text)", "sliding (local RoPE base) and full",
                                window="sliding", hybrid=True),
    "gpt_oss": Architecture("GptOssConfig", "gpt-oss-20b, gpt-oss-120b",
                            "sliding and full alternating, attention sinks", window="sliding", hybrid=True,
                            moe=True, sdpa=False, float32_inside="eager attention's softmax",
                            caveats="eager attention only in transformers (the sinks)"),
    "deepseek_v3": Architecture("DeepseekV3Config", "DeepSeek-V3, R1, Kimi K2",
                                "full, multi-head latent attention (MLA)", moe=True, float32_inside="the router",
                                caveats="transformers' MLA has no grouped-query attention: kv heads = heads"),
    "llama4_text": Architecture("Llama4TextConfig", "Llama 4 Scout, Maverick (text)",
                                "chunked, and full on the NoPE layers (attention temperature tuning)",
                                window="chunked", hybrid=True, moe=True, float32_inside="RoPE and RMSNorm",
                                caveats="transformers computes the NoPE layers' temperature from the cache "
                                        "length, not position_ids: in the rare cycle where a multiple of "
                                        "floor_scale falls inside the tree, only the nodes before it are "
                                        "verified (eagle3_ref.targets.exact_tree_nodes); floor_scale is drawn "
                                        "small so the tests meet that cycle"),
    "glm4_moe": Architecture("Glm4MoeConfig", "GLM-4.5, GLM-4.6", "full", moe=True, float32_inside="the router"),
    "olmo2": Architecture("Olmo2Config", "OLMo 2", "full (post-norm, q/k norms)"),
    "cohere2": Architecture("Cohere2Config", "Command R7B, Command A", "sliding and full (NoPE on full layers)",
                            window="sliding", hybrid=True),
    "exaone4": Architecture("Exaone4Config", "EXAONE 4.0", "sliding and full", window="sliding", hybrid=True),
}

# Recurrent / linear-attention targets: refused by name (eagle3_ref.targets.check_tree_verifiable).
REFUSED_ARCHITECTURES: dict[str, Architecture] = {
    "qwen3_next": Architecture("Qwen3NextConfig", "Qwen3-Next-80B-A3B", "gated DeltaNet (linear) and full",
                               hybrid=True, moe=True, caveats="refused: its linear-attention layers carry a "
                                                              "running state that a tree mask cannot hide"),
}


def architecture_table() -> str:
    """``docs/targets.md``'s matrix, as Markdown, from :data:`ARCHITECTURES` (so the page
    cannot drift from what the tests draw)."""
    rows = ["| `model_type` | released models | attention | proven in float64 | notes |", "|---|---|---|---|---|"]
    for name, arch in ARCHITECTURES.items():
        if arch.float32_inside:
            proven = (f"to {arch.atol:g} ({arch.float32_inside} in float32 inside transformers); greedy "
                      f"tie-aware, epsilon {arch.greedy_epsilon:g}")
        else:
            proven = f"exact (to {arch.atol:g}); greedy equal"
        extra = ["MoE: eager experts (transformers' grouped matmul refuses float64)"] if arch.moe else []
        notes = "; ".join(extra + ([arch.caveats] if arch.caveats else [])) or "-"
        rows.append(f"| `{name}` | {arch.models} | {arch.attention} | {proven} | {notes} |")
    for name, arch in REFUSED_ARCHITECTURES.items():
        rows.append(f"| `{name}` | {arch.models} | {arch.attention} | refused by name | {arch.caveats} |")
    return "\n".join(rows) + "\n"


seeds = st.integers(min_value=0, max_value=2**31 - 1)

# The dtype the architecture matrix is proven in (exact: every architecture, MoE included,
# runs in float64 on the CPU).
MATRIX_DTYPE = torch.float64


def _architecture_kwargs(draw, name: str, n_heads: int, head_dim: int, n_layers: int, intermediate: int) -> dict:
    """What a tiny config of architecture ``name`` needs beyond the Llama-style fields."""
    arch = ARCHITECTURES[name]
    kw: dict = {}
    if arch.window == "sliding":
        # Mostly shorter than the prompt plus what is generated (so trees cross the window's
        # edge); now and then a release's default, far longer than anything here.
        window = draw(st.one_of(st.integers(2, 12), st.just(4096)))
        if name in ("qwen2", "mistral", "mixtral", "phi3") and draw(st.integers(0, 3)) == 0:
            window = None  # these run without a window too
        kw["sliding_window"] = window
        if name == "qwen2":
            kw["use_sliding_window"] = window is not None
    if arch.hybrid and kw.get("sliding_window", 0) is not None and arch.window == "sliding":
        kw["layer_types"] = draw(st.lists(st.sampled_from(["sliding_attention", "full_attention"]),
                                          min_size=n_layers, max_size=n_layers))
    if name == "llama4_text":
        no_rope = draw(st.lists(st.sampled_from([0, 1]), min_size=n_layers, max_size=n_layers))
        no_rope[draw(st.integers(0, n_layers - 1))] = 0  # at least one NoPE layer (released: every 4th)
        kw.update(attention_chunk_size=draw(st.integers(2, 12)), num_local_experts=draw(st.integers(1, 4)),
                  num_experts_per_tok=1, intermediate_size_mlp=intermediate, no_rope_layers=no_rope,
                  # small, so a multiple of floor_scale falls inside trees (see targets.exact_tree_nodes)
                  floor_scale=draw(st.integers(2, 5)), attn_scale=0.5)
    if name in ("qwen3_moe", "deepseek_v3", "glm4_moe"):
        kw["moe_intermediate_size"] = draw(st.integers(4, 16))
    if name == "qwen3_moe":
        kw.update(num_experts=draw(st.integers(2, 4)), num_experts_per_tok=2, decoder_sparse_step=1)
    if name in ("mixtral", "gpt_oss"):
        kw.update(num_local_experts=draw(st.integers(2, 4)), num_experts_per_tok=2)
    if name in ("deepseek_v3", "glm4_moe"):
        kw.update(n_routed_experts=draw(st.integers(2, 4)), num_experts_per_tok=2, n_group=1, topk_group=1,
                  first_k_dense_replace=draw(st.integers(0, 1)))
    if name == "deepseek_v3":  # MLA: low-rank q and kv, the RoPE part of each head apart
        kw.update(kv_lora_rank=draw(st.sampled_from([4, 8])), q_lora_rank=draw(st.sampled_from([None, 8])),
                  qk_rope_head_dim=head_dim, qk_nope_head_dim=draw(st.sampled_from([2, 4])),
                  v_head_dim=draw(st.sampled_from([2, 4])), num_key_value_heads=n_heads)
    return kw


@st.composite
def target_configs(draw, architectures: Sequence[str] = ("llama", "qwen2"), min_layers: int = 1,
                   max_layers: int = 8, max_vocab: int = 64, min_vocab: int = 8,
                   shapes: str | None = None) -> PretrainedConfig:
    """A tiny HF config of one of ``architectures`` (names in :data:`ARCHITECTURES`): GQA
    (kv heads divide heads), even head_dim, RoPE, no EOS (the tests choose their own)."""
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"architectures {unknown} are not in ARCHITECTURES ({', '.join(ARCHITECTURES)})")
    arch = draw(st.sampled_from(list(architectures)))
    if (shapes or _head_shapes[0]) == "production":  # a production head taps three distinct layers
        min_layers, max_layers = max(min_layers, 3), max(max_layers, 3)
    n_kv = draw(st.integers(1, 2))
    n_heads = n_kv * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    hidden = n_heads * head_dim
    n_layers = draw(st.integers(min_layers, max_layers))
    intermediate = draw(st.integers(4, 48))
    kwargs = dict(
        vocab_size=draw(st.integers(min_vocab, max_vocab)),
        hidden_size=hidden,
        head_dim=head_dim,
        intermediate_size=intermediate,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=draw(st.booleans()),
        rope_theta=draw(st.sampled_from([10000.0, 500000.0])),
        bos_token_id=0, eos_token_id=None, pad_token_id=0,
    )
    kwargs.update(_architecture_kwargs(draw, arch, n_heads, head_dim, n_layers, intermediate))
    return getattr(transformers, ARCHITECTURES[arch].config_class)(**kwargs)


def build_target(config: PretrainedConfig, seed: int, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """A randomly initialised causal LM in eval mode: SDPA attention (eager only where
    transformers has nothing else, :attr:`Architecture.sdpa`) and eager MoE experts
    (transformers' grouped matmul refuses float64).

    (Not eager attention where SDPA exists: in transformers 5.23 eager attention in float64
    turns fully masked, left-padded rows into NaN, which then leaks into every real token of
    later layers.)
    """
    torch.manual_seed(seed)
    arch = ARCHITECTURES.get(config.model_type) or REFUSED_ARCHITECTURES.get(config.model_type)
    attention = "sdpa" if arch is None or arch.sdpa else "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, experts_implementation="eager")
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


# Which heads the strategies draw by default. "production": what every engine builds and loads
# (three distinct tapped layers, hidden size = heads x head_dim). "any": also one or two tapped
# layers (targets of 1-2 layers) and a head_dim that does not divide the hidden size, shapes the
# reference supports (Qwen3-style explicit head_dim). The reference's own tests draw "any"; the
# conformance suite draws what the adapter declares (its ``head_shapes``, default "production").
HEAD_SHAPES = ("production", "any")
_head_shapes = ["any"]


def set_head_shapes(kind: str) -> None:
    """Set the default of :func:`head_configs` and :func:`target_configs` (see HEAD_SHAPES)."""
    if kind not in HEAD_SHAPES:
        raise ValueError(f"head shapes must be one of {HEAD_SHAPES}, got {kind!r}")
    _head_shapes[0] = kind


@st.composite
def head_configs(draw, target_config: PretrainedConfig | None = None, shapes: str | None = None) -> Eagle3Config:
    """A head config for ``target_config`` (drawn if None). The draft's hidden size equals
    the target's two times in three (the released heads) and differs otherwise. ``shapes``:
    "production" or "any" (default: :func:`set_head_shapes`'s)."""
    shapes = shapes or _head_shapes[0]
    tc = target_config if target_config is not None else draw(target_configs())
    same_width = draw(st.integers(0, 2)) > 0
    if shapes == "production":  # hidden = heads x head_dim, head_dim even
        if same_width:
            hidden = tc.hidden_size
            n_heads, n_kv = draw(st.sampled_from([(h, kv) for h in range(1, 7) for kv in (1, 2)
                                                  if h % kv == 0 and hidden % h == 0 and hidden // h % 2 == 0]))
            head_dim = hidden // n_heads
        else:
            n_kv = draw(st.integers(1, 2))
            n_heads = n_kv * draw(st.integers(1, 3))
            head_dim = draw(st.sampled_from([2, 4, 8]))
            hidden = n_heads * head_dim
    else:
        n_kv = draw(st.integers(1, 2))
        n_heads = n_kv * draw(st.integers(1, 3))
        if same_width:
            hidden = tc.hidden_size
            head_dim = draw(st.sampled_from([d for d in (2, 4, 8, hidden) if d % 2 == 0]))
        else:
            head_dim = draw(st.sampled_from([2, 4, 8]))
            hidden = draw(st.sampled_from([h for h in (4, 8, 12, 16, 24) if h != tc.hidden_size]))
    draft_vocab = draw(st.one_of(st.just(tc.vocab_size), st.integers(1, tc.vocab_size)))
    config = Eagle3Config(
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
    if shapes == "production" and len(config.aux_layer_ids or (0, 1, 2)) != 3:
        raise ValueError(f"production heads tap three layers: a {tc.num_hidden_layers}-layer target has too few "
                         "(target_configs draws at least 3 layers under production shapes)")
    return config


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
