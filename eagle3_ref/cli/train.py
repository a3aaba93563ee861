"""``eagle3-ref train``: train an EAGLE-3 head for a target (training-time test)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import OptionError, device_dtype, fail, ints, read_text


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="train an EAGLE-3 head for a target (training-time test)",
                           description="Train an EAGLE-3 draft head with training-time test. Multi-GPU: see "
                                       "docs/training.md.")
    train.add_argument("--target", required=True, help="Hugging Face causal LM directory (with its tokenizer)")
    train.add_argument("--data", required=True, help="training text file")
    train.add_argument("--out", required=True, help="output directory (the head, in the official format)")
    train.add_argument("--eval-data", help="held-out text: prompts for the periodic tau evaluation (and sequences "
                                           "for the held-out loss, with --eval-sequences)")
    train.add_argument("--eval-prompts", type=int, default=4,
                       help="with --eval-data: this many held-out prompts of 32 tokens for tau (default 4)")
    train.add_argument("--eval-max-new-tokens", type=int, default=32,
                       help="tokens generated per evaluation prompt (default 32)")
    train.add_argument("--eval-sequences", type=int, default=0,
                       help="with --eval-data: this many held-out sequences, made like the training data, for the "
                            "held-out loss and accuracy (default 0: none)")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--seq-len", type=int, default=256)
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--warmup", type=int, default=50)
    train.add_argument("--ttt-steps", type=int, help="training-time test steps K (default 7; 1 = no TTT)")
    train.add_argument("--head", choices=["eagle3", "eagle2"], default="eagle3",
                       help="eagle2: the EAGLE-2-style baseline (top-layer feature, feature regression + token "
                            "loss, no TTT; the ablation's, see eagle3-ref ablate)")
    train.add_argument("--draft-vocab-size", type=int, help="default: the target's vocabulary")
    train.add_argument("--aux-layer-ids", help="tapped layers as hidden_states indices, e.g. 2,16,29 (default EAGLE-3's)")
    train.add_argument("--regenerate-prompt-tokens", type=int, default=0,
                       help="self-distillation: the target rewrites each sequence after this many tokens")
    train.add_argument("--regenerate-temperature", default="0",
                       help="with --regenerate-prompt-tokens: the target samples its rewrite at this temperature "
                            "(default 0: greedy), so the head sees the text it will draft for when sampling; "
                            "several, comma-separated (e.g. 0,1): each sequence is rewritten once at each")
    train.add_argument("--max-sequences", type=int,
                       help="train on a seeded sample of this many corpus sequences (default: all)")
    train.add_argument("--cache-dir", help="cache the target's features and logits here (safetensors shards)")
    train.add_argument("--data-cache", help="keep the training (and held-out) sequences here, rewrites included, "
                                            "and reuse them when the recipe matches (a resumed run skips the "
                                            "rewriting)")
    train.add_argument("--save-every", type=int, default=100)
    train.add_argument("--eval-every", type=int, default=0)
    train.add_argument("--early-stopping", type=int, default=0, metavar="N",
                       help="stop after N held-out evaluations (--eval-every, --eval-sequences) without a lower "
                            "held-out loss, and keep the head of the lowest (default 0: train all --steps)")
    train.add_argument("--min-improvement", type=float, default=0.0, metavar="FRACTION",
                       help="with --early-stopping: a held-out loss improves only when it is below the best by "
                            "more than this fraction of it (e.g. 0.005; default 0: any lower loss)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    train.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                       help="dtype of the target; the head trains in float32 (bf16 autocast on CUDA)")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from OUT/latest")
    group.add_argument("--overwrite", action="store_true", help="delete OUT and start over")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=run, command_name="train", 
                       aliases={"max_steps": "--steps", "warmup_steps": "--warmup", "out_dir": "--out"})


def run(args: argparse.Namespace) -> int:
    from ..train import (
        TrainConfig,
        TrainingError,
        check_config_fits_target,
        check_out_dir,
        prepare_data,
        prepare_held_out,
        train_head,
    )

    try:  # every check before anything is loaded or written
        config = TrainConfig(
            out_dir=args.out, seq_len=args.seq_len, batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
            warmup_steps=args.warmup, ttt_steps=args.ttt_steps if args.ttt_steps is not None else (1 if args.head == "eagle2" else 7),
            draft_vocab_size=args.draft_vocab_size, head=args.head,
            aux_layer_ids=_layer_ids(args.aux_layer_ids),
            regenerate_prompt_tokens=args.regenerate_prompt_tokens, max_sequences=args.max_sequences, seed=args.seed,
            regenerate_temperature=_temperatures(args.regenerate_temperature),
            save_every=args.save_every, eval_every=args.eval_every, resume=args.resume, overwrite=args.overwrite,
            cache_dir=args.cache_dir, data_cache=args.data_cache, eval_max_new_tokens=args.eval_max_new_tokens,
            early_stopping=args.early_stopping, min_improvement=args.min_improvement,
        )
        for option, value in (("--eval-prompts", args.eval_prompts), ("--eval-sequences", args.eval_sequences)):
            if value < 0:
                raise OptionError(f"{option} must be >= 0, got {value}")
        if args.eval_sequences and not args.eval_data:
            raise OptionError("--eval-sequences needs --eval-data (the held-out text they are cut from)")
        if args.early_stopping and not args.eval_sequences:
            raise OptionError("--early-stopping needs --eval-sequences (and --eval-data): it watches the held-out loss")
        if args.warmup > args.steps:  # the learning rate would never finish warming up
            default = "" if any(a.startswith("--warmup") for a in args.argv) else " (the default)"
            raise OptionError(f"--warmup {args.warmup}{default} exceeds --steps {args.steps}: the learning rate would "
                              f"still be warming up when training ends; pass a --warmup below --steps")
        if not (Path(args.target) / "config.json").is_file():
            raise TrainingError(f"--target {args.target}: not a Hugging Face model directory (no config.json)")
        texts = {option: read_text(option, path) for option, path in (("--data", args.data),
                                                                         ("--eval-data", args.eval_data)) if path}
        check_out_dir(config)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(args.seed)
        device, dtype = device_dtype(args)
        tokenizer = AutoTokenizer.from_pretrained(args.target)
        target = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(device).eval()
        layer_ids = check_config_fits_target(config, target)
        data = prepare_data(target, texts["--data"], tokenizer, config, layer_ids, progress=not args.quiet)
        prompts, held_out = [], None
        if args.eval_data:
            ids = tokenizer(texts["--eval-data"], add_special_tokens=False)["input_ids"]
            prompts = [torch.tensor(ids[i:i + 32]) for i in range(0, min(len(ids) - 32, 32 * args.eval_prompts), 32)]
            if args.eval_sequences:
                held_out = prepare_held_out(target, texts["--eval-data"], tokenizer, config, layer_ids,
                                            args.eval_sequences)
        train_head(target, data, config, prompts, progress=not args.quiet, held_out=held_out)
    except (TrainingError, OptionError) as err:
        return fail(args, err)
    except KeyboardInterrupt:  # Ctrl-C: where the run stands, and how to go on, instead of a traceback
        print(f"\neagle3-ref train: interrupted. {resume_hint(args)}", file=sys.stderr)
        return 130
    print(f"trained head written to {args.out}")
    return 0


def resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted run left in --out, and the command that continues it."""
    import shlex

    latest = Path(args.out) / "latest"
    if not latest.is_file():
        return f"No checkpoint was written yet ({args.out} has none): start again with --overwrite."
    words = [w for w in args.argv if w not in ("--overwrite", "--resume")] + ["--resume"]
    return (f"The last checkpoint is {Path(args.out) / latest.read_text().strip()}; continue with:\n"
            f"  eagle3-ref {shlex.join(words)}")


def _temperatures(text: str) -> float | tuple[float, ...]:
    from ..train import TrainingError

    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise TrainingError(f"--regenerate-temperature: expected a number or comma-separated numbers, got {text!r}") \
            from None
    return values[0] if len(values) == 1 else values


def _layer_ids(text: str | None) -> tuple[int, ...] | None:
    from ..train import TrainingError

    try:
        return tuple(ints(text, "--aux-layer-ids")) if text else None
    except ValueError as err:
        raise TrainingError(str(err)) from None
