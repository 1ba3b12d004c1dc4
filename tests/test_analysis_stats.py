"""Statistics helpers against scipy oracles (methods.md section 3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tlprobes._errors import InputError, TLProbesError
from tlprobes.analysis import (
    adjust_pvalues,
    correlation,
    independent_test,
    layer_summary,
    paired_test,
)
from tlprobes.analysis._stats import summary_from_moments


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_layer_summary_matches_numpy_and_scipy(rng):
    v = rng.normal(3.0, 2.0, size=(4, 25))
    s = layer_summary(v)
    np.testing.assert_allclose(s.mean, v.mean(1))
    np.testing.assert_allclose(s.sd, v.std(1, ddof=1))
    np.testing.assert_allclose(s.sem, stats.sem(v, axis=1))
    lo, hi = stats.t.interval(0.95, 24, loc=v.mean(1), scale=stats.sem(v, axis=1))
    np.testing.assert_allclose(s.ci_low, lo)
    np.testing.assert_allclose(s.ci_high, hi)
    np.testing.assert_allclose(s.median, np.median(v, 1))
    assert s.n.tolist() == [25] * 4 and s.n_nan.tolist() == [0] * 4


def test_layer_summary_counts_nan_and_ignores_invalid(rng):
    v = rng.normal(size=(2, 10))
    v[0, 3] = np.nan
    valid = np.ones(10, bool)
    valid[7:] = False
    v[1, 8] = 1e9  # invalid: must not leak into the mean
    s = layer_summary(v, valid)
    assert s.n.tolist() == [6, 7]
    assert s.n_nan.tolist() == [1, 0]
    np.testing.assert_allclose(s.mean[1], v[1, :7].mean())
    np.testing.assert_allclose(s.mean[0], np.delete(v[0, :7], 3).mean())


def test_streamed_moments_equal_direct_summary(rng):
    v = rng.normal(size=(3, 40))
    s = layer_summary(v)
    m = summary_from_moments(np.full(3, 40), v.sum(1), (v**2).sum(1), np.zeros(3))
    for k in ("mean", "sd", "sem", "ci_low", "ci_high"):
        np.testing.assert_allclose(getattr(m, k), getattr(s, k), rtol=1e-10)


def test_paired_test_matches_ttest_rel(rng):
    a = rng.normal(size=(5, 30))
    b = a + rng.normal(0.3, 1.0, size=(5, 30))
    a[2, 4] = np.nan  # that pair is dropped for layer 2 only
    res = paired_test(a, b)
    for i in range(5):
        ok = np.isfinite(a[i]) & np.isfinite(b[i])
        tt = stats.ttest_rel(a[i, ok], b[i, ok])
        d = a[i, ok] - b[i, ok]
        assert res.n[i] == ok.sum()
        np.testing.assert_allclose([res.t[i], res.p[i], res.df[i]],
                                   [tt.statistic, tt.pvalue, tt.df])
        np.testing.assert_allclose(res.d_z[i], d.mean() / d.std(ddof=1))
        ci = tt.confidence_interval(0.95)
        np.testing.assert_allclose([res.ci_low[i], res.ci_high[i]], [ci.low, ci.high])
    np.testing.assert_allclose(res.p_bonferroni, np.minimum(1, res.p * 5))
    np.testing.assert_allclose(res.p_fdr_bh, stats.false_discovery_control(res.p))
    course = paired_test(a, b, bonferroni="bonferroni_states")
    np.testing.assert_allclose(course.p_bonferroni, np.minimum(1, res.p * 6))  # m = L + 1


def test_adjust_pvalues_against_scipy_and_hand_values():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni")[:4], [0.04, 0.16, 0.12, 0.8])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni_states")[:4], [0.06, 0.24, 0.18, 1.0])
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh")[:4],
                               stats.false_discovery_control(p[:4], method="bh"))
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh")[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert np.isnan(adjust_pvalues(p, "fdr_bh")[4])
    with pytest.raises(InputError, match="holm"):
        adjust_pvalues(p, "holm")
    with pytest.raises(ValueError):
        adjust_pvalues(p, "holm")


def test_independent_test_matches_welch_and_mannwhitney(rng):
    a = rng.normal(0, 1, size=(3, 20))
    b = rng.normal(0.8, 2, size=(3, 35))
    res = independent_test(a, b)
    for i in range(3):
        w = stats.ttest_ind(a[i], b[i], equal_var=False)
        u = stats.mannwhitneyu(a[i], b[i], alternative="two-sided")
        np.testing.assert_allclose([res.t[i], res.p[i]], [w.statistic, w.pvalue])
        np.testing.assert_allclose([res.u[i], res.p_mannwhitney[i]], [u.statistic, u.pvalue])
    np.testing.assert_allclose(res.p_fdr_bh, stats.false_discovery_control(res.p))


def test_correlation_matches_scipy_and_handles_constant(rng):
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    c = correlation(x, y, excluded=("first",))
    assert c.n == 50 and c.excluded == ("first",)
    np.testing.assert_allclose([c.pearson_r, c.pearson_p], stats.pearsonr(x, y))
    np.testing.assert_allclose([c.spearman_r, c.spearman_p], tuple(stats.spearmanr(x, y)))
    assert np.isnan(correlation(x, np.ones(50)).pearson_r)
    assert issubclass(InputError, TLProbesError)


# ------------------------------------------------------------------ beyond the t-test (issue 11)
def _brute_sign_flip(d):
    """All 2^n sign patterns, by hand: the exact two-sided p of |mean| >= |observed|."""
    import itertools

    obs = abs(d.mean())
    hits = sum(abs((np.array(s) * d).mean()) >= obs * (1 - 1e-12)
               for s in itertools.product((1, -1), repeat=d.size))
    return hits / 2 ** d.size


def test_sign_flip_test_is_exact_for_small_n(rng):
    from tlprobes.analysis import sign_flip_test

    a = rng.normal(0.6, 1.0, size=(3, 10))
    b = rng.normal(0.0, 1.0, size=(3, 10))
    b[2, 4] = np.nan  # that pair is dropped at that layer only
    res = sign_flip_test(a, b)
    assert res.exact.all() and res.n.tolist() == [10, 10, 9]
    for i in range(3):
        ok = np.isfinite(b[i])
        assert res.p[i] == pytest.approx(_brute_sign_flip(a[i, ok] - b[i, ok]), rel=1e-12)
        sp = stats.permutation_test((a[i, ok], b[i, ok]),
                                    lambda x, y, axis: np.mean(x - y, axis=axis),
                                    permutation_type="samples", n_resamples=np.inf,
                                    vectorized=True)
        assert res.p[i] == pytest.approx(sp.pvalue, rel=1e-12)
    np.testing.assert_allclose(res.p_bonferroni, np.minimum(1, res.p * 3))


def test_sign_flip_monte_carlo_is_seeded_and_close_to_exact(rng):
    from tlprobes.analysis import sign_flip_test

    d = rng.normal(0.5, 1.0, size=(1, 16))
    exact = sign_flip_test(d, np.zeros_like(d), n_resamples=2**16)
    mc = sign_flip_test(d, np.zeros_like(d), n_resamples=4000, seed=3)
    again = sign_flip_test(d, np.zeros_like(d), n_resamples=4000, seed=3)
    assert exact.exact[0] and not mc.exact[0]
    assert mc.p[0] == again.p[0]
    se = np.sqrt(exact.p[0] * (1 - exact.p[0]) / 4000)
    assert abs(mc.p[0] - exact.p[0]) < 5 * se + 1e-3


def test_bootstrap_ci_matches_scipy_and_covers_the_mean(rng):
    from tlprobes.analysis import bootstrap_ci

    a = rng.normal(2.0, 1.0, size=(2, 30))
    b = rng.normal(0.0, 1.0, size=(2, 30))
    ci = bootstrap_ci(a, b, n_resamples=2000, seed=4)
    ref = stats.bootstrap((a[0] - b[0],), np.mean, n_resamples=2000, method="BCa",
                          rng=np.random.default_rng(4))
    assert ci.ci_low[0] == pytest.approx(ref.confidence_interval.low, rel=1e-10)
    assert ci.ci_high[0] == pytest.approx(ref.confidence_interval.high, rel=1e-10)
    assert (ci.ci_low < (a - b).mean(1)).all() and ((a - b).mean(1) < ci.ci_high).all()


def test_paired_test_with_one_pair_warns():
    a = np.array([[1.0, np.nan], [1.0, 2.0]])
    b = np.array([[0.0, 0.0], [0.0, 0.5]])
    with pytest.warns(RuntimeWarning, match=r"layer index\(es\) \[0\] have fewer than 2 pairs"):
        res = paired_test(a, b)
    assert np.isnan(res.t[0]) and np.isfinite(res.t[1])


def test_bonferroni_states_is_the_course_correction_under_a_clear_name():
    p = np.array([0.01, 0.02, np.nan])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni_states")[:2], [0.04, 0.08])
    # the old spelling is refused with the new name (it named the course, not the correction)
    with pytest.raises(InputError, match="method='course' was renamed: use method='bonferroni_states'"):
        adjust_pvalues(p, "course")
    with pytest.raises(ValueError, match="bonferroni='bonferroni_states'"):
        paired_test(np.array([[1.0, 2.0, 4.0]]), np.zeros((1, 3)), bonferroni="course")
    t = paired_test(np.array([[1.0, 2.0, 4.0]]), np.zeros((1, 3)), bonferroni="bonferroni_states")
    assert t.bonferroni == "bonferroni_states"
