"""The decoding loop: EAGLE-3 speculative decoding, and the plain autoregressive baseline.

One cycle (EAGLE-2/3)::

    draft   the head grows a tree under the root (the token the target chose last cycle)
            from the target features of the slots it has not seen yet
    verify  ONE target forward over all tree nodes: 4D tree mask, position = prefix + depth,
            output_hidden_states for the fused features
    accept  greedy / sampling verification (verify.py) picks a root-to-node path + a bonus token
    update  the target cache keeps the prefix and the accepted path, drops the rest; the
            accepted nodes' features go to the draft; the bonus token is the next root

Every cycle appends ``accepted drafts + 1`` tokens for one target forward: their mean is
the acceptance length ``tau`` (1.0 for plain decoding). The loop stops exactly at EOS or
``max_new_tokens``, never after. One sequence, as in EAGLE's reference code: read
:func:`speculative_generate`, then :func:`decode_cycle`. A batch (rows accepting different
numbers of tokens) runs this same cycle on right-aligned caches (:mod:`eagle3_ref.batch`);
:mod:`eagle3_ref.decoding` is the entry point that sends each call to one or the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from ._checks import check_instance, check_int, check_sampling, check_token_ids
from .checkpoint import check_head_fits_target
from .fusion import default_aux_layer_ids, num_decoder_layers, select_features
from .targets import (
    cache_kwargs,
    check_tree_verifiable,
    exact_tree_nodes,
    held_prefix_slots,
    keep_first_nodes,
    layer_rules,
    new_target_cache,
    trim_to_window,
    visible,
)
from .timing import PhaseTimer, sync
from .tree import HeadDrafter, TreeConfig
from .verify import Picker

__all__ = ["GenerationOutput", "DecodeState", "prefill", "decode_cycle", "speculative_generate", "autoregressive_generate",
           "compact_cache", "tree_attention_mask", "tree_attention_masks", "cut_at_eos", "check_inputs", "drafter_for",
           "eos_set", "is_batch"]


@dataclass
class GenerationOutput:
    sequences: Tensor  # (1, T_prompt + new)
    accepted_lengths: list[int]  # tokens appended by each target forward after the prefill
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    prompt_length: int = 0

    @property
    def new_tokens(self) -> Tensor:
        return self.sequences[0, self.prompt_length:]

    @property
    def tau(self) -> float:
        """Acceptance length: mean tokens per verification cycle (accepted drafts + bonus).

        The prefill's token is not a cycle's, so with no cycle (``max_new_tokens`` 0 or 1, or EOS
        as the first token) tau is undefined and this is ``nan``, never a made-up 1.0."""
        return sum(self.accepted_lengths) / len(self.accepted_lengths) if self.accepted_lengths else float("nan")


def tree_attention_mask(tree_mask: Tensor, prefix_len: int, dtype: torch.dtype) -> Tensor:
    """``(1, 1, n, prefix + n)`` *additive* mask: 0 where allowed, the dtype's minimum elsewhere.

    Additive, not bool: transformers 5's eager attention adds a 4D mask as-is, so a bool
    mask would be silently wrong there (SDPA would take either).
    """
    # --- assignment generate: every tree node sees the whole prefix and, among the nodes, what tree_mask
    #   allows; return (1, 1, n, prefix + n) additive: 0 where allowed, torch.finfo(dtype).min elsewhere.
    n = tree_mask.shape[0]
    allowed = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool, device=tree_mask.device), tree_mask], dim=1)
    mask = torch.zeros(1, 1, n, prefix_len + n, dtype=dtype, device=tree_mask.device)
    return mask.masked_fill(~allowed[None, None], torch.finfo(dtype).min)
    # --- end assignment


def compact_cache(cache: DynamicCache, prefix_len: int, keep: Sequence[int]) -> None:
    """Keep the prefix and the tree nodes ``keep`` (in that order); drop the other tree
    nodes' keys and values. In place, on the target's own cache.

    A full-attention layer holds all ``prefix_len`` prefix slots; a sliding-window layer
    holds only its last ``window - 1`` (its ``held`` slots) and is trimmed back to its
    window afterwards (:func:`eagle3_ref.targets.trim_to_window`)."""
    keep = torch.tensor(list(keep), dtype=torch.long)
    for layer in cache.layers:
        tree_slots = layer.get_seq_length() - prefix_len  # every layer saw every tree node
        held = layer.keys.shape[-2] - tree_slots  # the prefix slots this layer holds
        # --- assignment generate: after verification a layer holds `held` prefix slots, then one slot per tree
        #   node: keep the prefix slots and the accepted nodes' slots (in the order of keep), drop the rest, in
        #   the layer's keys and values (dim -2).
        # Only the accepted slots move, to just after the prefix (copying the whole prefix with them cost
        # the toy a millisecond a cycle); the source is gathered before it is written, so overlaps are safe.
        slots, end = held + keep.to(layer.keys.device), held + len(keep)
        layer.keys[..., held:end, :] = layer.keys[..., slots, :]
        layer.values[..., held:end, :] = layer.values[..., slots, :]
        layer.keys, layer.values = layer.keys[..., :end, :], layer.values[..., :end, :]
        # --- end assignment
        trim_to_window(layer, prefix_len + len(keep))


def tree_attention_masks(target: nn.Module, cache: DynamicCache, tree_mask: Tensor, tree_position_ids: Tensor,
                         prefix_len: int, dtype: torch.dtype) -> Tensor | dict[str, Tensor]:
    """The tree mask made into each of the target's layer types' masks (see
    :mod:`eagle3_ref.targets`): over the prefix slots that type's cache layers hold, then
    the tree nodes, and only where the layer's own rule (window, chunk) allows.

    Returns the ``(1, 1, n, held + n)`` additive mask where the target has one layer type,
    else a dict of them keyed by layer type."""
    masks, rules = {}, layer_rules(target)
    q_pos = prefix_len + tree_position_ids  # (n,)
    for kind, held in held_prefix_slots(cache, target).items():
        rule, mask = rules[kind], tree_attention_mask(tree_mask, held, dtype)  # (1, 1, n, held + n)
        if rule.window is not None:  # full attention sees every key the tree mask allows
            k_pos = torch.cat([torch.arange(prefix_len - held, prefix_len, device=q_pos.device), q_pos])  # (held + n,)
            mask = mask.masked_fill(~visible(rule, q_pos, k_pos)[None, None], torch.finfo(dtype).min)
        masks[kind] = mask
    return next(iter(masks.values())) if len(masks) == 1 else masks


def cut_at_eos(tokens: list[int], eos: set[int], room: int) -> tuple[list[int], bool]:
    """Cut ``tokens`` after the first EOS and to ``room`` (tokens still allowed); say whether
    generation ends. A cycle may accept an EOS in the middle of its tokens: what follows it
    is never emitted."""
    for i, t in enumerate(tokens[:room]):
        if t in eos:
            return tokens[: i + 1], True
    return tokens[:room], len(tokens) >= room


@dataclass
class DecodeState:
    """Everything the loop carries from one cycle to the next (passed in, returned)."""

    sequence: Tensor  # (1, T + 1): prompt and every token emitted so far; the last is the next root
    target_cache: DynamicCache  # keys/values of sequence[:, :-1] (all but the root)
    features: Tensor  # (1, m, k*H_t): target features of the slots the draft has not seen yet
    draft_state: object = None  # the drafter's own state (the head's prefix KV cache)
    done: bool = False


@torch.no_grad()
def prefill(target: nn.Module, input_ids: Tensor, layer_ids: Sequence[int], pick: Picker,
            eos: set[int], max_new_tokens: int) -> DecodeState:
    """One plain target forward over the prompt: its cache, its tapped features, and the
    first new token (the first root)."""
    cache = new_target_cache(target)  # generate's cache, windowed layers recording until trimmed
    out = target(input_ids=input_ids, **cache_kwargs(target, cache), use_cache=True, output_hidden_states=True)
    for layer in cache.layers:
        trim_to_window(layer, input_ids.shape[1])
    tokens, done = cut_at_eos([pick(out.logits[0, -1])], eos, max_new_tokens)
    sequence = torch.cat([input_ids, torch.tensor([tokens], device=input_ids.device)], dim=1)
    return DecodeState(sequence, cache, select_features(out.hidden_states, layer_ids), None, done)


@torch.no_grad()
def decode_cycle(target: nn.Module, drafter, state: DecodeState, tree: TreeConfig, layer_ids: Sequence[int],
                 pick: Picker, eos: set[int], room: int, timings: dict[str, float] | None = None
                 ) -> tuple[DecodeState, list[int]]:
    """Draft, verify, accept, update: one target forward. ``room``: tokens still allowed.
    Returns the new state and the tokens appended; ``timings`` gains each phase's seconds."""
    device, cache = state.sequence.device, state.target_cache
    phases = PhaseTimer(timings, device)
    with phases("draft"):
        draft_tree, draft_state = drafter.draft(state.features, state.sequence, tree, state.draft_state)
        prefix_len = cache.get_seq_length()  # every token but the root
        draft_tree = keep_first_nodes(draft_tree, exact_tree_nodes(target, prefix_len, draft_tree.tree_position_ids))
        tokens, tree_mask, depth = (x.to(device) for x in (draft_tree.tokens, draft_tree.tree_mask,
                                                            draft_tree.tree_position_ids))
    with phases("verify"):
        dtype = next(target.parameters()).dtype
        out = target(input_ids=tokens[None], **cache_kwargs(target, cache), use_cache=True,
                     attention_mask=tree_attention_masks(target, cache, tree_mask, depth, prefix_len, dtype),
                     position_ids=(prefix_len + depth)[None], output_hidden_states=True)
    with phases("accept"):
        verdict = pick.verify(draft_tree, out.logits[0])
        compact_cache(cache, prefix_len, verdict.accepted)
        features = select_features(out.hidden_states, layer_ids)[:, verdict.accepted]  # (1, m, k*H_t)
        new, done = cut_at_eos(verdict.new_tokens(draft_tree), eos, room)
        sequence = torch.cat([state.sequence, torch.tensor([new], device=device)], dim=1)
    return DecodeState(sequence, cache, features, draft_state, done), new


@torch.no_grad()
def speculative_generate(target: nn.Module, head, input_ids: Tensor, *, max_new_tokens: int,
                         tree: TreeConfig = TreeConfig(), temperature: float = 0.0, top_p: float = 1.0,
                         top_k: int = 0, eos_token_id: int | Sequence[int] | None = None,
                         generator: torch.Generator | None = None, aux_layer_ids: Sequence[int] | None = None,
                         attention_mask: Tensor | None = None, pad_token_id: int | None = None) -> GenerationOutput:
    """EAGLE-3 speculative decoding of one sequence ``input_ids (1, T)`` by ``target`` with
    draft ``head``: an :class:`Eagle3DraftHead` (or the EAGLE-2-style baseline of
    :mod:`eagle3_ref.eagle2`, or any object with ``draft(features, input_ids, config, state)
    -> (tree, state)``, e.g. a test's perfect drafter). Greedy at ``temperature=0``; else
    sampling with transformers' warpers, lossless. Batches and cost-aware trees:
    :func:`eagle3_ref.speculative_generate` (:mod:`eagle3_ref.decoding`)."""
    if is_batch(input_ids, attention_mask):  # 0.1 took batches here; for one release, they still go through
        return _forward_batch("speculative_generate", target, head, input_ids, max_new_tokens=max_new_tokens,
                              tree=tree, temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos_token_id,
                              generator=generator, aux_layer_ids=aux_layer_ids, attention_mask=attention_mask,
                              pad_token_id=pad_token_id)
    check_inputs(target, input_ids, max_new_tokens, temperature, top_p, top_k, None, eos_token_id, generator)
    check_instance("tree", tree, TreeConfig, " (e.g. TreeConfig(), TreeConfig.chain(5))")
    drafter, layer_ids = drafter_for(target, head, aux_layer_ids)
    pick, eos, prompt_len = Picker(temperature, top_k, top_p, generator), eos_set(eos_token_id), input_ids.shape[1]
    timings = dict.fromkeys(["prefill", "draft", "verify", "accept"], 0.0)
    if max_new_tokens == 0:
        return GenerationOutput(input_ids.clone(), [], timings, prompt_len)
    with PhaseTimer(timings, input_ids.device)("prefill"):
        state = prefill(target, input_ids, layer_ids, pick, eos, max_new_tokens)
    accepted_lengths: list[int] = []
    while not state.done:
        room = max_new_tokens - (state.sequence.shape[1] - prompt_len)
        state, tokens = decode_cycle(target, drafter, state, tree, layer_ids, pick, eos, room, timings)
        accepted_lengths.append(len(tokens))
    return GenerationOutput(state.sequence, accepted_lengths, timings, prompt_len)


@torch.no_grad()
def autoregressive_generate(target: nn.Module, input_ids: Tensor, *, max_new_tokens: int, temperature: float = 0.0,
                            top_p: float = 1.0, top_k: int = 0, eos_token_id: int | Sequence[int] | None = None,
                            generator: torch.Generator | None = None, attention_mask: Tensor | None = None,
                            pad_token_id: int | None = None) -> GenerationOutput:
    """Plain decoding of one sequence, one target forward per token, with the same output type
    (tau = 1). Batches: :func:`eagle3_ref.autoregressive_generate`."""
    if is_batch(input_ids, attention_mask):  # 0.1 took batches here; for one release, they still go through
        return _forward_batch("autoregressive_generate", target, input_ids, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos_token_id,
                              generator=generator, attention_mask=attention_mask, pad_token_id=pad_token_id)
    check_inputs(target, input_ids, max_new_tokens, temperature, top_p, top_k, None, eos_token_id, generator)
    pick, eos = Picker(temperature, top_k, top_p, generator), eos_set(eos_token_id)
    device, prompt_len = input_ids.device, input_ids.shape[1]
    sequence, cache, step_input, lengths = input_ids, DynamicCache(config=target.config), input_ids, []
    clock = time.perf_counter()
    for _ in range(max_new_tokens):
        logits = target(input_ids=step_input, **cache_kwargs(target, cache), use_cache=True).logits
        token = pick(logits[0, -1])
        step_input = torch.tensor([[token]], device=device)
        sequence = torch.cat([sequence, step_input], dim=1)
        lengths.append(1)
        if token in eos:
            break
    sync(device)
    return GenerationOutput(sequence, lengths[1:], {"total": time.perf_counter() - clock}, prompt_len)


# ----------------------------------------------------------------------------------------
# Argument checks and the drafter, shared with the batched loop and the entry points
# ----------------------------------------------------------------------------------------


def check_inputs(target: nn.Module, input_ids: Tensor, max_new_tokens: int, temperature: float,
                  top_p: float, top_k: int, attention_mask: Tensor | None = None, eos_token_id=None,
                  generator=None) -> None:
    """Every argument of the decoding entry points, by name, before any forward."""
    if not isinstance(target, nn.Module) or not callable(getattr(target, "get_input_embeddings", None)):
        raise TypeError(f"target must be a loaded causal LM (an nn.Module, e.g. AutoModelForCausalLM.from_pretrained"
                        f"(path)), got {type(target).__name__} {target!r:.60}")
    rows = generator if isinstance(generator, (list, tuple)) else [generator]
    for g in rows:
        if not (g is None or isinstance(g, torch.Generator) or callable(getattr(g, "accept", None))):
            raise TypeError(f"generator must be a torch.Generator (torch.Generator().manual_seed(seed)), one per row, "
                            f"a sampler with accept() and draw(), or None; got {type(g).__name__} {g!r:.40}")
    vocab = target.get_input_embeddings().weight.shape[0]
    check_token_ids("input_ids", input_ids, vocab)
    if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids is empty ({tuple(input_ids.shape)}): every prompt needs at least one token")
    if attention_mask is not None:
        check_instance("attention_mask", attention_mask, Tensor)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: they must match")
    check_int("max_new_tokens", max_new_tokens, 0)
    limit = getattr(target.config, "max_position_embeddings", None)
    if limit is not None and input_ids.shape[1] > limit:
        raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, the target has {limit} positions")
    if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) after a prompt of {input_ids.shape[1]} tokens passes the "
                         f"target's max_position_embeddings ({limit}): at most {max(0, limit - input_ids.shape[1])}")
    check_sampling(temperature, top_p, top_k)
    for eos in [eos_token_id] if not isinstance(eos_token_id, (list, tuple, set)) else eos_token_id:
        if eos is not None:
            check_int("eos_token_id", eos, 0, vocab - 1)


def drafter_for(target: nn.Module, head, aux_layer_ids: Sequence[int] | None) -> tuple[object, tuple[int, ...]]:
    """The loop's drafter for ``head`` (a draft head is wrapped in :class:`HeadDrafter`; any
    object with ``draft(...)`` is its own) and the target layers it taps, after checking that
    the target can verify trees and that the head fits it."""
    if not isinstance(head, nn.Module) and not callable(getattr(head, "draft", None)):
        raise TypeError(f"head must be a draft head (Eagle3DraftHead, load_draft_head(...)) or an object with "
                        f"draft(features, input_ids, config, state), got {type(head).__name__}")
    check_tree_verifiable(target)
    drafter = head
    if isinstance(head, nn.Module):  # a draft head: EAGLE-3's, or the EAGLE-2-style baseline (eagle2.py)
        check_head_fits_target(head.config, target)
        aux_layer_ids = aux_layer_ids or head.config.aux_layer_ids
        drafter = HeadDrafter(head)
    return drafter, tuple(aux_layer_ids or default_aux_layer_ids(num_decoder_layers(target)))


def is_batch(input_ids: Tensor, attention_mask: Tensor | None) -> bool:
    """A batch: an ``attention_mask`` given, or ``input_ids`` with other than one row."""
    return attention_mask is not None or (isinstance(input_ids, Tensor) and input_ids.dim() == 2
                                          and input_ids.shape[0] != 1)


def eos_set(eos_token_id: int | Sequence[int] | None) -> set[int]:
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())


def _forward_batch(name: str, *args, **kwargs):
    """0.1 took batches in this module's functions; for one release they still go on, with a
    warning, to the entry points of :mod:`eagle3_ref.decoding`."""
    import warnings

    from . import decoding  # a call-time import, for one release: decoding imports this module

    warnings.warn(f"eagle3_ref.generate.{name} decodes one sequence; for a batch call eagle3_ref.{name} "
                  f"(eagle3_ref.decoding). This path is removed in eagle3-ref 0.3", DeprecationWarning, stacklevel=4)
    return getattr(decoding, name)(*args, **kwargs)
