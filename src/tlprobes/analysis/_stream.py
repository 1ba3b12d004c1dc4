"""Streaming per-layer moments: ``update`` batch by batch, ``merge`` shards, ``compute`` once.

    >>> import numpy as np
    >>> acc = LayerMoments("step")
    >>> acc.update(np.array([[1.0, 3.0], [2.0, np.nan]]), np.ones((2, 2), bool))
    >>> acc.compute().summary["all"].mean.tolist()
    [2.0, 2.0]

Every accumulator here follows one protocol: ``update(batch...)`` folds a batch in place,
``merge(other)`` adds another accumulator's state (associative: counts exact, float sums equal
within rounding), ``compute()`` summarises, and ``state_dict()`` / ``from_state_dict(state)``
round-trip the state exactly (save it with :func:`tlprobes._state.save_state`)::

    >>> back = LayerMoments.from_state_dict(acc.state_dict())
    >>> back.compute().summary["all"].n.tolist()
    [2, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._errors import InputError
from .._state import check_kind
from ._stats import LayerSummary, summary_from_moments
from ._tables import FrameMixin, long_frame

__all__ = ["LayerMoments", "StreamedSummary", "check_mergeable", "note_mode", "to_tensor",
           "to_array"]


def note_mode(settings: dict[str, Any], mode: str) -> None:
    """Record the first batch's mode; refuse a batch captured in another mode (raw vs compat)."""
    old = settings.setdefault("mode", mode)
    if old != mode:
        raise InputError(f"batch mode {mode!r} differs from earlier batches' mode {old!r}; "
                         "raw and compat residuals cannot be pooled")


def check_mergeable(a: Any, b: Any) -> None:
    """Raise unless ``b`` can be merged into ``a``: same class, same settings, same mode."""
    sa, sb = a.settings, b.settings
    ka = {k: v for k, v in sa.items() if k != "mode"}
    kb = {k: v for k, v in sb.items() if k != "mode"}
    mode_clash = "mode" in sa and "mode" in sb and sa["mode"] != sb["mode"]
    if type(a) is not type(b) or ka != kb or mode_clash:
        raise InputError(
            f"cannot merge {type(b).__name__} with settings {sb} into {type(a).__name__} with "
            f"settings {sa}"
        )
    if "mode" in sb:
        sa.setdefault("mode", sb["mode"])


def to_tensor(a: np.ndarray | None) -> torch.Tensor | None:
    """A numpy array as a tensor of the same dtype (a copy; None stays None)."""
    return None if a is None else torch.from_numpy(np.array(a, copy=True))


def to_array(t: torch.Tensor | None) -> np.ndarray | None:
    """The inverse of :func:`to_tensor`."""
    return None if t is None else t.detach().cpu().numpy().copy()


@dataclass(frozen=True, eq=False, repr=False)
class StreamedSummary(FrameMixin):
    """Per-layer n/mean/sd/sem/CI of one streamed statistic, per group (the median is NaN: it
    cannot be streamed)."""

    statistic: str
    layers: np.ndarray
    summary: dict[str, LayerSummary]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols: dict[tuple[str, str], np.ndarray] = {}
        for g, s in self.summary.items():
            for (grp, k), v in s.columns(g).items():
                cols[(grp, f"{self.statistic}_{k}")] = v
        return long_frame(cols, layers=self.layers)


class LayerMoments:
    """Counts, sums and sums of squares per layer and group; the base of streaming analyzers."""

    def __init__(self, statistic: str, *, first_layer: int = 0) -> None:
        self.statistic = statistic
        self.first_layer = first_layer
        self._m: dict[str, np.ndarray] = {}  # group -> [4, layer] (n, sum, sumsq, n_nan)
        self.settings: dict[str, Any] = {}

    def update(self, values: np.ndarray, valid: np.ndarray, group: str = "all") -> None:
        """Fold ``values [layer, ...]`` where ``valid [...]`` into the group's moments."""
        self._fold(values, valid, group)

    def _fold(self, values: np.ndarray, valid: np.ndarray, group: str) -> None:
        v = np.asarray(values, float).reshape(values.shape[0], -1)
        ok = np.broadcast_to(np.asarray(valid, bool), values.shape).reshape(v.shape)
        fin = np.isfinite(v)
        use = ok & fin
        x = np.where(use, v, 0.0)
        new = np.stack([use.sum(1), x.sum(1), (x**2).sum(1), (ok & ~fin).sum(1)]).astype(float)
        if group in self._m:
            if self._m[group].shape != new.shape:
                raise InputError(
                    f"batch has {new.shape[1]} layers but earlier batches had "
                    f"{self._m[group].shape[1]}"
                )
            self._m[group] = self._m[group] + new
        else:
            self._m[group] = new

    def merge(self, other: LayerMoments) -> LayerMoments:
        """Add ``other``'s moments into this accumulator (in place) and return self."""
        check_mergeable(self, other)
        for g, m in other._m.items():
            self._m[g] = self._m[g] + m if g in self._m else m.copy()
        return self

    def compute(self) -> StreamedSummary:
        """The per-layer summary of everything seen so far."""
        if not self._m:
            raise InputError("nothing to compute: call update(...) with at least one batch first")
        summ = {g: summary_from_moments(m[0], m[1], m[2], m[3]) for g, m in self._m.items()}
        L = next(iter(self._m.values())).shape[1]
        layers = np.arange(self.first_layer, self.first_layer + L)
        return StreamedSummary(self.statistic, layers, summ, dict(self.settings))

    def state_dict(self) -> dict[str, Any]:
        """The moments (float64 ``[4, layer]`` per group: n, sum, sum of squares, n non-finite)
        and the settings; :meth:`from_state_dict` rebuilds an equal accumulator."""
        return {
            "kind": type(self).__name__,
            "statistic": self.statistic,
            "first_layer": self.first_layer,
            "settings": dict(self.settings),
            "moments": {g: to_tensor(m) for g, m in self._m.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LayerMoments:
        """The accumulator :meth:`state_dict` describes (an exact copy)."""
        check_kind(state, cls)
        obj = cls.__new__(cls)
        LayerMoments._restore(obj, state)
        return obj

    @staticmethod
    def _restore(obj: LayerMoments, state: dict[str, Any]) -> None:
        obj.statistic = state["statistic"]
        obj.first_layer = int(state["first_layer"])
        obj.settings = dict(state["settings"])
        obj._m = {g: to_array(m) for g, m in state["moments"].items()}
