"""RSA and CKA: invariances, permutation test, oracles (methods.md 2.12, 6.4)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from scipy.stats import kendalltau, ortho_group, pearsonr, spearmanr

from tlprobes._errors import InputError
from tlprobes.analysis import cka, rdm, rsa


@pytest.fixture
def A():
    return np.random.default_rng(0).normal(size=(30, 20))


def test_rdm_matches_pdist(A):
    for metric in ("cosine", "correlation", "euclidean"):
        np.testing.assert_allclose(rdm(A, metric), squareform(pdist(A, metric)), atol=1e-12)
    with pytest.raises(InputError, match="manhattan"):
        rdm(A, "manhattan")


def test_rsa_invariances(A):
    Q = ortho_group.rvs(20, random_state=1)
    assert rsa(A, 7 * A @ Q, n_perm=0).r == pytest.approx(1.0)
    assert rsa(A, 7 * A @ Q, compare="pearson", n_perm=0).r == pytest.approx(1.0)
    assert rsa(A, A + 5, compare="pearson", n_perm=0).r < 0.95  # cosine is not offset invariant
    assert rsa(A, A + 5, rdm="euclidean", n_perm=0).r == pytest.approx(1.0)


def test_rsa_uses_strict_upper_triangle_and_matches_scipy(A):
    B = A + np.random.default_rng(2).normal(size=A.shape)
    res = rsa(A, B, n_perm=0)
    iu = np.triu_indices(30, 1)
    Da, Db = squareform(pdist(A, "cosine")), squareform(pdist(B, "cosine"))
    assert res.r == pytest.approx(spearmanr(Da[iu], Db[iu]).statistic)
    assert rsa(A, B, compare="pearson", n_perm=0).r == pytest.approx(
        pearsonr(Da[iu], Db[iu]).statistic)


def test_permutation_p_value(A):
    rng = np.random.default_rng(3)
    lat = np.repeat(rng.normal(size=(3, 5)) * 3, 10, axis=0)  # 3 categories x 10 items
    X = lat @ rng.normal(size=(5, 50)) + rng.normal(size=(30, 50))
    Y = lat @ rng.normal(size=(5, 300)) + rng.normal(size=(30, 300))
    res = rsa(X, Y, n_perm=200, seed=4)
    assert res.r > 0.8 and res.p == pytest.approx(1 / 201)
    assert res.p == (1 + (res.null >= res.r).sum()) / 201
    shuffled = rsa(X, Y[rng.permutation(30)], n_perm=200, seed=4)
    assert abs(shuffled.r) < 0.3 and shuffled.p > 0.05
    again = rsa(X, Y, n_perm=200, seed=4)
    np.testing.assert_array_equal(again.null, res.null)


def _cosine(a, b):
    return SimpleNamespace(statistic=a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("compare", ["spearman", "pearson", "kendall", "cosine"])
def test_null_draws_match_scipy_on_explicitly_permuted_rdms(A, compare):
    """Each null draw is scipy's correlation of the strict upper triangles after permuting the
    items of Y's RDM, with the permutations the seeded generator hands out in order."""
    B = A + np.random.default_rng(6).normal(size=A.shape) * 2
    B[:4] = B[4]  # ties in Y's RDM (zero distances), which the ranks must handle
    res = rsa(A, B, compare=compare, n_perm=25, seed=9)
    iu = np.triu_indices(30, 1)
    Da, Db = squareform(pdist(A, "cosine")), squareform(pdist(B, "cosine"))
    corr = {"spearman": spearmanr, "pearson": pearsonr, "kendall": kendalltau, "cosine": _cosine}[compare]
    assert res.r == pytest.approx(corr(Da[iu], Db[iu]).statistic, abs=1e-12)
    rng = np.random.default_rng(9)
    want = []
    for _ in range(25):
        p = rng.permutation(30)
        want.append(corr(Da[iu], Db[p][:, p][iu]).statistic)
    np.testing.assert_allclose(res.null, want, rtol=0, atol=1e-12)


def test_rsa_against_rsatoolbox(A):
    rsatoolbox = pytest.importorskip("rsatoolbox")
    B = A + np.random.default_rng(5).normal(size=A.shape)
    rd = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(M), method="correlation") for M in (A, B)]
    ref = rsatoolbox.rdm.compare(rd[0], rd[1], method="corr")[0, 0]
    assert rsa(A, B, rdm="correlation", compare="pearson", n_perm=0).r == pytest.approx(ref)
    ref_s = rsatoolbox.rdm.compare(rd[0], rd[1], method="spearman")[0, 0]
    assert rsa(A, B, rdm="correlation", compare="spearman", n_perm=0).r == pytest.approx(ref_s)
    ref_c = rsatoolbox.rdm.compare(rd[0], rd[1], method="cosine")[0, 0]
    assert rsa(A, B, rdm="correlation", compare="cosine", n_perm=0).r == pytest.approx(ref_c)


def test_cka_matches_kernel_formula_and_invariances(A):
    rng = np.random.default_rng(6)
    B = A @ rng.normal(size=(20, 12)) + rng.normal(size=(30, 12))
    H = np.eye(30) - 1 / 30
    K, L = H @ A @ A.T @ H, H @ B @ B.T @ H
    ref = (K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum())
    assert cka(A, B) == pytest.approx(ref)
    Q = ortho_group.rvs(12, random_state=7)
    assert cka(A, 3 * B @ Q + 2) == pytest.approx(cka(A, B))
    assert cka(A, A) == pytest.approx(1.0)
    with pytest.raises((ValueError, TypeError)):  # InputError, or the jaxtyping shape check
        cka(A, B[:5])


def test_rsa_zero_vector_gives_nan_with_warning(A):
    B = A.copy()
    B[3] = 0
    with pytest.warns(RuntimeWarning):
        res = rsa(A, B, n_perm=10)
    assert np.isnan(res.r)
