"""Representation drift between consecutive layers: Frobenius, relative and cosine change of
the token states, and linear CKA; streamed by :class:`DriftAccumulator` (``update`` / ``merge`` /
``compute`` / ``state_dict``).

    >>> import numpy as np
    >>> drift(np.ones((3, 1, 4, 2)), exclude_first=False).relative.tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .._errors import InputError
from .._state import check_kind
from ._geometry import _unit
from ._inputs import as_states, first_token_mask, warn_nan
from ._rsa import cka as linear_cka
from ._stream import check_mergeable, note_mode, to_array, to_tensor
from ._tables import FrameMixin, long_frame

__all__ = ["Drift", "DriftAccumulator", "drift"]


@dataclass(frozen=True, eq=False, repr=False)
class Drift(FrameMixin):
    """Representation drift per layer l = 1..L over the included tokens:
    ``fro`` = |Z_l - Z_(l-1)|_F,
    ``relative`` = fro / |Z_(l-1)|_F, ``cosine`` = 1 - mean_t cos(x_l, x_(l-1)), ``cka`` = linear
    CKA(Z_l, Z_(l-1)) (NaN when streamed), ``n`` tokens used and ``n_nan`` tokens skipped because
    a state was NaN/inf (zero vectors count in ``fro`` but not in ``cosine``)."""

    layers: np.ndarray
    fro: np.ndarray
    relative: np.ndarray
    cosine: np.ndarray
    cka: np.ndarray
    n: np.ndarray
    n_nan: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        keys = ("fro", "relative", "cosine", "cka", "n", "n_nan")
        return long_frame({("drift", k): getattr(self, k) for k in keys}, layers=self.layers)


def _included(st: Any, exclude_first: bool) -> np.ndarray:
    return st.mask & ~first_token_mask(st) if exclude_first else st.mask.copy()


class DriftAccumulator:
    """Streaming drift: sums of |Δx|^2, |x_(l-1)|^2 and cos(x_l, x_(l-1)) per layer.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(3, 4, 5, 8))
    >>> a, b = DriftAccumulator(), DriftAccumulator()
    >>> a.update(x[:, :2]); b.update(x[:, 2:])
    >>> bool(np.allclose(a.merge(b).compute().fro, drift(x).fro))
    True
    >>> DriftAccumulator.from_state_dict(a.state_dict()).compute().n.tolist()
    [16, 16]
    """

    def __init__(self, *, exclude_first: bool = True) -> None:
        self.settings: dict[str, Any] = {"exclude_first": exclude_first}
        # [6, L]: n, sum |d|^2, sum |x_prev|^2, sum cos, n with a cosine, n non-finite
        self._s: np.ndarray | None = None

    def update(self, data: Any, mask: Any = None) -> None:
        """Fold one batch of states (residual capture or ``[L+1, B, P, d]``) in."""
        st = as_states(data, mask)
        inc = _included(st, self.settings["exclude_first"])
        x = st.values[:, inc]  # [L+1, N, d]
        fin = np.isfinite(x).all(-1)
        ok = fin[1:] & fin[:-1]  # [L, N]: both states finite
        xz = np.where(fin[..., None], x, 0.0)
        d2 = np.where(ok, ((xz[1:] - xz[:-1]) ** 2).sum(-1), 0.0)
        p2 = np.where(ok, (xz[:-1] ** 2).sum(-1), 0.0)
        ua, _ = _unit(x[1:])
        ub, _ = _unit(x[:-1])
        cos = (ua * ub).sum(-1)
        cok = np.isfinite(cos) & ok
        warn_nan(int((~cok).sum()), "token steps (drift: zero or non-finite vectors)")
        new = np.stack([ok.sum(1), d2.sum(1), p2.sum(1), np.where(cok, cos, 0).sum(1),
                        cok.sum(1), (~ok).sum(1)]).astype(float)
        note_mode(self.settings, st.mode)
        if self._s is not None and self._s.shape != new.shape:
            raise InputError(f"batch has {new.shape[1]} layers, earlier ones {self._s.shape[1]}")
        self._s = new if self._s is None else self._s + new

    def merge(self, other: DriftAccumulator) -> DriftAccumulator:
        """Add ``other``'s sums into this accumulator (in place) and return self."""
        check_mergeable(self, other)
        if other._s is not None:
            self._s = other._s.copy() if self._s is None else self._s + other._s
        return self

    def state_dict(self) -> dict[str, Any]:
        """The sums (float64 ``[6, layer]``, None before the first batch) and the settings."""
        return {"kind": type(self).__name__, "settings": dict(self.settings),
                "sums": to_tensor(self._s)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DriftAccumulator:
        """The accumulator :meth:`state_dict` describes (an exact copy)."""
        check_kind(state, cls)
        obj = cls.__new__(cls)
        obj.settings = dict(state["settings"])
        obj._s = to_array(state["sums"])
        return obj

    def compute(self) -> Drift:
        if self._s is None:
            raise InputError("nothing to compute: call update(...) with at least one batch first")
        n, d2, p2, cs, nc, nn = self._s
        with np.errstate(invalid="ignore", divide="ignore"):
            fro = np.where(n > 0, np.sqrt(d2), np.nan)
            return Drift(np.arange(1, n.size + 1), fro, fro / np.sqrt(p2), 1 - cs / nc,
                         np.full(n.size, np.nan), n.astype(int), nn.astype(int),
                         dict(self.settings))


def drift(
    data: Any, mask: Any = None, *, exclude_first: bool = True, mode: str | None = None
) -> Drift:
    """Representation drift between consecutive layers over valid tokens (Frobenius, relative,
    cosine and linear CKA). ``data``: residual capture or ``[L+1, B, P, d]``.

    >>> import numpy as np
    >>> drift(np.ones((3, 1, 4, 2)), exclude_first=False).fro.tolist()
    [0.0, 0.0]
    """
    acc = DriftAccumulator(exclude_first=exclude_first)
    st = as_states(data, mask, mode=mode)
    acc.update(data, mask)
    res = acc.compute()
    x = st.values[:, _included(st, exclude_first)]
    fin = np.isfinite(x).all(-1)
    cka = np.full(x.shape[0] - 1, np.nan)
    for i in range(x.shape[0] - 1):
        ok = fin[i] & fin[i + 1]
        if ok.sum() > 1:
            cka[i] = linear_cka(x[i + 1, ok], x[i, ok])
    settings = {**res.settings, "mode": st.mode, "meta": st.meta}
    return Drift(res.layers, res.fro, res.relative, res.cosine, cka, res.n, res.n_nan, settings)
