"""Orthogonal Procrustes against scipy and a hidden rotation (methods.md 2.14, 6.1)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group

from tlprobes._errors import InputError
from tlprobes.analysis import Procrustes, map_embeddings, precision_at_k, shared_vocabulary


def hidden(sigma, n=500, d=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    R = ortho_group.rvs(d, random_state=seed + 1)
    return X, X @ R + sigma * rng.normal(size=(n, d)), R


def rel(A, B):
    return np.linalg.norm(A - B) / np.linalg.norm(B)


def test_exact_recovery_and_scipy_agreement():
    X, Y, R = hidden(0.0)
    p = Procrustes().fit(X, Y)
    assert rel(p.rotation_, R) < 1e-10
    assert np.abs(p.rotation_ - orthogonal_procrustes(X, Y)[0]).max() < 1e-12
    assert np.abs(p.singular_values_.sum() - orthogonal_procrustes(X, Y)[1]) < 1e-8
    assert p.score(X, Y) == pytest.approx(1.0)
    np.testing.assert_allclose(p.inverse_transform(p.transform(X)), X, atol=1e-10)


def test_noisy_recovery_orthogonality_and_residual():
    X, Y, R = hidden(0.1)
    p = Procrustes().fit(X, Y)
    assert rel(p.rotation_, R) < 0.05
    assert np.abs(p.rotation_.T @ p.rotation_ - np.eye(64)).max() < 1e-12
    assert p.residual(X, Y) == pytest.approx(0.01 * (1 - 64 / 500), rel=0.1)


def test_rotation_kind_forces_det_plus_one():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 5))
    R = ortho_group.rvs(5, random_state=4)
    if np.linalg.det(R) > 0:
        R[:, 0] *= -1  # a reflection: the best pure rotation cannot reach it
    Y = X @ R
    orth = Procrustes("orthogonal").fit(X, Y)
    rot = Procrustes("rotation").fit(X, Y)
    assert np.linalg.det(orth.rotation_) == pytest.approx(-1.0)
    assert np.linalg.det(rot.rotation_) == pytest.approx(1.0)
    assert rot.residual(X, Y) > orth.residual(X, Y) + 1e-3
    # no random rotation does better than the Kabsch solution
    for s in range(20):
        Q = ortho_group.rvs(5, random_state=100 + s)
        if np.linalg.det(Q) < 0:
            Q[:, 0] *= -1
        assert np.linalg.norm(X @ Q - Y) >= np.linalg.norm(X @ rot.rotation_ - Y) - 1e-9


def test_similarity_scale_and_centering():
    X, _, R = hidden(0.0, n=100, d=8)
    Y = 2.5 * X @ R + 7.0
    p = Procrustes("similarity", center=True).fit(X, Y)
    assert p.scale_ == pytest.approx(2.5)
    np.testing.assert_allclose(p.transform(X), Y, atol=1e-10)
    assert Procrustes().fit(X, Y).residual(X, Y) > 1.0  # without centring/scale it cannot fit


def test_normalize_option_uses_unit_rows():
    X, Y, R = hidden(0.0, n=80, d=6)
    Ys = Y * np.random.default_rng(0).uniform(1, 5, size=(80, 1))  # per-row scale noise
    p = Procrustes(normalize=True).fit(X, Ys)
    assert rel(p.rotation_, R) < 1e-10


def test_rectangular_thin_svd_and_zero_padding_identity():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 50))
    Q = np.linalg.qr(rng.normal(size=(80, 50)))[0].T  # [50, 80], orthonormal rows
    Y = X @ Q + 0.1 * rng.normal(size=(400, 80))
    p = Procrustes().fit(X, Y)
    assert p.rotation_.shape == (50, 80)
    assert np.abs(p.rotation_ @ p.rotation_.T - np.eye(50)).max() < 1e-12
    assert rel(p.rotation_, Q) < 0.05
    Rpad = orthogonal_procrustes(np.hstack([X, np.zeros((400, 30))]), Y)[0]
    np.testing.assert_allclose(Rpad[:50], p.rotation_, atol=1e-10)
    with pytest.raises(InputError, match="rotation"):
        Procrustes("rotation").fit(X, Y)


def test_retrieval_precision_nn_and_csls():
    X, Y, R = hidden(0.5, n=300, seed=7)
    p = Procrustes().fit(X, Y)
    rng = np.random.default_rng(8)
    Xt = rng.normal(size=(1000, 64))
    Yt = Xt @ R + 0.5 * rng.normal(size=(1000, 64))
    assert precision_at_k(p.transform(Xt), Yt) > 0.99
    assert precision_at_k(p.transform(Xt), Yt, method="csls") > 0.99
    assert precision_at_k(Xt, Yt) < 0.01  # identity map baseline
    S = np.eye(3)
    assert precision_at_k(S, S[[1, 0, 2]], k=1) == pytest.approx(1 / 3)
    assert precision_at_k(S, S[[1, 0, 2]], np.array([1, 0, 2])) == 1.0


def test_csls_discounts_a_hub():
    # every query leans towards one extra target h (a hub); NN keeps picking it, CSLS does not
    rng = np.random.default_rng(0)
    T = rng.normal(size=(40, 50))
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    h = rng.normal(size=(1, 50))
    h /= np.linalg.norm(h)
    Q = T + h + 0.3 * rng.normal(size=(40, 50)) / np.sqrt(50)
    targets = np.vstack([T, h])
    S = Q @ targets.T / np.linalg.norm(Q, axis=1, keepdims=True)
    nn_hits = (S.argmax(1) == np.arange(40)).mean()
    assert nn_hits < 0.7
    assert precision_at_k(Q, targets, method="nn") == pytest.approx(nn_hits)
    assert precision_at_k(Q, targets, method="csls") == 1.0
    assert precision_at_k(Q, targets, method="isf") == 1.0


def test_inverted_softmax_matches_its_formula():
    """ISF ranks target j for query i by exp(b cos_ij) / sum_i' exp(b cos_i'j); check the ranks
    against that formula written out with scipy's softmax over the queries."""
    from scipy.special import softmax

    rng = np.random.default_rng(3)
    Q, T = rng.normal(size=(25, 8)), rng.normal(size=(30, 8))
    gold = rng.integers(0, 30, size=25)
    cos = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (T / np.linalg.norm(T, axis=1, keepdims=True)).T
    for beta, k in ((1.0, 1), (30.0, 1), (10.0, 5)):
        P = softmax(beta * cos, axis=0)  # normalised over the queries, per target
        want = ((P > P[np.arange(25), gold][:, None]).sum(1) < k).mean()
        assert precision_at_k(Q, T, gold, k=k, method="isf", isf_beta=beta) == pytest.approx(want)
    with pytest.raises(InputError, match="isf"):
        precision_at_k(Q, T, method="inverted")


def test_shared_vocabulary_and_errors():
    shared = shared_vocabulary({"x": 3, "y": 1, "z": 2}, {"z": 0, "y": 9, "w": 1})
    toks, ia, ib = shared.tokens, shared.ids_a, shared.ids_b
    assert toks == ["y", "z"] and ia.tolist() == [1, 2] and ib.tolist() == [9, 0]
    assert len(shared) == 2 and (shared.n_a, shared.n_b) == (3, 3)
    assert shared.to_frame().set_index("statistic").value.to_dict() == {
        "n_shared": 2.0, "n_a": 3.0, "n_b": 3.0}
    with pytest.raises(InputError, match="share no"):
        shared_vocabulary({"a": 0}, {"b": 0})
    with pytest.raises(InputError, match="'affine'"):
        Procrustes("affine")
    with pytest.raises(InputError, match="not fitted"):
        Procrustes().transform(np.ones((2, 2)))


def test_map_embeddings_over_a_shared_vocabulary():
    rng = np.random.default_rng(9)
    words = [f"w{i}" for i in range(300)]
    vocab_a = {w: i for i, w in enumerate(words)}
    ids_b = rng.permutation(400)[:250]  # model b knows 250 of the words, under other ids
    vocab_b = {words[i]: int(ids_b[i]) for i in range(250)}
    vocab_b["only_b"] = int(np.setdiff1d(np.arange(400), ids_b)[0])  # not shared
    E_a = rng.normal(size=(300, 32))
    R = ortho_group.rvs(32, random_state=3)
    E_b = rng.normal(size=(400, 32))
    E_b[ids_b] = E_a[:250] @ R + 0.1 * rng.normal(size=(250, 32))
    m = map_embeddings(E_a, E_b, vocab_a, vocab_b, normalize=False, seed=1)
    assert len(m.tokens) == 250 and m.test_rows.size == 50
    assert m.scores["test"]["p_at_k_nn"] == 1.0 and m.scores["test"]["p_at_k_csls"] == 1.0
    assert m.scores["test"]["p_at_k_isf"] == 1.0 and m.settings["isf_beta"] == 30.0
    assert m.scores["identity"]["p_at_k_nn"] < 0.1
    assert m.scores["shuffled"]["p_at_k_nn"] < 0.1
    assert rel(m.procrustes.rotation_, R) < 0.05
    df = m.to_frame()
    assert set(df.group) == {"test", "train", "identity", "shuffled"}
    with pytest.raises(InputError, match="both"):
        map_embeddings(E_a, E_b, vocab_a)


def test_map_between_layers_uses_paired_rows():
    rng = np.random.default_rng(10)
    Z = rng.normal(size=(200, 16))
    R = ortho_group.rvs(16, random_state=5)
    m = map_embeddings(Z, Z @ R, test_fraction=0.25, normalize=False)
    assert m.tokens is None and m.scores["test"]["residual"] < 1e-20
    assert m.settings["source"] == "rows"


def test_nan_pairs_are_dropped_with_a_warning():
    X, Y, R = hidden(0.0, n=50, d=4)
    Xn = X.copy()
    Xn[7, 1] = np.nan
    with pytest.warns(RuntimeWarning):
        p = Procrustes().fit(Xn, Y)
    np.testing.assert_allclose(p.rotation_, Procrustes().fit(np.delete(X, 7, 0),
                                                             np.delete(Y, 7, 0)).rotation_)
