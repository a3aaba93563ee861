"""What each EAGLE-3 idea buys, measured on the toy: the ablation and the data-scaling runs.

EAGLE-3 makes three changes to EAGLE-2's head (arXiv 2503.01840): it drops the feature
regression and predicts tokens only, it fuses low, mid and high target layers instead of
reading the top one, and it trains with training-time test so that it can draft from its
own outputs. The paper's ablation adds them one at a time; its data-scaling figure shows the
feature-predicting head flattening as data grows while EAGLE-3 keeps rising.

:data:`VARIANTS` are the heads compared, every one trained by :func:`eagle3_ref.train.train_head`
on the same self-distilled data, seed, steps and batch (tokens seen held equal), each a
resumable checkpointed run under ``OUT/runs/<variant>-<sequences>/``:

* ``eagle3``: EAGLE-3 as shipped: fusion of three layers and TTT with K = 7;
* ``no-ttt``: the same fusion, trained on target features only (K = 1);
* ``top-only``: TTT with K = 7 from the top-layer feature alone (no fusion);
* ``eagle2``: the EAGLE-2-style head (:mod:`eagle3_ref.eagle2`): top-layer feature, feature
  regression + token loss, no TTT;
* ``eagle3-lm`` (not run by default, a diagnostic): ``eagle3`` with its ``lm_head`` started from
  the target's LM head, as the EAGLE-2-style head reads tokens through the target's.

Measured for each, greedy on held-out prompts the target continues (its own text, the text
a head drafts for): ``tau`` with the default tree and with a chain of 7, and ``n-alpha``
for n = 1..7: the acceptance rate of the n-th chain draft among cycles whose first n-1
drafts were accepted, i.e. with n-1 of the head's own outputs in its input (the paper's
definition). Each data size in ``data_sizes`` is a nested subset of the same sequences: a
list of doubling sizes gives the data-scaling curve.

With ``early_stopping`` each run trains until its loss on held-out sequences (made like the
training data, from text the target never trained on) has not fallen for that many
evaluations (lower by more than the fraction ``min_improvement`` of the best, when set),
``steps`` being only a cap, and the head of the lowest held-out loss is the one measured: every
data size trained to convergence rather than to one budget, so that a small set is data-limited
and a large one is not cut short (a tolerance too loose for a slowly falling loss cuts it short
all the same: docs/paper.md measured one).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..checkpoint import load_draft_head
from ..decoding import speculative_generate
from ..eagle2 import load_eagle2_head
from ..fusion import num_decoder_layers, top_feature_id
from ..train import (
    TrainConfig,
    TrainData,
    check_config_fits_target,
    evaluations_since_best,
    regenerate,
    tokenize_corpus,
    train_head,
    with_target_pass,
)
from ..tree import TreeConfig

__all__ = ["Variant", "VARIANTS", "DEFAULT_VARIANTS", "AblateConfig", "n_alpha", "reached_steps", "ablation_data",
           "held_out_data", "evaluate_head", "run_ablation", "finished_runs", "results_markdown", "plot_results"]

CHAIN = 7  # the chain of the tau-chain column and of n-alpha
MIN_CYCLES = 30  # an n-alpha from fewer cycles is shown in parentheses and left out of the plot


class Variant(NamedTuple):
    label: str
    head: str  # "eagle3" or "eagle2"
    ttt_steps: int
    top_only: bool  # the top-layer feature instead of the fusion
    lm_head_from_target: bool = False  # the head's lm_head starts as the target's (a diagnostic)


VARIANTS: dict[str, Variant] = {
    "eagle3": Variant("EAGLE-3: fusion + TTT (K=7)", "eagle3", 7, False),
    "no-ttt": Variant("fusion, no TTT (K=1)", "eagle3", 1, False),
    "top-only": Variant("TTT (K=7), top layer only", "eagle3", 7, True),
    "eagle2": Variant("EAGLE-2-style: feature regression, top layer, no TTT", "eagle2", 1, True),
    # Not an idea of the paper: a diagnostic for a toy-scale gap (docs/paper.md). The EAGLE-2-style
    # head reads tokens through the target's trained LM head; EAGLE-3's learns its own from scratch.
    "eagle3-lm": Variant("EAGLE-3, lm_head started from the target's (diagnostic)", "eagle3", 7, False, True),
}
DEFAULT_VARIANTS = ("eagle3", "no-ttt", "top-only", "eagle2")


@dataclass
class AblateConfig:
    """The budget every variant gets (the same for all)."""

    out_dir: str
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    data_sizes: tuple[int, ...] = (2400,)  # training sequences; doubling sizes give the scaling curve
    steps: int = 400
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    warmup_steps: int = 30
    prompt_tokens: int = 64  # self-distillation: the target writes the rest of each sequence
    eval_prompts: int = 8
    eval_new_tokens: int = 96
    seed: int = 0
    save_every: int = 50
    head_overrides: dict = field(default_factory=dict)  # e.g. {"intermediate_size": 64} for tiny runs
    # > 0: each run stops after this many held-out evaluations without a lower held-out loss (steps is
    # then a cap) and the head of the lowest is measured; 0: every run trains exactly `steps`
    early_stopping: int = 0
    min_improvement: float = 0.0  # with early_stopping: the fraction a held-out loss must improve by to count
    eval_every: int = 50  # steps between held-out evaluations (with early_stopping)
    held_out_sequences: int = 64  # held-out sequences for that loss (with early_stopping)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants must be some of {', '.join(VARIANTS)}, got {list(self.variants)}")
        repeated = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if repeated:
            raise ValueError(f"variants name {', '.join(repeated)} twice: each variant is one run")
        if isinstance(self.early_stopping, bool) or not isinstance(self.early_stopping, int) or self.early_stopping < 0:
            raise ValueError(f"early_stopping must be an int >= 0, got {self.early_stopping!r}")
        m = self.min_improvement
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1:
            raise ValueError(f"min_improvement must be a fraction in [0, 1), got {m!r}")
        if m and not self.early_stopping:
            raise ValueError(f"min_improvement ({m}) is early stopping's tolerance, but early_stopping is 0")
        for name in ("steps", "batch_size", "seq_len", "eval_prompts", "eval_new_tokens", "save_every", "eval_every",
                     "held_out_sequences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.data_sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.data_sizes):
            raise ValueError(f"data_sizes must be positive ints, got {list(self.data_sizes)}")
        if len(set(self.data_sizes)) != len(self.data_sizes):
            raise ValueError(f"data_sizes must differ from each other, got {list(self.data_sizes)}")
        if not 0 < self.prompt_tokens < self.seq_len:
            raise ValueError(f"prompt_tokens must be in [1, seq_len - 1] = [1, {self.seq_len - 1}], "
                             f"got {self.prompt_tokens}")
        if self.eval_new_tokens < 2:  # the prefill makes the first token; tau needs a cycle after it
            raise ValueError(f"eval_new_tokens must be at least 2 (tau counts the tokens of the verification cycles "
                             f"after the prompt's forward), got {self.eval_new_tokens}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")


def reached_steps(accepted_lengths: list[list[int]], depth: int = CHAIN) -> list[int]:
    """For n = 1..depth, how many chain cycles reached draft step n (their first n-1 drafts
    accepted). ``accepted_lengths`` holds one list per prompt of tokens appended per cycle
    (accepted drafts + 1); a prompt's last cycle is left out (the token budget or EOS may
    have cut it)."""
    drafts = [length - 1 for run in accepted_lengths for length in run[:-1]]
    return [sum(a >= n - 1 for a in drafts) for n in range(1, depth + 1)]


def n_alpha(accepted_lengths: list[list[int]], depth: int = CHAIN) -> list[float | None]:
    """n-alpha for n = 1..depth from chain runs: of the cycles that reached step n, the share
    whose n-th draft was accepted (they reached step n + 1). None where no cycle reached step n."""
    reached = reached_steps(accepted_lengths, depth + 1)
    return [reached[n] / reached[n - 1] if reached[n - 1] else None for n in range(1, depth + 1)]


# ----------------------------------------------------------------------------------------
# Data, training and evaluation of one run
# ----------------------------------------------------------------------------------------


def ablation_data(target: nn.Module, corpus: str, tokenizer, config: AblateConfig, progress: bool = True) -> TrainData:
    """``max(data_sizes)`` corpus sequences, a seeded sample in seeded order, each continued by
    the target after ``prompt_tokens`` tokens; cached in ``OUT/data.safetensors`` (a cached
    larger sample serves a smaller one: its first rows). The first ``n`` rows are the data of
    size ``n`` (nested subsets)."""
    path = Path(config.out_dir) / "data.safetensors"
    n = max(config.data_sizes)
    stamp = {"n": str(n), "seq_len": str(config.seq_len), "seed": str(config.seed),
             "prompt_tokens": str(config.prompt_tokens)}
    if path.exists():
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            cached = f.metadata() or {}
        if {**cached, "n": stamp["n"]} == stamp and int(cached["n"]) >= n:  # a larger sample holds this one
            tensors = load_file(path)
            return TrainData(tensors["input_ids"][:n], tensors["loss_mask"][:n])
    sequences = tokenize_corpus(corpus, tokenizer, config.seq_len)
    order = torch.randperm(sequences.shape[0], generator=torch.Generator().manual_seed(config.seed))
    if n > sequences.shape[0]:
        raise ValueError(f"data_sizes asks for {n} sequences; the corpus holds {sequences.shape[0]} of {config.seq_len}")
    ids, mask = regenerate(target, sequences[order[:n]], config.prompt_tokens, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": ids.contiguous(), "loss_mask": mask.contiguous()}, path, metadata=stamp)
    return TrainData(ids, mask)


def held_out_data(target: nn.Module, text: str, tokenizer, config: AblateConfig, progress: bool = True) -> TrainData:
    """Early stopping's held-out sequences: ``held_out_sequences`` of ``text`` (which the
    target never trained on), a seeded sample, continued by the target like the training
    data; cached in ``OUT/held_out.safetensors``. Without features: each run adds its own
    layers' (:func:`eagle3_ref.train.with_target_pass`)."""
    path = Path(config.out_dir) / "held_out.safetensors"
    stamp = {"n": str(config.held_out_sequences), "seq_len": str(config.seq_len), "seed": str(config.seed),
             "prompt_tokens": str(config.prompt_tokens)}
    if path.exists():
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            if (f.metadata() or {}) == stamp:
                tensors = load_file(path)
                return TrainData(tensors["input_ids"], tensors["loss_mask"])
    sequences = tokenize_corpus(text, tokenizer, config.seq_len)
    if sequences.shape[0] < config.held_out_sequences:
        raise ValueError(f"held_out_sequences is {config.held_out_sequences}; the held-out text holds "
                         f"{sequences.shape[0]} sequences of {config.seq_len}")
    order = torch.randperm(sequences.shape[0], generator=torch.Generator().manual_seed(config.seed))
    ids, mask = regenerate(target, sequences[order[:config.held_out_sequences]], config.prompt_tokens,
                           progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": ids.contiguous(), "loss_mask": mask.contiguous()}, path, metadata=stamp)
    return TrainData(ids, mask)


def _layer_ids(variant: Variant, n_layers: int) -> tuple[int, ...] | None:
    """The tapped layers a variant sets (None: EAGLE-3's default)."""
    return (top_feature_id(n_layers),) if variant.top_only and variant.head == "eagle3" else None


def _train_config(config: AblateConfig, variant: Variant, run_dir: Path, n_layers: int) -> TrainConfig:
    return TrainConfig(
        early_stopping=config.early_stopping, min_improvement=config.min_improvement,
        eval_every=config.eval_every if config.early_stopping else 0,
        out_dir=str(run_dir), seq_len=config.seq_len, batch_size=config.batch_size, max_steps=config.steps,
        lr=config.lr, warmup_steps=config.warmup_steps, ttt_steps=variant.ttt_steps, head=variant.head,
        draft_vocab_size=None, aux_layer_ids=_layer_ids(variant, n_layers), seed=config.seed, save_every=config.save_every, resume=(run_dir / "latest").exists(),
        head_overrides=dict(config.head_overrides), init_lm_head_from_target=variant.lm_head_from_target)


def _load_head(variant: Variant, run_dir: Path, target: nn.Module):
    if variant.head == "eagle2":
        return load_eagle2_head(run_dir, target)
    return load_draft_head(run_dir, target, dtype=torch.float32)


@torch.no_grad()
def evaluate_head(target: nn.Module, head, prompts: list[Tensor], max_new_tokens: int) -> dict:
    """tau with the default tree and with a chain of 7, and n-alpha, greedy, on ``prompts``."""
    head.eval()
    runs = {}
    for name, tree in (("tree", TreeConfig()), ("chain", TreeConfig.chain(CHAIN))):
        runs[name] = [speculative_generate(target, head, p[None], max_new_tokens=max_new_tokens, tree=tree
                                           ).accepted_lengths for p in prompts]
    tau = {name: sum(map(sum, r)) / max(1, sum(map(len, r))) for name, r in runs.items()}
    return {"tau_tree": tau["tree"], "tau_chain": tau["chain"], "n_alpha": n_alpha(runs["chain"]),
            "n_alpha_cycles": reached_steps(runs["chain"]),
            "eval_prompts": len(prompts), "eval_new_tokens": max_new_tokens}


def _run(target: nn.Module, data: TrainData, prompts: list[Tensor], config: AblateConfig, name: str, size: int,
         progress: bool, held_out: TrainData | None = None) -> dict:
    """Train (or resume, or reuse) one run and evaluate it; the evaluation is cached too.
    ``held_out``: early stopping's sequences (needed when ``config.early_stopping``)."""
    variant = VARIANTS[name]
    run_dir = Path(config.out_dir) / "runs" / f"{name}-{size}"
    result_path = run_dir / "eval.json"
    if result_path.exists():  # reused if it was measured the same way
        cached = json.loads(result_path.read_text())
        if (cached.get("eval_prompts"), cached.get("eval_new_tokens")) == (len(prompts), config.eval_new_tokens):
            return cached
    if not (run_dir / "history.json").exists():  # not finished: start, or resume after a kill
        if config.early_stopping and held_out is None:
            raise ValueError("early_stopping needs held-out sequences (held_out_data)")
        subset = TrainData(data.input_ids[:size], data.loss_mask[:size])
        train_config = _train_config(config, variant, run_dir, num_decoder_layers(target))
        if config.early_stopping:  # the held-out features of the layers this run taps
            held_out = with_target_pass(target, held_out, check_config_fits_target(train_config, target))
        train_head(target, subset, train_config, progress=progress,
                   **({"held_out": held_out} if config.early_stopping else {}))
    history = json.loads((run_dir / "history.json").read_text())
    best_step, _ = evaluations_since_best(history)
    kept = history if best_step is None else [r for r in history if r["step"] <= best_step]
    tail = kept[-min(len(kept), 20):]  # the last 20 steps of the head measured
    curve = [[r["step"], r["eval_loss"]] for r in history if "eval_loss" in r]
    result = {"variant": name, "label": variant.label, "sequences": size,
              "steps": config.steps if best_step is None else best_step,
              **({"stopped_at": history[-1]["step"], "eval_loss": min(loss for _, loss in curve), "eval_curve": curve}
                 if curve else {}),
              "train_accuracy": sum(r["acc"][0] or 0.0 for r in tail) / len(tail),
              **evaluate_head(target, _load_head(variant, run_dir, target), prompts, config.eval_new_tokens)}
    result_path.write_text(json.dumps(result, indent=2))
    return result


def run_ablation(target: nn.Module, tokenizer, corpus: str, eval_prompts: list[Tensor], config: AblateConfig,
                 progress: bool = True, held_out_text: str | None = None) -> list[dict]:
    """Every (variant, data size) run, then ``results.json``, ``results.md`` and the plots in
    ``OUT`` over every finished run there (so the scaling runs can follow the ablation in the
    same ``OUT`` and reuse its runs). Interrupted, it picks up where it stopped: finished
    runs are reused, an unfinished one resumes from its last checkpoint. Returns the results.
    ``held_out_text``: text the target never trained on, for early stopping's held-out loss
    (needed when ``config.early_stopping``)."""
    if config.early_stopping and not held_out_text:
        raise ValueError("early_stopping needs held_out_text: the held-out loss is measured on it")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablate_config.json").write_text(json.dumps(asdict(config), indent=2))
    # The held-out set first: a held-out text too short for it is refused before the long rewrite.
    held_out = held_out_data(target, held_out_text, tokenizer, config, progress) if config.early_stopping else None
    data = ablation_data(target, corpus, tokenizer, config, progress)
    for size in sorted(config.data_sizes):
        for name in config.variants:
            _run(target, data, eval_prompts, config, name, size, progress, held_out)
    results = finished_runs(out)
    (out / "results.json").write_text(json.dumps({"config": asdict(config), "results": results}, indent=2))
    (out / "results.md").write_text(results_markdown(results))
    plot_results(results, out)
    return results


def finished_runs(out: str | os.PathLike) -> list[dict]:
    """The evaluation of every finished run in ``OUT/runs``, by data size, then variant."""
    results = [json.loads(p.read_text()) for p in Path(out).glob("runs/*/eval.json")]
    order = {name: i for i, name in enumerate(VARIANTS)}
    return sorted(results, key=lambda r: (r["sequences"], order[r["variant"]]))


# ----------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------


def results_markdown(results: list[dict]) -> str:
    """One row per run: tau (tree, chain), top-1 train accuracy, n-alpha for n = 1..7; with
    early stopping, the held-out loss of the head measured and the step training stopped at."""
    stopped = any("eval_loss" in r for r in results)
    head = "| variant | sequences | steps | " + ("held-out loss | " if stopped else "") + \
        "tau, tree | tau, chain | train acc. | " + " | ".join(f"{n}-α" for n in range(1, CHAIN + 1)) + " |"
    lines = [head, "|" + "---|" * (6 + stopped + CHAIN)]
    for r in results:
        cycles = r.get("n_alpha_cycles") or [MIN_CYCLES] * CHAIN
        alphas = " | ".join("–" if a is None else f"{a:.2f}" if c >= MIN_CYCLES else f"({a:.2f})"
                            for a, c in zip(r["n_alpha"], cycles))
        steps = f"{r['steps']} (of {r['stopped_at']})" if "stopped_at" in r else str(r["steps"])
        loss = (f"{r['eval_loss']:.3f} | " if "eval_loss" in r else "– | ") if stopped else ""
        lines.append(f"| {r['label']} | {r['sequences']} | {steps} | {loss}{r['tau_tree']:.2f} | {r['tau_chain']:.2f} | "
                     f"{r['train_accuracy']:.2f} | {alphas} |")
    note = f"\n\nn-α in parentheses: measured on fewer than {MIN_CYCLES} cycles.\n"
    if stopped:
        note += ("Early stopping: \"steps\" is the step of the head measured, the one of the lowest held-out loss; "
                 "\"of\" is the step training stopped at.\n")
    return "\n".join(lines) + note


def plot_results(results: list[dict], out: str | os.PathLike) -> list[Path]:
    """``tau.png`` (tau by variant at the largest data size), ``n_alpha.png`` (the curves)
    and, with more than one data size, ``scaling.png`` (tau against sequences, tree and chain);
    with early stopping, ``curves.png`` (each run's held-out loss)."""
    # Figures made directly, not through pyplot: no backend is switched, so a notebook that calls
    # this keeps showing its own plots inline (matplotlib.use("Agg") here hid notebook 08's).
    from matplotlib.figure import Figure

    out, written = Path(out), []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name)
        written.append(out / name)

    largest = max(r["sequences"] for r in results)
    top = [r for r in results if r["sequences"] == largest]
    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.subplots()
    x = range(len(top))
    ax.bar([i - 0.2 for i in x], [r["tau_tree"] for r in top], width=0.4, label="default tree (60 nodes)")
    ax.bar([i + 0.2 for i in x], [r["tau_chain"] for r in top], width=0.4, label=f"chain of {CHAIN}")
    ax.set_xticks(list(x), [r["variant"] for r in top], fontsize=11)
    ax.set_ylabel("acceptance length tau", fontsize=11)
    ax.set_title(f"Acceptance length by variant ({largest} training sequences)", fontsize=12)
    ax.legend(fontsize=10)
    save(fig, "tau.png")

    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.subplots()
    for r in top:
        cycles = r.get("n_alpha_cycles") or [MIN_CYCLES] * CHAIN
        ax.plot(range(1, CHAIN + 1), [float("nan") if a is None or c < MIN_CYCLES else a
                                      for a, c in zip(r["n_alpha"], cycles)], marker="o", label=r["variant"])
    ax.set_xlabel("n: draft step (n-1 of the head's own outputs in its input)", fontsize=11)
    ax.set_ylabel("n-α: acceptance rate", fontsize=11)
    ax.set_ylim(0, 1)
    ax.set_title(f"Acceptance rate by draft step, chain, greedy (points from >= {MIN_CYCLES} cycles)", fontsize=12)
    ax.legend(fontsize=10)
    save(fig, "n_alpha.png")

    curves = {}  # the variants measured at more than one data size
    for r in results:
        curves.setdefault(r["variant"], []).append(r)
    curves = {name: sorted(rows, key=lambda r: r["sequences"]) for name, rows in curves.items() if len(rows) > 1}
    if curves:
        sizes = sorted({r["sequences"] for rows in curves.values() for r in rows})
        fig = Figure(figsize=(8, 4.5), dpi=120)
        ax = fig.subplots()
        for name, rows in curves.items():
            line, = ax.plot([r["sequences"] for r in rows], [r["tau_tree"] for r in rows], marker="o",
                            label=f"{name}, default tree")
            ax.plot([r["sequences"] for r in rows], [r["tau_chain"] for r in rows], marker="s", linestyle="--",
                    color=line.get_color(), label=f"{name}, chain of {CHAIN}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        converged = all("stopped_at" in r for rows in curves.values() for r in rows)
        ax.set_xlabel("training sequences (" + ("each run trained until its held-out loss stopped falling"
                                                if converged else "tokens seen held equal") + ")", fontsize=11)
        ax.set_ylabel("acceptance length tau", fontsize=11)
        ax.set_title("Data scaling", fontsize=12)
        ax.legend(fontsize=10)
        save(fig, "scaling.png")

    curved = [r for r in results if r.get("eval_curve")]
    if curved:  # early stopping's held-out loss, one panel per variant, one line per data size
        names = list(dict.fromkeys(r["variant"] for r in curved))
        fig = Figure(figsize=(5 * len(names), 4.5), dpi=120)
        for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names):
            for r in (r for r in curved if r["variant"] == name):
                steps, losses = zip(*r["eval_curve"])
                line, = ax.plot(steps, losses, label=f"{r['sequences']} sequences")
                ax.plot([r["steps"]], [r["eval_loss"]], marker="o", color=line.get_color())
            ax.set_xlabel("training step", fontsize=11)
            ax.set_ylabel("held-out loss", fontsize=11)
            ax.set_title(f"{name}: held-out loss (dot: the head kept)", fontsize=12)
            ax.legend(fontsize=9)
        save(fig, "curves.png")
    return written
