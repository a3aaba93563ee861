"""Feature fusion: which target layers EAGLE-3 taps, collecting them, and the ``fc``.

EAGLE-1 and EAGLE-2 drafted from the target's *top-layer* feature only. EAGLE-3
("fusion of low-, mid- and high-level semantic features", Li et al. 2025,
arXiv 2503.01840) instead taps the target's residual stream at three depths, concatenates
them, and lets a bias-free linear layer ``fc`` squeeze the result back to the draft's
width::

    g = [l ; m ; h]                     # (B, T, 3 * H_target)   low, mid, high
    fused = fc(g) = g @ W_fc^T          # (B, T, H)              W_fc: (H, 3 * H_target)

Conventions (see docs/conventions.md). This project names a tapped layer by its index
into Hugging Face's ``output_hidden_states`` tuple: index ``i`` (``0 <= i < N``) is the
residual stream *entering* decoder layer ``i``; index 0 is the embedding output. (Index
``N`` is the final, *normed* state and is not a residual stream, so it is not allowed in a
fusion.) EAGLE-3's default for a target with ``N`` decoder layers is ``(2, N // 2, N - 3)``.

The one exception is ``(N,)`` alone: the *top-layer feature*, the final normed state the
LM head reads, which EAGLE-1 and EAGLE-2 draft from. It is what the ablation's
"top layer only" head and the EAGLE-2-style baseline (:mod:`eagle3_ref.eagle2`) read.

The serving engines spell the same three layers differently, and peers have shipped
bugs on exactly that off-by-one:

| convention | meaning of id ``L`` | LLaMA-3.1-8B (N = 32) |
|---|---|---|
| ``hf`` | ``hidden_states[L]`` (this project) | (2, 16, 29) |
| ``vllm`` | same as ``hf`` | (2, 16, 29) |
| ``sglang`` | SGLang captures at ``L + 1`` | (1, 15, 28) |
| ``specforge`` | output of decoder layer ``L`` | (1, 15, 28) |
| ``modelopt`` | output of decoder layer ``L`` (a forward hook on ``layers[L]``) | (1, 15, 28) |

Use :func:`to_convention` / :func:`from_convention` rather than adding or subtracting
one by hand.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "LAYER_ID_CONVENTIONS",
    "default_aux_layer_ids",
    "validate_aux_layer_ids",
    "top_feature_id",
    "to_convention",
    "from_convention",
    "decoder_layers",
    "num_decoder_layers",
    "select_features",
    "collect_features",
    "collect_features_by_hooks",
    "make_fc",
    "fuse",
]

LayerIdConvention = Literal["hf", "vllm", "sglang", "specforge", "modelopt"]

# Offset to *add* to an hf id to get the engine's id.
_OFFSET_FROM_HF: dict[str, int] = {"hf": 0, "vllm": 0, "sglang": -1, "specforge": -1, "modelopt": -1}
LAYER_ID_CONVENTIONS: tuple[str, ...] = tuple(_OFFSET_FROM_HF)


# ----------------------------------------------------------------------------------------
# Which layers
# ----------------------------------------------------------------------------------------


def default_aux_layer_ids(num_hidden_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's default tapped layers, as ``hidden_states`` indices: ``(2, N//2, N-3)``.

    Raises ``ValueError`` where the default is meaningless for this depth (fewer than 7
    decoder layers: the three ids collide or leave the range); pass explicit ids then.
    """
    if not isinstance(num_hidden_layers, int) or num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be a positive int, got {num_hidden_layers!r}")
    # --- assignment fusion: return EAGLE-3's default hidden_states indices (2, N//2, N-3) for N =
    #   num_hidden_layers; where they collide or leave [0, N-1] (N < 7), raise a ValueError that mentions 'aux
    #   layer ids' and says to pass explicit ids (validate_aux_layer_ids checks a tuple).
    n = num_hidden_layers
    ids = (2, n // 2, n - 3)
    try:
        validate_aux_layer_ids(ids, n)
    except ValueError as err:
        raise ValueError(
            f"EAGLE-3's default aux layer ids (2, N//2, N-3) = {ids} are not usable for a "
            f"target with N={n} decoder layers ({err}); the default needs N >= 7. Pass "
            f"explicit aux_layer_ids: distinct, increasing hidden_states indices in [0, {n - 1}]."
        ) from None
    return ids  # type: ignore[return-value]
    # --- end assignment


def validate_aux_layer_ids(layer_ids: Sequence[int], num_hidden_layers: int) -> tuple[int, ...]:
    """Check explicit ``hidden_states`` indices; return them as a tuple.

    They must be ints, strictly increasing (low, mid, high: collisions would silently
    collapse three features into fewer), and in ``[0, N - 1]``; or ``(N,)`` alone, the
    top-layer feature (:func:`top_feature_id`).
    """
    ids = tuple(layer_ids)
    if len(ids) == 0:
        raise ValueError("aux_layer_ids must not be empty")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"aux_layer_ids must be ints, got {ids!r}")
    if ids == (top_feature_id(num_hidden_layers),):
        return ids
    bad = [i for i in ids if not 0 <= i < num_hidden_layers]
    if bad:
        raise ValueError(
            f"aux_layer_ids {ids} has {bad} outside [0, {num_hidden_layers - 1}] for a "
            f"target with {num_hidden_layers} decoder layers (hidden_states indices: "
            f"i = residual stream entering decoder layer i)"
        )
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise ValueError(f"aux_layer_ids must be distinct and increasing (low, mid, high), got {ids}")
    return ids


def top_feature_id(num_hidden_layers: int) -> int:
    """``N``: the ``hidden_states`` index of the top-layer feature (the final normed state, what
    the LM head reads; EAGLE-1/2's feature). Valid as the only id of a head, never in a fusion."""
    return num_hidden_layers


def to_convention(layer_ids: Sequence[int], convention: LayerIdConvention) -> tuple[int, ...]:
    """Convert ``hidden_states`` indices (this project's convention) to an engine's."""
    off = _offset(convention)
    out = tuple(int(i) + off for i in layer_ids)
    if any(i < 0 for i in out):
        raise ValueError(f"aux_layer_ids {tuple(layer_ids)} has no {convention!r} spelling (index < 0)")
    return out


def from_convention(layer_ids: Sequence[int], convention: LayerIdConvention) -> tuple[int, ...]:
    """Convert an engine's layer ids to ``hidden_states`` indices."""
    off = _offset(convention)
    return tuple(int(i) - off for i in layer_ids)


def _offset(convention: str) -> int:
    if convention not in _OFFSET_FROM_HF:
        raise ValueError(f"convention must be one of {LAYER_ID_CONVENTIONS}, got {convention!r}")
    return _OFFSET_FROM_HF[convention]


# ----------------------------------------------------------------------------------------
# Collecting them from a target forward
# ----------------------------------------------------------------------------------------


def decoder_layers(target: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM, found through transformers' own
    accessors: ``get_decoder()`` (which looks for ``language_model``, ``text_model``,
    ``decoder``, then the base model), again on what it returns, then ``base_model`` and
    ``.model``, until a module has a ``layers`` ``ModuleList``. That covers Llama-style
    ``target.model.layers`` and wrappers whose language model sits a level further down
    (Llama 4's ``get_decoder()`` returns the causal LM itself)."""
    seen: list[nn.Module] = []
    todo: list[nn.Module] = [target]
    while todo:
        module = todo.pop(0)
        if any(module is m for m in seen):
            continue
        seen.append(module)
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
        if len(seen) > 8:  # the wrappers transformers ships nest two or three deep
            break
        if callable(getattr(module, "get_decoder", None)):
            todo.append(module.get_decoder())
        for name in ("base_model", "model", "language_model"):
            child = getattr(module, name, None)
            if isinstance(child, nn.Module):
                todo.append(child)
    raise TypeError(f"cannot find the decoder layers of {type(target).__name__}: none of "
                    f"{', '.join(type(m).__name__ for m in seen)} (reached through get_decoder(), base_model, "
                    ".model, .language_model) has a `layers` ModuleList")


def num_decoder_layers(target: nn.Module) -> int:
    """``N``, the number of decoder layers of the target."""
    return len(decoder_layers(target))


def select_features(hidden_states: Sequence[Tensor], layer_ids: Sequence[int]) -> Tensor:
    """Concatenate the tapped entries of HF's ``hidden_states`` tuple, low to high.

    ``hidden_states``: ``N + 1`` tensors of shape ``(B, T, H_t)``.
    Returns ``(B, T, len(layer_ids) * H_t)``.
    """
    n = len(hidden_states) - 1  # the last entry is the final normed state
    validate_aux_layer_ids(layer_ids, n)
    # --- assignment fusion: concatenate the tapped entries hidden_states[i], low to high, on the last dim: (B,
    #   T, k*H_t). hidden_states[i] is the residual stream entering decoder layer i.
    return torch.cat([hidden_states[i] for i in layer_ids], dim=-1)
    # --- end assignment


@torch.no_grad()
def collect_features(
    target: nn.Module,
    input_ids: Tensor,  # (B, T)
    layer_ids: Sequence[int],
    attention_mask: Tensor | None = None,  # (B, T) padding mask, 1 = real token
) -> Tensor:  # (B, T, len(layer_ids) * H_t)
    """One plain target forward; return the fused-to-be features ``[l ; m ; h]``.

    This is what EAGLE-3's data generation and prefill do. The decoding loop gets the
    same features from the forwards it runs anyway (:func:`select_features` on
    ``output_hidden_states``) instead of calling this.
    """
    out = target(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return select_features(out.hidden_states, layer_ids)


@torch.no_grad()
def collect_features_by_hooks(
    target: nn.Module,
    input_ids: Tensor,  # (B, T)
    layer_ids: Sequence[int],
    attention_mask: Tensor | None = None,
) -> Tensor:  # (B, T, len(layer_ids) * H_t)
    """The naive, independent way: forward pre-hooks record what *enters* each tapped
    decoder layer. Needs no ``output_hidden_states`` support; the tests use it as the
    oracle for :func:`collect_features`."""
    layers = decoder_layers(target)
    ids = validate_aux_layer_ids(layer_ids, len(layers))
    if ids == (top_feature_id(len(layers)),):
        raise ValueError("the top-layer feature (the final normed state) enters no decoder layer: "
                         "collect it with collect_features")
    captured: dict[int, Tensor] = {}

    def hook(index: int):
        def record(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            captured[index] = x.detach().clone()

        return record

    handles = [layers[i].register_forward_pre_hook(hook(i), with_kwargs=True) for i in ids]
    try:
        target(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.cat([captured[i] for i in ids], dim=-1)


# ----------------------------------------------------------------------------------------
# The fc fusion
# ----------------------------------------------------------------------------------------


def make_fc(num_aux_layers: int, target_hidden_size: int, hidden_size: int) -> nn.Linear:
    """``fc = Linear(k * H_t, H, bias=False)``; saved as ``fc.weight`` ``(H, k * H_t)``."""
    return nn.Linear(num_aux_layers * target_hidden_size, hidden_size, bias=False)


def fuse(fc: nn.Linear, features: Tensor) -> Tensor:
    """``(B, T, k * H_t) -> (B, T, H)``. Applied to *target* features only: in later
    draft steps the head's own output (already width ``H``) is fed back without ``fc``."""
    if features.shape[-1] != fc.in_features:
        raise ValueError(
            f"features have last dim {features.shape[-1]}, but fc expects {fc.in_features} "
            f"(= number of tapped layers x target hidden size)"
        )
    return fc(features)
