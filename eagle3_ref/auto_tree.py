"""A tree sized to the machine and the moment: EAGLE-2's tree, with its depth and its verify
budget chosen in every cycle from the draft's own scores and the measured costs.

EAGLE-2 observed that a node's path score (the sum of the draft's log-probabilities along
its path) tracks the chance the target accepts it. A fixed tree ignores what that chance
and the machine say about the cycle at hand. Here, two decisions are made in each cycle:

    calibrate  a node of path score s is accepted with probability c(s), measured per
               temperature on real cycles (:class:`Calibration`, monotone in s)
    depth      after each level, draft another only if the best expected tokens per
               millisecond with it beats the best without it; the next level's expected
               acceptance is estimated as alpha * sum of c over the frontier (alpha: the
               measured chance that an accepted frontier node has an accepted child among
               its top_k)
    budget     verify the n nodes of highest score (ancestor-closed, as EAGLE-2's rerank),
               with n maximising  (1 + sum of their c) / cycle_ms(depth, n)

Expected tokens of a tree are exact by linearity: a cycle appends 1 + the number of
accepted nodes, so E = 1 + sum over nodes of P(node accepted). And P(node accepted) does
not depend on which of its siblings are kept: at temperature 0 a node is accepted iff its
path is the target's greedy continuation; with sampling, EAGLE's rule tries siblings in
turn and accepts sibling x with probability p(x) whatever was tried before it (a rejected
sibling's mass is removed and the rest renormalised). So one calibration serves every
pruned tree.

Still lossless: the tree this builds is exactly EAGLE-2's tree for ``TreeConfig(num_nodes=n,
max_depth=depth, top_k)`` on the same log-probs (it is built by :func:`grow_tree` itself, on
the recorded proposals), and the proofs hold for any tree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor, nn

from ._checks import check_int, check_number
from .costs import CostModel
from .tree import DraftTree, Pool, Propose, TreeConfig, _best, grow_tree

__all__ = ["Calibration", "AutoTreeConfig", "grow_tree_auto", "calibrate", "speedup_bound"]

# score bins (cumulative log-prob of the draft), best first
EDGES = (0.0, -0.05, -0.1, -0.2, -0.35, -0.5, -0.75, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0, -9.0)


@dataclass(frozen=True)
class Calibration:
    """P(node accepted) as a function of its path score, at one temperature.

    ``pool_tau[d - 1]`` is the acceptance length of the whole candidate pool cut at depth
    ``d``: no tree of that depth drawn from the pool accepts more on average (see
    :func:`speedup_bound`).

    ``accept[i]`` is the measured acceptance rate of nodes with score in
    ``(edges[i + 1], edges[i]]`` (the last bin: below ``edges[-1]``), made non-increasing
    (pool-adjacent violators), so a child, whose score is never above its parent's, is never
    calibrated above it. ``child_rate``: P(an accepted frontier node has an accepted child
    among its ``top_k`` best).
    """

    temperature: float
    accept: tuple[float, ...]
    child_rate: float
    top_k: int
    counts: tuple[int, ...] = ()
    pool_tau: tuple[float, ...] = ()  # [d - 1]: mean tokens per cycle of the whole pool cut at depth d
    edges: tuple[float, ...] = EDGES

    def __post_init__(self) -> None:
        check_number("Calibration.temperature", self.temperature, 0)
        check_number("Calibration.child_rate", self.child_rate, 0, 1)
        check_int("Calibration.top_k", self.top_k, 1)
        if len(self.accept) != len(self.edges):
            raise ValueError(f"Calibration.accept needs one rate per bin ({len(self.edges)}), got {len(self.accept)}")
        for i, rate in enumerate(self.accept):
            check_number(f"Calibration.accept[{i}]", rate, 0, 1)
        if any(b > a for a, b in zip(self.accept, self.accept[1:])):
            raise ValueError(f"Calibration.accept must not increase as scores fall, got {self.accept}")

    def p(self, scores: Tensor) -> Tensor:
        """Calibrated acceptance probability of nodes with these path scores."""
        edges = torch.tensor(self.edges[1:], dtype=torch.float64)
        bins = (scores.double().cpu()[..., None] <= edges).sum(-1)
        return torch.tensor(self.accept, dtype=torch.float64)[bins]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: not a saved Calibration ({err})") from None


def _monotone(rates: list[float], weights: list[int]) -> list[float]:
    """Pool-adjacent violators: the closest non-increasing sequence (weighted least squares)."""
    blocks = []  # [value, weight, length]
    for r, w in zip(rates, weights):
        blocks.append([r, max(w, 1e-9), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [v for v, _, n in blocks for _ in range(n)]


@dataclass(frozen=True)
class AutoTreeConfig(TreeConfig):
    """A cost-aware tree: ``num_nodes``, ``max_depth`` and ``top_k`` are now limits, and each
    cycle picks its depth and verify budget (module docstring). Build it with
    :meth:`TreeConfig.auto`."""

    costs: CostModel | None = field(default=None, compare=False)
    calibration: Calibration | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.costs, CostModel):
            raise TypeError(f"AutoTreeConfig.costs must be a CostModel (eagle3_ref.costs.measure_costs), "
                            f"got {type(self.costs).__name__}")
        if not isinstance(self.calibration, Calibration):
            raise TypeError(f"AutoTreeConfig.calibration must be a Calibration (eagle3_ref.auto_tree.calibrate), "
                            f"got {type(self.calibration).__name__}")

    @cached_property
    def _verify_ms(self) -> Tensor:
        """``costs.verify(n)`` for n = 1 .. num_nodes, computed once (decisions run every level)."""
        return torch.tensor([self.costs.verify(n) for n in range(1, self.num_nodes + 1)], dtype=torch.float64)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    def grow(self, root_token: int, root_logprobs: Tensor, propose: Propose, d2t: Tensor | None = None) -> DraftTree:
        return grow_tree_auto(root_token, root_logprobs, propose, self, d2t)

    def describe(self) -> dict:
        return {"auto": True, "max_nodes": self.num_nodes, "max_depth": self.max_depth, "top_k": self.top_k,
                "temperature": self.temperature}

    # -- the two decisions -------------------------------------------------------------

    def best_budget(self, p: Tensor, levels: int) -> tuple[int, float]:
        """(n, expected tokens per ms) for the best verify budget ``n`` (root included), given
        the calibrated acceptance ``p`` of the candidates (any order) and ``levels`` drafted."""
        ranked = torch.sort(p, descending=True).values[: self.num_nodes - 1]
        tokens = 1 + torch.cat([p.new_zeros(1), ranked.cumsum(0)])  # n = 1 .. len + 1
        ms = self._verify_ms[: len(tokens)] + (self.costs.draft(levels) + self.costs.accept_ms)
        rate = tokens / ms.clamp_min(1e-9)
        rate[0] = -math.inf  # at least one draft: a cycle verifying the root alone is plain decoding, dearer
        best = int(rate.argmax())
        return best + 1, float(rate[best])

    def keep_drafting(self, p: Tensor, frontier_p: Tensor, levels: int) -> bool:
        """Draft level ``levels + 1``? Only if going ``j`` levels deeper, for some ``j`` up to
        ``max_depth``, raises the best rate. Level ``levels + i`` is estimated as one node per
        frontier node, with ``child_rate ** i`` times its acceptance (an accepted node's best
        child is accepted with probability about ``child_rate``). Looking one level ahead only
        stops too early: a level that does not pay alone can pay with the ones after it."""
        _, now = self.best_budget(p, levels)
        alpha, virtual = self.calibration.child_rate, [p]
        for i in range(1, self.max_depth - levels + 1):
            virtual.append(alpha**i * frontier_p)
            if self.best_budget(torch.cat(virtual), levels + i)[1] > now:
                return True
        return False


def grow_tree_auto(root_token: int, root_logprobs: Tensor, propose: Propose, config: AutoTreeConfig,
                   d2t: Tensor | None = None) -> DraftTree:
    """EAGLE-2's expansion level by level, deciding after each whether to go on; then the
    verify budget. The tree itself is :func:`grow_tree`'s for the chosen shape, replayed on the
    recorded proposals, so nothing of EAGLE-2's rerank is re-implemented here."""
    k = config.top_k
    if k > root_logprobs.shape[-1]:
        raise ValueError(f"TreeConfig.top_k={k} exceeds the draft vocabulary ({root_logprobs.shape[-1]} tokens)")
    calibrated = config.calibration.p
    pool = Pool([root_token], [-1], [0])
    first = _best(root_logprobs, k)
    scores = [root_logprobs[first]]  # candidates' path scores, level by level
    pool.tokens.extend(first.tolist()), pool.parents.extend([0] * k), pool.depths.extend([1] * k)
    frontier, frontier_scores = list(range(1, k + 1)), scores[-1]
    proposals = []
    levels = 1
    while config.keep_drafting(calibrated(torch.cat(scores)), calibrated(frontier_scores), levels):
        levels += 1
        logprobs = propose(frontier, pool)  # (k, V_d)
        proposals.append(logprobs)
        top = _best(logprobs, k)
        cumulative = (frontier_scores[:, None] + logprobs.gather(1, top)).flatten()
        first_child = len(pool.tokens)
        pool.tokens.extend(top.flatten().tolist())
        pool.parents.extend([f for f in frontier for _ in range(k)])
        pool.depths.extend([levels] * (k * k))
        scores.append(cumulative)
        best = _best(cumulative, k)
        frontier, frontier_scores = (first_child + best).tolist(), cumulative[best]
    n, _ = config.best_budget(calibrated(torch.cat(scores)), levels)
    replay = iter(proposals)
    return grow_tree(root_token, root_logprobs, lambda _frontier, _pool: next(replay),
                     TreeConfig(num_nodes=n, max_depth=levels, top_k=k), d2t)


# ----------------------------------------------------------------------------------------
# Calibration: how often nodes of each score are accepted, on real cycles
# ----------------------------------------------------------------------------------------


class _Recorder:
    """A drafter that drafts the whole candidate pool and remembers the last tree."""

    def __init__(self, head, top_k: int, max_depth: int) -> None:
        from .tree import HeadDrafter

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
    (``top_k`` wide, ``max_depth`` deep) at ``temperature``, and count, per score bin, how
    many nodes the target accepted; and how often an accepted frontier node had an accepted
    child. The target's warped distribution (temperature, ``top_p``, ``top_k_sampling``) is
    the one verification uses, so the rates are the warped ones."""
    from .fusion import default_aux_layer_ids, num_decoder_layers
    from .generate import _Picker, decode_cycle, prefill

    check_number("temperature", temperature, 0)
    hits, totals = [0] * len(EDGES), [0] * len(EDGES)
    expanded = expanded_hits = 0
    pool_tokens, cycles = [0] * max_depth, 0
    recorder = _Recorder(head, top_k, max_depth)
    layer_ids = getattr(head.config, "aux_layer_ids", None) or default_aux_layer_ids(num_decoder_layers(target))
    generator = torch.Generator(device=prompts[0].device).manual_seed(seed)
    pick = _Picker(temperature, top_k_sampling, top_p, generator)
    edges = torch.tensor(EDGES[1:], dtype=torch.float64)
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
            bins = (tree.scores[1:].double()[:, None] <= edges).sum(-1)
            for node, b in enumerate(bins.tolist(), start=1):
                totals[b] += 1
                hits[b] += node in accepted
            for node in accepted:
                if tree.children(node):  # a frontier node: expanded with its top_k children
                    expanded += 1
                    expanded_hits += any(c in accepted for c in tree.children(node))
    rates = [h / t if t else 0.0 for h, t in zip(hits, totals)]
    for i in range(len(rates)):  # an empty bin takes its better neighbour's rate (then monotone)
        if not totals[i]:
            rates[i] = rates[i - 1] if i else 1.0
    return Calibration(float(temperature), tuple(_monotone(rates, totals)),
                       expanded_hits / expanded if expanded else 0.0, top_k, tuple(totals),
                       tuple(t / cycles if cycles else 1.0 for t in pool_tokens))


def speedup_bound(costs: CostModel, calibration: Calibration) -> tuple[float, int]:
    """An upper bound on the speedup over plain decoding of any tree drawn from the
    calibration's candidate pool, and the depth where it is reached.

    A tree of depth ``d`` accepts at most what the whole pool cut at depth ``d`` accepts
    (``pool_tau[d - 1]``: every node's acceptance is the same in the pool and in the tree),
    and costs at least drafting ``d`` levels, verifying ``d + 1`` tokens (a chain) and the
    accept part. Pairing the pool's tau with a chain's cost is an oracle no real tree
    reaches: if even this is below a goal, no tree meets the goal on this machine."""
    if not calibration.pool_tau:
        raise ValueError("calibration has no pool_tau (measure it with eagle3_ref.auto_tree.calibrate)")
    bounds = [(tau * costs.plain_ms / costs.cycle(d, d + 1), d) for d, tau in enumerate(calibration.pool_tau, 1)]
    return max(bounds)
