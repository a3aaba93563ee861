"""A small target *directory* (tokenizer + random HF Llama), for tests of everything that
takes a path: training from the command line, loading, the demo.

The tokenizer is the toy world's byte-level BPE (:func:`eagle3_ref.toy.train_tokenizer`)
trained on the given text; ``from_pretrained`` of the directory works with plain
transformers, offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eagle3_ref.toy import train_tokenizer

__all__ = ["make_tiny_target_dir"]


def make_tiny_target_dir(path: str | Path, text: str, *, vocab_size: int = 300, layers: int = 7, hidden: int = 32,
                         seed: int = 0, init_std: float = 0.3) -> Path:
    path = Path(path)
    tokenizer = train_tokenizer(text, vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, init_std)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
