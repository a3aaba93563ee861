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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle3-ref",
        description="Reference implementation of EAGLE-3 speculative decoding (arXiv 2503.01840).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version('eagle3-ref')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, devices and dtype support")
    info.set_defaults(func=cmd_info)
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
