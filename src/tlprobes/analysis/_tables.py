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

__all__ = ["FrameMixin", "FRAME_COLUMNS", "component_columns", "long_frame"]

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


class FrameMixin:
    """Gives a result with ``to_frame()`` its notebook face: a one-line ``repr``, a compact HTML
    card (summary line + small table) and ``plot()`` (see :mod:`tlprobes.analysis._display`).

    Result dataclasses use ``@dataclass(..., repr=False)`` so this ``__repr__`` is theirs."""

    def __repr__(self) -> str:
        from ._display import short_repr

        return short_repr(self)

    def _repr_html_(self) -> str:
        from ._display import summary_html

        return summary_html(self)

    def plot(self, **kwargs: Any) -> Any:
        """The result's natural figure (a matplotlib ``Figure`` that shows itself in Jupyter)."""
        from ._display import plot_result

        return plot_result(self, **kwargs)
