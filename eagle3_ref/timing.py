"""Where the decoding loop's time goes: draft, verify, accept.

The loop (:mod:`eagle3_ref.generate`) times its phases so that the bench and the cost
model can say what a cycle costs. A GPU runs asynchronously: a phase's end is only real
after :func:`sync`, so every phase ends with one. ``with phases("draft"): ...`` adds the
seconds the block took to ``timings["draft"]``.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

__all__ = ["sync", "PhaseTimer", "machine_description"]


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU): a clock read after it is true."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """``phases = PhaseTimer(timings, device)``; ``with phases("verify"): ...`` adds the block's
    seconds (device work included) to ``timings["verify"]``."""

    def __init__(self, timings: dict[str, float] | None, device: torch.device | str) -> None:
        self.timings = timings if timings is not None else {}
        self.device = device

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        clock = time.perf_counter()
        yield
        sync(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - clock


def machine_description(device: torch.device | str) -> str:
    """The machine a measurement ran on, as the bench and the cost model record it."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"
