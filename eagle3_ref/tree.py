"""The dynamic draft tree (EAGLE-2, "context-aware dynamic draft tree", as EAGLE-3 runs it).

A chain drafts one guess per position; a tree drafts several, and the target checks them
all in one forward. EAGLE-2 grows the tree where the draft is confident: a node's *score*
is the sum of the draft's log-probabilities along its path (an estimate of the chance the
whole path is accepted), and only the best-scoring nodes are kept.

Growing (``max_depth`` levels, branching ``top_k``)::

    level 1:   the top_k tokens of the draft's distribution after the root
    levels 2.. each of the top_k *frontier* nodes proposes its top_k children
               (score = parent score + log-prob); all top_k^2 children join the
               candidate pool, and the top_k best of them become the next frontier
    rerank:    keep the num_nodes - 1 best-scoring pool nodes (pool order), under the root

Since log-probs are <= 0 a child never outscores its parent, so the kept set is closed
under ancestors (ties go to the earlier pool node, i.e. the ancestor). Every frontier node
of one level runs at the same position; it attends to the whole prefix, its ancestors and
itself. The draft's KV cache keeps the prefix slots only: tree keys are scratch.

Buffers, as the field names them: ``tree_mask[i, j]`` (node i may attend to node j: j is
i or an ancestor), ``tree_position_ids`` (= depth; root 0), ``retrieve_indices`` (one row
per leaf, the root-to-leaf node indices, padded with -1).

Naming. EAGLE's ``depth`` counts expansion rounds *after* level 1 (``for i in
range(depth)``), so EAGLE's default ``depth=7`` grows trees 8 levels deep; SGLang's
``speculative_num_steps`` counts levels. To be unmistakable, :class:`TreeConfig` says
``max_depth`` = the deepest level (root = 0) and converts from both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_float_tensor, check_instance, check_token_ids
from .draft_head import Eagle3DraftHead, KVCache
from .vocab import draft_to_target

__all__ = ["TreeConfig", "DraftTree", "Pool", "grow_tree", "rerank", "build_draft_tree", "tree_buffers", "HeadDrafter",
           "stable_top_k", "Level", "expand_level", "TreeAttention"]
# --- not in the skeleton: the brute-force builder, a naive twin of the tree task
__all__ += ["build_draft_tree_naive"]
# --- end not in the skeleton


@dataclass(frozen=True)
class TreeConfig:
    """Shape of the draft tree. Defaults are EAGLE-3's (``total_token=60, depth=7, top_k=10``)."""

    num_nodes: int = 60  # tree nodes *including* the root (EAGLE total_token, SGLang num_draft_tokens)
    max_depth: int = 8  # deepest level, root = 0 (EAGLE depth + 1, SGLang speculative_num_steps)
    top_k: int = 10  # branching: children per frontier node, and frontier size

    def __post_init__(self) -> None:
        for name in ("num_nodes", "max_depth", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TreeConfig.{name} must be a positive int, got {value!r}")
        if self.num_nodes < 2:
            raise ValueError(f"TreeConfig.num_nodes counts the root too: it must be >= 2, got {self.num_nodes}")
        if self.num_nodes - 1 > self.pool_size:
            raise ValueError(
                f"TreeConfig.num_nodes={self.num_nodes} asks for {self.num_nodes - 1} draft nodes, but "
                f"max_depth={self.max_depth}, top_k={self.top_k} only produce {self.pool_size} candidates"
            )

    @property
    def pool_size(self) -> int:
        """Candidates grown: top_k at level 1, top_k^2 at every later level."""
        return self.top_k + (self.max_depth - 1) * self.top_k**2

    @classmethod
    def from_eagle(cls, total_token: int = 60, depth: int = 7, top_k: int = 10) -> "TreeConfig":
        """EAGLE's parameters (``EaModel.from_pretrained(total_token=, depth=, top_k=)``)."""
        return cls(num_nodes=total_token, max_depth=depth + 1, top_k=top_k)

    def to_eagle(self) -> dict:
        return {"total_token": self.num_nodes, "depth": self.max_depth - 1, "top_k": self.top_k}

    @classmethod
    def from_sglang(cls, speculative_num_steps: int, speculative_eagle_topk: int,
                    speculative_num_draft_tokens: int) -> "TreeConfig":
        """SGLang's server arguments."""
        return cls(num_nodes=speculative_num_draft_tokens, max_depth=speculative_num_steps, top_k=speculative_eagle_topk)

    def to_sglang(self) -> dict:
        return {"speculative_num_steps": self.max_depth, "speculative_eagle_topk": self.top_k,
                "speculative_num_draft_tokens": self.num_nodes}

    @classmethod
    def chain(cls, length: int) -> "TreeConfig":
        """Plain chain drafting: ``length`` guesses, one per level."""
        return cls(num_nodes=length + 1, max_depth=length, top_k=1)

    @classmethod
    def auto(cls, costs, calibration, *, max_nodes: int | None = None, max_depth: int = 8) -> "TreeConfig":
        """Deprecated: :meth:`eagle3_ref.costaware.AutoTreeConfig.from_calibration` (removed in 0.3)."""
        import warnings

        from .costaware.auto_tree import AutoTreeConfig  # a call-time import, for one release

        warnings.warn("TreeConfig.auto moved to eagle3_ref.costaware.AutoTreeConfig.from_calibration; it is removed in "
                      "eagle3-ref 0.3", DeprecationWarning, stacklevel=2)
        return AutoTreeConfig.from_calibration(costs, calibration, max_nodes=max_nodes, max_depth=max_depth)

    def grow(self, root_token: int, root_logprobs: Tensor, propose: "Propose", d2t: Tensor | None = None
             ) -> "DraftTree":
        """Grow this tree on the draft's proposals: :func:`grow_tree` (a cost-aware config
        overrides this and decides its shape as it grows)."""
        return grow_tree(root_token, root_logprobs, propose, self, d2t)

    @property
    def drafts(self) -> bool:
        """Whether decoding with this tree drafts at all: always for a fixed tree; a cost-aware
        one may find that no drafting pays on the machine (``AutoTreeConfig.drafting_gain``)."""
        return True

    @property
    def calibrated_temperature(self) -> float | None:
        """The temperature a cost-aware tree was calibrated at (:mod:`eagle3_ref.costaware`),
        which decoding must use; None for a fixed tree, which holds at any temperature."""
        return None

    def describe(self) -> dict:
        """The shape, as the bench's JSON records it."""
        return {"num_nodes": self.num_nodes, "max_depth": self.max_depth, "top_k": self.top_k}


class DraftTree(NamedTuple):
    """A draft tree; node 0 is the root (the token sampled from the target last cycle)."""

    tokens: Tensor  # (n,) long: target-vocabulary ids
    parents: Tensor  # (n,) long: parent node index, -1 for the root
    scores: Tensor  # (n,): cumulative draft log-prob of the path (root 0)
    tree_mask: Tensor  # (n, n) bool: node i may attend to node j (j is i or an ancestor)
    tree_position_ids: Tensor  # (n,) long: depth of the node
    retrieve_indices: Tensor  # (n_leaves, max_depth + 1) long: root-to-leaf node indices, -1 padded
    draft_cache: KVCache | None = None  # the draft's KV cache over the prefix slots only

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[0]

    def children(self, node: int) -> list[int]:
        return (self.parents == node).nonzero().flatten().tolist()


def tree_buffers(parents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``tree_mask``, ``tree_position_ids``, ``retrieve_indices`` from a parent array in
    which every parent precedes its children.

    The ancestor relation is the transitive closure of "is my parent": starting from
    ``I + P`` (``P[i, parent(i)] = 1``), each squaring doubles the path length covered, so
    ``ceil(log2(depth))`` boolean matrix products give the whole mask."""
    n = parents.shape[0]
    if n > 1 and not bool((parents[1:] < torch.arange(1, n)).all() and (parents[1:] >= 0).all()):
        raise ValueError("tree_buffers needs every parent before its child (parents[i] < i, root first)")
    # --- assignment tree: tree_mask[i, j] is True iff j is i or an ancestor of i; tree_position_ids[i] is i's
    #   depth (root 0); retrieve_indices has one row per leaf: its root-to-leaf node indices, padded with -1 to
    #   max depth + 1.
    mask = torch.eye(n, dtype=torch.bool)
    mask[torch.arange(1, n), parents[1:]] = True
    while True:  # closure by repeated squaring (in float: bool matmul is not supported everywhere)
        closed = (mask.float() @ mask.float()) > 0
        if torch.equal(closed, mask):
            break
        mask = closed
    depth = mask.sum(1) - 1
    has_child = torch.zeros(n, dtype=torch.bool)
    has_child[parents[1:]] = True
    leaves = (~has_child).nonzero().flatten()
    # a leaf's path = its ancestors in index order (= root-to-leaf order); pad with -1
    order = torch.where(mask[leaves], torch.arange(n), n).sort(dim=1).values[:, : int(depth.max()) + 1]
    retrieve = torch.where(order == n, -1, order)
    return mask, depth, retrieve
    # --- end assignment


class Pool(NamedTuple):
    """The candidate pool while the tree grows; entry 0 is the root."""

    tokens: list[int]  # draft-vocabulary ids (root: its target id; never re-emitted)
    parents: list[int]
    depths: list[int]

    def add_level(self, level: "Level", depth: int) -> None:
        """The children of one :func:`expand_level` join the pool (one sequence's)."""
        self.tokens.extend(level.tokens.tolist())
        self.parents.extend(level.parents.tolist())
        self.depths.extend([depth] * level.tokens.numel())

    def lineage(self, node: int) -> list[int]:
        """Pool ids from level 1 down to ``node`` (the root excluded)."""
        out = []
        while node > 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]


# propose(frontier pool ids, pool) -> log-probs over the draft vocabulary, (k, V_d)
Propose = Callable[[list[int], Pool], Tensor]


def stable_top_k(values: Tensor, k: int) -> Tensor:
    """Indices of the k largest values along the last dimension, best first; equal values
    in index order (deterministic, unlike ``torch.topk`` alone).

    A short row (a level's k * k children) is one stable sort. A long one (a vocabulary) is
    ``topk`` of k + 1: when its k-th value is strictly above the (k+1)-th, nothing left out
    ties with a kept value, and two small stable sorts order the kept k by (value descending,
    index ascending); when they tie, a full stable sort decides which index is kept."""
    n = values.shape[-1]
    if n <= 256 or k >= n:
        return torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]
    top = torch.topk(values, k + 1, dim=-1)
    if (top.values[..., k - 1] == top.values[..., k]).any():  # a tie straddles the cut
        return torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]
    by_index = top.indices[..., :k].sort(dim=-1).values
    order = torch.sort(values.gather(-1, by_index), dim=-1, descending=True, stable=True).indices
    return by_index.gather(-1, order)


class Level(NamedTuple):
    """One level of EAGLE-2's growth: the frontier's children, which all join the pool, and the
    next frontier. Every tensor may carry leading batch dimensions (``...``)."""

    tokens: Tensor  # (..., k*k) draft ids of the children, frontier node by frontier node
    parents: Tensor  # (..., k*k) pool ids of their parents
    scores: Tensor  # (..., k*k) path scores: parent's score + log-prob
    frontier: Tensor  # (..., k) pool ids of the next frontier: the k best children
    frontier_scores: Tensor  # (..., k)


def expand_level(frontier: Tensor, frontier_scores: Tensor, logprobs: Tensor, k: int, first_child: int) -> Level:
    """EAGLE-2's level step, the one the single, batched and cost-aware builders all take: each
    frontier node keeps its ``k`` best children (by log-prob, ties to the lower id), scored by
    cumulative log-prob, and the ``k`` best of those ``k*k`` are the next frontier.

    ``frontier (..., f)`` pool ids, ``frontier_scores (..., f)``, ``logprobs (..., f, V_d)``
    their children's log-probs; the children get pool ids from ``first_child`` on. Level 1 is
    the same step from the root alone (``f = 1``, pool id 0, score 0)."""
    # --- assignment tree: each frontier node's k best children (stable_top_k: ties to the lower id), their path
    #   scores (the parent's score + the child's log-prob), all f*k of them flattened frontier node by frontier
    #   node; the next frontier is the k best of those (stable_top_k again), as pool ids from first_child on.
    top = stable_top_k(logprobs, k)  # (..., f, k)
    scores = (frontier_scores[..., :, None] + logprobs.gather(-1, top)).flatten(-2)  # (..., f*k)
    best = stable_top_k(scores, k)  # (..., k)
    return Level(top.flatten(-2), frontier.repeat_interleave(k, dim=-1), scores, first_child + best,
                 scores.gather(-1, best))
    # --- end assignment


def grow_tree(root_token: int, root_logprobs: Tensor, propose: Propose, config: TreeConfig,
              d2t: Tensor | None = None) -> DraftTree:
    """EAGLE-2's expansion and reranking, independent of where proposals come from.

    ``root_logprobs``: ``(V_d,)`` the draft's log-probs after the root. ``propose`` gets
    the frontier's pool ids and returns their children's log-probs ``(k, V_d)``. ``d2t``
    maps draft ids to target ids (None: the same vocabulary).

    Each level is one :func:`expand_level` (a batched top-k, one add, one top-k over the k^2
    children); the pool's Python lists grow by whole levels.
    """
    k = config.top_k
    if k > root_logprobs.shape[-1]:
        raise ValueError(f"TreeConfig.top_k ({k}) exceeds the draft vocabulary ({root_logprobs.shape[-1]} tokens)")
    pool = Pool([root_token], [-1], [0])
    frontier = torch.zeros(1, dtype=torch.long, device=root_logprobs.device)  # the root
    frontier_scores = root_logprobs.new_zeros(1)
    score_chunks, logprobs = [frontier_scores], root_logprobs[None]
    for depth in range(1, config.max_depth + 1):
        if depth > 1:
            logprobs = propose(frontier.tolist(), pool)  # (k, V_d)
        level = expand_level(frontier, frontier_scores, logprobs, k, len(pool.tokens))
        pool.add_level(level, depth)
        score_chunks.append(level.scores)
        frontier, frontier_scores = level.frontier, level.frontier_scores
    return rerank(pool, torch.cat(score_chunks), config.num_nodes, d2t)


def rerank(pool: Pool, scores: Tensor, num_nodes: int, d2t: Tensor | None = None,
           rank_by: Tensor | None = None) -> DraftTree:
    """EAGLE-2's rerank: the tree of the ``num_nodes - 1`` best candidates of ``pool`` under its
    root, by path score. ``scores (len(pool.tokens),)``: every pool entry's path score, root first.
    A child never outscores its parent, so the kept set is closed under ancestors.
    :func:`grow_tree` ends with it; the cost-aware tree calls it with the budget it chose and
    ``rank_by``, its own values to keep the best of (aligned with ``scores``, never higher in
    a child than in its parent); the tree still carries the path scores."""
    scores = scores.cpu()
    if rank_by is not None and rank_by.shape != scores.shape:
        raise ValueError(f"rank_by has shape {tuple(rank_by.shape)}, scores {tuple(scores.shape)}: one value per pool "
                         f"entry, root first")
    rank_by = scores if rank_by is None else rank_by.cpu()
    # --- assignment tree: keep the num_nodes - 1 candidates of the pool best by rank_by (ties to the lower pool
    #   id: stable_top_k), in pool order; re-index their parents, map draft ids to target ids with d2t (None: the same
    #   vocabulary), and build the buffers with tree_buffers. The root keeps its token and score.
    kept = torch.sort(stable_top_k(rank_by[1:], num_nodes - 1) + 1).values  # pool order
    index = torch.full((len(pool.tokens),), -1, dtype=torch.long)
    index[0] = 0
    index[kept] = torch.arange(1, kept.numel() + 1)
    parents = torch.cat([torch.tensor([-1]), index[torch.tensor(pool.parents)[kept]]])
    if (parents[1:] < 0).any():  # never with path scores: a child never outscores its parent
        raise ValueError("rerank kept a node without its parent: rank_by must never be higher in a child than in "
                         "its parent")
    draft_ids = torch.tensor(pool.tokens)[kept]
    if d2t is not None:
        draft_ids = draft_to_target(draft_ids, d2t)
    tokens = torch.cat([torch.tensor([pool.tokens[0]]), draft_ids])
    mask, depth, retrieve = tree_buffers(parents)
    return DraftTree(tokens, parents, torch.cat([scores[:1], scores[kept]]), mask, depth, retrieve)
    # --- end assignment


# ----------------------------------------------------------------------------------------
# With an EAGLE-3 head
# ----------------------------------------------------------------------------------------


class TreeAttention:
    """The draft head's forward over a tree, level by level, for B trees at once (one sequence:
    B = 1); the ``propose`` of :func:`grow_tree` and of the batched builder.

    Each frontier node attends to its row's prefix (``prefix_mask (B, S)``, the slots of
    ``cache``), its ancestors among the nodes fed so far, and itself; it embeds its own token
    and takes its parent's output hidden state as input. The fed nodes' keys and values are
    scratch after the prefix (the tree's caller keeps only the prefix cache)."""

    def __init__(self, head: Eagle3DraftHead, cache: KVCache, prefix_mask: Tensor, hidden: Tensor) -> None:
        B, device = prefix_mask.shape[0], prefix_mask.device
        self.head, self.cache, self.prefix_mask = head, cache, prefix_mask
        self.fed = torch.zeros(B, 0, dtype=torch.long, device=device)  # pool ids of the fed nodes, in cache order
        self.mask = torch.zeros(B, 0, 0, dtype=torch.bool, device=device)  # fed x fed: j is i or an ancestor of i
        self.hidden = hidden  # (B, f, H): the head's output hidden of the last fed level (first: the root's)
        self.level = torch.zeros(B, 1, dtype=torch.long, device=device)  # their pool ids

    def propose(self, frontier: Tensor, tokens: Tensor, parents: Tensor, positions: Tensor) -> Tensor:
        """Log-probs ``(B, k, V_d)`` of the children of ``frontier`` (pool ids ``(B, k)``, their
        draft ids ``tokens`` and their parents' pool ids ``parents``, at ``positions``)."""
        (B, k), fed = frontier.shape, self.fed
        parent_slot = fed[:, None, :] == parents[:, :, None]  # (B, k, F): where each parent sits
        inherited = (parent_slot.float() @ self.mask.float()) > 0 if fed.shape[1] else parent_slot
        rows = torch.cat([inherited, torch.eye(k, dtype=torch.bool, device=fed.device).expand(B, k, k)], dim=2)
        grown = torch.cat([self.mask, torch.zeros(B, fed.shape[1], k, dtype=torch.bool, device=fed.device)], dim=2)
        self.mask = torch.cat([grown, rows], dim=1)  # (B, F + k, F + k)
        mask = torch.cat([self.prefix_mask[:, None, :].expand(B, k, -1), rows], dim=2)[:, None]  # (B, 1, k, S + F + k)
        which = (self.level[:, None, :] == parents[:, :, None]).long().argmax(2)  # (B, k): the parent's row
        hidden = self.hidden.gather(1, which[:, :, None].expand(-1, -1, self.hidden.shape[2]))
        out = self.head(draft_to_target(tokens, self.head.d2t), hidden, positions, self.cache, mask)
        self.cache, self.fed, self.hidden, self.level = out.cache, torch.cat([fed, frontier], 1), out.hidden, frontier
        logits = out.logits.float() if out.logits.dtype in (torch.float16, torch.bfloat16) else out.logits
        return F.log_softmax(logits, dim=-1)


@torch.no_grad()
def build_draft_tree(head: Eagle3DraftHead, features: Tensor, input_ids: Tensor, config: TreeConfig = TreeConfig(),
                     cache: KVCache | None = None) -> DraftTree:
    """Draft a tree with an EAGLE-3 head, exactly the inputs of EAGLE's ``topK_genrate``.

    ``input_ids (1, T+1)``: the sequence so far, its last token the root. Slot ``i`` pairs
    the target feature of token ``i`` with token ``i+1`` at position ``i``. ``features
    (1, T - S, k*H_t)`` are those of the slots not yet in ``cache`` (``S`` slots; None on a
    first call: all ``T``). The returned tree carries the extended prefix cache.
    """
    check_instance("config", config, TreeConfig, " (e.g. TreeConfig(), TreeConfig.chain(5))")
    # any head of the duck type (testing/handle.py's AdapterHead has no config and no fc): check what it says
    check_token_ids("input_ids", input_ids, getattr(getattr(head, "config", None), "vocab_size", None))
    check_float_tensor("features", features, 3, _head_dtype(head))
    if not bool(torch.isfinite(features).all()):  # a tree drafted from them would be noise, silently
        raise ValueError("features hold NaN or inf: the target's forward overflowed (a float16 target?) or the "
                         "features were never filled")
    T = input_ids.shape[1] - 1
    S = 0 if cache is None else cache.length
    if input_ids.shape[0] != 1 or features.shape[0] != 1:
        raise ValueError("build_draft_tree drafts for one sequence (batch size 1)")
    if features.shape[1] != T - S:
        raise ValueError(f"features cover {features.shape[1]} slots, expected T - S = {T} - {S} = {T - S}")
    device = input_ids.device
    prefix = head(input_ids[:, S + 1:], head.fuse(features), torch.arange(S, T, device=device)[None], cache)
    attention = TreeAttention(head, prefix.cache, torch.ones(1, T, dtype=torch.bool, device=device),
                              prefix.hidden[:, -1:])

    def propose(frontier: list[int], pool: Pool) -> Tensor:
        row = lambda values: torch.tensor([values], device=device)  # noqa: E731  (1, k)
        position = T - 1 + pool.depths[frontier[0]]  # every node of a level sits at the same position
        return attention.propose(row(frontier), row([pool.tokens[f] for f in frontier]),
                                 row([pool.parents[f] for f in frontier]),
                                 torch.full((1, len(frontier)), position, device=device))[0]

    root_logprobs = F.log_softmax(prefix.logits[0, -1], dim=-1)
    tree = config.grow(int(input_ids[0, -1]), root_logprobs, propose, head.d2t)
    return tree._replace(draft_cache=prefix.cache)


# --- not in the skeleton: the brute-force builder, a naive twin of the tree task
@torch.no_grad()
def build_draft_tree_naive(head: Eagle3DraftHead, features: Tensor, input_ids: Tensor,
                           config: TreeConfig = TreeConfig()) -> DraftTree:
    """Brute force: score every candidate by running the head on its path alone, from
    scratch (no cache, no tree mask), and select with plain Python sorting."""
    T = input_ids.shape[1] - 1
    base_hidden = head.fuse(features)

    def run(path: list[int]):  # path: target ids after the root; returns (logprobs, hidden) at its end
        ids, hidden = input_ids[:, 1:], base_hidden
        out = head(ids, hidden, torch.arange(T)[None].to(ids.device))
        for tok in path:
            ids = torch.cat([ids, ids.new_tensor([[tok]])], 1)
            hidden = torch.cat([hidden, out.hidden[:, -1:]], 1)
            out = head(ids, hidden, torch.arange(ids.shape[1])[None].to(ids.device))
        return F.log_softmax(out.logits[0, -1], dim=-1)

    k, to_target = config.top_k, (lambda d: int(draft_to_target(torch.tensor(d), head.d2t)))
    order = lambda values: sorted(range(len(values)), key=lambda i: (-float(values[i]), i))  # noqa: E731
    nodes = [(-1, None, 0.0, [])]  # (parent, draft id, score, target-id path)
    lp = run([])
    for d in order(lp)[:k]:
        nodes.append((0, d, float(lp[d]), [to_target(d)]))
    frontier = list(range(1, k + 1))
    for _ in range(2, config.max_depth + 1):
        children = []
        for f in frontier:
            lp = run(nodes[f][3])
            for d in order(lp)[:k]:
                children.append((f, d, nodes[f][2] + float(lp[d]), nodes[f][3] + [to_target(d)]))
        start = len(nodes)
        nodes.extend(children)
        frontier = [start + i for i in order([c[2] for c in children])[:k]]
    kept = sorted(1 + i for i in order([n[2] for n in nodes[1:]])[: config.num_nodes - 1])
    new = {0: 0, **{old: i + 1 for i, old in enumerate(kept)}}
    parents = torch.tensor([-1] + [new[nodes[i][0]] for i in kept])
    tokens = torch.tensor([int(input_ids[0, -1])] + [nodes[i][3][-1] for i in kept])
    scores = torch.tensor([0.0] + [nodes[i][2] for i in kept], dtype=torch.float64)
    mask, depth, retrieve = tree_buffers(parents)
    return DraftTree(tokens, parents, scores, mask, depth, retrieve)
# --- end not in the skeleton


def _head_dtype(head) -> torch.dtype | None:
    """The dtype a head computes in: its own word for it, else its ``fc``'s, else unknown (None)."""
    fc = getattr(head, "fc", None)
    return getattr(head, "dtype", None) or (fc.weight.dtype if fc is not None else None)


class HeadDrafter:
    """The decoding loop's view of a drafter: ``draft(features, input_ids, config, state)
    -> (tree, state)``. Here the state is the head's prefix KV cache."""

    def __init__(self, head: Eagle3DraftHead) -> None:
        self.head = head

    def draft(self, features: Tensor, input_ids: Tensor, config: TreeConfig, state: KVCache | None):
        # the target may run in another dtype (a head that is not an nn.Module may say its own)
        features = features.to(_head_dtype(self.head) or features.dtype)
        tree = build_draft_tree(self.head, features, input_ids, config, state)
        return tree, tree.draft_cache
