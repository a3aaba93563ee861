"""What the commands share: their refusals, the device and dtype options, the decoding pair's
options, the tree's options, and reading the files an option names.

A refusal is printed as argparse prints its own (``eagle3-ref CMD: error: ...``, status 2).
Every check of the package opens its message with the argument's Python name
(``eagle3_ref._checks``); :func:`fail` shows the command-line option instead: the command's
own option of that name (``seq_len`` -> ``--seq-len``), or the command's ``aliases`` where it
spells it differently (``max_steps`` -> ``--steps``).
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["OptionError", "fail", "as_option", "version", "device_dtype", "read_text", "ints", "add_pair_options",
           "add_tree_options", "tree_config", "check_max_new_tokens", "calibration_prompts"]


class OptionError(ValueError):
    """A command-line option that cannot be used; the message names it."""


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def as_option(message: str, args: argparse.Namespace) -> str:
    """``message`` with its opening argument name shown as the command's option."""
    name = message.split(" ", 1)[0]
    aliases = getattr(args, "aliases", {})
    if name in aliases:
        return message.replace(name, aliases[name], 1)
    if name.isidentifier() and name in vars(args) and name not in ("func", "aliases", "command_name", "argv"):
        return message.replace(name, "--" + name.replace("_", "-"), 1)
    return message


def fail(args: argparse.Namespace, err: Exception | str) -> int:
    """Print a refusal that names the option, as argparse does its own, and return 2."""
    print(f"eagle3-ref {args.command_name}: error: {as_option(str(err), args)}", file=sys.stderr)
    return 2


def device_dtype(args: argparse.Namespace):
    """``--device`` (default: cuda when available) and ``--dtype``, checked."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in the output of our commands
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise OptionError(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {device}: no CUDA device is available here (torch {torch.__version__}); "
                          f"use --device cpu")
    return device, getattr(torch, args.dtype)


def read_text(option: str, path: str) -> str:
    """A text file an option names, read whole as UTF-8; refused by name if it is not one."""
    if Path(path).is_dir():
        raise OptionError(f"{option} {path} is a directory, not a file")
    if not Path(path).is_file():
        raise OptionError(f"{option} {path}: no such file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise OptionError(f"{option} {path}: not UTF-8 text (byte {err.start} is {byte:#04x})") from None


def ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise OptionError(f"{option} must be comma-separated ints, got {text!r}") from None


def add_pair_options(p: argparse.ArgumentParser) -> None:
    """Options demo and bench share: the pair, the length, the seed, device and dtype."""
    p.add_argument("--target", help="Hugging Face causal LM directory with its tokenizer (default: the toy target)")
    p.add_argument("--draft", help="EAGLE-3 head directory, official format (default: the toy head)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])


def add_tree_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree-nodes", type=int, default=60, help="tree nodes including the root (EAGLE total_token)")
    p.add_argument("--tree-depth", type=int, default=8, help="deepest level, root = 0 (EAGLE depth + 1)")
    p.add_argument("--tree-top-k", type=int, default=10, help="branching and frontier size")
    p.add_argument("--chain", type=int, metavar="N", help="draft a chain of N tokens instead of a tree (top_k = 1)")
    p.add_argument("--tree", choices=["auto"], help="auto: the cost-aware tree, its depth and size chosen every "
                                                    "cycle from this machine's measured costs and the draft's "
                                                    "calibrated scores (15-25 s in all on an idle 2-core CPU; "
                                                    "minutes on a loaded one)")


TREE_ALIASES = {"TreeConfig.top_k": "--tree-top-k", "TreeConfig.num_nodes": "--tree-nodes",
                "TreeConfig.max_depth": "--tree-depth"}


def tree_config(args: argparse.Namespace):
    """The fixed tree the options ask for (``--tree auto`` is the command's to build)."""
    from ..tree import TreeConfig

    if args.chain is not None:
        if args.chain < 1:
            raise OptionError(f"--chain must be at least 1 (draft tokens per cycle), got {args.chain}")
        return TreeConfig.chain(args.chain)
    try:
        return TreeConfig(num_nodes=args.tree_nodes, max_depth=args.tree_depth, top_k=args.tree_top_k)
    except ValueError as err:
        message = str(err)
        name = message.split(" ", 1)[0]
        raise OptionError(message.replace(name, TREE_ALIASES.get(name, name), 1)) from None


def check_max_new_tokens(n: int) -> None:
    if n < 2:  # the prefill makes the first token: tau (tokens per verification cycle) needs a second
        raise OptionError(f"--max-new-tokens must be at least 2, got {n}: the prompt's forward makes the first new "
                          "token, and tau counts the tokens of the verification cycles after it")


def calibration_prompts(tokenizer, args, device, count: int = 8) -> list:
    """The last ``count`` held-out prompts of the toy world (the bench measures the first
    ones), in the target's tokenizer: what the cost-aware tree calibrates on."""
    from ..tools.demo import encode_prompt
    from ..toy import held_out_prompts

    prompts = [ids[None].to(device) for ids in held_out_prompts(tokenizer, count=40)[-count:]]
    if args.target:
        prompts = [encode_prompt(tokenizer, tokenizer.decode(ids[0]), False, device) for ids in prompts]
    return prompts
