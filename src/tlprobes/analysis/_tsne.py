"""t-SNE maps with their trustworthiness (seed 000/001; lecture 230).

    >>> import numpy as np
    >>> tsne(np.random.default_rng(0).normal(size=(20, 5))).embedding.shape
    (20, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Real

from .._errors import InputError
from ._inputs import as_array, warn_nan
from ._tables import FrameMixin, long_frame

__all__ = ["tsne", "TSNEResult"]

Array = np.ndarray | torch.Tensor


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
