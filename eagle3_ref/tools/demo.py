"""The main job: ``eagle3-ref demo`` decodes one prompt speculatively and shows its work.

With no arguments it runs the shipped toy pair (``eagle3_ref/toy_model``) on a held-out
prompt, greedily: the generated code with each cycle's accepted draft tokens marked, the
acceptance length tau, tokens/s of speculative and of plain decoding (transformers'
``generate``, the same process, both warmed up) and whether the two outputs are equal.
``--target``/``--draft`` take any Hugging Face causal LM directory and any EAGLE-3 head in
the official format.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import load_draft_head
from ..decoding import speculative_generate
from ..draft_head import Eagle3DraftHead
from ..generate import GenerationOutput
from ..toy import TOY_DIR, held_out_prompts

__all__ = ["DemoError", "DemoResult", "load_pair", "default_prompt", "encode_prompt", "plain_generate", "cycle_spans",
           "mark_cycles", "run_demo", "report"]


class DemoError(ValueError):
    """A bad argument of the demo or the benchmark, named in the message."""


def load_pair(target: str | os.PathLike | None, draft: str | os.PathLike | None, device: str = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object, Eagle3DraftHead]:
    """Load a target (HF directory with its tokenizer) and an EAGLE-3 head for it; None
    means the shipped toy one. Every path and the pair's fit are checked with errors that
    name the argument."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target_dir = Path(target) if target is not None else TOY_DIR / "target"
    draft_dir = Path(draft) if draft is not None else TOY_DIR / "head"
    if target is not None and draft is None:
        raise DemoError("--target needs --draft: the toy head only fits the toy target")
    if target_dir.is_file():
        raise DemoError(f"--target {target_dir} is a file: give the model's directory")
    if not target_dir.is_dir():
        raise DemoError(f"--target {target_dir}: no such directory")
    if not (target_dir / "config.json").is_file():
        raise DemoError(f"--target {target_dir}: not a Hugging Face model directory (no config.json)")
    if draft_dir.is_file():
        raise DemoError(f"--draft {draft_dir} is a file: give the head's directory")
    if not draft_dir.is_dir():
        raise DemoError(f"--draft {draft_dir}: no such directory")
    if not (draft_dir / "config.json").is_file():
        raise DemoError(f"--draft {draft_dir}: not an EAGLE-3 head directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(target_dir)
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds here
        raise DemoError(f"--target {target_dir}: no usable tokenizer ({str(err).splitlines()[0]})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype).to(device).eval()
    except Exception as err:  # noqa: BLE001
        raise DemoError(f"--target {target_dir}: cannot load it as a causal LM ({str(err).splitlines()[0]})") from None
    try:
        head = load_draft_head(draft_dir, model)
    except (ValueError, FileNotFoundError) as err:
        try:  # is the head itself sound? then it is the pair that does not fit
            load_draft_head(draft_dir)
        except (ValueError, FileNotFoundError) as own:
            raise DemoError(f"--draft {draft_dir}: the head cannot be loaded, its files disagree or are damaged "
                            f"({own}); check it with `eagle3-ref check-head {draft_dir}`") from None
        raise DemoError(f"--draft {draft_dir} does not fit --target {target_dir}: {err}") from None
    return model, tokenizer, head


# Which held-out prompt the demo shows by default. Like any small LM, the toy target falls into
# a loop on many prompts (the first one repeats "self.name = name" about twenty times, and the
# loop, not the head, makes most of its tau of 7). Measured over the 40 held-out prompts
# (Python 3.11's standard library), this one continues into code that repeats least: 30 % of
# its 4-grams recur in 128 tokens, against 75 % for the first; tau 3.97, near the toy's
# held-out mean. tests/test_demo.py holds it to that.
DEFAULT_PROMPT = 16


def default_prompt() -> str:
    """A held-out prompt of the toy world (a function definition from a standard library
    module the toy target never saw; :data:`DEFAULT_PROMPT`), as text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOY_DIR / "target")
    prompts = held_out_prompts(tokenizer, count=DEFAULT_PROMPT + 1)
    return tokenizer.decode(prompts[min(DEFAULT_PROMPT, len(prompts) - 1)])


def encode_prompt(tokenizer, prompt: str, chat: bool, device) -> Tensor:
    if not prompt:
        raise DemoError("--prompt is empty")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise DemoError("--chat: the target's tokenizer has no chat template")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_dict=False)
    else:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return torch.tensor([ids], device=device)


@torch.no_grad()
def plain_generate(target: nn.Module, input_ids: Tensor, max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, top_k: int = 0, eos_token_id=None, assistant: nn.Module | None = None,
                   min_new_tokens: int = 0) -> Tensor:
    """transformers' own ``generate`` (the baseline), or its assisted generation with a small
    draft LM (``assistant``, the field's SpS baseline). Returns the full sequence ``(1, T)``.
    ``min_new_tokens``: no EOS before this many (the model's own config may name one)."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                              do_sample=temperature > 0, eos_token_id=eos_token_id,
                              pad_token_id=eos_token_id if eos_token_id is not None else 0,
                              **({"temperature": temperature, "top_p": top_p, "top_k": top_k} if temperature > 0 else {}))
    return target.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                           assistant_model=assistant)


def cycle_spans(out: GenerationOutput) -> list[tuple[int, int, int]]:
    """Per target forward, ``(start, accepted_end, end)`` offsets into the new tokens:
    ``[start, accepted_end)`` are the draft tokens it accepted, ``[accepted_end, end)`` the
    target's own token (the bonus; absent when generation stopped at an accepted token).
    The first span is the prefill's one token."""
    spans, start = [(0, 0, min(1, out.new_tokens.numel()))], 1
    for length in out.accepted_lengths:
        end = start + length
        # length - 1 accepted drafts, then the bonus. (The last cycle may have been cut at
        # max_new_tokens before its bonus; its last token is shown as the target's all the same.)
        spans.append((start, end - 1, end))
        start = end
    return spans


_COLOURS = ("\033[1;32m", "\033[1;36m")  # alternate cycles: green, cyan (bold)
_RESET, _DIM = "\033[0m", "\033[2m"


def mark_cycles(tokenizer, out: GenerationOutput, colour: bool) -> str:
    """The generated text with each cycle's accepted draft tokens marked: in alternating
    colours, or (``colour=False``) between ``«`` and ``»``."""
    ids = out.new_tokens.tolist()

    def text(upto: int) -> str:
        """The settled text of the first ``upto`` tokens. Prefixes are decoded whole, so a
        character spread over several tokens comes out whole; a character still incomplete
        at the end (bytes that decode to U+FFFD so far) waits for the next span, as a
        streaming detokenizer waits."""
        decoded = tokenizer.decode(ids[:upto], skip_special_tokens=False)
        return decoded if upto == len(ids) else decoded.rstrip("\ufffd")

    pieces, shown, cycle = [], "", 0
    for start, accepted_end, end in cycle_spans(out):
        drafted, own = text(accepted_end)[len(shown):], text(end)[len(text(accepted_end)):]
        if drafted:
            pieces.append(f"{_COLOURS[cycle % 2]}{drafted}{_RESET}" if colour else f"«{drafted}»")
            cycle += 1
        pieces.append(own)
        shown = text(end)
    return "".join(pieces)


@dataclass
class DemoResult:
    output: GenerationOutput
    spec_times: list[float]  # seconds of each timed speculative run (after a warm-up)
    plain_sequence: Tensor | None
    plain_times: list[float] | None  # seconds of each timed plain run

    @property
    def spec_seconds(self) -> float:
        return statistics.median(self.spec_times)

    @property
    def plain_seconds(self) -> float | None:
        return statistics.median(self.plain_times) if self.plain_times else None

    @property
    def equal(self) -> bool | None:
        if self.plain_sequence is None:
            return None
        return torch.equal(self.output.sequences.cpu(), self.plain_sequence.cpu())


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def run_demo(target: nn.Module, tokenizer, head: Eagle3DraftHead, input_ids: Tensor, *, max_new_tokens: int,
             tree, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             plain: bool = True, runs: int = 3) -> DemoResult:
    """Warm both up, then ``runs`` speculative and ``runs`` plain runs of the same prompt,
    interleaved (so that a slow moment of the machine hits both); the report shows the
    median and the spread. Every run is seeded alike: the outputs are the same each time."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise DemoError(f"--runs must be at least 1, got {runs!r}")
    eos = tokenizer.eos_token_id
    common = dict(temperature=temperature, top_p=top_p, top_k=top_k, eos_token_id=eos)

    def spec(n):
        generator = torch.Generator(device=input_ids.device).manual_seed(seed) if temperature > 0 else None
        return speculative_generate(target, head, input_ids, max_new_tokens=n, tree=tree, generator=generator, **common)

    def plain_run():
        torch.manual_seed(seed)
        return plain_generate(target, input_ids, max_new_tokens, **common)

    spec(min(8, max_new_tokens))  # warm-up: first-call allocations and kernel selection
    if plain:
        plain_generate(target, input_ids, min(8, max_new_tokens), **common)
    spec_times, plain_times, plain_sequence = [], [] if plain else None, None
    for _ in range(runs):
        output, seconds = _timed(lambda: spec(max_new_tokens))
        spec_times.append(seconds)
        if plain:
            plain_sequence, seconds = _timed(plain_run)
            plain_times.append(seconds)
    return DemoResult(output, spec_times, plain_sequence, plain_times)


def _spread(times: list[float], tokens: int) -> str:
    rates = sorted(tokens / t for t in times)
    return f"{statistics.median(rates):7.1f} tokens/s" + (f" ({rates[0]:.1f}-{rates[-1]:.1f})" if len(rates) > 1 else "")


def why_slower(result: DemoResult) -> str | None:
    """One line, from the run's own timings, when speculation lost: a cycle costs this many
    plain decoding steps and appends tau tokens; it pays only when tau is the larger."""
    out = result.output
    if result.plain_seconds is None or not out.accepted_lengths:
        return None
    n_new = out.new_tokens.numel()
    plain_new = result.plain_sequence.shape[1] - out.prompt_length
    if n_new / result.spec_seconds >= plain_new / result.plain_seconds:
        return None
    cycles = len(out.accepted_lengths)
    step = result.plain_seconds / max(1, plain_new)  # one plain decoding step
    per_cycle = {k: out.timings.get(k, 0.0) / cycles for k in ("draft", "verify", "accept")}
    cost = sum(per_cycle.values()) / step
    return (f"why slower here: a cycle costs {cost:.1f} plain steps (draft {per_cycle['draft'] * 1e3:.1f} ms, "
            f"verify {per_cycle['verify'] * 1e3:.1f} ms, accept {per_cycle['accept'] * 1e3:.1f} ms; a plain step "
            f"{step * 1e3:.1f} ms) and appends tau = {out.tau:.2f} tokens; it pays only when tau is the larger")


def report(result: DemoResult, tokenizer, prompt_text: str, tree, temperature: float, dtype: torch.dtype,
           colour: bool, file=None) -> int:
    """Print the demo's report; the exit status: 1 when a float32/64 greedy run differs
    from plain greedy decoding (that would be a bug), else 0."""
    file = file or sys.stdout
    out = result.output
    n_new = out.new_tokens.numel()
    shape = f"chain of {tree.max_depth}" if tree.top_k == 1 else \
        f"tree of {tree.num_nodes} nodes, depth {tree.max_depth}, top-k {tree.top_k}"
    if getattr(tree, "calibration", None) is not None:  # AutoTreeConfig
        shape = (f"cost-aware tree (depth and nodes chosen every cycle, up to {tree.num_nodes} nodes, depth "
                 f"{tree.max_depth}, top-k {tree.top_k})")
        if not tree.drafts:
            shape = (f"cost-aware tree, which decodes plainly here: at best {tree.drafting_gain:.2f}x plain decoding "
                     f"for any fixed depth of the draft, on this machine at this temperature")
    mode = "greedy" if temperature == 0 else f"sampling at temperature {temperature}"
    print(f"--- prompt ({out.prompt_length} tokens) ---", file=file)
    print((_DIM if colour else "") + prompt_text + (_RESET if colour else ""), file=file)
    print(f"--- generated ({n_new} new tokens) ---", file=file)
    print(mark_cycles(tokenizer, out, colour), file=file)
    print("-" * 72, file=file)
    legend = "coloured" if colour else "between « and »"
    print(f"{mode}, {shape}. Tokens {legend}: draft tokens the target accepted in one forward; "
          f"the rest: the target's own token of each forward.", file=file)
    plainly = getattr(tree, "calibration", None) is not None and not tree.drafts
    steps = "plain decoding steps: nothing was drafted" if plainly else "verification cycles"
    print(f"tau {out.tau:.2f}: {n_new} new tokens from {len(out.accepted_lengths) + 1} target forwards "
          f"(the prefill and {len(out.accepted_lengths)} {steps})", file=file)
    runs = len(result.spec_times)
    line = f"speculative {_spread(result.spec_times, n_new)}"
    if result.plain_seconds is not None:
        plain_new = result.plain_sequence.shape[1] - out.prompt_length
        speedup = (n_new / result.spec_seconds) / (plain_new / result.plain_seconds)
        line += f"   plain (transformers generate) {_spread(result.plain_times, plain_new)}   speedup {speedup:.2f}x"
    print(line + (f"   (median of {runs} runs; range in parentheses)" if runs > 1 else ""), file=file)
    slower = why_slower(result) if tree.drafts else None  # plain steps: no cycle to explain
    if slower:
        print(slower, file=file)
    if result.plain_sequence is None:
        return 0
    if temperature > 0:
        print("sampling: the outputs are samples of the same distribution (verification is lossless), "
              "not equal strings", file=file)
        return 0
    if result.equal:
        print(f"output equals plain greedy decoding: yes ({n_new} tokens identical)", file=file)
        return 0
    plain_new = result.plain_sequence[0, out.prompt_length:].cpu()
    first = next((i for i, (a, b) in enumerate(zip(out.new_tokens.tolist(), plain_new.tolist())) if a != b),
                 min(n_new, plain_new.numel()))
    exact = dtype in (torch.float32, torch.float64)
    why = "a bug: please report it" if exact else \
        f"expected now and then in {str(dtype).removeprefix('torch.')}: a tree forward rounds differently from a " \
        "one-token forward, and a near-tie can flip (docs/testing.md)"
    print(f"output equals plain greedy decoding: NO, first difference at new token {first} ({why})", file=file)
    return 1 if exact else 0


def load_assistant(assistant_dir, target: nn.Module, device, dtype: torch.dtype) -> nn.Module:
    """The SpS baseline's draft LM (``--assistant``): loaded, and sharing the target's vocabulary."""
    if not (Path(assistant_dir) / "config.json").is_file():
        raise DemoError(f"--assistant {assistant_dir}: not a Hugging Face model directory (no config.json)")
    from transformers import AutoModelForCausalLM

    try:
        assistant = AutoModelForCausalLM.from_pretrained(assistant_dir, dtype=dtype).to(device).eval()
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds here
        raise DemoError(f"--assistant {assistant_dir}: cannot load it ({str(err).splitlines()[0]})") from None
    if assistant.config.vocab_size != target.config.vocab_size:
        raise DemoError(f"--assistant {assistant_dir}: vocabulary {assistant.config.vocab_size} differs from "
                        f"the target's {target.config.vocab_size} (assisted generation needs one tokenizer)")
    return assistant


def bench_prompts(tokenizer, count: int, device, reencode: bool) -> list:
    """The first ``count`` held-out prompts of the toy world (the bench's default), in the target's
    tokenizer; ``reencode`` for another model, so that its tokenizer adds its special tokens."""
    prompts = [ids[None].to(device) for ids in held_out_prompts(tokenizer, count=count)]
    if len(prompts) < count:
        raise DemoError(f"--prompts {count}: the held-out modules hold {len(prompts)} prompts; ask for at most "
                        f"{len(prompts)}, or give --prompts-file")
    if reencode:
        prompts = [encode_prompt(tokenizer, tokenizer.decode(ids[0]), False, device) for ids in prompts]
    return prompts
