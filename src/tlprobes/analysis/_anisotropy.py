"""Anisotropy: the mean cosine between all distinct pairs of included token vectors per layer,
exact and streamed (:class:`AnisotropyAccumulator`: ``update`` / ``merge`` / ``compute`` /
``state_dict``).

    >>> import numpy as np
    >>> round(float(anisotropy(np.ones((1, 1, 3, 2)), exclude_first=False).mean_cosine[0]), 9)
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError
from .._state import check_kind
from ._drift import _included
from ._geometry import _unit
from ._inputs import as_states, warn_nan
from ._stream import check_mergeable, note_mode, to_array, to_tensor
from ._tables import FrameMixin, long_frame

__all__ = ["Anisotropy", "AnisotropyAccumulator", "anisotropy"]


@dataclass(frozen=True, eq=False, repr=False)
class Anisotropy(FrameMixin):
    """Mean cosine over all distinct pairs of included token vectors, per layer 0..L (exact, from
    the sum of unit vectors: (|sum u|^2 - n) / (n (n - 1)))."""

    layers: np.ndarray
    mean_cosine: np.ndarray
    n: np.ndarray
    n_nan: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return long_frame({("anisotropy", "mean_cosine"): self.mean_cosine,
                           ("anisotropy", "n"): self.n, ("anisotropy", "n_nan"): self.n_nan},
                          layers=self.layers)


class AnisotropyAccumulator:
    """Streaming anisotropy (sum of unit vectors and counts per layer).

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 4, 8))
    >>> a, b = AnisotropyAccumulator(), AnisotropyAccumulator()
    >>> a.update(x[:, :1]); b.update(x[:, 1:])
    >>> bool(np.allclose(a.merge(b).compute().mean_cosine, anisotropy(x).mean_cosine))
    True
    >>> AnisotropyAccumulator.from_state_dict(a.state_dict()).compute().n.tolist()
    [9, 9]
    """

    def __init__(self, *, exclude_first: bool = True) -> None:
        self.settings: dict[str, Any] = {"exclude_first": exclude_first, "pairs": "all distinct"}
        self._sum: np.ndarray | None = None
        self._n: np.ndarray | None = None
        self._nan: np.ndarray | None = None

    def update(self, data: Any, mask: Any = None) -> None:
        """Fold one batch of states (residual capture or ``[L+1, B, P, d]``) in."""
        st = as_states(data, mask)
        x = st.values[:, _included(st, self.settings["exclude_first"])]
        u, bad = _unit(x)
        warn_nan(int(bad.sum()), "vectors (anisotropy)")
        s = np.where(bad[..., None], 0.0, u).sum(1)
        n = (~bad).sum(1)
        note_mode(self.settings, st.mode)
        if self._sum is None:
            self._sum, self._n, self._nan = s, n, bad.sum(1)
        else:
            if self._sum.shape != s.shape:
                raise InputError(f"batch shape {s.shape} differs from earlier {self._sum.shape}")
            self._sum, self._n, self._nan = self._sum + s, self._n + n, self._nan + bad.sum(1)

    def merge(self, other: AnisotropyAccumulator) -> AnisotropyAccumulator:
        """Add ``other``'s sums into this accumulator (in place) and return self."""
        check_mergeable(self, other)
        if other._sum is not None:
            if self._sum is None:
                self._sum, self._n = other._sum.copy(), other._n.copy()
                self._nan = other._nan.copy()
            else:
                self._sum, self._n = self._sum + other._sum, self._n + other._n
                self._nan = self._nan + other._nan
        return self

    def state_dict(self) -> dict[str, Any]:
        """The sum of unit vectors (float64 ``[layer, d_model]``), the counts and the settings
        (tensors are None before the first batch)."""
        return {"kind": type(self).__name__, "settings": dict(self.settings),
                "sum": to_tensor(self._sum), "n": to_tensor(self._n), "n_nan": to_tensor(self._nan)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> AnisotropyAccumulator:
        """The accumulator :meth:`state_dict` describes (an exact copy)."""
        check_kind(state, cls)
        obj = cls.__new__(cls)
        obj.settings = dict(state["settings"])
        obj._sum, obj._n, obj._nan = (to_array(state[k]) for k in ("sum", "n", "n_nan"))
        return obj

    def compute(self) -> Anisotropy:
        if self._sum is None:
            raise InputError("nothing to compute: call update(...) with at least one batch first")
        n = self._n.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mc = np.where(n > 1, ((self._sum**2).sum(-1) - n) / (n * (n - 1)), np.nan)
        return Anisotropy(np.arange(n.size), mc, self._n.astype(int), self._nan.astype(int),
                          dict(self.settings))


def anisotropy(
    data: Any, mask: Any = None, *, exclude_first: bool = True, mode: str | None = None
) -> Anisotropy:
    """Per-layer mean cosine between all distinct pairs of included token vectors (Ethayarajh's
    anisotropy, computed over every pair instead of a random sample).

    >>> import numpy as np
    >>> round(float(anisotropy(np.ones((1, 1, 3, 2)), exclude_first=False).mean_cosine[0]), 9)
    1.0
    """
    acc = AnisotropyAccumulator(exclude_first=exclude_first)
    acc.update(data, mask)
    res = acc.compute()
    st = as_states(data, mask, mode=mode)
    res.settings.update({"mode": st.mode, "meta": st.meta})
    return res
