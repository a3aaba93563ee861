"""From a target to a trained EAGLE-3 head.

The pipeline, as EAGLE-3 trains its heads:

1. **data**: tokenise a text corpus into sequences (or, with ``regenerate``, use each
   sequence's start as a prompt and let the target write the rest: self-distillation, the
   peers' advice for acceptance), or continue the prompts of a JSON-lines prompt file
   with the target; the loss mask marks the tokens to learn (several rewrite temperatures:
   each sequence rewritten once at each, the data mix for decoding at both);
2. **target pass**: one target forward per sequence gives the tapped features and its
   logits, on the fly or cached to disk in safetensors shards;
3. **vocabulary**: the draft vocabulary from the token counts of the training targets;
4. **training-time test**: :func:`eagle3_ref.ttt.ttt_forward` + :func:`ttt_loss`, AdamW
   (betas 0.9 / 0.95), linear warm-up then cosine decay, gradient clipping at 0.5, bf16
   autocast on CUDA;
5. **evaluation** every ``eval_every`` steps: tau with the default tree and a chain on
   held-out prompts, and the training loss on held-out sequences made like the training data
   (:func:`prepare_held_out`, :func:`evaluate_loss`): the curve that says when to stop
   (``early_stopping``: after that many evaluations without a lower held-out loss, lower by
   more than the fraction ``min_improvement`` of the best, training stops and the head kept
   is the one with the lowest);
6. **checkpoints**: the official format, written atomically (a temporary directory, then
   a rename, then the ``latest`` pointer); ``resume`` continues after a ``kill -9`` with
   nothing lost: optimizer, scheduler, RNG states and the data position all come back,
   and the data order is a pure function of (seed, step).

Ablation switches: ``ttt_steps`` (1 = no training-time test), ``aux_layer_ids`` (``(N,)``:
the top-layer feature only, no fusion), and ``head="eagle2"``: the EAGLE-2-style baseline of
:mod:`eagle3_ref.eagle2` (top-layer feature, feature regression + token loss, no TTT), trained
by the same loop, data order and checkpoints. ``eagle3-ref ablate`` runs them side by side.

More than one process (``torchrun --nproc_per_node N`` or ``accelerate launch
--num_processes N``, which set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``): each process
takes its share of the global batch (``batch_size`` per process) and gradients are
averaged with ``torch.distributed`` (NCCL on CUDA, Gloo on CPU); process 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ._checks import check_output_dir
from .checkpoint import load_draft_head, publish, save_draft_head
from .draft_head import Eagle3Config, Eagle3DraftHead
from .eagle2 import Eagle2DraftHead, eagle2_config, eagle2_loss, load_eagle2_head, save_eagle2_head
from .fusion import default_aux_layer_ids, num_decoder_layers, select_features, top_feature_id, validate_aux_layer_ids
from .tree import TreeConfig
from .ttt import ttt_forward, ttt_loss
from .vocab import build_vocab_mapping, count_tokens

__all__ = ["TrainConfig", "TrainData", "tokenize_corpus", "regenerate", "continue_prompts", "read_data_file",
           "prepare_held_out", "with_target_pass", "evaluate_loss", "evaluations_since_best",
           "target_pass", "prepare_data",
           "train_head", "evaluate_tau", "TrainingError", "check_out_dir", "check_config_fits_target", "new_head"]


class TrainingError(ValueError):
    """Bad training input; raised before anything is written."""


@dataclass
class TrainConfig:
    """Everything ``eagle3-ref train`` takes (``docs/training.md``); ``ttt_steps`` K = 7 by
    default, as EAGLE-3 trains."""

    out_dir: str
    seq_len: int = 256
    batch_size: int = 4
    max_steps: int = 1000
    lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 0.5
    ttt_steps: int = 7  # K; 1 = no training-time test (the ablation)
    draft_vocab_size: int | None = None  # None: the target's vocabulary
    aux_layer_ids: tuple[int, ...] | None = None  # None: EAGLE-3's default (2, N//2, N-3)
    regenerate_prompt_tokens: int = 0  # > 0: self-distillation with prompts of this many tokens
    # The target writes greedily (0) or samples at this temperature; several (e.g. (0.0, 1.0)): each
    # sequence is rewritten once at each, the data mix that serves decoding at both temperatures.
    regenerate_temperature: float | tuple[float, ...] = 0.0
    max_sequences: int | None = None  # keep this many corpus sequences (a seeded sample); None: all
    seed: int = 0
    save_every: int = 100
    eval_every: int = 0  # 0: no periodic tau evaluation
    eval_max_new_tokens: int = 32
    # > 0: stop after this many held-out evaluations without a lower eval_loss, and keep the head of
    # the lowest (early stopping; needs eval_every and held-out sequences)
    early_stopping: int = 0
    # with early_stopping: an evaluation counts as an improvement only when its loss is below the
    # best before it by more than this fraction of it (0.005: 0.5 %); 0: any lower loss counts
    min_improvement: float = 0.0
    resume: bool = False
    overwrite: bool = False
    cache_dir: str | None = None  # cache the target pass here (safetensors shards)
    data_cache: str | None = None  # keep the (rewritten) sequences here, reused when the recipe matches
    head_overrides: dict = field(default_factory=dict)  # e.g. {"intermediate_size": 64}
    head: str = "eagle3"  # "eagle2": the EAGLE-2-style baseline (eagle2.py); needs ttt_steps 1
    init_lm_head_from_target: bool = False  # start lm_head as the target's LM head rows (a diagnostic)

    def __post_init__(self) -> None:
        """Every field checked on its own, by name, before any work (what needs the target,
        such as the vocabulary size, is checked by :func:`check_config_fits_target`)."""
        def whole(name: str, low: int, none_ok: bool = False) -> None:
            value = getattr(self, name)
            if value is None and none_ok:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TrainingError(f"{name} must be an int >= {low}{' or None' if none_ok else ''}, got {value!r}")

        for name in ("batch_size", "max_steps", "ttt_steps", "save_every", "eval_max_new_tokens"):
            whole(name, 1)
        for name in ("warmup_steps", "eval_every", "regenerate_prompt_tokens", "seed", "early_stopping"):
            whole(name, 0)
        if self.early_stopping and not self.eval_every:
            raise TrainingError(f"early_stopping ({self.early_stopping}) counts held-out evaluations, but eval_every is 0: "
                                "set eval_every too")
        whole("seq_len", 2)
        whole("draft_vocab_size", 1, none_ok=True)
        whole("max_sequences", 1, none_ok=True)
        def number(name: str, value, positive: bool) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
                (value > 0 if positive else value >= 0)
            if not ok:
                raise TrainingError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")

        for name, positive in (("lr", True), ("grad_clip", True), ("weight_decay", False), ("min_improvement", False)):
            number(name, getattr(self, name), positive)
        if self.min_improvement >= 1:
            raise TrainingError(f"min_improvement is a fraction of the best held-out loss, in [0, 1), "
                                f"got {self.min_improvement!r}")
        if self.min_improvement and not self.early_stopping:
            raise TrainingError(f"min_improvement ({self.min_improvement}) is early stopping's tolerance, but "
                                "early_stopping is 0: set early_stopping too")
        if isinstance(self.regenerate_temperature, (list, tuple)):
            temperatures = tuple(self.regenerate_temperature)
            if not temperatures or len(set(temperatures)) != len(temperatures):
                raise TrainingError(f"regenerate_temperature must be one temperature or several distinct ones, got "
                                    f"{self.regenerate_temperature!r}")
            for value in temperatures:
                number("regenerate_temperature", value, False)
            self.regenerate_temperature = temperatures[0] if len(temperatures) == 1 else temperatures
        else:
            number("regenerate_temperature", self.regenerate_temperature, False)
        if isinstance(self.regenerate_temperature, tuple) and not self.regenerate_prompt_tokens:
            raise TrainingError("regenerate_temperature lists several temperatures, but regenerate_prompt_tokens is 0: "
                                "nothing is rewritten")
        if self.ttt_steps > self.seq_len:
            raise TrainingError(f"ttt_steps ({self.ttt_steps}) must be at most seq_len ({self.seq_len}): a step past "
                                "the sequence has no token to read")
        if self.regenerate_prompt_tokens >= self.seq_len:
            raise TrainingError(f"regenerate_prompt_tokens ({self.regenerate_prompt_tokens}) must be below seq_len "
                                f"({self.seq_len}): the target needs room to write")
        if self.head not in ("eagle3", "eagle2"):
            raise TrainingError(f"head must be 'eagle3' or 'eagle2' (the EAGLE-2-style baseline), got {self.head!r}")
        if self.aux_layer_ids is not None:
            ids = tuple(self.aux_layer_ids)
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise TrainingError(f"aux_layer_ids must be ints (hidden_states indices), got {self.aux_layer_ids!r}")
            self.aux_layer_ids = ids
        if self.resume and self.overwrite:
            raise TrainingError("resume and overwrite are mutually exclusive")

    @property
    def temperatures(self) -> tuple[float, ...]:
        """The rewrite temperatures as a tuple (one or several)."""
        t = self.regenerate_temperature
        return t if isinstance(t, tuple) else (t,)


@dataclass
class TrainData:
    input_ids: Tensor  # (N, T) long
    loss_mask: Tensor  # (N, T) long
    features: Tensor | None = None  # (N, T, k*H_t), None: computed on the fly
    target_logits: Tensor | None = None  # (N, T, V)


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------


def tokenize_corpus(text: str, tokenizer, seq_len: int) -> Tensor:
    """Split a corpus into ``(N, seq_len)`` token sequences (the tail shorter than one is dropped)."""
    if not text.strip():
        raise TrainingError("the corpus is empty")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // seq_len
    if n == 0:
        raise TrainingError(f"the corpus has {len(ids)} tokens, shorter than one sequence (seq_len={seq_len})")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def regenerate(target: nn.Module, sequences: Tensor, prompt_tokens: int, batch_size: int = 64,
               progress: bool = False, temperature: float = 0.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Self-distillation: keep each sequence's first ``prompt_tokens`` tokens and let the
    target write the rest (``batch_size`` sequences per ``generate`` call): greedily, or
    sampled at ``temperature`` (pure sampling, seeded with ``seed``), so the head also sees
    the text the target writes when it samples. Returns (input_ids, loss_mask on the
    written part)."""
    N, T = sequences.shape
    if not 0 < prompt_tokens < T:
        raise TrainingError(f"regenerate prompt length must be in [1, {T - 1}], got {prompt_tokens}")
    rows = []
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)
    if temperature > 0:
        torch.manual_seed(seed)  # transformers samples from the global generator
    for start in tqdm(range(0, N, batch_size), disable=not progress, desc="regenerate"):
        prompts = sequences[start:start + batch_size, :prompt_tokens].to(target.device)
        rows.append(target.generate(prompts, max_new_tokens=T - prompt_tokens, min_new_tokens=T - prompt_tokens,
                                    pad_token_id=0, attention_mask=torch.ones_like(prompts), **sampling).cpu())
    mask = torch.zeros(N, T, dtype=torch.long)
    mask[:, prompt_tokens:] = 1
    return torch.cat(rows), mask


@torch.no_grad()
def target_pass(target: nn.Module, input_ids: Tensor, layer_ids: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """One target forward: tapped features ``(B, T, k*H_t)`` and logits ``(B, T, V)``."""
    out = target(input_ids=input_ids.to(target.device), output_hidden_states=True, use_cache=False)
    return select_features(out.hidden_states, layer_ids), out.logits


@torch.no_grad()
def continue_prompts(target: nn.Module, prompts: list[list[int]], seq_len: int) -> tuple[Tensor, Tensor]:
    """A prompt file's way: each prompt (cut to ``seq_len // 2`` tokens) is continued
    greedily by the target up to ``seq_len``; the loss mask covers the continuation only."""
    ids = torch.zeros(len(prompts), seq_len, dtype=torch.long)
    mask = torch.zeros(len(prompts), seq_len, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        prompt = torch.tensor([prompt[: seq_len // 2]], device=target.device)
        out = target.generate(prompt, do_sample=False, max_new_tokens=seq_len - prompt.shape[1],
                              min_new_tokens=seq_len - prompt.shape[1], pad_token_id=0,
                              attention_mask=torch.ones_like(prompt))
        ids[row] = out[0].cpu()
        mask[row, prompt.shape[1]:] = 1
    return ids, mask


def read_data_file(text: str, tokenizer) -> tuple[str, list[list[int]]]:
    """A data file is plain text (the corpus), or JSON lines: ``{"text": ...}`` lines are
    corpus, ``{"prompt": ...}`` lines are prompts for the target to continue."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].lstrip().startswith("{"):
        return text, []
    corpus, prompts = [], []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrainingError(f"data line {number}: not JSON ({err.msg})") from None
        if "prompt" in record:
            prompts.append(tokenizer(record["prompt"], add_special_tokens=False)["input_ids"])
        elif "text" in record:
            corpus.append(record["text"])
        else:
            raise TrainingError(f"data line {number}: expected a 'text' or a 'prompt' field")
    return "\n".join(corpus), [p for p in prompts if p]


def prepare_data(target: nn.Module, text: str, tokenizer, config: TrainConfig, layer_ids: tuple[int, ...],
                 batch_size: int = 8, progress: bool = False) -> TrainData:
    """Tokenise (and optionally regenerate); with ``cache_dir``, run the target once and
    keep features and logits in safetensors shards (reused when they match)."""
    recipe = {"text": hashlib.sha256(text.encode()).hexdigest()[:16], "seq_len": config.seq_len,
              "max_sequences": config.max_sequences, "seed": config.seed,
              "regenerate": config.regenerate_prompt_tokens, "temperatures": list(config.temperatures)}
    ids_mask = _cached_sequences(config.data_cache, "train", recipe)
    if ids_mask is None:
        corpus, prompts = read_data_file(text, tokenizer)
        if prompts and not corpus.strip():
            ids_mask = continue_prompts(target, prompts, config.seq_len)
        else:
            ids_mask = _rewrite(target, tokenize_corpus(corpus, tokenizer, config.seq_len), config,
                                config.max_sequences, progress)
            if prompts:
                more, more_mask = continue_prompts(target, prompts, config.seq_len)
                ids_mask = torch.cat([ids_mask[0], more]), torch.cat([ids_mask[1], more_mask])
        _cache_sequences(config.data_cache, "train", recipe, *ids_mask)
    ids, mask = ids_mask
    data = TrainData(ids, mask)
    if config.cache_dir is None:
        return data
    cache = Path(config.cache_dir)
    stamp = {"layer_ids": list(layer_ids), "n": ids.shape[0], "seq_len": config.seq_len,
             "ids_sum": int(ids.sum()), "regenerate": config.regenerate_prompt_tokens,
             "regenerate_temperature": list(config.temperatures) if len(config.temperatures) > 1
             else config.regenerate_temperature,
             "max_sequences": config.max_sequences}
    if (cache / "manifest.json").exists() and json.loads((cache / "manifest.json").read_text()) == stamp:
        shards = [load_file(p) for p in sorted(cache.glob("shard_*.safetensors"))]
    else:
        cache.mkdir(parents=True, exist_ok=True)
        shards = []
        for i, start in enumerate(range(0, ids.shape[0], batch_size)):
            feats, logits = target_pass(target, ids[start:start + batch_size], layer_ids)
            shard = {"features": feats.cpu().contiguous(), "target_logits": logits.cpu().contiguous()}
            save_file(shard, cache / f"shard_{i:05d}.safetensors")
            shards.append(shard)
        (cache / "manifest.json").write_text(json.dumps(stamp))
    data.features = torch.cat([s["features"] for s in shards])
    data.target_logits = torch.cat([s["target_logits"] for s in shards])
    return data


def _rewrite(target: nn.Module, ids: Tensor, config: TrainConfig, keep: int | None,
             progress: bool) -> tuple[Tensor, Tensor]:
    """A seeded sample of ``keep`` sequences, each rewritten by the target once per
    temperature of the recipe (or left as written when nothing is rewritten)."""
    if keep is not None and keep < ids.shape[0]:
        order = torch.randperm(ids.shape[0], generator=torch.Generator().manual_seed(config.seed))
        ids = ids[order[:keep].sort().values]
    if not config.regenerate_prompt_tokens:
        return ids, torch.ones_like(ids)
    rewrites = [regenerate(target, ids, config.regenerate_prompt_tokens, progress=progress, temperature=t,
                           seed=config.seed) for t in config.temperatures]
    return torch.cat([r[0] for r in rewrites]), torch.cat([r[1] for r in rewrites])


def _cached_sequences(cache: str | None, name: str, recipe: dict) -> tuple[Tensor, Tensor] | None:
    """The sequences a ``data_cache`` holds for this recipe, or None."""
    if cache is None:
        return None
    stamp = Path(cache) / f"{name}.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != recipe:
        return None
    tensors = load_file(Path(cache) / f"{name}.safetensors")
    return tensors["input_ids"], tensors["loss_mask"]


def _cache_sequences(cache: str | None, name: str, recipe: dict, ids: Tensor, mask: Tensor) -> None:
    if cache is None:
        return
    Path(cache).mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": ids.contiguous(), "loss_mask": mask.contiguous()}, Path(cache) / f"{name}.safetensors")
    (Path(cache) / f"{name}.json").write_text(json.dumps(recipe))


def prepare_held_out(target: nn.Module, text: str, tokenizer, config: TrainConfig, layer_ids: tuple[int, ...],
                     sequences: int, batch_size: int = 8) -> TrainData:
    """Held-out sequences for the held-out loss: ``sequences`` of the held-out text, made the
    way the training data is (the same rewrites), with the target's features and logits
    (kept in memory: keep ``sequences`` small)."""
    if sequences < 1:
        raise TrainingError(f"held-out sequences must be >= 1, got {sequences}")
    recipe = {"text": hashlib.sha256(text.encode()).hexdigest()[:16], "seq_len": config.seq_len,
              "sequences": sequences, "seed": config.seed, "regenerate": config.regenerate_prompt_tokens,
              "temperatures": list(config.temperatures)}
    ids_mask = _cached_sequences(config.data_cache, "held_out", recipe)
    if ids_mask is None:
        ids = tokenize_corpus(text, tokenizer, config.seq_len)
        if ids.shape[0] == 0:
            raise TrainingError(f"the held-out text is shorter than one sequence of {config.seq_len} tokens")
        ids_mask = _rewrite(target, ids, config, sequences, progress=False)
        _cache_sequences(config.data_cache, "held_out", recipe, *ids_mask)
    return with_target_pass(target, TrainData(*ids_mask), layer_ids, batch_size)


def with_target_pass(target: nn.Module, data: TrainData, layer_ids: tuple[int, ...], batch_size: int = 8) -> TrainData:
    """``data`` with the target's tapped features and logits for every sequence, computed
    ``batch_size`` at a time and kept in memory (for a small held-out set)."""
    ids = data.input_ids
    passes = [target_pass(target, ids[i:i + batch_size], layer_ids) for i in range(0, ids.shape[0], batch_size)]
    return TrainData(ids, data.loss_mask, torch.cat([f for f, _ in passes]).cpu(),
                     torch.cat([lg for _, lg in passes]).cpu())


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> Tensor:
    """The examples of training step ``step``: epoch ``e`` is a permutation seeded by
    ``(seed, e)``, so the data position is a pure function of the step (exact resume)."""
    per_epoch = max(1, n // batch_size)
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[index * batch_size:(index + 1) * batch_size]


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_head(head, path: Path) -> None:
    """The official format for an EAGLE-3 head; the baseline's own for an EAGLE-2-style one."""
    (save_eagle2_head if isinstance(head, Eagle2DraftHead) else save_draft_head)(head, path)


def _write_dir(out: Path, name: str, tmp_prefix: str, write: Callable[[Path], None]) -> Path:
    """``out/name``, filled by ``write(folder)`` in a temporary folder (``tmp_prefix`` + random
    under ``out``) that is then renamed into place, so a kill while writing leaves the old one."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=tmp_prefix))
    write(tmp)
    for path in (tmp, *tmp.iterdir()):
        publish(path)
    final = out / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def save_best(out: Path, head) -> Path:
    """``out/best``: the head of the lowest held-out loss so far (early stopping)."""
    return _write_dir(out, "best", ".best-tmp-", lambda folder: _save_head(head, folder))


def save_checkpoint(out: Path, head, optimizer, scheduler, step: int, history: list) -> Path:
    """``out/ckpt-STEP`` (official head files + ``trainer_state.pt``), then ``out/latest``;
    every write lands in a temporary directory first, so a kill leaves the last one intact."""
    def write(folder: Path) -> None:
        _save_head(head, folder)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "rng": _rng_state(), "history": history}, folder / "trainer_state.pt")

    final = _write_dir(out, f"ckpt-{step:07d}", ".ckpt-tmp-", write)
    fd, pointer = tempfile.mkstemp(dir=out, prefix=".latest-")
    with os.fdopen(fd, "w") as f:
        f.write(final.name)
    publish(pointer)
    os.replace(pointer, out / "latest")
    for old in out.glob("ckpt-*"):  # keep only the newest
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_loss(head: nn.Module, held_out: TrainData, config: TrainConfig) -> tuple[float, list[float | None]]:
    """The training loss on held-out sequences (``eval_loss`` in ``history.json``) and the
    top-1 accuracy at each TTT step, computed ``config.batch_size`` sequences at a time but
    equal to one pass over the whole set: each part weighted by what its loss is normalised
    by (its ``B*T`` slots for EAGLE-3, its counted slots for the EAGLE-2-style head)."""
    device = next(head.parameters()).device
    was_training = head.training
    head.eval()
    eagle2 = config.head == "eagle2"
    total, weight = 0.0, 0
    hits = counts = [0] * (1 if eagle2 else config.ttt_steps)
    for start in range(0, held_out.input_ids.shape[0], config.batch_size):
        part = slice(start, start + config.batch_size)
        ids, mask = held_out.input_ids[part].to(device), held_out.loss_mask[part].to(device)
        feats, logits = held_out.features[part].to(device), held_out.target_logits[part].to(device)
        if feats.dtype in (torch.float16, torch.bfloat16):  # a half-precision target: the head's float32
            feats, logits = feats.float(), logits.float()
        if eagle2:  # no data noise: that is training's regulariser, not part of the loss measured
            result = eagle2_loss(head, feats, ids, logits, mask, noise_std=0.0)
            w = result.step_counts[0]
        else:
            result = ttt_loss(ttt_forward(head, feats, ids, config.ttt_steps).logits, logits, mask, head.t2d, head.d2t)
            w = ids.numel()
        total, weight = total + result.loss.item() * w, weight + w
        hits = [h + (0.0 if a != a else a * c) for h, a, c in zip(hits, result.step_accuracy, result.step_counts)]
        counts = [c + s for c, s in zip(counts, result.step_counts)]
    head.train(was_training)
    return total / max(1, weight), [h / c if c else None for h, c in zip(hits, counts)]


def evaluations_since_best(history: list[dict], min_improvement: float = 0.0) -> tuple[int | None, int]:
    """Early stopping's count, from a run's ``history``: the step of the lowest held-out
    loss (the first, on a tie; None before any evaluation) and how many held-out evaluations
    came after the last improvement.

    An evaluation improves when its loss is below the best before it by more than
    ``min_improvement`` times that best (0: any lower loss). With a tolerance the two can
    differ: a loss lower by less than it is still the lowest (the head kept) without resetting
    the count (the run stops when the loss creeps down by less than the tolerance)."""
    losses = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    if not losses:
        return None, 0
    lowest = min(range(len(losses)), key=lambda i: (losses[i][1], i))
    best, improved = losses[0][1], 0
    for i, (_, loss) in enumerate(losses[1:], start=1):
        if loss < best - min_improvement * abs(best):
            best, improved = loss, i
    return losses[lowest][0], len(losses) - 1 - improved


@torch.no_grad()
def evaluate_tau(target: nn.Module, head: Eagle3DraftHead, prompts: list[Tensor], max_new_tokens: int,
                 tree=None) -> float:
    """Mean acceptance length over held-out prompts, greedy, with ``tree`` (default: the
    default tree, its branching cut to the draft vocabulary when that has fewer than 10
    tokens)."""
    from .generate import speculative_generate

    if tree is None:
        top_k = min(TreeConfig().top_k, head.config.draft_vocab_size)
        tree = TreeConfig() if top_k == TreeConfig().top_k else TreeConfig(num_nodes=top_k + 1, max_depth=8,
                                                                           top_k=top_k)
    head.eval()
    lengths = []
    for prompt in prompts:
        out = speculative_generate(target, head, prompt[None].to(target.device), max_new_tokens=max_new_tokens,
                                   tree=tree)
        lengths += out.accepted_lengths
    head.train()
    return sum(lengths) / max(1, len(lengths))


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------


def _join_process_group() -> bool:
    """Join the process group when launched by torchrun / accelerate; True if this call created it.

    Whoever creates the group destroys it (``train_head`` does, in a ``finally``). A Gloo group
    left for the interpreter's exit can abort the process with SIGABRT while it is torn down
    (pytorch/pytorch#179291): a two-process run that trained correctly then fails.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# What a run that stopped before its first checkpoint leaves behind; a new run may start over it.
_NO_CHECKPOINT_YET = ("train_config.json", ".ckpt-tmp-*", ".latest-*", "best", ".best-tmp-*")

# Fields a resumed run may change: where and how often it writes and evaluates, not what it learns.
# Settings a resumed run may change: where and how often it writes and measures, and when it stops
# (early stopping's patience and tolerance); none of them changes a step's arithmetic.
_RESUMABLE_CHANGES = {"out_dir", "resume", "overwrite", "save_every", "eval_every", "eval_max_new_tokens", "cache_dir",
                      "data_cache", "early_stopping", "min_improvement"}


def lock_path(out: Path) -> Path:
    """The lock of output folder ``out``: ``.NAME.lock`` beside it (not in it, so that
    ``--overwrite`` clearing the folder does not clear the lock), holding the owner's pid."""
    return out.parent / f".{out.name}.lock"


def _lock_owner(out: Path) -> int | None:
    """The pid of the live process that holds ``out``'s lock; None if none does (no lock, or
    a stale one: its process is gone)."""
    try:
        pid = int(lock_path(out).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)  # signal 0: is it there?
    except ProcessLookupError:
        return None
    except PermissionError:  # there, another user's
        pass
    return pid


def _refuse_a_second_writer(out: Path) -> None:
    owner = _lock_owner(out)
    if owner is not None and owner != os.getpid():
        raise TrainingError(f"out_dir {out} is being written by another run (process {owner}, lock "
                            f"{lock_path(out)}): wait for it to end or stop it; two runs in one folder overwrite "
                            f"each other's checkpoints")


def acquire_output_lock(out: Path) -> Path:
    """Take ``out``'s lock for the life of a run; a live owner is refused by name, a stale lock
    (its process gone) is taken over. Release with ``lock.unlink()``."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = path.with_name(f"{path.name}.{os.getpid()}")
    mine.write_text(f"{os.getpid()}\n")  # whole before it is linked: no reader sees an empty lock
    try:
        while True:
            _refuse_a_second_writer(out)
            try:
                os.link(mine, path)  # atomic: fails if a lock is there
                return path
            except FileExistsError:
                path.unlink(missing_ok=True)  # stale (its process gone): take it over
    finally:
        mine.unlink(missing_ok=True)


def check_out_dir(config: TrainConfig) -> Path:
    try:
        out = check_output_dir("out_dir", config.out_dir)
        if config.cache_dir is not None:
            check_output_dir("cache_dir", config.cache_dir)
        if config.data_cache is not None:
            check_output_dir("data_cache", config.data_cache)
    except ValueError as err:
        raise TrainingError(str(err)) from None
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, process 0 holds the lock for all
        _refuse_a_second_writer(out)
    leftovers = [p for p in out.iterdir() if not any(p.match(g) for g in _NO_CHECKPOINT_YET)] if out.exists() else []
    if config.resume and not (out / "latest").exists():
        raise TrainingError(f"nothing to resume in {out} (no 'latest' checkpoint: the run stopped before its first "
                            f"one, or never started); run again without --resume")
    if leftovers and not (config.resume or config.overwrite):
        raise TrainingError(f"output directory {out} exists and is not empty: pass --resume to continue or "
                            f"--overwrite to start over")
    return out


def _data_fingerprint(data: TrainData) -> str:
    """Which sequences and loss mask a run trains on (recorded, compared on resume)."""
    digest = hashlib.sha256(data.input_ids.cpu().numpy().tobytes())
    digest.update(data.loss_mask.cpu().numpy().tobytes())
    return f"{tuple(data.input_ids.shape)} {digest.hexdigest()[:16]}"


def _run_record(config: TrainConfig, data: TrainData) -> dict:
    """What ``train_config.json`` holds: the config, and the data it was given."""
    return json.loads(json.dumps({**asdict(config), "data": _data_fingerprint(data)}, default=str))


def _check_resume_matches(config: TrainConfig, out: Path, data: TrainData) -> None:
    """A resumed run must be the run it continues: refuse, by name, any changed field that
    would change what is learned, the data included."""
    try:
        saved = json.loads((out / "train_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return  # nothing recorded (an older run): the checkpoint alone decides
    now = _run_record(config, data)
    changed = [k for k in now if k not in _RESUMABLE_CHANGES and k in saved and saved[k] != now[k]]
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise TrainingError(f"--resume continues the run in {out}, which was started with other settings ({detail}); "
                            f"resume with the same ones, or start over with --overwrite")


def train_head(target: nn.Module, data: TrainData, config: TrainConfig, eval_prompts: list[Tensor] | None = None,
               log: Callable[[dict], None] | None = None, progress: bool = True,
               held_out: TrainData | None = None) -> Eagle3DraftHead:
    """Train (or resume training) an EAGLE-3 head for ``target``; returns the head.

    Every ``config.eval_every`` steps: the acceptance length on ``eval_prompts`` with the
    default tree (``tau``) and a 7-deep chain (``tau_chain``), and the loss and per-step
    accuracy on ``held_out`` (:func:`prepare_held_out`; ``eval_loss``, ``eval_acc``), all in
    ``history.json``.

    Everything is validated before anything is written to ``config.out_dir``. Launched by
    torchrun / accelerate (``WORLD_SIZE`` > 1), it joins the process group, averages gradients
    across processes, and leaves the group again if it was the one to create it.
    """
    if config.early_stopping and held_out is None:
        raise TrainingError(f"early_stopping ({config.early_stopping}) needs held-out sequences to evaluate the loss on "
                            "(held_out; --eval-data and --eval-sequences from the command line)")
    out = check_out_dir(config)
    lock = acquire_output_lock(out) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        joined = _join_process_group()
        try:
            return _train(target, data, config, out, eval_prompts, log, progress, held_out)
        finally:
            if joined:
                dist.destroy_process_group()
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def new_head(target: nn.Module, data: TrainData, config: TrainConfig, layer_ids: tuple[int, ...]):
    """A fresh head: EAGLE-3's, its draft vocabulary from the training targets' token counts;
    or the EAGLE-2-style baseline over the full vocabulary."""
    if config.head == "eagle2":
        return Eagle2DraftHead(eagle2_config(target, **config.head_overrides)).attach_target(target)
    vocab = target.get_input_embeddings().weight.shape[0]
    draft_vocab = config.draft_vocab_size or vocab
    d2t, t2d = build_vocab_mapping(count_tokens(data.input_ids, vocab, data.loss_mask), draft_vocab)
    head_config = Eagle3Config.for_target(target.config, draft_vocab_size=draft_vocab,
                                          aux_layer_ids=layer_ids, **config.head_overrides)
    head = Eagle3DraftHead(head_config)
    head.d2t.copy_(d2t), head.t2d.copy_(t2d)
    if not head_config.owns_embedding:
        head.attach_embedding(target.get_input_embeddings().weight.float())
    if config.init_lm_head_from_target:  # draft ids ascend with target ids: the rows t2d marks, in order
        with torch.no_grad():
            head.lm_head.weight.copy_(target.get_output_embeddings().weight[t2d.to(head.lm_head.weight.device)])
    return head


def ttt_logits_bytes(config: TrainConfig, target_vocab: int) -> int:
    """A lower bound on what one training step holds: the ``K`` steps' draft logits
    ``(B, T, V_draft)`` in float32, each with its softmax and its gradient (3 copies), and the
    target's distribution ``(B, T, V)``. The head's own activations come on top."""
    draft_vocab = config.draft_vocab_size or target_vocab
    B, T, K = config.batch_size, config.seq_len, config.ttt_steps
    return 4 * B * T * (3 * K * draft_vocab + target_vocab)


def memory_bytes(device: torch.device) -> int | None:
    """All the memory of ``device``: the GPU's, or the machine's RAM (None where it cannot be
    read). Total, not free: a lower bound past it cannot fit, whatever else is running, and
    free RAM leaves out the page cache, which would refuse runs that fit."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_config_fits_target(config: TrainConfig, target: nn.Module) -> tuple[int, ...]:
    """What a config asks of the target: its layers, vocabulary and positions. Returns the
    tapped ``hidden_states`` indices. ``eagle3-ref train`` calls it before the data is made."""
    n_layers = num_decoder_layers(target)
    vocab = target.get_input_embeddings().weight.shape[0]
    if config.head == "eagle2" and (config.ttt_steps != 1 or config.draft_vocab_size
                                    or config.aux_layer_ids not in (None, (top_feature_id(n_layers),))):
        raise TrainingError("the EAGLE-2-style head trains without training-time test, on the full vocabulary "
                            "and the top-layer feature: ttt_steps must be 1, draft_vocab_size and aux_layer_ids unset")
    if config.init_lm_head_from_target and (config.head != "eagle3" or config.head_overrides.get(
            "hidden_size", target.get_input_embeddings().weight.shape[1]) != target.get_input_embeddings().weight.shape[1]):
        raise TrainingError("init_lm_head_from_target needs an EAGLE-3 head as wide as the target")
    if config.draft_vocab_size is not None and config.draft_vocab_size > vocab:
        raise TrainingError(f"draft_vocab_size ({config.draft_vocab_size}) exceeds the target's vocabulary ({vocab})")
    limit = getattr(target.config, "max_position_embeddings", None)
    if limit is not None and config.seq_len > limit:
        raise TrainingError(f"seq_len ({config.seq_len}) exceeds the target's max_position_embeddings ({limit})")
    need, have = ttt_logits_bytes(config, vocab), memory_bytes(target.device)
    if have is not None and need > have:
        raise TrainingError(f"batch_size {config.batch_size} x seq_len {config.seq_len} x ttt_steps {config.ttt_steps}: "
                            f"the draft logits of its steps alone need about {need / 2**30:.1f} GiB with their gradients, "
                            f"and {target.device} has {have / 2**30:.1f} GiB: lower one of them")
    try:
        if config.head == "eagle2":
            return (top_feature_id(n_layers),)
        if config.aux_layer_ids:
            return validate_aux_layer_ids(config.aux_layer_ids, n_layers)
        return default_aux_layer_ids(n_layers)
    except ValueError as err:
        raise TrainingError(str(err)) from None


def _train(target: nn.Module, data: TrainData, config: TrainConfig, out: Path, eval_prompts: list[Tensor] | None,
           log: Callable[[dict], None] | None, progress: bool, held_out: TrainData | None = None) -> Eagle3DraftHead:
    rank, world = _rank_and_world()
    eagle2 = config.head == "eagle2"
    layer_ids = check_config_fits_target(config, target)
    if data.input_ids.shape[0] == 0:
        raise TrainingError("no training sequences")
    if not bool(data.loss_mask.bool().any()):
        raise TrainingError("the loss mask covers no token: nothing to learn (a prompt file whose prompts fill "
                            "seq_len leaves no room for a continuation)")
    if config.resume:
        _check_resume_matches(config, out, data)
    device = next(target.parameters()).device
    target.eval().requires_grad_(False)

    if config.resume:
        checkpoint = out / (out / "latest").read_text().strip()
        head = load_eagle2_head(checkpoint, target) if eagle2 else load_draft_head(checkpoint, target,
                                                                                   dtype=torch.float32)
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    else:
        _barrier()  # every process has checked the directory before process 0 clears it
        if config.overwrite and out.exists() and rank == 0:
            shutil.rmtree(out)
        elif out.exists() and rank == 0:  # what a run that stopped before its first checkpoint left
            for path in out.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        head = new_head(target, data, config, tuple(layer_ids)).to(device)
        state = None
    if rank == 0 and not config.resume:  # a resumed run keeps the file that describes it
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(_run_record(config, data), indent=2))
        publish(out / "train_config.json")

    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    step, history = 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history = state["step"], state["history"]
        _set_rng_state(state["rng"])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and torch.cuda.is_bf16_supported() \
        else torch.autocast(device.type, enabled=False)

    head.train()
    bar = tqdm(total=config.max_steps, initial=step, disable=not progress or rank > 0, desc="train", dynamic_ncols=True)
    stopped = bool(config.early_stopping) and \
        evaluations_since_best(history, config.min_improvement)[1] >= config.early_stopping
    while step < config.max_steps and not stopped:
        # The global batch of this step; this process takes its share.
        idx = batch_indices(data.input_ids.shape[0], config.batch_size * world, step, config.seed)
        idx = idx[rank * config.batch_size:(rank + 1) * config.batch_size]
        ids, mask = data.input_ids[idx].to(device), data.loss_mask[idx].to(device)
        if data.features is not None:
            feats, logits = data.features[idx].to(device), data.target_logits[idx].to(device)
        else:
            feats, logits = target_pass(target, ids, tuple(layer_ids))
        with autocast:
            if eagle2:
                result = eagle2_loss(head, feats.float(), ids, logits.float(), mask)
            else:
                out_logits = ttt_forward(head, feats.float(), ids, config.ttt_steps).logits
                result = ttt_loss(out_logits, logits.float(), mask, head.t2d, head.d2t)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        if world > 1:  # the mean of per-process gradients = the gradient of the global-batch loss
            for p in params:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= world
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        record = {"step": step, "loss": result.loss.item(), "acc": [round(a, 4) if a == a else None
                                                                     for a in result.step_accuracy],
                  "lr": scheduler.get_last_lr()[0]}
        if config.eval_every and step % config.eval_every == 0:
            if eval_prompts:
                record["tau"] = evaluate_tau(target, head, eval_prompts, config.eval_max_new_tokens)
                record["tau_chain"] = evaluate_tau(target, head, eval_prompts, config.eval_max_new_tokens,
                                                   tree=TreeConfig.chain(7))
            if held_out is not None:
                record["eval_loss"], accuracy = evaluate_loss(head, held_out, config)
                record["eval_acc"] = [None if a is None else round(a, 4) for a in accuracy]
        history.append(record)
        if config.early_stopping and "eval_loss" in record:
            lowest_step, since_best = evaluations_since_best(history, config.min_improvement)
            if lowest_step == step and rank == 0:
                save_best(out, head)
            stopped = record["early_stop"] = since_best >= config.early_stopping
        if log:
            log(record)
        accuracy = "/".join("-" if a is None else f"{a:.2f}" for a in record["acc"])  # per TTT step
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=accuracy, **({"tau": f"{record['tau']:.2f}"} if "tau" in record else {}))
        bar.update(1)
        if (step % config.save_every == 0 or step == config.max_steps or stopped) and rank == 0:
            save_checkpoint(out, head, optimizer, scheduler, step, history)
    bar.close()
    _barrier()  # process 0 has written out/best
    if config.early_stopping and (out / "best").exists():  # the head of the lowest held-out loss
        head = load_eagle2_head(out / "best", target) if eagle2 else load_draft_head(out / "best", target,
                                                                                     dtype=torch.float32)
    if rank == 0:
        _save_head(head, out)  # the final head, loadable with load_draft_head(out_dir) (load_eagle2_head)
        (out / "history.json").write_text(json.dumps(history))
        publish(out / "history.json")
    _barrier()
    return head

