"""``eagle3-ref info``: versions, the devices and which dtypes work on them."""

from __future__ import annotations

import argparse
import platform
import sys

from .. import __version__
from .common import version


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="versions, devices and dtype support")
    info.set_defaults(func=run, command_name="info", aliases={})


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


def run(args: argparse.Namespace) -> int:
    import torch


    print(f"eagle3-ref    {__version__}")
    print(f"python        {platform.python_version()} ({sys.executable})")
    for dist in ("torch", "transformers", "safetensors", "tokenizers", "hypothesis"):
        print(f"{dist:<13} {version(dist)}")
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
