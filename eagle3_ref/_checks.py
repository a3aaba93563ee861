"""Argument checks shared by the public entry points.

Each raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value)
with a message that opens with the argument's name, says what was given and what is
allowed, before any work starts. ``tests/test_validation.py`` feeds every public function
malformed arguments and holds them to that.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["check_sampling", "check_int", "check_number", "check_token_ids", "check_float_tensor", "check_instance",
           "check_output_dir", "check_device"]


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An ``int`` (not a ``bool``, not a float) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_number(name: str, value, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """A finite real number (not a ``bool``) in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ValueError(f"{name} must be {' and '.join(x for x in (lo, hi) if x)}, got {value}")
    return float(value)


def check_token_ids(name: str, ids, vocab_size: int | None, dims: int = 2) -> Tensor:
    """An integer tensor of ``dims`` dimensions whose ids are in ``[0, vocab_size)``."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {ids.dtype}")
    if ids.dim() != dims:
        shape = "(B, T)" if dims == 2 else "(T,)" if dims == 1 else f"{dims} dimensions"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
    if vocab_size is not None and ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    return ids


def check_float_tensor(name: str, value, dims: int, dtype: torch.dtype | None = None) -> Tensor:
    """A floating tensor of ``dims`` dimensions (of ``dtype``, when given)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype}")
    if value.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(value.shape)}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{name} is {value.dtype} but the head computes in {dtype}: cast it first "
                        f"({name}.to({dtype}))")
    return value


def check_instance(name: str, value, cls: type | tuple[type, ...], hint: str = ""):
    """``value`` is an instance of ``cls``."""
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise TypeError(f"{name} must be a {names}{hint}, got {type(value).__name__} {value!r}"[:300])
    return value


def check_sampling(temperature, top_p, top_k) -> None:
    """The warping arguments of decoding: ``temperature >= 0`` (0: greedy), ``top_p`` in
    ``(0, 1]``, ``top_k >= 0`` (0: off). Shared by the decoding entry points and the CLI,
    which checks them before it loads a model."""
    check_number("temperature", temperature, 0)
    check_number("top_p", top_p, 0, 1, low_open=True)
    check_int("top_k", top_k, 0)


def check_output_dir(name: str, path) -> Path:
    """A directory a run will write into, checked before the run: refused if a file stands
    where it goes, or if no file can be created where it would be made (a read-only file
    system, no permission): the first of it and its parents that exists is tried with a
    temporary file, removed at once. Creates nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} {out} is a file, not a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name} {out}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ValueError(f"{name} {out} cannot be written: {err.strerror} in {existing}") from None
    return out


def check_device(name: str, device) -> torch.device:
    """A device torch knows and this machine has (``cuda`` needs a GPU torch can see)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a device such as 'cpu' or 'cuda', got {device!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} is {device!r}, but torch sees no CUDA device here (torch.cuda.is_available() is "
                         f"False; torch {torch.__version__})")
    return parsed
