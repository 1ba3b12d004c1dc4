"""Embedding geometry against sklearn/scipy oracles and closed forms.

methods.md 2.5, 2.7, 2.10-2.13 and 6.5.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE, trustworthiness
from sklearn.metrics.pairwise import cosine_similarity

from tlprobes._errors import InputError
from tlprobes.analysis import (
    AnisotropyAccumulator,
    DriftAccumulator,
    anisotropy,
    cosine_matrix,
    drift,
    path_length,
    pca,
    state_space_trajectories,
    tsne,
)


def planted(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    var = np.r_[10.0, 5.0, 2.0, np.full(29, 0.1)]
    Q = ortho_group.rvs(32, random_state=seed)
    return (rng.normal(size=(n, 32)) * np.sqrt(var)) @ Q + 3.0, var


def test_cosine_matrix_matches_sklearn_and_marks_zero_rows():
    X = np.random.default_rng(0).normal(size=(6, 5))
    Y = np.random.default_rng(1).normal(size=(4, 5))
    np.testing.assert_allclose(cosine_matrix(X, Y), cosine_similarity(X, Y), atol=1e-12)
    np.testing.assert_allclose(cosine_matrix(torch.tensor(X)), cosine_similarity(X), atol=1e-12)
    X[2] = 0
    with pytest.warns(RuntimeWarning):
        S = cosine_matrix(X)
    assert np.isnan(S[2]).all() and np.isfinite(S[0, [0, 1, 3]]).all()


def test_pca_recovers_planted_spectrum_like_sklearn():
    X, var = planted()
    res = pca(X, 3)
    sk = PCA(svd_solver="full").fit(X)
    np.testing.assert_allclose(res.explained_variance, sk.explained_variance_[:3], rtol=1e-10)
    np.testing.assert_allclose(res.explained_variance, [10, 5, 2], rtol=0.1)
    lam = sk.explained_variance_
    assert res.k95 == int(np.argmax(np.cumsum(lam) / lam.sum() > 0.95) + 1)
    assert res.participation_ratio == pytest.approx(lam.sum() ** 2 / (lam**2).sum())
    np.testing.assert_allclose(np.abs(res.projections), np.abs(sk.transform(X)[:, :3]), atol=1e-8)
    # deterministic signs: the same data in another row order gives identical components
    again = pca(X[::-1], 3)
    np.testing.assert_allclose(again.components, res.components, atol=1e-10)
    assert (res.components[np.arange(3), np.abs(res.components).argmax(1)] > 0).all()


def test_uncentred_pca_top_component_is_the_mean_direction():
    X, _ = planted()
    res = pca(X, 1, center=False)
    m = X.mean(0)
    assert abs(res.components[0] @ m / np.linalg.norm(m)) > 0.999
    with pytest.warns(RuntimeWarning), pytest.raises(InputError, match="finite rows"):
        pca(np.full((3, 2), np.nan))


def test_nan_rows_are_marked_not_fatal():
    X, _ = planted(n=300)
    Xn = X.copy()
    Xn[5, 3] = np.nan
    with pytest.warns(RuntimeWarning):
        res = pca(Xn, 2)
    ref = pca(np.delete(X, 5, axis=0), 2)
    np.testing.assert_allclose(res.components, ref.components, atol=1e-10)
    assert np.isnan(res.projections[5]).all()
    assert np.isfinite(np.delete(res.projections, 5, 0)).all()
    x = np.random.default_rng(0).normal(size=(3, 2, 4, 6))
    mask = np.ones((2, 4), bool)
    x[1, 1, 2] = np.nan
    with pytest.warns(RuntimeWarning):
        d = drift(x, mask)
    mask2 = mask.copy()
    mask2[1, 2] = False
    ref_d = drift(x, mask2)
    np.testing.assert_allclose(d.fro, ref_d.fro)
    np.testing.assert_allclose(d.cosine, ref_d.cosine)
    assert d.n_nan.tolist() == [1, 1] and d.n.tolist() == [5, 5]
    assert "<table" in d._repr_html_()
    V = np.random.default_rng(1).normal(size=(3, 5, 4))
    V[2, 1, 0] = np.inf
    with pytest.warns(RuntimeWarning):
        ss = state_space_trajectories(V)
    assert ss.items.tolist() == [0, 2, 3, 4] and ss.projections.shape == (3, 4, 2)


def test_tsne_matches_sklearn_and_is_trustworthy():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.3, size=(20, 10)) for c in (0.0, 4.0, -4.0)])
    res = tsne(X, perplexity=10, random_state=0)
    ref = TSNE(n_components=2, perplexity=10, random_state=0, init="pca").fit_transform(X)
    np.testing.assert_allclose(res.embedding, ref, atol=1e-6)
    assert res.trustworthiness == pytest.approx(trustworthiness(X, ref, n_neighbors=5))
    assert res.trustworthiness > 0.9
    with pytest.raises(InputError, match="perplexity"):
        tsne(X, perplexity=100)


def test_drift_definitions_and_cka_invariance():
    rng = np.random.default_rng(1)
    Z0 = rng.normal(size=(2, 6, 8))
    Q = ortho_group.rvs(8, random_state=2)
    x = np.stack([Z0, 3 * Z0 @ Q, 3 * Z0 @ Q + rng.normal(size=Z0.shape)])
    res = drift(x, exclude_first=False)
    steps = path_length(x, exclude_first=False).steps
    np.testing.assert_allclose(res.fro, np.sqrt((steps**2).sum((1, 2))), rtol=1e-12)
    np.testing.assert_allclose(res.relative[0], res.fro[0] / np.linalg.norm(Z0))
    cos = (x[1] * x[0]).sum(-1) / (np.linalg.norm(x[1], axis=-1) * np.linalg.norm(x[0], axis=-1))
    assert res.cosine[0] == pytest.approx(1 - cos.mean())
    assert res.cka[0] == pytest.approx(1.0)  # rotation + isotropic scale
    assert res.cka[1] < 1.0
    assert res.n.tolist() == [12, 12]


def test_drift_accumulator_merge_and_padding():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6, 5, 8))
    mask = rng.random((6, 5)) > 0.3
    a, b, w = DriftAccumulator(), DriftAccumulator(), DriftAccumulator()
    a.update(x[:, :2], mask[:2])
    b.update(x[:, 2:], mask[2:])
    w.update(x, mask)
    m, f = a.merge(b).compute(), w.compute()
    for k in ("fro", "relative", "cosine"):
        np.testing.assert_allclose(getattr(m, k), getattr(f, k), rtol=1e-12)
    np.testing.assert_allclose(drift(x, mask).fro, f.fro)
    x2 = np.where(mask[None, :, :, None], x, 1e6)  # padding values must not matter
    np.testing.assert_allclose(drift(x2, mask).to_frame().value, drift(x, mask).to_frame().value)


def test_anisotropy_exact_all_pairs_and_shared_mean_closed_form():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 5, 6))
    mask = np.ones((3, 5), bool)
    mask[1, 4] = False
    res = anisotropy(x, mask, exclude_first=False)
    for li in range(2):
        v = x[li][mask]
        S = cosine_similarity(v)
        brute = S[np.triu_indices(len(v), 1)].mean()
        assert res.mean_cosine[li] == pytest.approx(brute, rel=1e-10)
    d = 1000
    mu = rng.normal(size=d)
    mu *= np.sqrt(d) / np.linalg.norm(mu)
    y = mu + rng.normal(size=(1, 4, 50, d))
    assert anisotropy(y).mean_cosine[0] == pytest.approx(0.5, abs=0.01)  # |mu|^2 = d sigma^2


def test_anisotropy_accumulator_merge_and_capture():
    x = np.random.default_rng(5).normal(size=(3, 4, 6, 8))
    a, b = AnisotropyAccumulator(), AnisotropyAccumulator()
    a.update(x[:, :1])
    b.update(x[:, 1:])
    np.testing.assert_allclose(a.merge(b).compute().mean_cosine, anisotropy(x).mean_cosine,
                               rtol=1e-12)
    cap = types.SimpleNamespace(resid=torch.tensor(x), mask=torch.ones(4, 6, dtype=torch.bool),
                                meta=types.SimpleNamespace(mode="compat"))
    res = anisotropy(cap)
    assert res.settings["mode"] == "compat" and res.n.tolist() == [20, 20, 20]


def test_state_space_one_common_basis():
    rng = np.random.default_rng(6)
    V = rng.normal(size=(5, 8, 10)).cumsum(0)
    V[:, 4:] += 3.0
    res = state_space_trajectories(V, groups=["him"] * 4 + ["round"] * 4, n_components=3)
    sk = PCA(n_components=3, svd_solver="full").fit(V.reshape(-1, 10))
    np.testing.assert_allclose(np.abs(res.projections.reshape(-1, 3)),
                               np.abs(sk.transform(V.reshape(-1, 10))), atol=1e-8)
    gm = res.projections[:, :4].mean(1)
    np.testing.assert_allclose(res.group_means[0], gm)
    np.testing.assert_allclose(res.full_distance["him|round"],
                               np.linalg.norm(V[:, :4].mean(1) - V[:, 4:].mean(1), axis=-1))
    assert res.group_steps.shape == (2, 4)
    # states + target slots pick one token per sequence
    x = rng.normal(size=(5, 3, 4, 10))
    r2 = state_space_trajectories(x, np.array([1, -1, 2]), groups=["a", "b", "c"])
    assert r2.groups == ["a", "c"] and r2.projections.shape == (5, 2, 2)


def test_anisotropy_and_within_sequence_padding_invariance():
    x = np.random.default_rng(8).normal(size=(3, 2, 4, 6)) + 1.0
    right = np.full((3, 2, 6, 6), 9.0)
    left = np.full((3, 2, 6, 6), -3.0)
    right[:, :, :4] = x
    left[:, :, 2:] = x
    mr = np.zeros((2, 6), bool)
    mr[:, :4] = True
    ml = np.zeros((2, 6), bool)
    ml[:, 2:] = True
    np.testing.assert_allclose(anisotropy(right, mr).mean_cosine, anisotropy(left, ml).mean_cosine,
                               rtol=1e-12)
    np.testing.assert_allclose(anisotropy(right, mr).mean_cosine, anisotropy(x).mean_cosine,
                               rtol=1e-12)
