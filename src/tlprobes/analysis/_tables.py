"""Tidy (long) tables: one row per layer x group x statistic, built from per-layer arrays.

    >>> import numpy as np
    >>> long_frame({("target", "mean"): np.array([1.0, 2.0])}).shape
    (2, 4)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._display import Display

__all__ = ["FrameMixin", "long_frame"]


def long_frame(
    columns: Mapping[tuple[str, str], Any],
    *,
    layers: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """``{(group, statistic): values per layer}`` -> DataFrame[layer, group, statistic, value].

    Results that are not per layer use ``layers=[-1]``."""
    parts = []
    for (group, stat), vals in columns.items():
        v = np.atleast_1d(np.asarray(vals, dtype=float))
        lay = np.arange(v.shape[0]) if layers is None else np.asarray(layers)[: v.shape[0]]
        parts.append(pd.DataFrame({"layer": lay, "group": group, "statistic": stat, "value": v}))
    if not parts:
        return pd.DataFrame(columns=["layer", "group", "statistic", "value"])
    df = pd.concat(parts, ignore_index=True)
    df["layer"] = df["layer"].astype(int)
    return df


class FrameMixin(Display):
    """Base of analyzer results: the one display mixin (:class:`tlprobes._display.Display`) gives
    them a one-line ``repr``, a compact HTML card (summary line + small table) and ``plot()``.

    Result dataclasses use ``@dataclass(..., repr=False)`` so the mixin's ``__repr__`` is theirs."""

    __slots__ = ()
