"""Timing a target that cannot be downloaded: random weights in a named shape (``bench --shape``).

What a decoding cycle costs depends on the target's shape, its dtype and the machine, not on
its weights: a forward over ``n`` tokens runs the same kernels whatever numbers they hold. So
the cost side of speculative decoding can be measured for Llama-3.1-8B on a GPU without its
weights:

* the :class:`~eagle3_ref.costaware.costs.CostModel` (a target forward against the number of tree
  tokens, drafting against the number of levels), savable for ``AutoTreeConfig.from_calibration``;
* the time of a real cycle of each fixed tree, and of a plain decoding step;
* from those two, the acceptance length at which each tree starts to pay
  (``cycle / plain step``), and the speedup it gives at a few acceptance lengths
  (``tau * plain step / cycle``).

The acceptance side cannot be measured this way: a random head's drafts are rejected, so the
cycles timed here accept about one token each, and tau is a parameter of the table rather than
a measurement. (A fixed tree drafts and verifies the same number of tokens whatever it
accepts, so its cycle time does not depend on that; the cost-aware tree's does, so it is not
timed here.)
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import check_head_fits_target
from ..costaware.costs import CostModel, measure_costs
from ..decoding import speculative_generate
from ..draft_head import Eagle3Config, Eagle3DraftHead
from ..targets import check_tree_verifiable
from ..timing import sync
from ..tree import TreeConfig
from .demo import plain_generate

__all__ = ["SHAPES", "DRAFT_VOCAB", "MIN_NEW_TOKENS", "shape_config", "random_pair", "ShapeTiming", "plain_seconds",
           "time_shape", "shape_report"]

# Shapes of targets that EAGLE-3 heads are released for (their config.json's fields that set a
# forward's cost). RoPE scaling is left out: it changes the rotary frequencies, not the work.
SHAPES: dict[str, dict] = {
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                         tie_word_embeddings=False),
}
MIN_NEW_TOKENS = 4  # time_shape differences generations of 2 and of new_tokens tokens

# The released head's draft vocabulary for each shape (yuhuili/EAGLE3-LLaMA3.1-Instruct-8B: 32000).
DRAFT_VOCAB: dict[str, int] = {"llama-3.1-8b": 32000}


def shape_config(shape: str, num_layers: int | None = None):
    """The transformers config of ``shape``: a name in :data:`SHAPES`, or a ``config.json``
    (or a directory holding one) of any causal LM. ``num_layers`` keeps only the first
    decoder layers (a CPU can time the width of an 8B model without its depth)."""
    from transformers import AutoConfig

    if shape in SHAPES:
        data = dict(SHAPES[shape])
    else:
        path = Path(shape)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"--shape {shape}: neither a known shape ({', '.join(sorted(SHAPES))}) "
                             f"nor a config.json")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"--shape {shape}: {path} is not valid JSON ({err})") from None
        if not isinstance(data, dict) or "model_type" not in data:
            raise ValueError(f"--shape {shape}: {path} has no model_type (not a transformers config.json)")
    model_type = data.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **data)
    except Exception as err:  # noqa: BLE001 - transformers and huggingface_hub raise many kinds here
        known = "Unrecognized model identifier" not in str(err)
        reason = str(err).strip().splitlines()[-1].strip() if known else "not a model type transformers knows"
        raise ValueError(f"--shape {shape}: model_type {model_type!r}: {reason}") from None
    if num_layers is not None:
        total = config.num_hidden_layers
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or not 1 <= num_layers <= total:
            raise ValueError(f"--shape-layers must be in [1, {total}] (the shape's layers), got {num_layers!r}")
        config.num_hidden_layers = num_layers
        if getattr(config, "layer_types", None) is not None:  # hybrid targets: the kind of each layer
            config.layer_types = config.layer_types[:num_layers]
    return config


def _aux_layer_ids(num_layers: int) -> tuple[int, ...] | None:
    """EAGLE-3's default tapped layers where they exist (7 layers or more), else a low, a middle
    and a top layer (fewer where the target has fewer layers)."""
    return None if num_layers >= 7 else tuple(sorted({0, num_layers // 2, num_layers - 1}))


@torch.no_grad()
def random_pair(config, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                draft_vocab_size: int | None = None, seed: int = 0) -> tuple[nn.Module, Eagle3DraftHead]:
    """A target of ``config``'s shape and an EAGLE-3 head shaped like one of its decoder layers
    (the released heads' shape), both with random weights, built directly on ``device`` (an 8B
    target in float32 on the CPU first would need 32 GB). Raises where the loop could not draft
    for such a target (no decoder layers to tap, or layers a tree mask cannot verify)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        target = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        head_config = Eagle3Config.for_target(config, draft_vocab_size=draft_vocab_size,
                                              aux_layer_ids=_aux_layer_ids(config.get_text_config().num_hidden_layers))
        head = Eagle3DraftHead(head_config).to(dtype).eval()
    head.attach_embedding(target.get_input_embeddings().weight)
    check_head_fits_target(head.config, target)  # as loading a real pair checks it
    check_tree_verifiable(target)
    return target, head


@dataclass
class ShapeTiming:
    """What :func:`time_shape` measured: ms of a plain step, and of each tree's cycle by phase."""

    plain_ms: float
    cycles: dict[str, dict[str, float]]  # tree name -> {"cycle", "draft", "verify", "accept"} ms a cycle
    trees: dict[str, dict]  # tree name -> its shape (TreeConfig.describe)
    costs: CostModel
    meta: dict

    def break_even(self, name: str) -> float:
        """The acceptance length above which the tree is faster than plain decoding."""
        return self.cycles[name]["cycle"] / self.plain_ms

    def speedup(self, name: str, tau: float) -> float:
        """The speedup over plain decoding of this tree's cycles if they appended ``tau`` tokens."""
        return tau * self.plain_ms / self.cycles[name]["cycle"]

    def predicted(self, name: str) -> float | None:
        """ms of this tree's cycle as the cost model prices it (what ``AutoTreeConfig.from_calibration`` weighs),
        for a tree as wide as the model's drafting was measured (``top_k``), else None."""
        tree = self.trees[name]
        if tree["top_k"] != self.costs.top_k:
            return None
        return self.costs.cycle(tree["max_depth"], tree["num_nodes"])

    def to_json(self) -> dict:
        return {"meta": self.meta, "plain_ms": self.plain_ms, "cycles_ms": self.cycles, "trees": self.trees,
                "costs": asdict(self.costs)}


def plain_seconds(target: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds of plain greedy decoding of exactly ``new_tokens`` with transformers' ``generate``,
    the bench's baseline (no EOS stops random text early)."""
    start = time.perf_counter()
    plain_generate(target, prompt, new_tokens, min_new_tokens=new_tokens)
    sync(prompt.device)
    return time.perf_counter() - start


@torch.no_grad()
def time_shape(target: nn.Module, head: Eagle3DraftHead, trees: dict[str, TreeConfig], *, prompts: int = 2,
               prompt_len: int = 128, new_tokens: int = 64, runs: int = 1, seed: int = 0,
               progress=None) -> ShapeTiming:
    """Time a plain step and each tree's cycle (greedy) on ``prompts`` random prompts of
    ``prompt_len`` tokens, ``new_tokens`` each, ``runs`` times after a warm-up; every run times
    every method in turn, so a machine that drifts hits them alike. Then measure the cost model.

    Both are differences, so that what happens once per prompt is left out:

    * a plain step (transformers' ``generate``, the bench's baseline) is the time of decoding
      ``new_tokens`` less that of decoding one (the prefill), over ``new_tokens - 1``;
    * a cycle is the time of generating ``new_tokens`` less that of generating 2 (the first cycle,
      whose head forward reads the whole prompt), each without its prefill, over the difference
      in cycles. The phases are differenced alike; "accept" is the rest of the cycle (acceptance
      and the loop)."""
    if new_tokens < MIN_NEW_TOKENS:
        raise ValueError(f"new_tokens must be at least {MIN_NEW_TOKENS} (cycles are timed between 2 new tokens and "
                         f"new_tokens), got {new_tokens}")
    device = next(target.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    vocab = target.config.get_text_config().vocab_size
    inputs = [torch.randint(0, vocab, (1, prompt_len), generator=gen).to(device) for _ in range(prompts)]

    def plain(prompt) -> tuple[float, int]:
        return plain_seconds(target, prompt, new_tokens) - plain_seconds(target, prompt, 1), new_tokens - 1

    def generation(prompt, tree: TreeConfig, tokens: int) -> dict[str, float]:
        start = time.perf_counter()
        out = speculative_generate(target, head, prompt, max_new_tokens=tokens, tree=tree)
        sync(device)
        cycles = time.perf_counter() - start - out.timings["prefill"]  # (its noise stays out of "accept")
        return {"cycle": cycles, "draft": out.timings["draft"], "verify": out.timings["verify"],
                "count": len(out.accepted_lengths)}

    def cycle(tree: TreeConfig):
        def run(prompt) -> dict[str, float]:
            # the difference of two generations: the prefill and the first cycle, where the head reads
            # the whole prompt, are in both (a cycle that includes them is slower the fewer tokens follow)
            short, long = generation(prompt, tree, 2), generation(prompt, tree, new_tokens)
            diff = {key: long[key] - short[key] for key in long}
            return {**diff, "accept": diff["cycle"] - diff["draft"] - diff["verify"]}
        return run

    methods = {"plain": plain, **{name: cycle(tree) for name, tree in trees.items()}}
    for fn in methods.values():  # warm-up: kernels, allocator, caches
        fn(inputs[0])
    plain_steps: list[float] = []
    sums = {name: dict.fromkeys(["cycle", "draft", "verify", "accept", "count"], 0.0) for name in trees}
    for r in range(runs):
        for name, fn in methods.items():
            if progress:
                progress(f"run {r + 1}/{runs}: {name}")
            for prompt in inputs:
                if name == "plain":
                    seconds, steps = fn(prompt)
                    plain_steps.append(1000 * seconds / steps)
                else:
                    for key, value in fn(prompt).items():
                        sums[name][key] += value
    for name, s in sums.items():
        if s["count"] < 1:
            raise ValueError(f"{name}: its first cycle made all {new_tokens} new tokens, so no cycle was timed; "
                             f"ask for more new tokens")
    cycles = {name: {key: 1000 * s[key] / s["count"] for key in ("cycle", "draft", "verify", "accept")}
              for name, s in sums.items()}
    if progress:
        progress("cost model")
    costs = measure_costs(target, head)
    meta = {"prompts": prompts, "prompt_len": prompt_len, "new_tokens": new_tokens, "runs": runs,
            "dtype": str(next(target.parameters()).dtype).removeprefix("torch."),
            "layers": target.config.get_text_config().num_hidden_layers, "machine": costs.machine}
    return ShapeTiming(statistics.median(plain_steps), cycles, {n: t.describe() for n, t in trees.items()}, costs, meta)


def shape_report(timing: ShapeTiming, shape: str, taus: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0)) -> str:
    """Markdown: what was timed, each tree's cycle against a plain step, and the cost model."""
    m, c = timing.meta, timing.costs
    layers = f"{m['layers']} decoder layer{'s' if m['layers'] > 1 else ''}"
    lines = [f"Timing only: random weights shaped like {shape} ({layers}), {m['dtype']}, on {m['machine']}; "
             f"{m['prompts']} random prompts of {m['prompt_len']} tokens x {m['new_tokens']} new "
             f"tokens, {m['runs']} run(s) after a warm-up. A random head's drafts are rejected, so tau is not "
             "measured here: the speedups below are tau x plain step / cycle for the tau a trained head reaches.",
             "", f"A plain decoding step: {timing.plain_ms:.2f} ms.", "",
             "| tree | ms a cycle | draft | verify | accept + loop | pays above tau | "
             + " | ".join(f"speedup at tau {t:g}" for t in taus) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(taus)]
    for name, ms in timing.cycles.items():
        lines.append(f"| {name} | {ms['cycle']:.2f} | {ms['draft']:.2f} | {ms['verify']:.2f} | {ms['accept']:.2f} | "
                     f"{timing.break_even(name):.2f} | "
                     + " | ".join(f"{timing.speedup(name, t):.2f}x" for t in taus) + " |")
    for name in timing.cycles:
        predicted = timing.predicted(name)
        if predicted is not None:
            lines += ["", f"The cost model below prices a cycle of {name} at {predicted:.2f} ms "
                          f"({predicted / timing.cycles[name]['cycle']:.2f}x the measured one)."]
    sizes = sorted(c.verify_ms)
    levels = sorted(c.draft_ms)
    lines += ["", "The cost model (`costs.json`; `AutoTreeConfig.from_calibration` decides from it):", "",
              "| tree tokens | " + " | ".join(str(n) for n in sizes) + " |", "|---|" + "---|" * len(sizes),
              "| target forward, ms | " + " | ".join(f"{c.verify_ms[n]:.2f}" for n in sizes) + " |",
              "", f"| levels drafted ({c.top_k} wide) | " + " | ".join(str(d) for d in levels) + " |",
              "|---|" + "---|" * len(levels),
              "| drafting, ms | " + " | ".join(f"{c.draft_ms[d]:.2f}" for d in levels) + " |"]
    return "\n".join(lines)


def write_shape(out: Path, shape: str, timing: ShapeTiming, text: str) -> list[Path]:
    """shape.md, shape.json and the cost model (costs.json) of a ``bench --shape`` run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "shape.md").write_text(text + "\n")
    (out / "shape.json").write_text(json.dumps({"shape": shape, **timing.to_json()}, indent=1))
    timing.costs.save(out / "costs.json")
    return [out / "shape.md", out / "shape.json", out / "costs.json"]
