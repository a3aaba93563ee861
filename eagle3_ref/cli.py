"""The ``eagle3-ref`` command.

``eagle3-ref info`` prints versions, the devices and which dtypes work on them. Later
subcommands (demo, bench, train, vectors, ...) come with their issues.
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _dtype_support(device: str) -> dict[str, str]:
    """Try a tiny matmul and softmax per dtype: 'ok' or the error's first line."""
    import torch

    out = {}
    for name in ("float64", "float32", "bfloat16", "float16"):
        dtype = getattr(torch, name)
        try:
            x = torch.randn(4, 4, device=device).to(dtype)
            torch.softmax(x @ x, dim=-1).sum().item()
            out[name] = "ok"
        except Exception as err:  # noqa: BLE001 - we report whatever the backend says
            out[name] = f"no ({str(err).splitlines()[0][:60]})"
    return out


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    import eagle3_ref

    print(f"eagle3-ref    {eagle3_ref.__version__}")
    print(f"python        {platform.python_version()} ({sys.executable})")
    for dist in ("torch", "transformers", "safetensors", "tokenizers", "hypothesis"):
        print(f"{dist:<13} {_version(dist)}")
    devices = ["cpu"]
    print(f"cpu           {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}        {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
            devices.append(f"cuda:{i}")
    else:
        print("cuda          not available")
    for device in devices:
        support = _dtype_support(device)
        print(f"dtypes {device:<6} " + ", ".join(f"{k}: {v}" for k, v in support.items()))
    return 0


def _device_dtype(args):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, getattr(torch, args.dtype)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eagle3_ref.train import TrainConfig, TrainingError, _check_out_dir, prepare_data, train_head

    config = TrainConfig(
        out_dir=args.out, seq_len=args.seq_len, batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
        warmup_steps=args.warmup, ttt_steps=args.ttt_steps, draft_vocab_size=args.draft_vocab_size,
        aux_layer_ids=tuple(int(i) for i in args.aux_layer_ids.split(",")) if args.aux_layer_ids else None,
        regenerate_prompt_tokens=args.regenerate_prompt_tokens, seed=args.seed, save_every=args.save_every,
        eval_every=args.eval_every, resume=args.resume, overwrite=args.overwrite, cache_dir=args.cache_dir,
    )
    try:  # every check before anything is loaded or written
        if not (Path(args.target) / "config.json").is_file():
            raise TrainingError(f"--target {args.target}: not a Hugging Face model directory (no config.json)")
        if not Path(args.data).is_file():
            raise TrainingError(f"--data {args.data}: no such file")
        _check_out_dir(config)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import torch

        torch.manual_seed(args.seed)
        device, dtype = _device_dtype(args)
        tokenizer = AutoTokenizer.from_pretrained(args.target)
        target = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(device).eval()
        from eagle3_ref.fusion import default_aux_layer_ids, num_decoder_layers, validate_aux_layer_ids

        n = num_decoder_layers(target)
        try:
            layer_ids = validate_aux_layer_ids(config.aux_layer_ids, n) if config.aux_layer_ids else default_aux_layer_ids(n)
        except ValueError as err:
            raise TrainingError(str(err)) from None
        data = prepare_data(target, Path(args.data).read_text(), tokenizer, config, tuple(layer_ids))
        prompts = []
        if args.eval_data:
            ids = tokenizer(Path(args.eval_data).read_text(), add_special_tokens=False)["input_ids"]
            prompts = [torch.tensor(ids[i:i + 32]) for i in range(0, min(len(ids) - 32, 32 * 4), 32)]
        train_head(target, data, config, prompts, progress=not args.quiet)
    except TrainingError as err:
        print(f"eagle3-ref train: error: {err}", file=sys.stderr)
        return 2
    print(f"trained head written to {args.out}")
    return 0


def cmd_toy_train_target(args: argparse.Namespace) -> int:
    from eagle3_ref.toy import train_target

    try:
        train_target(args.out, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                     seed=args.seed, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    except ValueError as err:
        print(f"eagle3-ref toy train-target: error: {err}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle3-ref",
        description="Reference implementation of EAGLE-3 speculative decoding (arXiv 2503.01840).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version('eagle3-ref')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, devices and dtype support")
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="train an EAGLE-3 head for a target (training-time test)",
                           description="Train an EAGLE-3 draft head with training-time test. Multi-GPU: see docs/training.md.")
    train.add_argument("--target", required=True, help="Hugging Face causal LM directory (with its tokenizer)")
    train.add_argument("--data", required=True, help="training text file")
    train.add_argument("--out", required=True, help="output directory (the head, in the official format)")
    train.add_argument("--eval-data", help="held-out text: prompts for the periodic tau evaluation")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--seq-len", type=int, default=256)
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--warmup", type=int, default=50)
    train.add_argument("--ttt-steps", type=int, default=7, help="training-time test steps K (1 = no TTT)")
    train.add_argument("--draft-vocab-size", type=int, help="default: the target's vocabulary")
    train.add_argument("--aux-layer-ids", help="tapped layers as hidden_states indices, e.g. 2,16,29 (default EAGLE-3's)")
    train.add_argument("--regenerate-prompt-tokens", type=int, default=0,
                       help="self-distillation: the target rewrites each sequence after this many tokens")
    train.add_argument("--cache-dir", help="cache the target's features and logits here (safetensors shards)")
    train.add_argument("--save-every", type=int, default=100)
    train.add_argument("--eval-every", type=int, default=0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    train.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                       help="dtype of the target; the head trains in float32 (bf16 autocast on CUDA)")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from OUT/latest")
    group.add_argument("--overwrite", action="store_true", help="delete OUT and start over")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    toy = sub.add_parser("toy", help="the toy world: a small target trained on the Python standard library")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND", required=True)
    tt = toy_sub.add_parser("train-target", help="train the toy target from scratch (CPU: about an hour; resumable)")
    tt.add_argument("--out", required=True)
    tt.add_argument("--steps", type=int, default=1600)
    tt.add_argument("--batch-size", type=int, default=16)
    tt.add_argument("--seq-len", type=int, default=256)
    tt.add_argument("--lr", type=float, default=2e-3)
    tt.add_argument("--seed", type=int, default=0)
    group = tt.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true")
    group.add_argument("--overwrite", action="store_true")
    tt.add_argument("--quiet", action="store_true")
    tt.set_defaults(func=cmd_toy_train_target)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
