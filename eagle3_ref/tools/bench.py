"""``eagle3-ref bench``: acceptance length and speedup, measured as the field measures them.

Definitions (Spec-Bench; the EAGLE papers):

* **tau**, the acceptance length: tokens appended per target forward, accepted drafts plus
  the bonus token, averaged over decoding cycles (the prefill, which yields one token
  for every method, is not a cycle). 1.0 for plain decoding. For transformers' assisted
  generation (whose first target forward already verifies drafts) it is new tokens per
  target forward, counted with a forward hook.
* **speedup**: mean tokens/s of a method over mean tokens/s of plain decoding
  (transformers ``generate``), the same prompts, process, device and dtype, after a
  warm-up; every run times all methods in turn, so drift hits them alike.

Methods side by side: plain ``generate``; this project's own plain loop (the same loop
machinery as the speculative one, one token per forward); transformers' assisted
generation with a small draft LM trained on the same corpus (the field's "SpS"
baseline); EAGLE-3 as a chain (top_k = 1), with the default dynamic tree and with a
smaller tree. Where a cycle's time goes is measured for the default tree: the head's
forwards (drafting), the rest of tree building, the target's verification forward,
acceptance with cache compaction, and the loop's remaining Python.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..costaware.costs import tree_verify_call
from ..decoding import autoregressive_generate, speculative_generate
from ..draft_head import Eagle3DraftHead
from ..targets import cache_kwargs
from ..timing import machine_description, sync
from ..tree import TreeConfig
from .demo import plain_generate

__all__ = ["Method", "default_methods", "AUTO", "auto_trees", "bound_lines", "run_bench", "profile_cycles",
           "forward_ceiling", "forward_costs", "markdown_table",
           "profile_table", "costs_table", "machine_description", "plot", "SMALL_TREE", "BatchMeasurement",
           "run_batch_bench", "batch_table", "crossover_line", "plot_batches"]

SMALL_TREE = TreeConfig(num_nodes=24, max_depth=6, top_k=4)


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "hf" (transformers generate), "loop" (our plain loop), "sps" (assisted generation), "eagle3"
    tree: TreeConfig | None = None


AUTO = "EAGLE-3 auto (cost-aware tree)"


def default_methods(with_sps: bool = True, with_auto: bool = True) -> list[Method]:
    methods = [Method("plain (transformers generate)", "hf"), Method("plain (eagle3-ref loop)", "loop")]
    if with_sps:
        methods.append(Method("SpS (transformers assisted, 2-layer draft LM)", "sps"))
    methods += [
        Method("EAGLE-3 chain (top_k=1, 7 deep)", "eagle3", TreeConfig.chain(7)),
        Method(f"EAGLE-3 tree {SMALL_TREE.num_nodes}/{SMALL_TREE.max_depth}/{SMALL_TREE.top_k}", "eagle3", SMALL_TREE),
        Method("EAGLE-3 tree 60/8/10 (default)", "eagle3", TreeConfig()),
    ]
    return methods + ([Method(AUTO, "auto")] if with_auto else [])  # its tree: one per temperature (run_bench)


@dataclass
class Measurement:
    method: str
    temperature: float
    tokens_per_second: list[float] = field(default_factory=list)  # one per run
    cycle_lengths: list[int] = field(default_factory=list)  # tokens per target forward, every cycle of every run
    new_tokens: int = 0
    target_forwards: int = 0

    @property
    def tau(self) -> float:
        if self.cycle_lengths:
            return sum(self.cycle_lengths) / len(self.cycle_lengths)
        return self.new_tokens / self.target_forwards if self.target_forwards else 1.0

    @property
    def mean_tps(self) -> float:
        return statistics.fmean(self.tokens_per_second)

    @property
    def std_tps(self) -> float:
        return statistics.stdev(self.tokens_per_second) if len(self.tokens_per_second) > 1 else 0.0


class _ForwardCounter:
    """Counts a module's forward calls (the target's, inside transformers' generate)."""

    def __init__(self, module: nn.Module) -> None:
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


def _generate_once(method: Method, target, head, assistant, prompt: Tensor, max_new_tokens: int, temperature: float,
                   eos: int | None, seed: int, tree: TreeConfig | None = None) -> tuple[int, float, list[int], int]:
    """One generation: (new tokens, seconds, per-cycle lengths, target forwards). ``tree``:
    the tree of this method at this temperature (the method's own by default)."""
    generator = torch.Generator(device=prompt.device).manual_seed(seed)
    torch.manual_seed(seed)  # transformers' sampling uses the global generator
    counter = _ForwardCounter(target) if method.kind in ("hf", "sps") else None
    start = time.perf_counter()
    if method.kind in ("hf", "sps"):
        sequence = plain_generate(target, prompt, max_new_tokens, temperature=temperature, eos_token_id=eos,
                                  assistant=assistant if method.kind == "sps" else None)
        lengths = []
    elif method.kind == "loop":
        out = autoregressive_generate(target, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                      eos_token_id=eos, generator=generator)
        sequence, lengths = out.sequences, []
    else:
        out = speculative_generate(target, head, prompt, max_new_tokens=max_new_tokens, tree=tree or method.tree,
                                   temperature=temperature, eos_token_id=eos, generator=generator)
        sequence, lengths = out.sequences, out.accepted_lengths
    sync(prompt.device)
    seconds = time.perf_counter() - start
    forwards = 0
    if counter is not None:
        forwards = counter.count
        counter.close()
    return sequence.shape[1] - prompt.shape[1], seconds, lengths, forwards


def run_bench(target: nn.Module, head: Eagle3DraftHead, prompts: list[Tensor], *, methods: list[Method],
              temperatures: tuple[float, ...] = (0.0, 1.0), runs: int = 3, max_new_tokens: int = 128,
              eos_token_id: int | None = None, assistant: nn.Module | None = None, seed: int = 0,
              auto_trees: dict[float, TreeConfig] | None = None, progress=None) -> list[Measurement]:
    """Every method at every temperature, ``runs`` times over all ``prompts`` (each ``(1, T)``).
    ``auto_trees``: the cost-aware tree of each temperature (:func:`auto_trees`), for an
    ``"auto"`` method."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if not prompts:
        raise ValueError("no prompts to benchmark")
    if any(m.kind == "sps" for m in methods) and assistant is None:
        raise ValueError("the SpS method needs an assistant (draft LM)")
    if any(m.kind == "auto" for m in methods) and set(temperatures) - set(auto_trees or {}):
        raise ValueError(f"auto_trees needs a calibrated tree for each temperature {list(temperatures)}")
    results = []
    for temperature in temperatures:
        rows = {m.name: Measurement(m.name, temperature) for m in methods}
        tree_of = {m.name: (auto_trees or {}).get(temperature) if m.kind == "auto" else m.tree for m in methods}
        for m in methods:  # warm-up, not timed
            _generate_once(m, target, head, assistant, prompts[0], min(16, max_new_tokens), temperature, eos_token_id,
                           seed, tree_of[m.name])
        for run in range(runs):
            for m in methods:
                tokens = seconds = 0.0
                for i, prompt in enumerate(prompts):
                    n, s, lengths, forwards = _generate_once(m, target, head, assistant, prompt, max_new_tokens,
                                                             temperature, eos_token_id, seed + 1000 * run + i,
                                                             tree_of[m.name])
                    tokens += n
                    seconds += s
                    row = rows[m.name]
                    row.cycle_lengths += lengths
                    row.new_tokens += n
                    row.target_forwards += forwards
                rows[m.name].tokens_per_second.append(tokens / seconds)
                if progress:
                    progress(f"T={temperature} run {run + 1}/{runs} {m.name}: {tokens / seconds:.1f} tokens/s")
        results += rows.values()
    return results


@torch.no_grad()
def profile_cycles(target: nn.Module, head: Eagle3DraftHead, prompts: list[Tensor], tree: TreeConfig = TreeConfig(),
                   max_new_tokens: int = 128, eos_token_id: int | None = None) -> dict[str, float]:
    """Milliseconds per cycle of each part of a greedy cycle, summed over ``prompts``.

    drafting: the head's forwards (timed by wrapping ``head.forward``); tree building: the
    rest of the draft phase (top-k, pool, masks, buffers); verification: the target's tree
    forward; acceptance: verification's choice, cache compaction, feature selection;
    overhead: the loop's remaining Python (wall time minus all of the above and the prefill).
    """
    spent = {"head": 0.0}
    original = head.forward

    def timed_forward(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        sync(result.logits.device)
        spent["head"] += time.perf_counter() - start
        return result

    speculative_generate(target, head, prompts[0], max_new_tokens=16, tree=tree, eos_token_id=eos_token_id)  # warm-up
    head.forward = timed_forward
    try:
        totals = dict.fromkeys(["prefill", "draft", "verify", "accept"], 0.0)
        wall, cycles = 0.0, 0
        spent["head"] = 0.0
        for prompt in prompts:
            start = time.perf_counter()
            out = speculative_generate(target, head, prompt, max_new_tokens=max_new_tokens, tree=tree,
                                       eos_token_id=eos_token_id)
            wall += time.perf_counter() - start
            cycles += len(out.accepted_lengths)
            for k in totals:
                totals[k] += out.timings[k]
    finally:
        del head.forward  # back to the class's method
    ms = lambda seconds: 1000 * seconds / max(cycles, 1)  # noqa: E731
    return {
        "drafting (head forwards)": ms(spent["head"]),
        "tree building (top-k, pool, masks)": ms(totals["draft"] - spent["head"]),
        "verification (target forward)": ms(totals["verify"]),
        "acceptance and cache compaction": ms(totals["accept"]),
        "Python overhead (loop)": ms(wall - sum(totals.values())),
        "prefill (once per prompt, per cycle)": ms(totals["prefill"]),
    }


@torch.no_grad()
def forward_costs(target: nn.Module, head: Eagle3DraftHead, sizes: tuple[int, ...] = (1, 8, 16, 60),
                  prefix: int = 128, repeats: int = 20) -> dict[str, float]:
    """Milliseconds of one target forward over ``n`` new tokens after a ``prefix``-token
    cache (what verifying an ``n``-node tree costs), and of one head forward over 10
    tokens: the two prices a cycle pays. On a GPU a big target's forward costs about the
    same for 1 and 60 tokens (memory-bound); on a CPU it grows with ``n``."""
    from transformers import DynamicCache

    device = next(target.parameters()).device
    ids = torch.randint(0, target.config.vocab_size, (1, prefix + max(sizes)), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    out = {}

    def clock(fn) -> float:
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        return 1000 * (time.perf_counter() - start) / repeats

    for n in sizes:
        cache = DynamicCache(config=target.config)
        target(input_ids=ids[:, :prefix], **cache_kwargs(target, cache), use_cache=True)
        out[f"target forward, {n} token{'s' if n > 1 else ''}"] = clock(tree_verify_call(target, cache, ids, prefix, n))
    hidden = torch.zeros(1, 10, head.config.hidden_size, device=device, dtype=head.fc.weight.dtype)
    out["head forward, 10 tokens"] = clock(lambda: head(ids[:, :10], hidden, torch.arange(10, device=device)[None]))
    return out


def markdown_table(results: list[Measurement], baseline: str) -> str:
    spread = all(len(r.tokens_per_second) > 1 for r in results)  # one run has no spread to show
    lines = [f"| method | temperature | tau | tokens/s ({'mean ± std over runs' if spread else 'one run'}) | "
             "speedup vs plain |", "|---|---|---|---|---|"]
    for r in results:
        base = next(b for b in results if b.method == baseline and b.temperature == r.temperature)
        tps = f"{r.mean_tps:.1f} ± {r.std_tps:.1f}" if spread else f"{r.mean_tps:.1f}"
        lines.append(f"| {r.method} | {r.temperature:g} | {r.tau:.2f} | {tps} | {r.mean_tps / base.mean_tps:.2f}x |")
    return "\n".join(lines)


def profile_table(profile: dict[str, float]) -> str:
    cycle = sum(v for k, v in profile.items() if not k.startswith("prefill"))
    lines = ["| part of a cycle | ms per cycle | share |", "|---|---|---|"]
    for k, v in profile.items():
        share = "" if k.startswith("prefill") else f"{100 * v / cycle:.0f} %"
        lines.append(f"| {k} | {v:.2f} | {share} |")
    lines.append(f"| **cycle** | **{cycle:.2f}** | 100 % |")
    return "\n".join(lines)


def forward_ceiling(profile: dict[str, float], tau: float, plain_tokens_per_second: float) -> float:
    """The speedup over plain decoding a tree would reach if only its forwards took time: ``tau``
    tokens a cycle for the cycle's head and target forwards in ``profile`` (ms a cycle, from
    :func:`profile_cycles`), against plain decoding at ``plain_tokens_per_second``. Tree
    building, acceptance and the loop are the rest of the cycle: cutting them can reach this at
    best, with this head, this tree and this machine."""
    forwards = profile["drafting (head forwards)"] + profile["verification (target forward)"]
    return tau / forwards * 1000 / plain_tokens_per_second


def costs_table(costs: dict[str, float]) -> str:
    return "\n".join(["| one forward | ms |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in costs.items()])


def to_json(results: list[Measurement], profile: dict[str, float] | None, meta: dict,
            costs: dict[str, float] | None = None, auto_profile: dict[str, float] | None = None) -> dict:
    return {"meta": meta, "profile_ms_per_cycle": profile, "auto_profile_ms_per_cycle": auto_profile,
            "forward_costs_ms": costs,
            "results": [{**asdict(r), "tau": r.tau, "mean_tokens_per_second": r.mean_tps,
                         "std_tokens_per_second": r.std_tps} for r in results]}


def plot(results: list[Measurement], baseline: str, path: str | os.PathLike) -> bool:
    """Tau distribution (greedy, EAGLE-3 methods) and speedup bars; False without matplotlib."""
    try:  # a Figure, not pyplot: no backend is switched under a notebook that calls this
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    greedy = [r for r in results if r.temperature == 0 and r.cycle_lengths]
    longest = max((max(r.cycle_lengths) for r in greedy), default=1)
    width = 0.8 / max(len(greedy), 1)
    for i, r in enumerate(greedy):
        counts = [r.cycle_lengths.count(n) / len(r.cycle_lengths) for n in range(1, longest + 1)]
        left.bar([n + (i - (len(greedy) - 1) / 2) * width for n in range(1, longest + 1)], counts, width,
                 label=f"{r.method} (tau {r.tau:.2f})")
    left.set(xlabel="tokens per target forward", ylabel="share of cycles", title="Acceptance length, temperature 0")
    left.legend(fontsize=10)
    temperatures = sorted({r.temperature for r in results})
    names = [r.method for r in results if r.temperature == temperatures[0]]
    width = 0.8 / len(temperatures)
    for j, t in enumerate(temperatures):
        base = next(b for b in results if b.method == baseline and b.temperature == t)
        rows = [next(r for r in results if r.method == n and r.temperature == t) for n in names]
        right.barh([i + (j - (len(temperatures) - 1) / 2) * width for i in range(len(names))],
                   [r.mean_tps / base.mean_tps for r in rows], width,
                   xerr=[r.std_tps / base.mean_tps for r in rows], label=f"temperature {t:g}")
    right.axvline(1.0, color="grey", linewidth=0.8)
    right.set_yticks(range(len(names)), names, fontsize=10)
    right.set(xlabel="speedup over plain decoding (transformers generate)", title="Speedup")
    right.legend(fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


@torch.no_grad()
def auto_trees(target: nn.Module, head: Eagle3DraftHead, prompts: list[Tensor], temperatures: tuple[float, ...],
               costs=None, max_new_tokens: int = 64, progress=None) -> tuple[dict[float, TreeConfig], object]:
    """A cost-aware tree for each temperature: the machine's :class:`~eagle3_ref.costaware.costs.CostModel`
    (measured here unless given), and a calibration at each temperature on ``prompts`` (keep
    them apart from the prompts measured). Returns ``({temperature: tree}, costs)``."""
    from ..costaware import AutoTreeConfig, calibrate, measure_costs

    costs = costs or measure_costs(target, head)
    trees = {}
    for t in temperatures:
        start = time.perf_counter()
        calibration = calibrate(target, head, prompts, temperature=t, top_k=costs.top_k, max_new_tokens=max_new_tokens)
        trees[t] = AutoTreeConfig.from_calibration(costs, calibration)
        if progress:
            progress(f"T={t} calibrated the auto tree on {len(prompts)} prompts in {time.perf_counter() - start:.0f} s")
    return trees, costs


def bound_lines(trees: dict[float, TreeConfig]) -> list[str]:
    """Per temperature, the oracle bounds of :func:`eagle3_ref.costaware.auto_tree.speedup_bound`: what
    no tree policy (fixed or chosen per cycle) can beat on this machine, and what no decoding
    at all can, even knowing each cycle's outcome; and whether the auto tree drafts at all
    (:attr:`eagle3_ref.costaware.auto_tree.AutoTreeConfig.drafting_gain`)."""
    from ..costaware.auto_tree import speedup_bound

    out = []
    for t, tree in sorted(trees.items()):
        drafting, _ = speedup_bound(tree.costs, tree.calibration)
        skipping, _ = speedup_bound(tree.costs, tree.calibration, may_skip=True)
        out.append(f"temperature {t:g}: an oracle that knows how many of the top-{tree.top_k} pool's drafts each "
                   f"cycle's target accepts, and drafts and verifies just those, reaches {drafting:.2f}x one-token "
                   f"forwards on this machine (no tree, fixed or chosen per cycle, beats it); {skipping:.2f}x if it "
                   f"may also decode a cycle plainly (no decoding at all beats it). Without foresight, the best "
                   f"fixed depth of the pool at a chain's cost would make {tree.drafting_gain:.2f}x: "
                   + ("the auto tree drafts" if tree.drafts else "the auto tree decodes plainly"))
    return out


def summary_lines(results: list[Measurement], baseline: str) -> list[str]:
    """The best EAGLE-3 row against plain decoding and SpS, per temperature (stated, not asserted)."""
    out = []
    for t in sorted({r.temperature for r in results}):
        rows = {r.method: r for r in results if r.temperature == t}
        base = rows[baseline].mean_tps
        eagle = [r for r in rows.values() if r.cycle_lengths]
        if not eagle:
            continue
        best = max(eagle, key=lambda r: r.mean_tps)
        sps = next((r for r in rows.values() if "SpS" in r.method), None)
        line = f"temperature {t:g}: best EAGLE-3 is {best.method} at {best.mean_tps / base:.2f}x plain"
        if sps is not None:
            line += f", {best.mean_tps / sps.mean_tps:.2f}x SpS"
        out.append(line)
    return out


def ceiling_line(results: list[Measurement], baseline: str, auto_profile: dict[str, float]) -> str:
    """The greedy auto row against :func:`forward_ceiling`, from its profile (stated, not asserted)."""
    rows = {r.method: r for r in results if r.temperature == 0}
    auto, base = rows[AUTO], rows[baseline]
    forwards = auto_profile["drafting (head forwards)"] + auto_profile["verification (target forward)"]
    return (f"temperature 0: the auto tree's forwards alone ({forwards:.1f} ms a cycle for tau {auto.tau:.2f}) would "
            f"make it {forward_ceiling(auto_profile, auto.tau, base.mean_tps):.2f}x plain if tree building, "
            f"acceptance and the loop took no time (measured: {auto.mean_tps / base.mean_tps:.2f}x); no cut of "
            f"that bookkeeping goes further with this head on this machine")


# ----------------------------------------------------------------------------------------
# Throughput against batch size (``eagle3-ref bench --batch-sizes``)
# ----------------------------------------------------------------------------------------

BATCH_TREES = (("EAGLE-3 chain (top_k=1, 7 deep)", TreeConfig.chain(7)),
               (f"EAGLE-3 tree {SMALL_TREE.num_nodes}/{SMALL_TREE.max_depth}/{SMALL_TREE.top_k}", SMALL_TREE),
               ("EAGLE-3 tree 60/8/10 (default)", TreeConfig()))
PLAIN_BATCHED = "plain (transformers generate, batched)"


@dataclass
class BatchMeasurement:
    method: str
    batch_size: int
    tokens_per_second: list[float] = field(default_factory=list)  # one per run: all rows' new tokens / wall time
    tau: float = 1.0  # mean tokens per row-forward (1 for plain decoding)

    @property
    def mean_tps(self) -> float:
        return statistics.fmean(self.tokens_per_second)


def left_pad(prompts: list[Tensor], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """``(B, T)`` ids and attention mask of ``(1, T_b)`` prompts, left-padded."""
    T = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), T), pad_token_id, dtype=torch.long, device=prompts[0].device)
    mask = torch.zeros(len(prompts), T, dtype=torch.long, device=prompts[0].device)
    for b, p in enumerate(prompts):
        ids[b, T - p.shape[1]:], mask[b, T - p.shape[1]:] = p[0], 1
    return ids, mask


def run_batch_bench(target: nn.Module, head: Eagle3DraftHead, prompts: list[Tensor], *, batch_sizes: tuple[int, ...],
                    runs: int = 2, max_new_tokens: int = 64, eos_token_id: int | None = None, pad_token_id: int = 0,
                    trees=BATCH_TREES, progress=None) -> list[BatchMeasurement]:
    """Greedy total tokens/s of batched plain ``generate`` and of EAGLE-3 with each tree, at
    each batch size: the same ``prompts`` (``len(prompts)`` a multiple of every batch
    size) cut into batches of ``B``, so every batch size decodes the same text."""
    from transformers import GenerationConfig

    bad = [b for b in batch_sizes if b < 1 or len(prompts) % b]
    if bad:
        raise ValueError(f"batch sizes {bad}: each must divide the number of prompts ({len(prompts)})")
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                              pad_token_id=pad_token_id)

    def plain(ids, mask):
        out = target.generate(ids, attention_mask=mask, generation_config=config)
        rows = out[:, ids.shape[1]:]
        if eos_token_id is None:
            return rows.numel(), []
        ended = (rows == eos_token_id).int().cumsum(1)  # a row's tokens: up to and with its first EOS
        return int(((ended == 0) | ((ended == 1) & (rows == eos_token_id))).sum()), []

    def eagle(tree):
        def run(ids, mask):
            out = speculative_generate(target, head, ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       tree=tree, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
            return sum(out.new_counts), [a for row in out.accepted_lengths for a in row]
        return run

    methods = [(PLAIN_BATCHED, plain)] + [(name, eagle(tree)) for name, tree in trees]
    results = []
    for B in batch_sizes:
        batches = [left_pad(prompts[i:i + B], pad_token_id) for i in range(0, len(prompts), B)]
        for name, fn in methods:
            fn(*batches[0])  # warm-up
            row = BatchMeasurement(name, B)
            lengths: list[int] = []
            for _ in range(runs):
                tokens, seconds = 0, 0.0
                for ids, mask in batches:
                    sync(ids.device)
                    start = time.perf_counter()
                    n, cycle = fn(ids, mask)
                    sync(ids.device)
                    seconds += time.perf_counter() - start
                    tokens += n
                    lengths += cycle
                row.tokens_per_second.append(tokens / seconds)
            row.tau = sum(lengths) / len(lengths) if lengths else 1.0
            results.append(row)
            if progress:
                progress(f"batch {B} {name}: {row.mean_tps:.1f} tokens/s")
    return results


def batch_table(results: list[BatchMeasurement]) -> str:
    """Tokens/s per method and batch size, and the fastest EAGLE-3 tree over batched plain decoding."""
    sizes = sorted({r.batch_size for r in results})
    names = list(dict.fromkeys(r.method for r in results))
    at = {(r.method, r.batch_size): r for r in results}
    lines = ["| method | " + " | ".join(f"B = {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for name in names:
        cells = [f"{at[name, b].mean_tps:.0f}" + (f" (tau {at[name, b].tau:.2f})" if name != PLAIN_BATCHED else "")
                 for b in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    best = [max((at[n, b] for n in names if n != PLAIN_BATCHED), key=lambda r: r.mean_tps) for b in sizes]
    lines.append("| **fastest EAGLE-3 / plain** | " + " | ".join(
        f"**{r.mean_tps / at[PLAIN_BATCHED, b].mean_tps:.2f}x** ({r.method.removeprefix('EAGLE-3 ')})"
        for r, b in zip(best, sizes)) + " |")
    return "\n".join(lines)


def crossover_line(results: list[BatchMeasurement]) -> str:
    """Where speculation stops paying: the smallest batch size at which no tree beats plain."""
    sizes = sorted({r.batch_size for r in results})
    plain = {r.batch_size: r.mean_tps for r in results if r.method == PLAIN_BATCHED}
    best = {b: max(r.mean_tps for r in results if r.batch_size == b and r.method != PLAIN_BATCHED) for b in sizes}
    losing = [b for b in sizes if best[b] <= plain[b]]
    ratios = ", ".join(f"{best[b] / plain[b]:.2f}x at B={b}" for b in sizes)
    if not losing:
        return f"the fastest EAGLE-3 tree beats batched plain decoding at every batch size measured ({ratios})"
    return f"speculation stops paying at batch size {losing[0]}: fastest EAGLE-3 over batched plain is {ratios}"


def plot_batches(results: list[BatchMeasurement], path: str | os.PathLike) -> bool:
    """Total tokens/s against batch size, one line per method; False without matplotlib."""
    try:  # a Figure, not pyplot: no backend is switched under a notebook that calls this
        from matplotlib.figure import Figure
    except ImportError:
        return False
    sizes = sorted({r.batch_size for r in results})
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    plain = {r.batch_size: r.mean_tps for r in results if r.method == PLAIN_BATCHED}
    for name in dict.fromkeys(r.method for r in results):
        rows = sorted((r for r in results if r.method == name), key=lambda r: r.batch_size)
        left.plot([r.batch_size for r in rows], [r.mean_tps for r in rows], marker="o", label=name)
        if name != PLAIN_BATCHED:
            right.plot([r.batch_size for r in rows], [r.mean_tps / plain[r.batch_size] for r in rows], marker="o",
                       label=name)
    left.set(xscale="log", xlabel="batch size", ylabel="total tokens/s (all rows)", title="Throughput, greedy")
    left.set_xticks(sizes, [str(b) for b in sizes])
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set(xscale="log", xlabel="batch size", ylabel="tokens/s over batched plain decoding",
              title="Where speculation stops paying")
    right.set_xticks(sizes, [str(b) for b in sizes])
    for ax in (left, right):
        ax.legend(fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# ----------------------------------------------------------------------------------------
# The report and its files, as `eagle3-ref bench` writes them
# ----------------------------------------------------------------------------------------


def bench_report(results: list[Measurement], baseline: str, header: str, profile: dict | None = None,
                 costs: dict | None = None, auto_profile: dict | None = None,
                 trees: dict[float, TreeConfig] | None = None) -> str:
    """The markdown the bench prints and writes: the table, the cycle profiles, the one-forward
    costs, the summary, and the cost-aware tree's bounds (each part when it was measured)."""
    lines = [header, "", markdown_table(results, baseline)]
    if profile:
        lines += ["", "Where a greedy cycle of the default tree (60/8/10) goes:", "", profile_table(profile),
                  "", "What one forward costs (after a 128-token prefix):", "", costs_table(costs)]
    if auto_profile:
        lines += ["", "Where a greedy cycle of the auto tree goes:", "", profile_table(auto_profile)]
    lines += [""] + summary_lines(results, baseline)
    if auto_profile:
        lines.append(ceiling_line(results, baseline, auto_profile))
    if trees:
        lines += [""] + bound_lines(trees)
    return "\n".join(lines)


def write_bench(out: Path, text: str, data: dict, results: list[Measurement], baseline: str,
                trees: dict | None = None, cost_model=None) -> bool:
    """bench.md, bench.json, bench.png (False: no matplotlib), and what the auto rows decided
    from (costs.json, calibration_T*.json: reusable with ``AutoTreeConfig.from_calibration``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(data, indent=1))
    (out / "bench.md").write_text(text + "\n")
    if trees:
        cost_model.save(out / "costs.json")
        for t, tree in trees.items():
            tree.calibration.save(out / f"calibration_T{t:g}.json")
    return plot(results, baseline, out / "bench.png")


def write_batch_bench(out: Path, text: str, meta: dict, results: list[BatchMeasurement]) -> bool:
    """bench_batch.md, bench_batch.json and bench_batch.png (False: no matplotlib)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{**r.__dict__, "mean_tokens_per_second": r.mean_tps} for r in results]
    (out / "bench_batch.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    (out / "bench_batch.md").write_text(text + "\n")
    return plot_batches(results, out / "bench_batch.png")
