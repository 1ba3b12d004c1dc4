"""Embedding geometry (seed 000/001; lectures 168-170, 213, 230): cosine matrices, PCA
eigenstructure, t-SNE with trustworthiness, representation drift, anisotropy and state-space
trajectories in one common PCA basis.

    >>> import numpy as np
    >>> cosine_matrix(np.array([[1.0, 0.0], [0.0, 2.0]])).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Real

from .._errors import InputError
from ._inputs import as_array, as_states, first_token_mask, warn_nan
from ._stream import check_mergeable, note_mode
from ._tables import FrameMixin, component_columns, long_frame

__all__ = [
    "cosine_matrix",
    "pca",
    "PCAResult",
    "tsne",
    "TSNEResult",
    "drift",
    "Drift",
    "DriftAccumulator",
    "anisotropy",
    "Anisotropy",
    "AnisotropyAccumulator",
    "state_space_trajectories",
    "StateSpace",
]

Array = np.ndarray | torch.Tensor


def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    bad = ~(np.isfinite(n) & (n > 0))[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        u = x / n
    u[bad] = np.nan
    return u, bad


def cosine_matrix(
    X: Real[Array, "n d"], Y: Real[Array, "m d"] | None = None
) -> Float[np.ndarray, "n m"]:
    """Cosine similarity of every row of ``X`` with every row of ``Y`` (default ``X``).
    Zero or non-finite rows give NaN rows/columns and a warning.

    >>> import numpy as np
    >>> cosine_matrix(np.eye(2), np.array([[1.0, 1.0]])).round(4).tolist()
    [[0.7071], [0.7071]]
    """
    ux, bx = _unit(as_array(X))
    if Y is None:
        uy, by = ux, np.zeros(0, bool)
    else:
        uy, by = _unit(as_array(Y))
    warn_nan(int(bx.sum() + by.sum()), "rows (cosines)")
    return np.clip(ux @ uy.T, -1.0, 1.0)


def _fix_signs(components: np.ndarray) -> np.ndarray:
    idx = np.abs(components).argmax(1)
    sign = np.sign(components[np.arange(len(components)), idx])
    sign[sign == 0] = 1
    return sign


@dataclass(frozen=True, eq=False, repr=False)
class PCAResult(FrameMixin):
    """PCA eigenstructure. ``components`` ``[k, d]`` (sign fixed: largest |loading| positive),
    ``explained_variance`` (eigenvalues, ddof=1 when centred), ``explained_variance_ratio``,
    ``projections`` ``[n, k]``, and from the full spectrum ``k95`` and ``participation_ratio``."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    projections: np.ndarray
    k95: int
    participation_ratio: float
    settings: dict[str, Any] = field(default_factory=dict)

    def transform(self, X: Real[Array, "n d"]) -> Float[np.ndarray, "n k"]:
        """Project new rows onto the fitted (sign-fixed) components."""
        return (as_array(X) - self.mean) @ self.components.T

    def to_frame(self) -> pd.DataFrame:
        """Long table (``layer`` = -1: not per layer): group ``pc1..pck`` with the eigenvalue and
        its variance fraction, group ``pca`` with ``k95`` and ``participation_ratio``."""
        return long_frame(component_columns("pc", {
            "explained_variance": self.explained_variance,
            "explained_variance_ratio": self.explained_variance_ratio,
        }) | {("pca", "k95"): [self.k95], ("pca", "participation_ratio"): [self.participation_ratio]},
            layers=[-1])


def pca(
    X: Real[Array, "n d"], n_components: int | None = None, *, center: bool = True
) -> PCAResult:
    """PCA of the rows of ``X`` via ``sklearn.decomposition.PCA`` (``center=True``, the default)
    or of the uncentred second-moment matrix X^T X / n (the seed's formula; its top component is
    the mean direction). k95 and the participation ratio come from the full spectrum. Rows with
    NaN/inf are left out of the fit (warning) and get NaN projections.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(50, 3)) * [5.0, 1.0, 0.1]
    >>> r = pca(X, 2)
    >>> r.components.shape, int(np.abs(r.components[0]).argmax())
    ((2, 3), 0)
    """
    A = as_array(X)
    if A.ndim != 2 or A.shape[0] < 2:
        raise InputError(f"pca needs a [n >= 2, d] matrix, got shape {A.shape}")
    fin = np.isfinite(A).all(1)
    warn_nan(int((~fin).sum()), "rows (dropped from the PCA fit, NaN projections)")
    full_rows, A = A, A[fin]
    if A.shape[0] < 2:
        raise InputError(f"pca needs at least 2 finite rows, got {A.shape[0]}")
    if center:
        from sklearn.decomposition import PCA

        full = PCA(svd_solver="full").fit(A)
        lam, comps, mean = full.explained_variance_, full.components_, full.mean_
    else:
        _, s, vt = np.linalg.svd(A, full_matrices=False)
        lam, comps, mean = s**2 / A.shape[0], vt, np.zeros(A.shape[1])
    k = lam.size if n_components is None else int(min(n_components, lam.size))
    comps = comps * _fix_signs(comps)[:, None]
    ratio = lam / lam.sum()
    k95 = int(min(np.searchsorted(np.cumsum(ratio), 0.95) + 1, lam.size))
    pr = float(lam.sum() ** 2 / (lam**2).sum())
    proj = np.full((full_rows.shape[0], k), np.nan)
    proj[fin] = (A - mean) @ comps[:k].T
    return PCAResult(mean, comps[:k], lam[:k], ratio[:k], proj, k95, pr,
                     {"center": center, "n_components": k})


@dataclass(frozen=True, eq=False, repr=False)
class TSNEResult(FrameMixin):
    """A t-SNE embedding with sklearn's ``kl_divergence`` and the trustworthiness of the map."""

    embedding: np.ndarray
    kl_divergence: float
    trustworthiness: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return long_frame({("tsne", "kl_divergence"): [self.kl_divergence],
                           ("tsne", "trustworthiness"): [self.trustworthiness]}, layers=[-1])


def tsne(
    X: Real[Array, "n d"],
    n_components: int = 2,
    *,
    perplexity: float | int | None = None,
    random_state: int = 0,
    init: str = "pca",
    n_neighbors: int = 5,
) -> TSNEResult:
    """``sklearn.manifold.TSNE`` (seeded, ``init="pca"``) plus ``trustworthiness``; the default
    perplexity is min(30, (n - 1) / 3). Distances between t-SNE clusters are not interpretable.

    >>> import numpy as np
    >>> tsne(np.random.default_rng(0).normal(size=(20, 5))).embedding.shape
    (20, 2)
    """
    from sklearn.manifold import TSNE, trustworthiness

    A_all = as_array(X)
    fin = np.isfinite(A_all).all(1)
    warn_nan(int((~fin).sum()), "rows (left out of t-SNE, NaN in the embedding)")
    A = A_all[fin]
    n = A.shape[0]
    perp = min(30.0, (n - 1) / 3) if perplexity is None else float(perplexity)
    if not 0 < perp < n:
        raise InputError(f"perplexity {perp} must be in (0, n_samples={n})")
    model = TSNE(n_components=n_components, perplexity=perp, random_state=random_state, init=init)
    emb_ok = model.fit_transform(A)
    tw = trustworthiness(A, emb_ok, n_neighbors=min(n_neighbors, n // 2 - 1))
    emb = np.full((A_all.shape[0], n_components), np.nan)
    emb[fin] = emb_ok
    settings = {"perplexity": perp, "random_state": random_state, "init": init,
                "n_neighbors": n_neighbors}
    return TSNEResult(emb, float(model.kl_divergence_), float(tw), settings)


def _cka(X: np.ndarray, Y: np.ndarray) -> float:
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    num = np.linalg.norm(Xc.T @ Yc) ** 2
    den = np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    return float(num / den) if den > 0 else np.nan


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
            cka[i] = _cka(x[i + 1, ok], x[i, ok])
    settings = {**res.settings, "mode": st.mode, "meta": st.meta}
    return Drift(res.layers, res.fro, res.relative, res.cosine, cka, res.n, res.n_nan, settings)


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


@dataclass(frozen=True, eq=False, repr=False)
class StateSpace(FrameMixin):
    """Token trajectories ``[L+1, n_items, k]`` in one PCA basis fitted on all (item, layer) rows;
    per-group mean trajectories ``group_means [G, L+1, k]``; per-layer distances between group
    means in PC space (``pc_distance``) and in the full space (``full_distance``), keyed
    ``"a|b"``; ``group_steps [G, L]`` = step lengths of the mean PC trajectories; ``items`` are
    the input items kept (target found, all vectors finite)."""

    layers: np.ndarray
    projections: np.ndarray
    items: np.ndarray
    groups: list[str]
    item_groups: np.ndarray
    group_means: np.ndarray
    pc_distance: dict[str, np.ndarray]
    full_distance: dict[str, np.ndarray]
    group_steps: np.ndarray
    pca: PCAResult
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols: dict[tuple[str, str], np.ndarray] = {}
        for gi, g in enumerate(self.groups):
            for c in range(self.group_means.shape[2]):
                cols[(g, f"mean_pc{c + 1}")] = self.group_means[gi, :, c]
            cols[(g, "step")] = np.concatenate([[np.nan], self.group_steps[gi]])
        for k in self.pc_distance:
            cols[(k, "pc_distance")] = self.pc_distance[k]
            cols[(k, "full_distance")] = self.full_distance[k]
        return long_frame(cols, layers=self.layers)


def state_space_trajectories(
    data: Any,
    targets: Any = None,
    *,
    groups: Any = None,
    mask: Any = None,
    n_components: int = 2,
    str_tokens: Any = None,
) -> StateSpace:
    """Fit one PCA on every (item, layer) vector, then project each item's path through the
    layers into it. ``data``: ``[L+1, n_items, d]`` vectors, or states (capture or
    ``[L+1, B, P, d]``) with ``targets`` (token string or one slot per sequence) picking one
    token per sequence; sequences without the target are dropped. ``groups``: a label per item.

    >>> import numpy as np
    >>> r = state_space_trajectories(np.random.default_rng(0).normal(size=(4, 6, 5)),
    ...                              groups=["a"] * 3 + ["b"] * 3)
    >>> r.projections.shape, r.pc_distance["a|b"].shape
    ((4, 6, 2), (4,))
    """
    from ._angles import resolve_targets

    if targets is None:
        V = as_array(data)
        if V.ndim != 3:
            raise InputError(f"expected [L+1, n_items, d] vectors (or states with targets), "
                             f"got shape {V.shape}")
        keep = np.ones(V.shape[1], bool)
    else:
        st = as_states(data, mask)
        t = resolve_targets(st, targets, str_tokens)
        keep = t >= 0
        V = st.values[:, np.flatnonzero(keep), t[keep]]
    labels = np.asarray(["all"] * keep.size if groups is None else list(groups), dtype=object)
    if labels.size != keep.size:
        raise InputError(f"groups has {labels.size} labels for {keep.size} items")
    labels = labels[keep]
    fin = np.isfinite(V).all((0, 2))
    warn_nan(int((~fin).sum()), "items (NaN/inf vectors; dropped from the trajectories)")
    V, labels = V[:, fin], labels[fin]
    items = np.flatnonzero(keep)[fin]
    L1, n, d = V.shape
    fit = pca(V.reshape(-1, d), n_components)
    proj = fit.transform(V.reshape(-1, d)).reshape(L1, n, -1)
    names = list(dict.fromkeys(labels.tolist()))
    gm = np.stack([proj[:, labels == g].mean(1) for g in names])
    fm = np.stack([V[:, labels == g].mean(1) for g in names])
    pcd, fd = {}, {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            key = f"{names[i]}|{names[j]}"
            pcd[key] = np.linalg.norm(gm[i] - gm[j], axis=-1)
            fd[key] = np.linalg.norm(fm[i] - fm[j], axis=-1)
    steps = np.linalg.norm(np.diff(gm, axis=1), axis=-1)
    settings = {"n_components": fit.components.shape[0], "basis": "one PCA over all layers"}
    return StateSpace(np.arange(L1), proj, items, names, labels.astype(str), gm, pcd, fd, steps,
                      fit, settings)
