"""PCA eigenstructure (seed 000/001; lectures 213, 230): sign-fixed components, explained
variance, k95 and the participation ratio.

    >>> import numpy as np
    >>> r = pca(np.random.default_rng(0).normal(size=(50, 3)) * [5.0, 1.0, 0.1], 2)
    >>> r.components.shape, r.k95
    ((2, 3), 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Real

from .._errors import InputError
from ._inputs import as_array, warn_nan
from ._tables import FrameMixin, component_columns, long_frame

__all__ = ["pca", "PCAResult"]

Array = np.ndarray | torch.Tensor


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
