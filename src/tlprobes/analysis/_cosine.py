"""Cosine similarity between rows (seed 000/001; lectures 168-170).

    >>> import numpy as np
    >>> cosine_matrix(np.array([[1.0, 0.0], [0.0, 2.0]])).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Real

from ._inputs import as_array, warn_nan

__all__ = ["cosine_matrix", "unit_rows"]

Array = np.ndarray | torch.Tensor


def unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` scaled to unit length, and ``[...]`` True where a row is zero or not finite
    (that row is NaN)."""
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
    ux, bx = unit_rows(as_array(X))
    if Y is None:
        uy, by = ux, np.zeros(0, bool)
    else:
        uy, by = unit_rows(as_array(Y))
    warn_nan(int(bx.sum() + by.sum()), "rows (cosines)")
    return np.clip(ux @ uy.T, -1.0, 1.0)
