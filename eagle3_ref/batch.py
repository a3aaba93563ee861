"""Batched speculative decoding: B sequences at once, each accepting its own number of tokens.

Engines (vLLM, SGLang, TensorRT-LLM) verify many sequences in one target forward, and from
the first cycle on the rows disagree: row 0 accepts three drafts, row 1 none. Their
caches, positions, the features handed to the draft and the draft's own cache are then
*ragged*. This module is the single-sequence cycle of :mod:`eagle3_ref.generate`, with
the one idea that keeps the ragged state consistent:

**Every cache is right-aligned.** Row ``b``'s ``len_b`` real slots are the *last*
``len_b`` columns of its cache; the columns before them are padding, which no query ever
attends to. A slot's position is then its column minus the row's offset
``width - len_b``, so the per-row lengths alone say where everything is. A cycle appends
every row's tree (holes: the rejected nodes), then squeezes the holes out to the left, one
stable sort per row of "is this slot kept", applied with one gather per cache layer::

    before the cycle (width 5; . = padding, never attended to)
        row 0 | a b c d e |                   len 5
        row 1 | . . x y z |                   len 3

    verify: ONE target forward over both rows' trees (root R, drafts 1 2 3 4), keys appended
        row 0 | a b c d e | R 1 2 3 4 |       row 0 accepts 3 drafts: R 1 2 3
        row 1 | . . x y z | R 1 2 3 4 |       row 1 accepts 0 drafts: R

    after: kept slots squeezed right, in order; columns that are padding in every row dropped
        row 0 | a b c d e R 1 2 3 |           len 9
        row 1 | . . . . . x y z R |           len 4

A sliding-window layer holds only the last ``w - 1`` columns: right-aligned, those are
each row's most recent slots, exactly what plain decoding keeps (shorter rows simply
hold padding in front). The draft head's KV cache is kept the same way, and the
features of the accepted slots go to it as a right-aligned block. The prompt arrives
left-padded (``attention_mask``, as ``generate`` takes it), which is right-aligned already.

Per row, everything else is the single-sequence algorithm:

* drafting: :func:`build_draft_trees` grows the B trees level by level in one head
  forward per level (per-row scores; it equals :func:`eagle3_ref.tree.build_draft_tree`
  on each row alone);
* verification: each row's tree against its own slice of the one forward's logits
  (:func:`eagle3_ref.verify.verify_greedy`, or :func:`verify_sampling` with the row's own
  sampler, so one row's random choices never shift another's);
* finishing: a row that hits EOS or its limit leaves the batch at once (it does not keep
  drafting), and its output is padded with ``pad_token_id`` as ``generate`` pads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache

from .draft_head import Eagle3DraftHead, KVCache
from .fusion import select_features
from .generate import cut_at_eos
from .targets import (
    cache_kwargs,
    held_prefix_slots,
    layer_rules,
    new_target_cache,
    text_config,
    trim_to_window,
    visible,
)
from .timing import PhaseTimer, sync
from .tree import DraftTree, Pool, TreeAttention, TreeConfig, expand_level, rerank
from .verify import Picker

__all__ = ["BatchGenerationOutput", "RaggedKV", "left_padding_lengths", "squeeze_left", "right_aligned_positions",
           "build_draft_trees", "ragged_tree_masks", "tree_positions", "batched_speculative_generate",
           "batched_autoregressive_generate", "BatchState", "prefill_batch", "batch_cycle", "row_pickers", "drop_finished",
           "grow_trees"]


# ----------------------------------------------------------------------------------------
# Right-aligned bookkeeping
# ----------------------------------------------------------------------------------------


def left_padding_lengths(attention_mask: Tensor) -> Tensor:
    """Real tokens per row ``(B,)`` of a left-padded ``(B, T)`` mask (zeros, then ones).
    Anything else (right or inner padding, an empty row) is refused by name."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (B, T), got {tuple(attention_mask.shape)}")
    mask = attention_mask.to(torch.long)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError(f"attention_mask rows {(lengths == 0).nonzero().flatten().tolist()} have no token")
    T = mask.shape[1]
    expected = (torch.arange(T, device=mask.device)[None] >= T - lengths[:, None]).long()
    if not torch.equal(mask, expected):
        bad = (mask != expected).any(1).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {bad} are not left-padded (zeros first, then ones): pad on the left, "
                         "as generate expects for decoder-only models")
    return lengths


def right_aligned_positions(lengths: Tensor, width: int) -> Tensor:
    """``(B, width)`` position of each column of a right-aligned cache; ``-1`` for padding."""
    pos = torch.arange(width, device=lengths.device)[None] - (width - lengths[:, None])
    return pos.clamp(min=-1)


def squeeze_left(x: Tensor, keep: Tensor, dim: int) -> Tensor:
    """Move, per row, the kept columns of ``x`` (in their order) to the right end of
    dimension ``dim`` and the others to the left. ``keep (B, S)`` bool; ``x`` has B first
    and S at ``dim``. A stable sort of ``keep`` per row gives the gather index."""
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices  # (B, S): dropped first, kept in order
    shape = [1] * x.dim()
    shape[0], shape[dim] = order.shape
    return x.gather(dim, order.view(shape).expand_as(x))


class RaggedKV(NamedTuple):
    """The draft head's KV cache for a batch: right-aligned, ``lengths[b]`` real slots per row."""

    cache: KVCache | None  # key, value (B, n_kv, S, d)
    lengths: Tensor  # (B,) long

    def select(self, rows: Tensor) -> "RaggedKV":
        """Keep the batch rows ``rows`` (and drop columns that became padding everywhere)."""
        lengths = self.lengths[rows]
        if self.cache is None:
            return RaggedKV(None, lengths)
        width = int(lengths.max())
        return RaggedKV(KVCache(self.cache.key[rows, :, -width:], self.cache.value[rows, :, -width:]), lengths)


# ----------------------------------------------------------------------------------------
# Drafting B trees at once
# ----------------------------------------------------------------------------------------


def grow_trees(root_tokens: Tensor, root_logprobs: Tensor, propose, config: TreeConfig,
               d2t: Tensor | None) -> list[DraftTree]:
    """EAGLE-2's expansion and reranking (:func:`eagle3_ref.tree.grow_tree`) for B trees at
    once: each level is one :func:`eagle3_ref.tree.expand_level` with a leading batch
    dimension, and each row's pool is reranked by :func:`eagle3_ref.tree.rerank`.
    ``root_logprobs (B, V_d)``. ``propose(frontier, tokens, parents, level)`` gets the
    frontier's pool ids, its draft ids and its parents' pool ids (each ``(B, k)``) and returns
    the children's log-probs ``(B, k, V_d)``."""
    B, k = root_logprobs.shape[0], config.top_k
    if k > root_logprobs.shape[-1]:
        raise ValueError(f"TreeConfig.top_k ({k}) exceeds the draft vocabulary ({root_logprobs.shape[-1]} tokens)")
    device = root_logprobs.device
    frontier = torch.zeros(B, 1, dtype=torch.long, device=device)  # each row's root, pool id 0
    frontier_scores, logprobs = root_logprobs.new_zeros(B, 1), root_logprobs[:, None]
    tokens = [root_tokens[:, None].to(device)]  # each row's pool, level by level, root first
    parents, scores, depths = [torch.full((B, 1), -1, device=device)], [frontier_scores], [0]
    for depth in range(1, config.max_depth + 1):
        if depth > 1:  # the frontier's draft ids and parents, which the head's next forward needs
            frontier_tokens, frontier_parents = (torch.cat(x, 1).gather(1, frontier) for x in (tokens, parents))
            logprobs = propose(frontier, frontier_tokens, frontier_parents, depth)  # (B, k, V_d)
        level = expand_level(frontier, frontier_scores, logprobs, k, sum(t.shape[1] for t in tokens))
        tokens.append(level.tokens), parents.append(level.parents), scores.append(level.scores)
        depths += [depth] * level.tokens.shape[1]
        frontier, frontier_scores = level.frontier, level.frontier_scores
    pool_tokens, pool_parents, pool_scores = (torch.cat(x, 1).cpu() for x in (tokens, parents, scores))  # (B, P)
    return [rerank(Pool(pool_tokens[b].tolist(), pool_parents[b].tolist(), depths), pool_scores[b], config.num_nodes,
                   d2t) for b in range(B)]


@torch.no_grad()
def build_draft_trees(head: Eagle3DraftHead, features: Tensor, input_ids: Tensor, lengths: Tensor,
                      config: TreeConfig = TreeConfig(), state: RaggedKV | None = None
                      ) -> tuple[list[DraftTree], RaggedKV]:
    """B draft trees, one head forward per level for all rows; row ``b`` equals
    :func:`eagle3_ref.tree.build_draft_tree` on that row alone.

    ``input_ids (B, L)``: right-aligned sequences (left padding), ``lengths[b]`` real
    tokens each, the last one the root. ``features (B, m, k*H_t)``: right-aligned, the
    target features of each row's slots not yet in ``state`` (row ``b`` has
    ``lengths[b] - 1 - state.lengths[b]`` of them; ``m`` at least the largest). Returns
    the trees and the extended prefix cache (tree keys are scratch, as for one row).
    """
    B, L = input_ids.shape
    device = input_ids.device
    lengths = lengths.to(device)
    seen = torch.zeros(B, dtype=torch.long, device=device) if state is None else state.lengths.to(device)
    cache = None if state is None else state.cache
    if features.shape[0] != B or lengths.shape != (B,) or seen.shape != (B,):
        raise ValueError(f"features {tuple(features.shape)}, lengths {tuple(lengths.shape)} and the cache's "
                         f"lengths {tuple(seen.shape)} must all have the batch size of input_ids ({B})")
    new, m = lengths - 1 - seen, features.shape[1]  # (B,) slots to add per row
    if bool((new < 1).any()) or int(new.max()) > m:
        raise ValueError(f"each row needs 1..{m} new slots (lengths - 1 - cached lengths), got {new.tolist()}")
    S = 0 if cache is None else cache.length

    # 1. The prefix: each row's new slots, right-aligned in a block of m columns, after its cache.
    col = torch.arange(m, device=device)[None]  # (1, m)
    real = col >= m - new[:, None]  # (B, m)
    slot = seen[:, None] + col - (m - new[:, None])  # (B, m) slot s pairs feature s with token s + 1
    token_col = (L - lengths[:, None] + slot + 1).clamp(0, L - 1)
    ids = torch.where(real, input_ids.gather(1, token_col), 0)
    cached = right_aligned_positions(seen, S) >= 0  # (B, S)
    block = (col.T >= col)[None] & real[:, None, :]  # (B, m, m): causal among the real slots
    block = block | torch.eye(m, dtype=torch.bool, device=device)  # a padding query sees itself (no empty row)
    mask = torch.cat([cached[:, None, :] & real[:, :, None], block], dim=2)[:, None]  # (B, 1, m, S + m)
    prefix = head(ids, head.fuse(features), slot.clamp(min=0), cache, mask)
    T = lengths - 1  # every slot of every row is in the cache now
    kept, width = torch.cat([cached, real], dim=1), int(T.max())
    state = RaggedKV(KVCache(squeeze_left(prefix.cache.key, kept, 2)[:, :, -width:],
                             squeeze_left(prefix.cache.value, kept, 2)[:, :, -width:]), T)

    # 2. The tree, level by level (one head forward each for every row): every frontier node
    #    sees its row's real prefix slots, its ancestors and itself; the fed nodes' keys are scratch.
    attention = TreeAttention(head, state.cache, right_aligned_positions(T, width) >= 0, prefix.hidden[:, -1:])

    def propose(frontier: Tensor, tokens: Tensor, parents: Tensor, level: int) -> Tensor:
        positions = (T - 2 + level)[:, None].expand_as(frontier)  # a level-d node sits at its row's T - 1 + d
        return attention.propose(frontier, tokens, parents, positions)

    root_logprobs = F.log_softmax(prefix.logits[:, -1], dim=-1)
    return grow_trees(input_ids[:, -1], root_logprobs, propose, config, head.d2t), state


# ----------------------------------------------------------------------------------------
# The target side: one forward over B trees, then per-row compaction
# ----------------------------------------------------------------------------------------


def ragged_tree_masks(target: nn.Module, cache: DynamicCache, tree_mask: Tensor, tree_position_ids: Tensor,
                      lengths: Tensor, dtype: torch.dtype) -> Tensor | dict[str, Tensor]:
    """:func:`eagle3_ref.generate.tree_attention_masks` for a right-aligned batch: row ``b``'s
    nodes sit at positions ``lengths[b] + depth`` and see its real cached slots (padding
    never), their ancestors and themselves, each where the layer's own rule allows.

    ``tree_mask (B, n, n)``, ``tree_position_ids (B, n)``, ``lengths (B,)`` cached slots per
    row. Returns ``(B, 1, n, held + n)`` additive masks (a dict keyed by layer type when the
    target has several)."""
    B, n = tree_position_ids.shape
    width = int(lengths.max())
    q_pos = tree_positions(lengths, tree_position_ids)  # (B, n)
    masks, rules = {}, layer_rules(target)
    for kind, held in held_prefix_slots(cache, target).items():
        k_prefix = right_aligned_positions(lengths, width)[:, width - held:]  # (B, held); -1 = padding
        allowed = torch.cat([(k_prefix >= 0)[:, None, :].expand(B, n, held), tree_mask], dim=2)
        allowed = allowed & visible(rules[kind], q_pos, torch.cat([k_prefix, q_pos], dim=1))
        mask = torch.zeros(B, 1, n, held + n, dtype=dtype, device=tree_mask.device)
        masks[kind] = mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    return next(iter(masks.values())) if len(masks) == 1 else masks


def tree_positions(lengths: Tensor, tree_position_ids: Tensor) -> Tensor:
    """``(B, n)``: row ``b``'s node at depth ``d`` sits at position ``lengths[b] + d``, each
    row from its *own* length (not the batch's widest row: the per-row offset engines get
    wrong)."""
    return lengths[:, None] + tree_position_ids


def _cut_cache(cache: DynamicCache, width: int) -> None:
    """Drop the leading columns that are padding in every row: keep the last ``width``
    (a windowed layer: what it holds of them, at most ``window - 1``)."""
    for layer in cache.layers:
        held = min(layer.keys.shape[-2], width)
        layer.keys, layer.values = layer.keys[:, :, -held:], layer.values[:, :, -held:]
        trim_to_window(layer, width)


def compact_rows(cache: DynamicCache, lengths: Tensor, keep: Tensor) -> Tensor:
    """After a tree forward of ``n`` nodes per row: keep each row's real prefix and its
    nodes where ``keep (B, n)`` is True, squeezed right in their order (the picture in the
    module docstring). In place; returns the new lengths ``(B,)``."""
    n = keep.shape[1]
    width = int(lengths.max())
    new_lengths = lengths + keep.sum(1).to(lengths.device)
    for layer in cache.layers:
        held = layer.keys.shape[-2] - n  # the prefix columns this layer holds (all, or its window's)
        real = right_aligned_positions(lengths, width)[:, width - held:] >= 0
        kept = torch.cat([real, keep.to(real.device)], dim=1)
        layer.keys, layer.values = squeeze_left(layer.keys, kept, 2), squeeze_left(layer.values, kept, 2)
    _cut_cache(cache, int(new_lengths.max()))
    return new_lengths


def _select_rows(cache: DynamicCache, rows: Tensor, width: int) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    _cut_cache(cache, width)


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------


@dataclass
class BatchGenerationOutput:
    """What :func:`eagle3_ref.speculative_generate` returns for a batch."""

    sequences: Tensor  # (B, T + new): the padded prompts, then each row's new tokens, padded with pad_token_id
    accepted_lengths: list[list[int]]  # per row: tokens appended by each target forward after the prefill
    new_counts: list[int]  # per row: how many new tokens it generated (the rest of its row is padding)
    timings: dict[str, float] = field(default_factory=dict)
    prompt_length: int = 0  # T, the padded prompt width

    def new_tokens(self, row: int) -> Tensor:
        return self.sequences[row, self.prompt_length:self.prompt_length + self.new_counts[row]]

    @property
    def taus(self) -> list[float]:
        """Each row's acceptance length (nan for a row with no cycle)."""
        return [sum(a) / len(a) if a else float("nan") for a in self.accepted_lengths]

    @property
    def tau(self) -> float:
        """Tokens per row-forward over the whole batch (each row's cycles count once)."""
        cycles = sum(len(a) for a in self.accepted_lengths)
        return sum(map(sum, self.accepted_lengths)) / cycles if cycles else float("nan")


@dataclass
class BatchState:
    """The loop's state: active rows only (a finished row leaves at once)."""

    rows: list[int]  # each active row's index in the caller's batch
    tokens: list[list[int]]  # its real tokens so far, prompt included; the last is the next root
    cache: DynamicCache  # right-aligned: row i holds tokens[i][:-1]
    features: Tensor  # (B, m, k*H_t) right-aligned: features of the slots the draft has not seen
    new: Tensor  # (B,) how many columns of ``features`` are real, per row
    draft_state: object = None  # RaggedKV, or one state per row for a per-row drafter

    @property
    def lengths(self) -> Tensor:  # cached slots per row
        return torch.tensor([len(t) - 1 for t in self.tokens], device=self.features.device)

    def ids(self) -> Tensor:  # (B, L) the tokens, right-aligned
        L = max(len(t) for t in self.tokens)
        return torch.tensor([[0] * (L - len(t)) + t for t in self.tokens], device=self.features.device)


def _draft(drafter, batch: BatchState, config: TreeConfig) -> tuple[list[DraftTree], object]:
    """B trees: the head's batched builder, or (any other drafter) one row at a time."""
    head = getattr(drafter, "head", None)
    if isinstance(head, Eagle3DraftHead):
        features = batch.features.to(head.fc.weight.dtype)
        real = right_aligned_positions(batch.new, features.shape[1]) >= 0
        features = torch.where(real[:, :, None], features, 0)  # padding columns: zeros, never NaN
        lengths = torch.tensor([len(t) for t in batch.tokens], device=features.device)
        return build_draft_trees(head, features, batch.ids(), lengths, config, batch.draft_state)
    states = batch.draft_state or [None] * len(batch.rows)
    trees, new_states = [], []
    m = batch.features.shape[1]
    for i, tokens in enumerate(batch.tokens):
        features = batch.features[i:i + 1, m - int(batch.new[i]):]
        tree, state = drafter.draft(features, torch.tensor([tokens], device=features.device), config, states[i])
        trees.append(tree)
        new_states.append(state)
    return trees, new_states


def _pad_trees(trees: list[DraftTree], device) -> tuple[Tensor, Tensor, Tensor]:
    """tokens ``(B, n)``, tree masks ``(B, n, n)``, depths ``(B, n)`` of trees of up to n
    nodes; a padding node sees only itself and nothing sees it."""
    n = max(t.num_nodes for t in trees)
    tokens = torch.zeros(len(trees), n, dtype=torch.long)
    masks = torch.eye(n, dtype=torch.bool).repeat(len(trees), 1, 1)
    depths = torch.zeros(len(trees), n, dtype=torch.long)
    for b, t in enumerate(trees):
        tokens[b, :t.num_nodes] = t.tokens.cpu()
        masks[b, :t.num_nodes, :t.num_nodes] = t.tree_mask.cpu()
        depths[b, :t.num_nodes] = t.tree_position_ids.cpu()
    return tokens.to(device), masks.to(device), depths.to(device)


@torch.no_grad()
def prefill_batch(target, input_ids, attention_mask, layer_ids, pickers, eos, max_new_tokens):
    lengths = left_padding_lengths(attention_mask)
    cache = new_target_cache(target)
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # as generate does
    out = target(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 **cache_kwargs(target, cache), use_cache=True, output_hidden_states=True)
    _cut_cache(cache, int(lengths.max()))
    features = select_features(out.hidden_states, layer_ids)[:, -int(lengths.max()):]
    tokens, done = [], []
    for b in range(input_ids.shape[0]):
        first, finished = cut_at_eos([pickers[b](out.logits[b, -1])], eos, max_new_tokens)
        prompt = input_ids[b, input_ids.shape[1] - int(lengths[b]):].tolist()
        tokens.append(prompt + first)
        done.append(finished)
    batch = BatchState(list(range(input_ids.shape[0])), tokens, cache, features, lengths.clone())
    return batch, done


@torch.no_grad()
def batch_cycle(target, drafter, batch: BatchState, config: TreeConfig, layer_ids, pickers, eos, rooms, timings):
    """One cycle for every active row: draft B trees, ONE target forward, verify per row,
    compact. Returns each row's appended tokens and whether it finished."""
    device, lengths = batch.features.device, batch.lengths
    phases = PhaseTimer(timings, device)
    with phases("draft"):
        trees, draft_state = _draft(drafter, batch, config)
        tokens, tree_mask, depth = _pad_trees(trees, device)
    with phases("verify"):
        dtype = next(target.parameters()).dtype
        out = target(input_ids=tokens, **cache_kwargs(target, batch.cache), use_cache=True, output_hidden_states=True,
                     attention_mask=ragged_tree_masks(target, batch.cache, tree_mask, depth, lengths, dtype),
                     position_ids=tree_positions(lengths, depth))
    with phases("accept"):
        keep = torch.zeros(tokens.shape, dtype=torch.bool)
        appended, finished = [], []
        for b, tree in enumerate(trees):
            verdict = pickers[batch.rows[b]].verify(tree, out.logits[b, :tree.num_nodes])
            keep[b, verdict.accepted] = True
            new, done = cut_at_eos(verdict.new_tokens(tree), eos, rooms[b])
            batch.tokens[b] = batch.tokens[b] + new
            appended.append(new)
            finished.append(done)
        compact_rows(batch.cache, lengths, keep)
        features = select_features(out.hidden_states, layer_ids)  # (B, n, k*H_t)
        m = int(keep.sum(1).max())
        batch.features = squeeze_left(features, keep.to(device), 1)[:, -m:]
        batch.new, batch.draft_state = keep.sum(1).to(device), draft_state
    return appended, finished


def drop_finished(batch: BatchState, finished: list[bool]) -> None:
    stay = [i for i, done in enumerate(finished) if not done]
    if len(stay) == len(finished) or not stay:
        return
    rows = torch.tensor(stay, device=batch.features.device)
    batch.rows = [batch.rows[i] for i in stay]
    batch.tokens = [batch.tokens[i] for i in stay]
    _select_rows(batch.cache, rows, max(len(t) - 1 for t in batch.tokens))
    new = batch.new[rows]
    batch.features, batch.new = batch.features[rows][:, -int(new.max()):], new
    state = batch.draft_state
    if isinstance(state, RaggedKV):
        batch.draft_state = state.select(rows)
    elif state is not None:  # one state per row (a per-row drafter)
        batch.draft_state = [state[i] for i in stay]


def row_pickers(B: int, temperature, top_k, top_p, generator) -> list:
    """One picker per row, each drawing from its own stream, so what one row accepts never
    shifts another row's draws: a list of B generators is used as given; one generator
    seeds B row generators from its next B draws (a batch of one uses it as it is, as the
    single-sequence loop does); None shares torch's global generator, in row order."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != B:
            raise ValueError(f"generator: {len(generator)} generators for a batch of {B} rows")
        return [Picker(temperature, top_k, top_p, g) for g in generator]
    if generator is not None and B > 1:
        seeds = torch.randint(0, 2**62, (B,), generator=generator, device=generator.device).tolist()
        rows = [torch.Generator(device=generator.device).manual_seed(seed) for seed in seeds]
        return [Picker(temperature, top_k, top_p, g) for g in rows]
    return [Picker(temperature, top_k, top_p, generator)] * B


def _output(input_ids, new_tokens: list[list[int]], lengths: list[list[int]], pad_token_id, timings):
    longest = max(len(t) for t in new_tokens)
    if pad_token_id is None and any(len(t) < longest for t in new_tokens):
        raise ValueError("rows finished at different lengths and there is no pad_token_id to pad them with: "
                         "pass pad_token_id (or an eos_token_id)")
    pad = 0 if pad_token_id is None else pad_token_id
    rows = [t + [pad] * (longest - len(t)) for t in new_tokens]
    sequences = torch.cat([input_ids, torch.tensor(rows, dtype=input_ids.dtype, device=input_ids.device)
                           .reshape(len(rows), longest)], dim=1)
    return BatchGenerationOutput(sequences, lengths, [len(t) for t in new_tokens], timings, input_ids.shape[1])


@torch.no_grad()
def batched_speculative_generate(target: nn.Module, drafter, input_ids: Tensor, attention_mask: Tensor, *,
                                 max_new_tokens: int, tree: TreeConfig, layer_ids: Sequence[int], eos: set[int],
                                 pad_token_id: int | None, temperature: float, top_p: float, top_k: int,
                                 generator=None) -> BatchGenerationOutput:
    """The batched loop (called by :func:`eagle3_ref.decoding.speculative_generate` for a
    batch, which checks the arguments)."""
    _refuse_cache_position_quirks(target)
    B = input_ids.shape[0]
    pickers = row_pickers(B, temperature, top_k, top_p, generator)
    timings = dict.fromkeys(["prefill", "draft", "verify", "accept"], 0.0)
    if max_new_tokens == 0:
        return _output(input_ids, [[] for _ in range(B)], [[] for _ in range(B)], pad_token_id, timings)
    with PhaseTimer(timings, input_ids.device)("prefill"):
        batch, done = prefill_batch(target, input_ids, attention_mask, layer_ids, pickers, eos, max_new_tokens)
    prompt = [len(t) - 1 for t in batch.tokens]
    final = dict(zip(batch.rows, batch.tokens))  # each row's tokens, as of its last cycle
    accepted: list[list[int]] = [[] for _ in range(B)]
    finished = done
    while not all(finished):
        drop_finished(batch, finished)
        rooms = [max_new_tokens - (len(t) - prompt[r]) for r, t in zip(batch.rows, batch.tokens)]
        appended, finished = batch_cycle(target, drafter, batch, tree, layer_ids, pickers, eos, rooms, timings)
        for r, tokens, new in zip(batch.rows, batch.tokens, appended):
            accepted[r].append(len(new))
            final[r] = tokens
    return _output(input_ids, [final[r][prompt[r]:] for r in range(B)], accepted, pad_token_id, timings)


def _refuse_cache_position_quirks(target: nn.Module) -> None:
    """Llama 4's attention temperature is computed from the cache's width, not from
    ``position_ids`` (:func:`eagle3_ref.targets.exact_tree_nodes`); in a right-aligned batch
    the width is not a row's position, so such a target is refused rather than run wrong."""
    config = text_config(target)
    if getattr(config, "attn_temperature_tuning", False) and 0 in (getattr(config, "no_rope_layers", None) or []):
        raise ValueError(f"{type(target).__name__}: batched decoding is not supported for a target whose NoPE "
                         "layers scale attention by a temperature read from the cache length (Llama 4's "
                         "attn_temperature_tuning): in a padded batch that length is not each row's position. "
                         "Decode its rows one at a time.")


@torch.no_grad()
def batched_autoregressive_generate(target: nn.Module, input_ids: Tensor, attention_mask: Tensor, *,
                                    max_new_tokens: int, eos: set[int], pad_token_id: int | None,
                                    temperature: float, top_p: float, top_k: int,
                                    generator=None) -> BatchGenerationOutput:
    """Plain batched decoding, as ``generate`` does it: every row in every forward (a
    finished row is fed its last token until all are done, its outputs dropped), a growing
    2D mask, positions counted from each row's first real token."""
    left_padding_lengths(attention_mask)  # refuses anything but left padding, by name
    B = input_ids.shape[0]
    pickers = row_pickers(B, temperature, top_k, top_p, generator)
    mask = attention_mask.long()
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache, step = DynamicCache(config=target.config), input_ids
    new_tokens: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    clock = time.perf_counter()
    for i in range(max_new_tokens):
        logits = target(input_ids=step, attention_mask=mask, position_ids=position_ids, **cache_kwargs(target, cache),
                        use_cache=True).logits[:, -1]
        for b in range(B):
            if not done[b]:
                token = pickers[b](logits[b])
                new_tokens[b].append(token)
                done[b] = token in eos
        if all(done) or i == max_new_tokens - 1:
            break
        # a finished row is fed its own last token again: a valid id whatever pad_token_id is (its
        # output is thrown away; generate feeds pad_token_id, which need not be a token)
        step = torch.tensor([[t[-1]] for t in new_tokens], device=input_ids.device)
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
    sync(input_ids.device)
    accepted = [[1] * max(len(t) - 1, 0) for t in new_tokens]
    return _output(input_ids, new_tokens, accepted, pad_token_id, {"total": time.perf_counter() - clock})
