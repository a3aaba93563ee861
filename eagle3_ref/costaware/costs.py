"""What a decoding cycle costs on this machine: the cost model behind the cost-aware tree.

A cycle of EAGLE-3 pays three prices, and their ratio decides which tree is fastest:

    draft    the head's forward over the slots it has not seen, then one forward per
             further level of the tree (``top_k`` frontier nodes at once), plus the
             tree's own bookkeeping (top-k, pool, masks)
    verify   one target forward over the ``n`` tree tokens
    accept   verification's choice, cache compaction, the loop's own Python

On a GPU an 8B target's forward costs about the same for 1 and 60 tokens (memory-bound),
so big trees are nearly free; on a 2-core CPU the toy's forward over 60 tokens costs 2.7
one-token forwards, and the best tree is small. Work since EAGLE-2 sizes the tree from such
a table instead of by hand (Sequoia: a hardware-aware tree; SpecDec++ and the cost-model
plugins of serving engines: a draft length and a verify budget from the draft's scores and
measured costs). :class:`CostModel` is that table, measured here, savable as JSON; the
decisions that use it are in :mod:`eagle3_ref.costaware.auto_tree`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..fusion import default_aux_layer_ids, num_decoder_layers, select_features
from ..generate import compact_cache, speculative_generate, tree_attention_mask
from ..targets import cache_kwargs, new_target_cache
from ..timing import machine_description, sync
from ..tree import TreeConfig, build_draft_tree

__all__ = ["CostModel", "measure_costs", "tree_verify_call", "nonincreasing_fit", "nondecreasing_fit"]


def _interpolate(table: dict[int, float], x: float) -> float:
    """Piecewise-linear through the measured points; linear extrapolation past the ends."""
    xs = sorted(table)
    if len(xs) == 1:
        return table[xs[0]]
    i = max(1, min(len(xs) - 1, sum(x > p for p in xs)))
    x0, x1 = xs[i - 1], xs[i]
    return table[x0] + (table[x1] - table[x0]) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class CostModel:
    """Milliseconds of each part of a cycle, as measured on one machine for one target/head pair.

    ``verify_ms[n]``: one target forward over ``n`` tree tokens after a prefix (``n = 1`` is
    also a plain decoding step). ``draft_ms[d]``: drafting a tree ``d`` levels deep with
    ``top_k`` frontier nodes per level (the head's prefix forward, its per-level forwards and
    the tree bookkeeping). ``accept_ms``: the rest of a cycle. Values between the measured
    points are interpolated linearly.
    """

    verify_ms: dict[int, float]
    draft_ms: dict[int, float]
    accept_ms: float
    top_k: int
    machine: str = ""

    def __post_init__(self) -> None:
        for name in ("verify_ms", "draft_ms"):
            table = getattr(self, name)
            if not isinstance(table, dict) or not table:
                raise ValueError(f"CostModel.{name} must be a non-empty dict of size -> milliseconds, got {table!r}")
            for key, value in table.items():
                if isinstance(key, bool) or not isinstance(key, int) or key < 1:
                    raise ValueError(f"CostModel.{name} keys must be ints >= 1, got {key!r}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                    raise ValueError(f"CostModel.{name}[{key}] must be a finite number of ms >= 0, got {value!r}")
        if isinstance(self.accept_ms, bool) or not isinstance(self.accept_ms, (int, float)) or \
                not 0 <= self.accept_ms < float("inf"):
            raise ValueError(f"CostModel.accept_ms must be a finite number of ms >= 0, got {self.accept_ms!r}")
        check_int("CostModel.top_k", self.top_k, 1)

    def verify(self, n: int) -> float:
        """ms of one target forward over ``n`` tree tokens."""
        return max(0.0, _interpolate(self.verify_ms, n))

    def draft(self, levels: int) -> float:
        """ms of drafting ``levels`` levels (``top_k`` wide)."""
        return max(0.0, _interpolate(self.draft_ms, levels))

    def cycle(self, levels: int, nodes: int) -> float:
        """ms of a whole cycle: draft ``levels`` levels, verify ``nodes`` tokens (the root included)."""
        return self.draft(levels) + self.verify(nodes) + self.accept_ms

    @property
    def plain_ms(self) -> float:
        """ms of one plain decoding step: a one-token target forward."""
        return self.verify(1)

    def speedup(self, tau: float, levels: int, nodes: int) -> float:
        """The speedup over plain decoding of cycles of this shape that append ``tau`` tokens."""
        return tau * self.plain_ms / self.cycle(levels, nodes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "CostModel":
        try:
            data = json.loads(Path(path).read_text())
            data["verify_ms"] = {int(k): v for k, v in data["verify_ms"].items()}
            data["draft_ms"] = {int(k): v for k, v in data["draft_ms"].items()}
            return cls(**data)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a saved CostModel ({err})") from None


@torch.no_grad()
def measure_costs(target: nn.Module, head, *, top_k: int = 10, max_depth: int = 8,
                  sizes: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64), prefix: int = 128,
                  repeats: int = 15) -> CostModel:
    """Measure a :class:`CostModel` for ``target`` and ``head`` on their device (median of
    ``repeats`` timings each, taken round-robin after a warm-up, then made non-decreasing):
    target forwards over each of ``sizes`` tree tokens after a ``prefix``-token cache;
    drafting 1, 2, 4 and ``max_depth`` levels of ``top_k``; and the accept part of a few real
    cycles."""
    check_int("top_k", top_k, 1)
    check_int("max_depth", max_depth, 1)
    device = next(target.parameters()).device
    vocab = target.config.vocab_size
    ids = torch.randint(0, vocab, (1, prefix + max(sizes)), generator=torch.Generator().manual_seed(0)).to(device)

    def clock(fns: dict) -> dict:
        """Median ms of each function; the repeats go round-robin, so a machine that speeds up
        or slows down while this runs shifts every size alike instead of bending the curve."""
        times = {key: [] for key in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(repeats):
            for key, fn in fns.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[key].append(1000 * (time.perf_counter() - start))
        return {key: sorted(t)[len(t) // 2] for key, t in times.items()}

    cache = new_target_cache(target)
    out = target(input_ids=ids[:, :prefix], **cache_kwargs(target, cache), use_cache=True, output_hidden_states=True)

    # drafting: the head has seen the prefix but its last 4 slots (about what a cycle accepts)
    layer_ids = head.config.aux_layer_ids or default_aux_layer_ids(num_decoder_layers(target))
    features = select_features(out.hidden_states, layer_ids).to(head.fc.weight.dtype)
    seen = build_draft_tree(head, features[:, :prefix - 5], ids[:, :prefix - 4], TreeConfig(2, 1, 1)).draft_cache
    sequence = ids[:, :prefix + 1]

    def draft(levels: int):
        config = TreeConfig(num_nodes=2, max_depth=levels, top_k=top_k)
        return lambda: build_draft_tree(head, features[:, prefix - 5:], sequence, config, seen)

    # one round-robin for both: a verify and a draft measured minutes apart on a shared machine
    # can be 1.5x apart in speed, and the decisions weigh one against the other
    ms = clock({**{("verify", n): tree_verify_call(target, cache, ids, prefix, n) for n in sizes},
                **{("draft", levels): draft(levels) for levels in sorted({1, 2, 4, max_depth})}})
    verify_ms = nondecreasing_fit({n: v for (kind, n), v in ms.items() if kind == "verify"})
    draft_ms = nondecreasing_fit({levels: v for (kind, levels), v in ms.items() if kind == "draft"})

    prompt = ids[:, :32]
    result = speculative_generate(target, head, prompt, max_new_tokens=24, tree=TreeConfig(8, 4, 2))
    cycles = max(len(result.accepted_lengths), 1)
    accept_ms = 1000 * result.timings["accept"] / cycles
    return CostModel(verify_ms, draft_ms, accept_ms, top_k, machine_description(device))


def tree_verify_call(target: nn.Module, cache, ids: Tensor, prefix: int, n: int) -> Callable[[], None]:
    """A function that verifies an ``n``-node tree (a chain, with its 4D mask and positions) on
    ``cache``, which holds ``ids[:, :prefix]``, then compacts the cache back to the prefix: what
    one cycle's verification costs, repeatable. ``ids (1, >= prefix + n)``."""
    device, dtype = ids.device, next(target.parameters()).dtype
    mask = tree_attention_mask(torch.ones(n, n, dtype=torch.bool, device=device).tril(), prefix, dtype)
    position_ids = torch.arange(prefix, prefix + n, device=device)[None]

    def run() -> None:
        target(input_ids=ids[:, prefix:prefix + n], **cache_kwargs(target, cache), use_cache=True,
               attention_mask=mask, position_ids=position_ids, output_hidden_states=True)
        compact_cache(cache, prefix, [])  # back to the prefix (Cache.crop's meaning differs across versions)

    return run


def nonincreasing_fit(values: list[float], weights: list[float]) -> list[float]:
    """Pool-adjacent violators: the closest non-increasing sequence (weighted least squares)."""
    blocks = []  # [value, weight, length]
    for v, w in zip(values, weights):
        blocks.append([v, max(w, 1e-9), 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [v for v, _, n in blocks for _ in range(n)]


def nondecreasing_fit(table: dict[int, float]) -> dict[int, float]:
    """The closest non-decreasing curve through medians (pool-adjacent violators, equal
    weights): more tokens or more levels never cost less, and a noisy dip would otherwise be a
    'sweet spot' every cycle picks."""
    keys = sorted(table)
    return dict(zip(keys, (-v for v in nonincreasing_fit([-table[key] for key in keys], [1] * len(keys)))))
