"""Representational similarity analysis (lectures 172-175) and linear CKA.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(12, 5))
    >>> round(rsa(X, 3 * X, n_perm=0).r, 6), round(cka(X, 3 * X), 6)
    (1.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Real
from scipy import stats
from scipy.spatial.distance import pdist, squareform

from .._errors import InputError, choices
from ._inputs import as_array, warn_nan
from ._tables import FrameMixin, long_frame

__all__ = ["rdm", "rsa", "RSAResult", "cka", "RDM_METRICS", "COMPARISONS"]

Array = np.ndarray | torch.Tensor
RDM_METRICS = ("cosine", "correlation", "euclidean")
COMPARISONS = ("spearman", "pearson", "kendall", "cosine")


def rdm(
    X: Real[Array, "item d"], metric: str = "cosine"
) -> Float[np.ndarray, "item item"]:
    """Representational dissimilarity matrix: 1 - cos, 1 - Pearson r across features, or
    Euclidean distance between the rows of ``X`` (``scipy.spatial.distance.pdist``).

    >>> import numpy as np
    >>> rdm(np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    if metric not in RDM_METRICS:
        raise InputError(f"unknown rdm metric {metric!r}; choose one of {choices(RDM_METRICS)}")
    A = as_array(X)
    if A.ndim != 2 or A.shape[0] < 2:
        raise InputError(f"rdm needs [items >= 2, d], got shape {A.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return squareform(pdist(A, metric=metric), checks=False)


def _compare(a: np.ndarray, b: np.ndarray, how: str) -> float:
    if how == "kendall":  # tau-b (ties corrected), as scipy.stats.kendalltau
        return float(stats.kendalltau(a, b).statistic)
    return float(_standardise(a, how) @ _standardise(b, how))


def _standardise(a: np.ndarray, how: str) -> np.ndarray:
    """Scaled to unit norm after centring (Pearson; ranks first for Spearman) or as is (cosine):
    the comparison is then a dot product."""
    if how == "spearman":
        a = stats.rankdata(a)
    if how != "cosine":
        a = a - a.mean()
    norm = np.sqrt((a**2).sum())
    return a / norm if norm > 0 else np.full_like(a, np.nan, dtype=float)


@dataclass(frozen=True, eq=False, repr=False)
class RSAResult(FrameMixin):
    """RSA score ``r`` between two RDMs (strict upper triangle), Mantel permutation p-value
    p = (1 + #{null >= r}) / (1 + n_perm) (NaN when ``n_perm`` = 0) and the ``null`` draws."""

    r: float
    p: float
    null: np.ndarray
    n_items: int
    rdm_x: np.ndarray
    rdm_y: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return long_frame({("rsa", "r"): [self.r], ("rsa", "p"): [self.p],
                           ("rsa", "n_items"): [self.n_items],
                           ("rsa", "n_perm"): [self.null.size]}, layers=[-1])


def rsa(
    X: Real[Array, "item d_x"],
    Y: Real[Array, "item d_y"],
    *,
    rdm: str = "cosine",
    compare: str = "spearman",
    n_perm: int = 1000,
    seed: int = 0,
) -> RSAResult:
    """Compare two representations of the same items: build both RDMs, compare their strict
    upper triangles (``compare``: Spearman, Pearson, Kendall's tau-b, or the cosine of the two
    uncentred triangles) and test by permuting the items of one RDM (Mantel).

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(10, 4))
    >>> res = rsa(X, X + 0.01, n_perm=99)
    >>> res.r > 0.9, res.p
    (True, 0.01)
    """
    if compare not in COMPARISONS:
        raise InputError(f"unknown compare {compare!r}; choose one of {choices(COMPARISONS)}")
    Dx, Dy = _rdm(X, rdm), _rdm(Y, rdm)
    if Dx.shape != Dy.shape:
        raise InputError(f"X has {Dx.shape[0]} items but Y has {Dy.shape[0]}; rows must be paired")
    n = Dx.shape[0]
    if n < 3:
        raise InputError(f"rsa needs at least 3 items (3 pairs), got {n}")
    iu = np.triu_indices(n, k=1)
    ux, uy = Dx[iu], Dy[iu]
    ok = np.isfinite(ux) & np.isfinite(uy)
    if not ok.all():
        import warnings

        warnings.warn(f"{int((~ok).sum())} RDM entries are NaN (zero vectors?); RSA is NaN",
                      RuntimeWarning, stacklevel=2)
        return RSAResult(np.nan, np.nan, np.zeros(0), n, Dx, Dy,
                         {"rdm": rdm, "compare": compare, "n_perm": n_perm, "seed": seed})
    r = _compare(ux, uy, compare)
    # Permuting items permutes the pairs, so the permuted triangle holds the same values: rank and
    # standardise both triangles once, and each permutation is one gather and one dot product
    # (Kendall's tau has no such form: it is recomputed per permutation).
    kendall = compare == "kendall"
    zx = ux if kendall else _standardise(ux, compare)
    Zy = np.zeros((n, n))
    Zy[iu] = uy if kendall else _standardise(uy, compare)
    Zy += Zy.T
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for i in range(n_perm):
        perm = rng.permutation(n)
        permuted = Zy[perm[iu[0]], perm[iu[1]]]
        null[i] = _compare(zx, permuted, compare) if kendall else zx @ permuted
    p = float((1 + (null >= r).sum()) / (1 + n_perm)) if n_perm > 0 else np.nan
    return RSAResult(r, p, null, n, Dx, Dy,
                     {"rdm": rdm, "compare": compare, "n_perm": n_perm, "seed": seed,
                      "triangle": "strict upper", "test": "Mantel item permutation"})


_rdm = rdm


def cka(X: Real[Array, "item d_x"], Y: Real[Array, "item d_y"]) -> float:
    """Linear CKA |Xc^T Yc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F) of column-centred X and Y: 1 for
    identical up to rotation and isotropic scale, invariant to both.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(30, 4))
    >>> round(cka(X, X @ np.linalg.qr(np.ones((4, 4)) + np.eye(4))[0]), 6)
    1.0
    """
    A, B = as_array(X), as_array(Y)
    if A.shape[0] != B.shape[0]:
        raise InputError(f"X has {A.shape[0]} rows but Y has {B.shape[0]}; rows must be paired")
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        warn_nan(1, "CKA inputs contain NaN/inf; CKA values")
        return float("nan")
    A, B = A - A.mean(0), B - B.mean(0)
    num = np.linalg.norm(A.T @ B) ** 2
    den = np.linalg.norm(A.T @ A) * np.linalg.norm(B.T @ B)
    return float(num / den) if den > 0 else float("nan")
