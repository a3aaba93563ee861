"""Say *where* two results first differ, in words, with both values.

A conformance failure is only useful if it tells the engineer what to look at: not
"tensors are not close", but "tree_mask: first divergence at row 3, column 1: reference
True, implementation False". Every comparison in the conformance suite goes through
:func:`assert_same`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

__all__ = ["first_divergence", "assert_same"]


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    return torch.as_tensor(x)


def first_divergence(got: Any, want: Any, rtol: float = 0.0, atol: float = 0.0) -> tuple[tuple[int, ...], Any, Any] | None:
    """``(index, implementation's value, reference value)`` of the first element (row-major)
    where ``|got - want| > atol + rtol * |want|`` (exact equality when both are 0; NaN
    differs from everything), or None if they agree. Shapes must already match."""
    g, w = _as_tensor(got), _as_tensor(want)
    if g.dtype == torch.bool or w.dtype == torch.bool or not (g.is_floating_point() or w.is_floating_point()):
        bad = g != w
    else:
        g64, w64 = g.double(), w.double()
        bad = ~((g64 - w64).abs() <= atol + rtol * w64.abs())
    if not bool(bad.any()):
        return None
    index = tuple(int(i) for i in bad.nonzero()[0])
    return index, g[index].item(), w[index].item()


def assert_same(got: Any, want: Any, what: str, *, rtol: float = 0.0, atol: float = 0.0,
                where: Callable[[tuple[int, ...]], str] | Sequence[str] | None = None) -> None:
    """Raise ``AssertionError`` naming ``what``, the first divergence and both values.

    ``where`` turns an index into words: a callable, or one name per dimension
    (``("row", "column")`` gives "row 3, column 1"); default "index (3, 1)".
    """
    g, w = _as_tensor(got), _as_tensor(want)
    if tuple(g.shape) != tuple(w.shape):
        raise AssertionError(f"{what}: the implementation's shape is {tuple(g.shape)}, the reference's {tuple(w.shape)}")
    found = first_divergence(g, w, rtol, atol)
    if found is None:
        return
    index, gv, wv = found
    if callable(where):
        place = where(index)
    elif where is not None:
        place = ", ".join(f"{name} {i}" for name, i in zip(where, index))
    else:
        place = f"index {index}"
    total = int((g != w).sum()) if rtol == atol == 0 else None
    tol = "" if rtol == atol == 0 else f" (beyond rtol={rtol:g}, atol={atol:g}; difference {abs(gv - wv):.3g})"
    extent = f"; {total} of {g.numel()} elements differ" if total is not None else ""
    raise AssertionError(f"{what}: first divergence at {place}: reference {wv!r}, implementation {gv!r}{tol}{extent}")
