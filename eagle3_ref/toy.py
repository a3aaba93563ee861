"""The toy world: a small Llama trained on the Python standard library, entirely offline.

No weights can be downloaded where this project is developed and taught, and a tutorial
needs a *trained* target to show a real acceptance length. The corpus is the source of
the running Python's standard library (real code, on every machine; code is where
EAGLE-3's speedup is largest), split by top-level module into train and held-out, so
the held-out prompts come from modules the target never saw.

The target is deep and narrow (16 layers of width 128): on a CPU, that is the honest
analogue of a 32-layer LLM on a GPU, where the one-layer draft head costs a small fraction
of a target forward. Recipe: ``eagle3-ref toy train-target --out DIR`` (resumable).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sysconfig
import tempfile
import time
import zlib
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, get_cosine_schedule_with_warmup

from ._checks import check_output_dir
from .train import batch_indices

__all__ = ["stdlib_files", "split_modules", "corpus_text", "train_tokenizer", "toy_target_config", "train_target",
           "EOS", "TOY_DIR", "load_toy", "load_toy_sps", "held_out_prompts"]

TOY_DIR = Path(__file__).parent / "toy_model"  # shipped: target/ (HF directory + tokenizer) and head/

EOS = "<|endoftext|>"
_SKIP = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__", "ensurepip"}


def stdlib_files() -> list[Path]:
    """The ``.py`` files of the running Python's standard library, tests excluded, sorted."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in lib.rglob("*.py") if not (_SKIP & set(p.relative_to(lib).parts)))


def split_modules(files: list[Path], held_out_percent: int = 5) -> tuple[list[Path], list[Path]]:
    """Split by top-level module (a stable hash of its name), never within a module."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    train, held_out = [], []
    for p in files:
        top = p.relative_to(lib).parts[0].removesuffix(".py")
        (held_out if zlib.crc32(top.encode()) % 100 < held_out_percent else train).append(p)
    return train, held_out


def corpus_text(files: list[Path]) -> str:
    """The files' text, each ended by the end-of-text token."""
    return "".join(p.read_text(encoding="utf-8", errors="replace") + EOS for p in files)


def train_tokenizer(text: str, vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained with ``tokenizers`` (256 byte tokens + merges + ``<|endoftext|>``)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def toy_target_config(vocab_size: int, eos_id: int, num_layers: int = 16) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=num_layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=eos_id, eos_token_id=eos_id,
                       pad_token_id=eos_id)


def _tokens(tokenizer, files: list[Path]) -> torch.Tensor:
    ids = tokenizer(corpus_text(files), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int32)


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, seq_len: int, max_sequences: int = 64) -> float:
    """Mean next-token loss (nats) on held-out sequences."""
    n = min(max_sequences, tokens.numel() // seq_len)
    x = tokens[: n * seq_len].view(n, seq_len).long()
    model.eval()
    losses = [model(x[i:i + 8], labels=x[i:i + 8]).loss.item() for i in range(0, n, 8)]
    model.train()
    return sum(losses) / len(losses)


def train_target(out: str | os.PathLike, *, num_layers: int = 16, tokenizer_dir: str | os.PathLike | None = None,
                 steps: int = 1800, batch_size: int = 16, seq_len: int = 256,
                 lr: float = 2e-3, warmup: int = 100, seed: int = 0, save_every: int = 100, resume: bool = False,
                 overwrite: bool = False, progress: bool = True, log=print,
                 files: tuple[list[Path], list[Path]] | None = None) -> Path:
    """Train the toy target from scratch (or resume). Writes a Hugging Face directory
    (``from_pretrained`` works with plain transformers) plus ``toy_target.json`` metrics.

    ``num_layers=2, tokenizer_dir=<target>`` trains the small draft LM of the SpS baseline
    (transformers' assisted generation), which must share the target's tokenizer."""
    out = check_output_dir("out", out)
    for name, value, low in (("num_layers", num_layers, 1), ("steps", steps, 1), ("batch_size", batch_size, 1),
                             ("seq_len", seq_len, 2), ("warmup", warmup, 0), ("save_every", save_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and lr < float("inf")):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if tokenizer_dir is not None and not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise ValueError(f"tokenizer_dir {tokenizer_dir}: no tokenizer.json there")
    state_file = out / "train_state.pt"
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise ValueError(f"{out} exists and is not empty: pass resume=True (--resume) or overwrite=True (--overwrite)")
    if resume and not state_file.exists():
        raise ValueError(f"nothing to resume in {out}")
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    random.seed(seed)
    train_files, held_files = files or split_modules(stdlib_files())
    if resume:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    elif tokenizer_dir is not None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        tokenizer.save_pretrained(out)
    else:
        tokenizer = train_tokenizer(corpus_text(train_files))
        tokenizer.save_pretrained(out)
    train_tokens, held_tokens = _tokens(tokenizer, train_files), _tokens(tokenizer, held_files)
    sequences = train_tokens[: train_tokens.numel() // seq_len * seq_len].view(-1, seq_len)
    config = toy_target_config(len(tokenizer), tokenizer.eos_token_id, num_layers)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    step, history = 0, []
    if resume:
        state = torch.load(state_file, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["rng"])
    model.train()
    bar = tqdm(total=steps, initial=step, disable=not progress, desc=f"toy model ({num_layers} layers)")
    start = time.time()
    while step < steps:
        x = sequences[batch_indices(sequences.shape[0], batch_size, step, seed)].long()
        loss = model(x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        history.append({"step": step, "loss": loss.item()})
        bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update(1)
        if step % save_every == 0 or step == steps:
            fd, tmp = tempfile.mkstemp(dir=out, prefix="tmp-state-", suffix=".pt")
            os.close(fd)
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "history": history}, tmp)
            os.replace(tmp, state_file)
            if log:
                log(f"step {step}: train loss {sum(h['loss'] for h in history[-50:]) / len(history[-50:]):.3f} "
                    f"({time.time() - start:.0f} s)")
    bar.close()
    loss = held_out_loss(model, held_tokens, seq_len)
    held_bytes = sum(len(p.read_bytes()) for p in held_files)
    metrics = {
        "held_out_loss_nats_per_token": loss,
        "held_out_bits_per_byte": loss * held_tokens.numel() / held_bytes / math.log(2),
        "train_tokens": int(train_tokens.numel()), "held_out_tokens": int(held_tokens.numel()),
        "train_files": len(train_files), "held_out_files": len(held_files), "steps": steps,
        "tokens_seen": steps * batch_size * seq_len, "num_layers": num_layers, "python": sysconfig.get_python_version(), "seed": seed,
        "held_out_modules": sorted({p.stem if p.parent.name == "python" + sysconfig.get_python_version() else p.parent.name
                                    for p in held_files}),
        "history_every_50": history[::50],
    }
    model.save_pretrained(out)
    (out / "toy_target.json").write_text(json.dumps(metrics, indent=2))
    if log:
        log(f"held-out loss {loss:.3f} nats/token, {metrics['held_out_bits_per_byte']:.3f} bits/byte")
    return out


def load_toy(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The shipped toy target, its tokenizer and its EAGLE-3 head, offline, by path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checkpoint import load_draft_head

    target_dir, head_dir = TOY_DIR / "target", TOY_DIR / "head"
    if not (target_dir / "config.json").exists() or not (head_dir / "config.json").exists():
        raise FileNotFoundError(f"the toy model is not shipped in {TOY_DIR} (see docs/toy.md to rebuild it)")
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    return target, tokenizer, load_draft_head(head_dir, target)


def load_toy_sps(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The shipped 2-layer draft LM of the SpS baseline (the toy target's tokenizer), for
    transformers' assisted generation: ``target.generate(..., assistant_model=sps)``."""
    from transformers import AutoModelForCausalLM

    if not (TOY_DIR / "sps" / "config.json").exists():
        raise FileNotFoundError(f"the SpS draft LM is not shipped in {TOY_DIR / 'sps'} (see docs/toy.md to rebuild it)")
    return AutoModelForCausalLM.from_pretrained(TOY_DIR / "sps", dtype=dtype).to(device).eval()


def held_out_prompts(tokenizer, count: int = 8, length: int = 64) -> list[torch.Tensor]:
    """Prompts from the held-out modules (never trained on): the start of each function
    definition found there, ``length`` tokens long, the first ``count`` of them."""
    _, held = split_modules(stdlib_files())
    prompts = []
    for path in held:
        text = path.read_text(encoding="utf-8", errors="replace")
        for start in (i for i in range(len(text)) if text.startswith("\ndef ", i) or text.startswith("\n    def ", i)):
            ids = tokenizer(text[start + 1:], add_special_tokens=False)["input_ids"][:length]
            if len(ids) == length:
                prompts.append(torch.tensor(ids))
                break
        if len(prompts) == count:
            break
    return prompts
