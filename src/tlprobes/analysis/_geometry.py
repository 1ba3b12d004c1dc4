"""Embedding geometry (seed 000/001; lectures 168-170, 213, 230): cosine matrices, PCA
eigenstructure, t-SNE with trustworthiness and state-space trajectories in one common PCA basis
(drift and anisotropy live in ``_drift.py`` and ``_anisotropy.py``).

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
from ._inputs import as_array, as_states, warn_nan
from ._tables import FrameMixin, long_frame

__all__ = [
    "cosine_matrix",
    "pca",
    "PCAResult",
    "tsne",
    "TSNEResult",
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
        df = long_frame({("pca", "explained_variance"): self.explained_variance,
                         ("pca", "explained_variance_ratio"): self.explained_variance_ratio})
        df = df.rename(columns={"layer": "component"})
        extra = pd.DataFrame({"component": -1, "group": "pca",
                              "statistic": ["k95", "participation_ratio"],
                              "value": [self.k95, self.participation_ratio]})
        return pd.concat([df, extra], ignore_index=True)


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
