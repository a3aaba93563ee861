"""A tree sized to the machine and the moment: EAGLE-2's tree, with its depth and its verify
budget chosen in every cycle from the draft's own scores and the measured costs.

EAGLE-2 observed that a node's path score (the sum of the draft's log-probabilities along
its path) tracks the chance the target accepts it. A fixed tree ignores what that chance
and the machine say about the cycle at hand. Here, two decisions are made in each cycle:

    calibrate  a node of depth d, rank r in its level and path score s is accepted with
               probability c(d, r, s), measured per temperature on real cycles
               (:class:`Calibration`, monotone in s); a node's acceptance is its c capped
               by its parent's (a node is accepted only with its parent)
    depth      after each level, draft another only if the best expected tokens per
               millisecond with more levels beats the best without them; level +i is
               estimated as one node per frontier node, alpha^i times its acceptance (alpha:
               the measured chance that an accepted frontier node has an accepted child
               among its top_k)
    budget     verify the n nodes of highest acceptance (ancestor-closed, by the cap), with
               n maximising  (1 + sum of their acceptances) / cycle_ms(depth, n)

and one per tree: whether to draft at all (:attr:`AutoTreeConfig.drafting_gain`): when not
even the whole pool's acceptance at a chain's cost beats a plain step at any depth, the
decoding is plain.

Why the depth: a head can be right and unsure. The toy's head puts 0.6 on a token the
target then picks 9 times in 10, so four such steps score -2.0, where a depth-1 node of
score -2.0 (probability 0.14) is rarely right. One curve for all depths rates deep nodes far
below what they earn and stops the tree too early. Why the rank: see :class:`Calibration`.

Expected tokens of a tree are exact by linearity: a cycle appends 1 + the number of
accepted nodes, so E = 1 + sum over nodes of P(node accepted). And P(node accepted) does
not depend on which of its siblings are kept: at temperature 0 a node is accepted iff its
path is the target's greedy continuation; with sampling, EAGLE's rule tries siblings in
turn and accepts sibling x with probability p(x) whatever was tried before it (a rejected
sibling's mass is removed and the rest renormalised). So one calibration serves every
pruned tree.

The decisions run on a few dozen numbers per level, in numpy: a handful of torch calls per
level would cost more than a head forward saves on a CPU.

Why keep nodes by acceptance and not by path score, as EAGLE-2 reranks: the head is right
and unsure, as above. Kept by score, the 20-odd nodes a CPU can afford to verify were the
shallow siblings of a wide pool, where the calibration rates deeper nodes of lower score
higher. Measured on the toy (held-out prompts, greedy), at the same depth decisions: 3.88
tokens a cycle from 18 nodes kept by acceptance, against 3.60 from 21 kept by score.

Still lossless: the tree this builds is a subtree of EAGLE-2's candidate pool, closed under
ancestors (the expansion is EAGLE-2's, the tree :func:`eagle3_ref.tree.rerank`'s with the
acceptances to rank by), and the proofs hold for any tree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_instance, check_int, check_number
from ..tree import DraftTree, Pool, Propose, TreeConfig, expand_level, rerank
from .costs import CostModel, nonincreasing_fit

__all__ = ["Calibration", "AutoTreeConfig", "grow_tree_auto", "calibrate", "speedup_bound", "acceptance_rates", "level_ranks"]

# score bins (cumulative log-prob of the draft), best first
EDGES = (0.0, -0.05, -0.1, -0.2, -0.35, -0.5, -0.75, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0, -9.0)
# level-rank buckets: where a node's score ranks among the nodes of its depth (0: the best), bucket starts
RANKS = (0, 1, 2, 4, 10, 30)


@dataclass(frozen=True)
class Calibration:
    """P(node accepted) as a function of its depth, its rank in its level and its path score,
    at one temperature.

    ``accept[d - 1][r][i]`` is the measured acceptance rate of depth-``d`` nodes whose score
    ranks in bucket ``r`` of their level (bucket starts :data:`RANKS`: the level's best, its
    second, ...) and falls in ``(edges[i + 1], edges[i]]`` (the last bin: below ``edges[-1]``).
    Each row is non-increasing in the score (pool-adjacent violators). Depths and ranks past
    the table use its last entries, so a flat tuple of rates serves every depth and rank.
    ``counts`` and ``hits`` hold the raw numbers of nodes and accepted nodes per cell.
    ``child_rate``: P(an accepted frontier node has an accepted child among its ``top_k``
    best). ``pool_tau[d - 1]`` is the acceptance length of the whole candidate pool cut at
    depth ``d``: no tree of that depth drawn from the pool accepts more on average (see
    :func:`speedup_bound`).

    Why the rank: the score alone is not enough. A level whose best node leads by far is a
    cycle where the draft is on the target's path, and its nodes are accepted more often than
    nodes of the same score in a crowded level. Rated by depth and score only, the toy's deep
    trees were underestimated (3.36 tokens for the best 24 nodes 6 deep, which accept 3.56;
    with the rank: 3.53).
    """

    temperature: float
    accept: tuple
    child_rate: float
    top_k: int
    counts: tuple = ()
    hits: tuple = ()
    pool_tau: tuple[float, ...] = ()  # [d - 1]: mean tokens per cycle of the whole pool cut at depth d
    edges: tuple[float, ...] = EDGES
    ranks: tuple[int, ...] = RANKS

    def __post_init__(self) -> None:
        check_number("Calibration.temperature", self.temperature, 0)
        check_number("Calibration.child_rate", self.child_rate, 0, 1)
        check_int("Calibration.top_k", self.top_k, 1)
        try:
            table = np.asarray(self.accept, dtype=np.float64)
        except (TypeError, ValueError):  # ragged rows
            table = np.zeros(0)
        if table.ndim == 1 and table.size:  # one row for every depth and rank
            table = table[None, None]
        if table.ndim != 3 or table.shape[-1] != len(self.edges) or table.shape[1] not in (1, len(self.ranks)) \
                or not table.size:
            raise ValueError(f"Calibration.accept must be rates [depth][rank bucket][score bin], with one bucket per "
                             f"start in ranks ({len(self.ranks)}) and one rate per bin ({len(self.edges)}), or one "
                             f"flat row of them; got {self.accept!r:.200}")
        if not ((table >= 0) & (table <= 1)).all():
            raise ValueError(f"Calibration.accept must hold rates in [0, 1], got {self.accept}")
        rising = np.argwhere(np.diff(table, axis=-1) > 0)
        if len(rising):
            d, r, _ = rising[0]
            raise ValueError(f"Calibration.accept[{d}][{r}] (depth {d + 1}, rank bucket {r}) must not increase as "
                             f"scores fall, got {tuple(table[d, r])}")
        object.__setattr__(self, "accept", _tuples(table.tolist()))
        object.__setattr__(self, "counts", _tuples(self.counts))
        object.__setattr__(self, "hits", _tuples(self.hits))

    @cached_property
    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.asarray(self.edges[1:], dtype=np.float64), np.asarray(self.accept, dtype=np.float64),
                np.asarray(self.ranks[1:]))

    def p(self, scores, depth: int, level_ranks) -> np.ndarray:
        """Calibrated acceptance probability of depth-``depth`` nodes with these path scores and
        ranks within their level (0: the level's best score)."""
        edges, table, ranks = self._tables
        scores = scores.double().cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores, np.float64)
        bins = (scores[..., None] <= edges).sum(-1)
        buckets = np.minimum(np.searchsorted(ranks, np.asarray(level_ranks), side="right"), table.shape[1] - 1)
        return table[min(depth, len(table)) - 1][buckets, bins]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{k: _tuples(v) for k, v in data.items()})
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: not a saved Calibration ({err})") from None


def level_ranks(scores: np.ndarray) -> np.ndarray:
    """Each node's rank by path score among the nodes of its level (0: the best; ties to the
    earlier node, as EAGLE-2's top-k keeps them). Calibration and decisions both use it."""
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[np.argsort(-np.asarray(scores), kind="stable")] = np.arange(len(scores))
    return ranks


def _tuples(value):
    """Nested lists (JSON, numpy's tolist) as nested tuples, so a calibration is immutable."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class AutoTreeConfig(TreeConfig):
    """A cost-aware tree: ``num_nodes``, ``max_depth`` and ``top_k`` are now limits, and each
    cycle picks its depth and verify budget (module docstring). Build it with
    :meth:`AutoTreeConfig.from_calibration`."""

    costs: CostModel | None = field(default=None, compare=False)
    calibration: Calibration | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.costs, CostModel):
            raise TypeError(f"AutoTreeConfig.costs must be a CostModel (eagle3_ref.costaware.costs.measure_costs), "
                            f"got {type(self.costs).__name__}")
        if not isinstance(self.calibration, Calibration):
            raise TypeError(f"AutoTreeConfig.calibration must be a Calibration (eagle3_ref.costaware.auto_tree.calibrate), "
                            f"got {type(self.calibration).__name__}")

    @classmethod
    def from_calibration(cls, costs: CostModel, calibration: Calibration, *, max_nodes: int | None = None,
                         max_depth: int = 8) -> "AutoTreeConfig":
        """The cost-aware tree of ``costs`` (:func:`eagle3_ref.costaware.measure_costs` or
        ``CostModel.load``) and ``calibration`` (:func:`calibrate` or ``Calibration.load``): each
        cycle chooses its depth (up to ``max_depth``) and how many nodes to verify (up to
        ``max_nodes``, default: the largest tree ``costs`` measured; never more than the candidate
        pool holds). ``top_k`` is the calibration's."""
        check_instance("costs", costs, CostModel, " (eagle3_ref.costaware.measure_costs or CostModel.load)")
        check_instance("calibration", calibration, Calibration, " (eagle3_ref.costaware.calibrate)")
        if costs.top_k != calibration.top_k:
            raise ValueError(f"calibration was measured with top_k={calibration.top_k}, costs with "
                             f"top_k={costs.top_k}: measure both with the same top_k")
        check_int("max_depth", max_depth, 1)
        if max_nodes is not None:
            check_int("max_nodes", max_nodes, 2)
        k = calibration.top_k
        pool = k + (max_depth - 1) * k * k
        limit = min(max_nodes if max_nodes is not None else max(2, *costs.verify_ms), pool + 1)  # a limit, not a goal
        return cls(num_nodes=limit, max_depth=max_depth, top_k=k, costs=costs, calibration=calibration)

    @cached_property
    def _ms(self) -> tuple[np.ndarray, np.ndarray]:
        """``costs.verify(n)`` for n = 1 .. num_nodes and ``draft(levels) + accept_ms`` for
        levels = 0 .. max_depth, computed once (decisions run every level)."""
        verify = np.array([self.costs.verify(n) for n in range(1, self.num_nodes + 1)])
        rest = np.array([self.costs.draft(levels) + self.costs.accept_ms if levels else 0.0
                         for levels in range(self.max_depth + 1)])
        return verify, rest

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    @property
    def calibrated_temperature(self) -> float:
        """The temperature its acceptance estimates hold at: its calibration's."""
        return self.calibration.temperature

    @cached_property
    def drafting_gain(self) -> float:
        """The most drafting to a fixed depth could gain over plain decoding, measured the most
        generous way: for each depth ``d``, the whole candidate pool's acceptance to depth
        ``d`` (``calibration.pool_tau``) at the cost of a chain that deep, over a plain step's
        rate; the best depth's. Infinite when the calibration has no ``pool_tau``.

        Below 1 (:attr:`drafts` False), no depth pays even so: only foresight of each
        cycle's outcome could (:func:`speedup_bound`), and the per-cycle decisions, which
        have none, lose to plain decoding. The toy at temperature 1 on a 2-core CPU is such
        a case (0.88-0.95). :func:`eagle3_ref.speculative_generate` then decodes plainly."""
        if not self.calibration.pool_tau:
            return math.inf
        costs = self.costs
        return max(tau / costs.cycle(d, d + 1) for d, tau in enumerate(self.calibration.pool_tau, 1)) * costs.plain_ms

    @property
    def drafts(self) -> bool:
        """Whether this tree drafts at all here (:attr:`drafting_gain` at least 1)."""
        return self.drafting_gain >= 1

    def grow(self, root_token: int, root_logprobs: Tensor, propose: Propose, d2t: Tensor | None = None) -> DraftTree:
        return grow_tree_auto(root_token, root_logprobs, propose, self, d2t)

    def describe(self) -> dict:
        return {"auto": True, "max_nodes": self.num_nodes, "max_depth": self.max_depth, "top_k": self.top_k,
                "temperature": self.temperature, "drafts": self.drafts}

    # -- the two decisions -------------------------------------------------------------

    def best_budget(self, p, levels: int) -> tuple[int, float]:
        """(n, expected tokens per ms) for the best verify budget ``n`` (root included), given
        the acceptance ``p`` of the candidates in the order the tree keeps them (highest first)
        and ``levels`` drafted."""
        verify, rest = self._ms
        p = np.asarray(p, dtype=np.float64)[: self.num_nodes - 1]
        tokens = 1 + np.concatenate([[0.0], np.cumsum(p)])  # n = 1 .. len + 1
        rate = tokens / np.maximum(verify[: len(tokens)] + rest[levels], 1e-9)
        rate[0] = -math.inf  # at least one draft: a cycle verifying the root alone is plain decoding, dearer
        best = int(rate.argmax())
        return best + 1, float(rate[best])

    def keep_drafting(self, p: np.ndarray, frontier_p: np.ndarray, levels: int) -> bool:
        """Draft level ``levels + 1``? ``p``: the candidates' acceptance so far, highest first;
        ``frontier_p``: the frontier's. Only if going ``j`` levels deeper, for some ``j`` up to
        ``max_depth``, raises the best rate. Level ``levels + i`` is estimated as one node per
        frontier node, accepted with ``child_rate ** i`` times its frontier node's probability
        (an accepted node's best child is accepted with probability about ``child_rate``).
        Looking one level ahead only stops too early: a level that does not pay alone can pay
        with the ones after it."""
        more = self.max_depth - levels
        if more <= 0:
            return False
        verify, rest = self._ms
        ahead = np.arange(1, more + 1)[:, None]  # (more, 1): levels ahead
        virtual_p = (self.calibration.child_rate**ahead * frontier_p[None, :]).ravel()
        order = np.argsort(-np.concatenate([p, virtual_p]), kind="stable")
        p_all = np.concatenate([p, virtual_p])[order]
        level_of = np.concatenate([np.zeros(len(p), dtype=np.int64), np.repeat(ahead.ravel(), len(frontier_p))])[order]
        # row j: the candidates there would be with j more levels, in the order the tree keeps them;
        # each one a budget: n - 1 = how many candidates up to it, tokens = 1 + their p
        seen = level_of[None, :] <= np.arange(more + 1)[:, None]  # (more + 1, M)
        count = np.cumsum(seen, axis=1)
        tokens = 1 + np.cumsum(np.where(seen, p_all, 0.0), axis=1)
        usable = seen & (count <= self.num_nodes - 1)
        ms = verify[np.minimum(count, self.num_nodes - 1)] + rest[levels + np.arange(more + 1)][:, None]
        best = np.where(usable, tokens / np.maximum(ms, 1e-9), -math.inf).max(axis=1)
        return bool((best[1:] > best[0]).any())


def grow_tree_auto(root_token: int, root_logprobs: Tensor, propose: Propose, config: AutoTreeConfig,
                   d2t: Tensor | None = None) -> DraftTree:
    """EAGLE-2's expansion level by level (as :func:`eagle3_ref.tree.grow_tree`), deciding after
    each whether to go on; then the verify budget ``n``, and the ``n - 1`` candidates of highest
    acceptance (:func:`eagle3_ref.tree.rerank` by it). A node's acceptance is its calibrated
    rate, capped by its parent's (a node is accepted only with its parent), so the kept set is
    closed under ancestors: a subtree of EAGLE-2's pool (a test checks it node by node)."""
    k, keep = config.top_k, config.num_nodes - 1
    if k > root_logprobs.shape[-1]:
        raise ValueError(f"TreeConfig.top_k ({k}) exceeds the draft vocabulary ({root_logprobs.shape[-1]} tokens)")
    calibrated = config.calibration.p
    pool = Pool([root_token], [-1], [0])
    root = torch.zeros(1, dtype=torch.long, device=root_logprobs.device)
    level = expand_level(root, root_logprobs.new_zeros(1), root_logprobs[None], k, 1)  # level 1
    pool.add_level(level, 1)
    score_chunks = [root_logprobs.new_zeros(1), level.scores]  # the pool's scores, level by level
    scores = level.scores.double().cpu().numpy()
    accept = np.concatenate([[1.0], calibrated(scores, 1, level_ranks(scores))])  # every pool node's, root first
    # the candidates that could still be verified: the best `keep` acceptances, highest first (a
    # candidate outside them now stays outside: later ones only add competition)
    p = -np.sort(-accept[1:], kind="stable")[:keep]
    levels = 1
    while config.keep_drafting(p, accept[level.frontier.cpu().numpy()], levels):
        levels += 1
        logprobs = propose(level.frontier.tolist(), pool)  # (k, V_d)
        level = expand_level(level.frontier, level.frontier_scores, logprobs, k, len(pool.tokens))
        pool.add_level(level, levels)
        score_chunks.append(level.scores)
        scores = level.scores.double().cpu().numpy()
        parents = level.parents.cpu().numpy()
        level_accept = np.minimum(calibrated(scores, levels, level_ranks(scores)), accept[parents])
        accept = np.concatenate([accept, level_accept])
        p = -np.sort(-np.concatenate([p, level_accept]), kind="stable")[:keep]
    n, _ = config.best_budget(p, levels)
    return rerank(pool, torch.cat(score_chunks), n, d2t, rank_by=torch.from_numpy(accept))


# ----------------------------------------------------------------------------------------
# Calibration: how often nodes of each score are accepted, on real cycles
# ----------------------------------------------------------------------------------------


class _Recorder:
    """A drafter that drafts the whole candidate pool and remembers the last tree."""

    def __init__(self, head, top_k: int, max_depth: int) -> None:
        from ..tree import HeadDrafter

        self.inner = HeadDrafter(head)
        self.config = TreeConfig(num_nodes=1 + top_k + (max_depth - 1) * top_k**2, max_depth=max_depth, top_k=top_k)
        self.last: DraftTree | None = None  # only the last: a pool tree's mask is (n, n), n in the hundreds

    def draft(self, features, input_ids, config, state):
        tree, state = self.inner.draft(features, input_ids, self.config, state)
        self.last = tree
        return tree, state


def _accepted_nodes(tree: DraftTree, tokens: list[int]) -> list[int]:
    """The tree nodes (root excluded) on the path the cycle accepted: ``tokens`` are what it
    appended (accepted drafts, then the bonus token)."""
    node, path = 0, []
    for token in tokens[:-1]:
        children = [c for c in tree.children(node) if int(tree.tokens[c]) == token]
        if not children:
            break
        node = children[0]
        path.append(node)
    return path


@torch.no_grad()
def calibrate(target: nn.Module, head, prompts: list[Tensor], *, temperature: float = 0.0, top_p: float = 1.0,
              top_k_sampling: int = 0, top_k: int = 10, max_depth: int = 8, max_new_tokens: int = 64,
              seed: int = 0) -> Calibration:
    """Measure a :class:`Calibration`: decode ``prompts`` verifying the whole candidate pool
    (``top_k`` wide, ``max_depth`` deep) at ``temperature``, and count, per depth, rank in the
    level and score bin, how many nodes the target accepted; and how often an accepted
    frontier node had an accepted child. The target's warped distribution (temperature,
    ``top_p``, ``top_k_sampling``) is the one verification uses, so the rates are the warped
    ones."""
    from ..fusion import default_aux_layer_ids, num_decoder_layers
    from ..generate import decode_cycle, prefill
    from ..verify import Picker

    check_number("temperature", temperature, 0)
    check_int("max_depth", max_depth, 1)
    hits = np.zeros((max_depth, len(RANKS), len(EDGES)), dtype=np.int64)  # [depth - 1][rank bucket][bin]
    totals = np.zeros_like(hits)
    expanded = expanded_hits = 0
    pool_tokens, cycles = [0] * max_depth, 0
    recorder = _Recorder(head, top_k, max_depth)
    layer_ids = getattr(head.config, "aux_layer_ids", None) or default_aux_layer_ids(num_decoder_layers(target))
    generator = torch.Generator(device=prompts[0].device).manual_seed(seed)
    pick = Picker(temperature, top_k_sampling, top_p, generator)
    edges, rank_starts = np.asarray(EDGES[1:]), np.asarray(RANKS[1:])
    for prompt in prompts:
        state = prefill(target, prompt, layer_ids, pick, set(), max_new_tokens)
        produced = 1
        while produced < max_new_tokens:
            state, tokens = decode_cycle(target, recorder, state, recorder.config, layer_ids, pick, set(),
                                         max_new_tokens - produced)
            produced += len(tokens)
            if produced >= max_new_tokens:
                break  # the last cycle may be cut by the length limit: not a fair sample
            tree = recorder.last
            path = _accepted_nodes(tree, tokens)
            accepted, cycles = set(path), cycles + 1
            for d in range(1, max_depth + 1):
                pool_tokens[d - 1] += 1 + min(len(path), d)
            scores, depths = tree.scores[1:].double().numpy(), tree.tree_position_ids[1:].numpy()
            ranks = np.empty_like(depths)  # the pool tree keeps pool order, so a level's ties too
            for d in range(1, max_depth + 1):
                level = np.nonzero(depths == d)[0]
                ranks[level] = level_ranks(scores[level])
            cell = (depths - 1, np.searchsorted(rank_starts, ranks, side="right"), (scores[:, None] <= edges).sum(-1))
            np.add.at(totals, cell, 1)
            np.add.at(hits, cell, np.isin(np.arange(1, tree.num_nodes), list(accepted)))
            for node in accepted:
                if tree.children(node):  # a frontier node: expanded with its top_k children
                    expanded += 1
                    expanded_hits += any(c in accepted for c in tree.children(node))
    return Calibration(float(temperature), acceptance_rates(hits, totals), expanded_hits / expanded if expanded else 0.0,
                       top_k, totals.tolist(), hits.tolist(), tuple(t / cycles if cycles else 1.0 for t in pool_tokens))


def acceptance_rates(hits: np.ndarray, totals: np.ndarray, prior: float = 2.0) -> np.ndarray:
    """Acceptance rates indexed ``[depth, rank bucket, score bin]`` from the counted ``hits`` and
    ``totals`` (same shape), each row monotone in the score. A cell
    with few nodes leans on its depth's rate for the bin over all ranks, and that on the bin's
    rate over everything (``prior`` pseudo-nodes each); a bin empty everywhere takes its better
    neighbour's rate."""
    pooled = []
    for h, t in zip(hits.sum((0, 1)), totals.sum((0, 1))):
        pooled.append(h / t if t else (pooled[-1] if pooled else 1.0))
    by_depth = (hits.sum(1) + prior * np.asarray(pooled)) / (totals.sum(1) + prior)  # [depth][bin]
    rates = (hits + prior * by_depth[:, None, :]) / (totals + prior)
    return np.array([[nonincreasing_fit(list(row), list(weights + prior)) for row, weights in zip(depth, depth_totals)]
                     for depth, depth_totals in zip(rates, totals)])


def speedup_bound(costs: CostModel, calibration: Calibration, *, may_skip: bool = False
                  ) -> tuple[float, tuple[int, ...]]:
    """An upper bound on the speedup over plain decoding of any decoding that drafts from the
    calibration's candidate pool, even one told each cycle's outcome in advance (an oracle);
    and the oracle's plan.

    In a cycle where the target would accept ``a`` drafts of the whole pool, a tree from the
    pool accepts ``j <= a`` of them, and costs at least a chain's cycle that appends them:
    ``c(j)`` = drafting ``max(j, 1)`` levels, verifying ``j + 1`` tokens, the accept part. With
    ``h[a]`` the share of cycles whose pool accepts ``a`` (from ``pool_tau``: P(a >= d) =
    ``pool_tau[d - 1] - pool_tau[d - 2]``), the oracle picks ``j`` for each ``a`` to maximise
    tokens per millisecond, ``sum h[a] (1 + j_a) / sum h[a] c(j_a)``, by Dinkelbach's iteration
    (``plan[a] = j_a``). Any tree policy, fixed or chosen per cycle like
    :class:`AutoTreeConfig`, does no better.

    ``may_skip``: the oracle may also spend a cycle on a plain step, drafting nothing
    (``c(0)`` = a one-token forward): a bound for any decoding at all, speculative or not.

    Both assume the cycles any policy meets accept like the calibration's cycles did. If even
    this oracle is below a goal, nothing meets the goal on this machine."""
    if not calibration.pool_tau:
        raise ValueError("calibration has no pool_tau (measure it with eagle3_ref.costaware.auto_tree.calibrate)")
    if not isinstance(may_skip, bool):
        raise TypeError(f"may_skip must be True or False, got {may_skip!r}")
    at_least = np.diff(np.concatenate([[1.0], calibration.pool_tau]))  # [d - 1]: P(a >= d)
    share = np.clip(-np.diff(np.concatenate([[1.0], at_least, [0.0]])), 0.0, None)  # [a]: P(a), a = 0 .. depth
    cost = np.array([costs.plain_ms if may_skip else costs.cycle(1, 1)]
                    + [costs.cycle(j, j + 1) for j in range(1, len(at_least) + 1)])
    tokens = 1.0 + np.arange(len(cost))
    rate, plan = 0.0, None
    for _ in range(100):  # Dinkelbach: each step raises the rate; a few steps reach the best
        plan = [int(np.argmax(tokens[: a + 1] - rate * cost[: a + 1])) for a in range(len(share))]
        new = float(share @ tokens[plan] / (share @ cost[plan]))
        if new <= rate * (1 + 1e-12):
            break
        rate = new
    return rate * costs.plain_ms, tuple(plan)
