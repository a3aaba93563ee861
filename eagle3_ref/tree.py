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

from ._checks import check_float_tensor, check_instance, check_int, check_token_ids
from .draft_head import Eagle3DraftHead, KVCache

__all__ = ["TreeConfig", "DraftTree", "Pool", "grow_tree", "rerank", "build_draft_tree", "tree_buffers", "HeadDrafter"]
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
        """A cost-aware tree (:mod:`eagle3_ref.auto_tree`): each cycle chooses its depth (up to
        ``max_depth``) and how many nodes to verify (up to ``max_nodes``, default: the largest
        tree ``costs`` measured; never more than the candidate pool holds) from the draft's
        calibrated scores and the measured ``costs``. ``top_k`` is the calibration's."""
        from .auto_tree import AutoTreeConfig, Calibration
        from .costs import CostModel

        check_instance("costs", costs, CostModel, " (eagle3_ref.costs.measure_costs or CostModel.load)")
        check_instance("calibration", calibration, Calibration, " (eagle3_ref.auto_tree.calibrate)")
        if costs.top_k != calibration.top_k:
            raise ValueError(f"calibration was measured with top_k={calibration.top_k}, costs with "
                             f"top_k={costs.top_k}: measure both with the same top_k")
        check_int("max_depth", max_depth, 1)
        if max_nodes is not None:
            check_int("max_nodes", max_nodes, 2)
        k = calibration.top_k
        pool = k + (max_depth - 1) * k * k
        limit = min(max_nodes if max_nodes is not None else max(2, *costs.verify_ms), pool + 1)  # a limit, not a goal
        return AutoTreeConfig(num_nodes=limit, max_depth=max_depth, top_k=k, costs=costs, calibration=calibration)

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

    def lineage(self, node: int) -> list[int]:
        """Pool ids from level 1 down to ``node`` (the root excluded)."""
        out = []
        while node > 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]


# propose(frontier pool ids, pool) -> log-probs over the draft vocabulary, (k, V_d)
Propose = Callable[[list[int], Pool], Tensor]


def _best(values: Tensor, k: int) -> Tensor:
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


def grow_tree(root_token: int, root_logprobs: Tensor, propose: Propose, config: TreeConfig,
              d2t: Tensor | None = None) -> DraftTree:
    """EAGLE-2's expansion and reranking, independent of where proposals come from.

    ``root_logprobs``: ``(V_d,)`` the draft's log-probs after the root. ``propose`` gets
    the frontier's pool ids and returns their children's log-probs ``(k, V_d)``. ``d2t``
    maps draft ids to target ids (None: the same vocabulary).

    One level is a handful of tensor operations (a batched top-k, one add, one top-k over
    the k^2 children); the pool's Python lists grow by whole levels.
    """
    k = config.top_k
    if k > root_logprobs.shape[-1]:
        raise ValueError(f"TreeConfig.top_k ({k}) exceeds the draft vocabulary ({root_logprobs.shape[-1]} tokens)")
    # --- assignment tree: EAGLE-2: the root's top_k children (by log-prob, ties to the lower id: use _best)
    #   form level 1; at each further level, propose(frontier, pool) gives each frontier node's log-probs, keep
    #   each one's top_k children, score them by cumulative log-prob, and the top_k of those k*k form the next
    #   frontier. Finally the tree is rerank's, of the whole pool with every entry's score.
    pool = Pool([root_token], [-1], [0])
    first = _best(root_logprobs, k)
    score_chunks = [root_logprobs.new_zeros(1), root_logprobs[first]]  # the pool's scores, level by level
    pool.tokens.extend(first.tolist()), pool.parents.extend([0] * k), pool.depths.extend([1] * k)
    frontier, frontier_scores = list(range(1, k + 1)), score_chunks[-1]
    for level in range(2, config.max_depth + 1):
        logprobs = propose(frontier, pool)  # (k, V_d)
        top = _best(logprobs, k)  # (k, k) each frontier node's k best children (draft ids)
        cumulative = (frontier_scores[:, None] + logprobs.gather(1, top)).flatten()  # (k*k,) path scores
        first_child = len(pool.tokens)
        pool.tokens.extend(top.flatten().tolist())
        pool.parents.extend([f for f in frontier for _ in range(k)])
        pool.depths.extend([level] * (k * k))
        score_chunks.append(cumulative)
        best = _best(cumulative, k)  # the next frontier: the k best children of this level
        frontier, frontier_scores = (first_child + best).tolist(), cumulative[best]

    return rerank(pool, torch.cat(score_chunks), config.num_nodes, d2t)
    # --- end assignment


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
    #   id: _best), in pool order; re-index their parents, map draft ids to target ids with d2t (None: the same
    #   vocabulary), and build the buffers with tree_buffers. The root keeps its token and score.
    kept = torch.sort(_best(rank_by[1:], num_nodes - 1) + 1).values  # pool order
    index = torch.full((len(pool.tokens),), -1, dtype=torch.long)
    index[0] = 0
    index[kept] = torch.arange(1, kept.numel() + 1)
    parents = torch.cat([torch.tensor([-1]), index[torch.tensor(pool.parents)[kept]]])
    if (parents[1:] < 0).any():  # never with path scores: a child never outscores its parent
        raise ValueError("rerank kept a node without its parent: rank_by must never be higher in a child than in "
                         "its parent")
    draft_ids = torch.tensor(pool.tokens)[kept]
    if d2t is not None:
        draft_ids = draft_ids + d2t.to(draft_ids.device)[draft_ids]
    tokens = torch.cat([torch.tensor([pool.tokens[0]]), draft_ids])
    mask, depth, retrieve = tree_buffers(parents)
    return DraftTree(tokens, parents, torch.cat([scores[:1], scores[kept]]), mask, depth, retrieve)
    # --- end assignment


# ----------------------------------------------------------------------------------------
# With an EAGLE-3 head
# ----------------------------------------------------------------------------------------


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
    # What the tree part of the draft's attention needs, kept level by level:
    scratch = {
        "cache": prefix.cache,  # the prefix cache + the keys of every node fed so far
        "fed": torch.zeros(0, dtype=torch.long),  # pool ids of the fed nodes, in cache order
        "mask": torch.zeros(0, 0, dtype=torch.bool, device=device),  # fed x fed: j is i or i's ancestor
        "hidden": prefix.hidden[0, -1:],  # the head's output hidden of the last fed level (root first)
        "level": torch.zeros(1, dtype=torch.long),  # their pool ids
    }

    def propose(frontier: list[int], pool: Pool) -> Tensor:
        k, fed = len(frontier), scratch["fed"]
        nodes = torch.tensor(frontier)
        parents = torch.tensor([pool.parents[f] for f in frontier])
        # each node sees the prefix, its parent's ancestors among the fed nodes, and itself
        parent_slot = (fed[None, :] == parents[:, None]).to(device)  # (k, F): where the parent sits
        inherited = (parent_slot.float() @ scratch["mask"].float()) > 0 if fed.numel() else parent_slot
        rows = torch.cat([inherited, torch.eye(k, dtype=torch.bool, device=device)], dim=1)  # (k, F + k)
        grown = torch.cat([scratch["mask"], torch.zeros(fed.numel(), k, dtype=torch.bool, device=device)], dim=1)
        scratch["mask"] = torch.cat([grown, rows], dim=0)
        mask = torch.cat([torch.ones(k, T, dtype=torch.bool, device=device), rows], dim=1)[None, None]
        ids = torch.tensor([pool.tokens[f] for f in frontier], device=device)
        ids = ids + head.d2t[ids]  # the head embeds target ids
        hidden = scratch["hidden"][(scratch["level"][None, :] == parents[:, None]).long().argmax(1).to(device)]
        out = head(ids[None], hidden[None], torch.full((1, k), T - 1 + pool.depths[frontier[0]], device=device),
                   scratch["cache"], mask)
        scratch.update(cache=out.cache, fed=torch.cat([fed, nodes]), hidden=out.hidden[0], level=nodes)
        return F.log_softmax(out.logits[0].float() if out.logits.dtype in (torch.float16, torch.bfloat16)
                             else out.logits[0], dim=-1)

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

    k, to_target = config.top_k, (lambda d: d + int(head.d2t[d]))
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
