"""Tidy (long) tables: one row per layer x group x statistic, built from per-layer arrays.
Every result's ``to_frame()`` goes through :func:`long_frame`, so every table has the same four
columns ``layer, group, statistic, value`` (``layer`` = -1 for numbers that are not per layer).

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

__all__ = ["FrameMixin", "FRAME_COLUMNS", "component_columns", "group_columns", "long_frame"]

#: The columns of every ``to_frame()``.
FRAME_COLUMNS = ("layer", "group", "statistic", "value")


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
        return pd.DataFrame(columns=list(FRAME_COLUMNS))
    df = pd.concat(parts, ignore_index=True)
    df["layer"] = df["layer"].astype(int)
    return df


def group_columns(parts: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
    """The :func:`long_frame` columns of several per-group results (anything with
    ``.columns(group)``: layer summaries, tests), keyed by group.

    >>> class S:
    ...     def columns(self, g): return {(g, "mean"): [1.0]}
    >>> group_columns({"target": S(), "control": S()})
    {('target', 'mean'): [1.0], ('control', 'mean'): [1.0]}
    """
    cols: dict[tuple[str, str], Any] = {}
    for group, part in parts.items():
        cols.update(part.columns(group))
    return cols


def component_columns(
    prefix: str, stats: Mapping[str, Any]
) -> dict[tuple[str, str], list[float]]:
    """Per-component values (PCA components, singular values) as :func:`long_frame` columns that
    are not per layer: component ``i`` becomes group ``f"{prefix}{i + 1}"``.

    >>> component_columns("pc", {"ratio": [0.75, 0.25]})
    {('pc1', 'ratio'): [0.75], ('pc2', 'ratio'): [0.25]}
    """
    out: dict[tuple[str, str], list[float]] = {}
    n = max((len(np.atleast_1d(v)) for v in stats.values()), default=0)
    for i in range(n):
        for stat, vals in stats.items():
            out[(f"{prefix}{i + 1}", stat)] = [float(np.atleast_1d(vals)[i])]
    return out


class FrameMixin(Display):
    """Gives a result with ``to_frame()`` its notebook face: a one-line ``repr``, a compact HTML
    card (summary line + small table) and ``plot()`` (the one display mixin, :class:`tlprobes._display.Display`).

    Result dataclasses use ``@dataclass(..., repr=False)`` so the mixin's ``__repr__`` is theirs."""

    __slots__ = ()
