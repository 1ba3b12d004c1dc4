"""Orthogonal Procrustes maps between embedding spaces (seed 002; Smith et al. 2017; Conneau
et al. 2018): fit/transform/score in sklearn style, retrieval by precision@k with NN or CSLS,
and the shared vocabulary of two tokenizers.

    >>> import numpy as np
    >>> from scipy.stats import ortho_group
    >>> X = np.random.default_rng(0).normal(size=(100, 5)); R = ortho_group.rvs(5, random_state=1)
    >>> bool(np.allclose(Procrustes().fit(X, X @ R).rotation_, R))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int, Real

from .._errors import InputError, choices
from ._inputs import as_array, warn_nan
from ._tables import FrameMixin, long_frame

__all__ = [
    "Procrustes",
    "precision_at_k",
    "shared_vocabulary",
    "SharedVocabulary",
    "map_embeddings",
    "EmbeddingMap",
    "KINDS",
]

Array = np.ndarray | torch.Tensor
KINDS = ("orthogonal", "rotation", "similarity")
RETRIEVAL = ("nn", "csls", "isf")


def _normalize_rows(X: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(n > 0, n, 1.0)


class Procrustes:
    """Learn ``rotation_`` (and ``scale_``) so that ``transform(X) = s * (X - mean_x) @ R + mean_y``
    approximates ``Y`` (row convention; MUSE's column map is ``W = R.T``).

    ``kind``: ``"orthogonal"`` (R^T R = I, reflections allowed), ``"rotation"`` (det R = +1,
    Kabsch), ``"similarity"`` (orthogonal plus one isotropic scale). ``center`` removes each
    side's mean (added back for Y), ``normalize`` scales rows to unit length before fitting
    (and before transforming / scoring). Unequal dims d_x != d_y use the thin SVD: R is
    ``[d_x, d_y]`` with R R^T = I (d_x <= d_y) or R^T R = I.

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(20, 3))
    >>> round(Procrustes(kind="similarity").fit(X, 2 * X).scale_, 6)
    2.0
    """

    def __init__(
        self,
        kind: str = "orthogonal",
        *,
        center: bool = False,
        normalize: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise InputError(f"unknown Procrustes kind {kind!r}; choose one of {choices(KINDS)}")
        self.kind = kind
        self.center = center
        self.normalize = normalize

    def _prep_x(self, X: Any) -> np.ndarray:
        A = as_array(X)
        if self.normalize:
            A = _normalize_rows(A)
        return A

    def fit(self, X: Real[Array, "n d_x"], Y: Real[Array, "n d_y"]) -> Procrustes:
        """Solve min |s (X - mx) R - (Y - my)|_F over orthogonal R (and s > 0). Returns self."""
        A, B = self._prep_x(X), self._prep_x(Y)
        if A.shape[0] != B.shape[0]:
            raise InputError(f"X has {A.shape[0]} rows but Y has {B.shape[0]}; rows are pairs")
        fin = np.isfinite(A).all(1) & np.isfinite(B).all(1)
        warn_nan(int((~fin).sum()), "row pairs (left out of the Procrustes fit)")
        if not fin.all():  # copies only when rows must go
            A, B = A[fin], B[fin]
        if A.shape[0] < 1:
            raise InputError("no finite row pairs to fit a Procrustes map on")
        self.mean_x_ = A.mean(0) if self.center else np.zeros(A.shape[1])
        self.mean_y_ = B.mean(0) if self.center else np.zeros(B.shape[1])
        if self.center:
            A, B = A - self.mean_x_, B - self.mean_y_
        U, s, Vt = np.linalg.svd(A.T @ B, full_matrices=False)
        if self.kind == "rotation":
            if A.shape[1] != B.shape[1]:
                raise InputError(
                    f"kind='rotation' needs equal dims, got {A.shape[1]} and {B.shape[1]}; "
                    "use kind='orthogonal' for rectangular maps"
                )
            sign = np.sign(np.linalg.det(U @ Vt)) or 1.0
            D = np.ones(s.size)
            D[-1] = sign
            self.rotation_ = (U * D) @ Vt
            s_eff = (s * D).sum()
        else:
            self.rotation_ = U @ Vt
            s_eff = s.sum()
        self.scale_ = float(s_eff / (A**2).sum()) if self.kind == "similarity" else 1.0
        self.singular_values_ = s
        self.n_features_in_ = A.shape[1]
        return self

    def _check(self) -> None:
        if not hasattr(self, "rotation_"):
            raise InputError("this Procrustes is not fitted yet; call fit(X, Y) first")

    def transform(self, X: Real[Array, "n d_x"]) -> Float[np.ndarray, "n d_y"]:
        """Map rows of X into Y's space."""
        self._check()
        A = self._prep_x(X)
        if A.shape[1] != self.n_features_in_:
            raise InputError(f"X has {A.shape[1]} features; the map was fitted on "
                             f"{self.n_features_in_}")
        return self.scale_ * (A - self.mean_x_) @ self.rotation_ + self.mean_y_

    def inverse_transform(self, Y: Real[Array, "n d_y"]) -> Float[np.ndarray, "n d_x"]:
        """Map rows of Y back into X's space (exact when R is square)."""
        self._check()
        B = self._prep_x(Y)
        return (B - self.mean_y_) @ self.rotation_.T / self.scale_ + self.mean_x_

    def fit_transform(
        self, X: Real[Array, "n d_x"], Y: Real[Array, "n d_y"]
    ) -> Float[np.ndarray, "n d_y"]:
        return self.fit(X, Y).transform(X)

    def score(self, X: Real[Array, "n d_x"], Y: Real[Array, "n d_y"]) -> float:
        """Mean cosine between ``transform(X)`` and the paired rows of ``Y`` (1 is perfect)."""
        P, B = self.transform(X), self._prep_x(Y)
        num = (P * B).sum(1)
        den = np.linalg.norm(P, axis=1) * np.linalg.norm(B, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.nanmean(num / den))

    def residual(self, X: Real[Array, "n d_x"], Y: Real[Array, "n d_y"]) -> float:
        """Mean squared error per entry |transform(X) - Y|^2 / (n d_y)."""
        P, B = self.transform(X), self._prep_x(Y)
        return float(((P - B) ** 2).mean())

    def __repr__(self) -> str:
        return f"Procrustes(kind={self.kind!r}, center={self.center}, normalize={self.normalize})"


def precision_at_k(
    mapped: Real[Array, "n_query d"],
    targets: Real[Array, "n_target d"],
    gold: Int[Array, " n_query"] | None = None,
    *,
    k: int = 1,
    method: str = "nn",
    csls_k: int = 10,
    isf_beta: float = 30.0,
) -> float:
    """Fraction of queries whose gold target (default: the same row index) is among the ``k``
    best targets by cosine (``"nn"``), by CSLS = 2 cos - r_T(x) - r_S(y) with ``csls_k``
    neighbours (r_S is taken over the given queries, which stand in for the source vocabulary),
    or by the inverted softmax (``"isf"``, Smith et al. 2017): target j scores
    exp(beta cos_ij) / sum_i' exp(beta cos_i'j), normalised over the queries, so a hub target
    near every query stops winning them all.

    >>> import numpy as np
    >>> X = np.eye(4)
    >>> precision_at_k(X, X), precision_at_k(X, X[::-1])
    (1.0, 0.0)
    """
    if method not in RETRIEVAL:
        raise InputError(f"unknown method {method!r}; choose one of {choices(RETRIEVAL)}")
    from ._align import retrieval_ranks

    Q = as_array(mapped)
    g = np.arange(Q.shape[0]) if gold is None else as_array(gold, dtype=None).astype(int)
    n_t = as_array(targets).shape[0]
    if g.shape != (Q.shape[0],) or g.max(initial=0) >= n_t:
        raise InputError(f"gold must hold one target index < {n_t} per query "
                         f"({Q.shape[0]}), got shape {g.shape}")
    # blockwise: never the full query x target matrix (issue 17)
    ranks = retrieval_ranks(Q, targets, g, method=method, csls_k=csls_k, isf_beta=isf_beta)
    return float((ranks < k).mean())


@dataclass(frozen=True, eq=False, repr=False)
class SharedVocabulary(FrameMixin):
    """Token strings in both vocabularies (``tokens``, by their id in vocabulary a) and their ids
    on each side (``ids_a``, ``ids_b``), to index two embedding matrices; ``n_a`` / ``n_b`` are
    the vocabulary sizes."""

    tokens: list[str]
    ids_a: np.ndarray
    ids_b: np.ndarray
    n_a: int
    n_b: int

    def __len__(self) -> int:
        return len(self.tokens)

    def to_frame(self) -> pd.DataFrame:
        """Long table (``layer`` = -1): the shared count and both vocabulary sizes."""
        return long_frame({("vocabulary", "n_shared"): [len(self.tokens)],
                           ("vocabulary", "n_a"): [self.n_a], ("vocabulary", "n_b"): [self.n_b]},
                          layers=[-1])


def shared_vocabulary(
    vocab_a: Mapping[str, int], vocab_b: Mapping[str, int]
) -> SharedVocabulary:
    """Tokens present in both vocabularies (``{token: id}``, e.g. ``tokenizer.get_vocab()``),
    sorted by their id in ``vocab_a``, with the ids on each side to index two embedding matrices.

    >>> v = shared_vocabulary({"a": 0, "b": 1, "c": 2}, {"c": 5, "a": 7})
    >>> v.tokens, v.ids_a.tolist(), v.ids_b.tolist()
    (['a', 'c'], [0, 2], [7, 5])
    """
    common = sorted(set(vocab_a) & set(vocab_b), key=lambda t: vocab_a[t])
    if not common:
        raise InputError("the two vocabularies share no token strings")
    return SharedVocabulary(common, np.array([vocab_a[t] for t in common]),
                            np.array([vocab_b[t] for t in common]), len(vocab_a), len(vocab_b))


@dataclass(frozen=True, eq=False, repr=False)
class EmbeddingMap(FrameMixin):
    """A Procrustes map fitted on paired rows (a shared vocabulary, or one layer's states vs
    another's) and evaluated on held-out pairs. ``scores[name]`` holds ``p_at_k_nn``,
    ``p_at_k_csls``, ``p_at_k_isf``, ``mean_cosine`` and ``residual`` for ``"test"``, ``"train"``, the
    ``"identity"`` map (equal dims only) and a ``"shuffled"`` dictionary baseline."""

    procrustes: Procrustes
    tokens: list[str] | None
    train_rows: np.ndarray
    test_rows: np.ndarray
    scores: dict[str, dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols = {(g, k): [v] for g, d in self.scores.items() for k, v in d.items()}
        return long_frame(cols, layers=[-1])


def _evaluate(P: np.ndarray, Y: np.ndarray, k: int, csls_k: int, isf_beta: float,
              targets: np.ndarray | None = None, gold: np.ndarray | None = None,
              sources: np.ndarray | None = None) -> dict[str, float]:
    """Scores of mapped queries ``P`` against their paired rows ``Y``. Retrieval searches
    ``targets`` (default: ``Y`` itself) for row ``gold``; CSLS/ISF hubness is measured against
    ``sources`` (default: ``P``). All blockwise."""
    from ._align import retrieval_ranks

    num = (P * Y).sum(1)
    den = np.linalg.norm(P, axis=1) * np.linalg.norm(Y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mc = float(np.nanmean(num / den))
    T = Y if targets is None else targets
    opts = {"sources": sources, "csls_k": csls_k, "isf_beta": isf_beta}
    p_at = {f"p_at_k_{m}": float((retrieval_ranks(P, T, gold, method=m, **opts) < k).mean())
            for m in RETRIEVAL}
    return {**p_at, "mean_cosine": mc, "residual": float(((P - Y) ** 2).mean())}


def map_embeddings(
    X: Real[Array, "rows_x d_x"],
    Y: Real[Array, "rows_y d_y"],
    vocab_x: Mapping[str, int] | None = None,
    vocab_y: Mapping[str, int] | None = None,
    *,
    kind: str = "orthogonal",
    center: bool = False,
    normalize: bool = True,
    test_fraction: float = 0.2,
    k: int = 1,
    csls_k: int = 10,
    isf_beta: float = 30.0,
    search: str = "test",
    max_queries: int | None = None,
    seed: int = 0,
) -> EmbeddingMap:
    """Fit and evaluate a Procrustes map between two embedding matrices over their shared
    vocabulary (give both ``{token: id}`` dicts), or between already paired rows (e.g. layer l
    vs layer l+1 vectors of the same tokens). Rows are split train/test with ``seed``.

    ``search``: the candidates a held-out row is retrieved among: ``"test"`` (the held-out rows
    of Y) or ``"all"`` (every paired row of Y, train and test; CSLS/ISF hubness then measured
    against every mapped row of X). Retrieval is blockwise (never a rows x rows matrix).
    ``max_queries`` scores at most that many (seeded) rows of each split, to bound the time.

    >>> import numpy as np
    >>> E = np.random.default_rng(0).normal(size=(60, 8))
    >>> m = map_embeddings(E, E[:, ::-1])
    >>> test, identity = m.scores["test"], m.scores["identity"]
    >>> test["p_at_k_nn"], identity["p_at_k_nn"] < 1
    (1.0, True)
    """
    A, B = as_array(X), as_array(Y)
    tokens = None
    if (vocab_x is None) != (vocab_y is None):
        raise InputError(
            "give both vocab_x and vocab_y (shared vocabulary) or neither (paired rows)"
        )
    if vocab_x is not None and vocab_y is not None:
        shared = shared_vocabulary(vocab_x, vocab_y)
        tokens = shared.tokens
        A, B = A[shared.ids_a], B[shared.ids_b]
    if A.shape[0] != B.shape[0]:
        raise InputError(f"X has {A.shape[0]} rows but Y has {B.shape[0]}; rows must be paired")
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(A.shape[0])
    n_test = max(1, int(round(test_fraction * A.shape[0])))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    proc = Procrustes(kind, center=center, normalize=normalize).fit(A[train], B[train])
    if search not in ("test", "all"):
        raise InputError(f"unknown search {search!r}; choose one of {choices(['test', 'all'])}")
    Bt = proc._prep_x(B)
    ev: dict[str, Any] = {"k": k, "csls_k": csls_k, "isf_beta": isf_beta}

    if max_queries is not None and max_queries < 1:
        raise InputError(f"max_queries must be >= 1 or None, got {max_queries}")
    q_rng = np.random.default_rng(seed + 1)

    def capped(rows: np.ndarray) -> np.ndarray:
        if max_queries is None or rows.size <= max_queries:
            return rows
        return np.sort(q_rng.choice(rows, size=max_queries, replace=False))

    te, tr = capped(test), capped(train)

    def score(mapper: Any, rows: np.ndarray) -> dict[str, float]:
        if search == "test":
            return _evaluate(mapper(A[rows]), Bt[rows], **ev)
        return _evaluate(mapper(A[rows]), Bt[rows], **ev, targets=Bt, gold=rows, sources=mapper(A))

    scores = {"test": score(proc.transform, te), "train": score(proc.transform, tr)}
    if A.shape[1] == B.shape[1]:
        scores["identity"] = score(proc._prep_x, te)
    shuf = Procrustes(kind, center=center, normalize=normalize)
    shuf.fit(A[train], B[train][rng.permutation(train.size)])
    scores["shuffled"] = score(shuf.transform, te)
    settings = {"kind": kind, "center": center, "normalize": normalize, "search": search, "max_queries": max_queries,
                "test_fraction": test_fraction, "k": k, "csls_k": csls_k, "isf_beta": isf_beta, "seed": seed,
                "n_pairs": int(A.shape[0]), "source": "shared vocabulary" if tokens else "rows"}
    return EmbeddingMap(proc, tokens, train, test, scores, settings)
