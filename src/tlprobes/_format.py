"""Numbers and one-line reprs for people: the text half of how results show themselves.

A leaf module (numpy only), so ``repr(result)`` never loads the renderers, and both
:mod:`tlprobes._display` (the reprs) and :mod:`tlprobes.render` (the cards) share one formatting::

    >>> [fmt_number(x) for x in (60.0, 0.000123456, 12.3456789, float("nan"), 3e9, True)]
    ['60', '0.0001235', '12.35', '-', '3e+09', 'True']
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["fmt_number", "short_repr"]


def fmt_number(v: Any) -> str:
    """A number for people: integers as integers, others with 4 significant digits, NaN as ``-``.

    >>> [fmt_number(x) for x in (60.0, 0.000123456, 12.3456789, float("nan"), 3e9, True)]
    ['60', '0.0001235', '12.35', '-', '3e+09', 'True']
    """
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10_000 else str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "-"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f.is_integer() and abs(f) < 1e6:
        return str(int(f))
    return f"{f:.4g}"


def _describe(v: Any) -> str:
    if isinstance(v, np.ndarray):
        shape = "x".join(map(str, v.shape)) or "scalar"
        return f"[{shape}] {v.dtype}" if v.ndim else fmt_number(v.item())
    if hasattr(v, "shape") and hasattr(v, "dtype"):  # torch
        return f"[{'x'.join(map(str, tuple(v.shape)))}] {v.dtype}"
    if isinstance(v, dict):
        keys = list(v)
        shown = ", ".join(map(str, keys[:4])) + (", ..." if len(keys) > 4 else "")
        return "{" + shown + "}"
    if isinstance(v, (list, tuple)):
        return f"<{len(v)} items>"
    if isinstance(v, (float, int, np.floating, np.integer, bool)):
        return fmt_number(v)
    if isinstance(v, str):
        return repr(v if len(v) <= 30 else v[:27] + "...")
    if dataclasses.is_dataclass(v):
        return type(v).__name__
    return type(v).__name__


def short_repr(obj: Any, width: int = 240) -> str:
    """``Class(field=shape-or-value, ...)`` on one line, cut at ``width`` characters.

    >>> from dataclasses import dataclass
    >>> @dataclass(repr=False)
    ... class Fit:
    ...     coef: np.ndarray
    ...     r: float
    >>> short_repr(Fit(np.zeros((3, 2)), 0.123456))
    'Fit(coef=[3x2] float64, r=0.1235)'
    """
    if not dataclasses.is_dataclass(obj):
        return object.__repr__(obj)
    parts = []
    for f in dataclasses.fields(obj):
        if f.name == "settings":
            continue
        parts.append(f"{f.name}={_describe(getattr(obj, f.name))}")
    text = f"{type(obj).__name__}({', '.join(parts)})"
    return text if len(text) <= width else text[: width - 4] + "...)"
