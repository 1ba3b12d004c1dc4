"""Per-layer statistics shared by every analyzer: summaries, paired/independent tests,
multiple-comparison corrections and correlations (methods.md section 3).

    >>> import numpy as np
    >>> s = layer_summary(np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]))
    >>> s.mean.tolist(), s.n.tolist()
    ([2.0, 2.0], [3, 3])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float, Real
from scipy import stats

from .._errors import InputError, choices
from ._tables import FrameMixin, long_frame

__all__ = [
    "LayerSummary",
    "PairedTest",
    "IndependentTest",
    "Correlation",
    "layer_summary",
    "summary_from_moments",
    "paired_test",
    "independent_test",
    "adjust_pvalues",
    "correlation",
    "SignFlipTest",
    "sign_flip_test",
    "BootstrapCI",
    "bootstrap_ci",
]

Layers = Sequence[int] | np.ndarray | None
CORRECTIONS = ("bonferroni", "bonferroni_states", "fdr_bh", "none")
#: Bonferroni names for a per-layer test: m = the number of tests (L), or m = the number of hidden
#: states (L+1), which is the course's ``.05/n_hiddens``.
BONFERRONI = ("bonferroni", "bonferroni_states")
#: Old spellings, refused with the new name: ``"course"`` chose a correction but said which course
#: step it copied, not which correction.
_RENAMED = {"course": "bonferroni_states"}


def _refuse_renamed(name: str, what: str) -> None:
    if isinstance(name, str) and name in _RENAMED:
        raise InputError(
            f"{what}={name!r} was renamed: use {what}={_RENAMED[name]!r} (Bonferroni with m = L+1 "
            "hidden states, the course's .05/n_hiddens)"
        )


def _bonferroni_name(name: str) -> str:
    _refuse_renamed(name, "bonferroni")
    if name not in BONFERRONI:
        raise InputError(f"unknown bonferroni {name!r}; choose one of {choices(BONFERRONI)}")
    return name


def _finite_pairs(
    a: Any, b: Any = None
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
    """The per-layer preamble of every paired statistic: ``a`` and ``b`` (zeros when ``None``) as
    float ``[layer, item]``, the number of items where both are finite per layer, and
    ``(layer, a_i, b_i)`` with those items for each layer that has at least two.

    >>> n, rows = _finite_pairs(np.array([[1.0, np.nan, 3.0], [1.0, 2.0, np.nan]]))
    >>> n.tolist(), [(i, x.tolist()) for i, x, _ in rows]
    ([2, 2], [(0, [1.0, 3.0]), (1, [1.0, 2.0])])
    """
    a = np.asarray(a, float)
    b = np.zeros_like(a) if b is None else np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    n = ok.sum(1)
    return n, [(i, a[i, ok[i]], b[i, ok[i]]) for i in range(a.shape[0]) if n[i] >= 2]


@dataclass(frozen=True, eq=False, repr=False)
class LayerSummary(FrameMixin):
    """Per-layer n, mean, sd (ddof=1), sem, 95% CI (t-based), median and NaN count."""

    n: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    sem: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    median: np.ndarray
    n_nan: np.ndarray

    _STATS = ("n", "mean", "sd", "sem", "ci_low", "ci_high", "median", "n_nan")

    def columns(self, group: str) -> dict[tuple[str, str], np.ndarray]:
        return {(group, k): getattr(self, k) for k in self._STATS}

    def to_frame(self, group: str = "all", layers: Layers = None) -> pd.DataFrame:
        return long_frame(self.columns(group), layers=layers)


def _ci(mean: np.ndarray, sem: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        tcrit = stats.t.ppf(0.975, np.where(n > 1, n - 1, np.nan))
    return mean - tcrit * sem, mean + tcrit * sem


def summary_from_moments(
    n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, n_nan: np.ndarray
) -> LayerSummary:
    """A :class:`LayerSummary` from streamed counts, sums and sums of squares (median is NaN)."""
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / n, np.nan)
        var = np.where(n > 1, (total_sq - n * mean**2) / (n - 1), np.nan)
        sd = np.sqrt(np.maximum(var, 0.0))
        sem = sd / np.sqrt(n)
    lo, hi = _ci(mean, sem, n)
    return LayerSummary(
        n.astype(int), mean, sd, sem, lo, hi, np.full_like(mean, np.nan), np.asarray(n_nan, int)
    )


def layer_summary(
    values: Real[np.ndarray, "layer item"],
    valid: Bool[np.ndarray, "layer item"] | Bool[np.ndarray, " item"] | None = None,
) -> LayerSummary:
    """Summarise ``values`` over items for each layer; items outside ``valid`` are ignored and
    NaNs among the valid ones are counted in ``n_nan`` (not averaged)."""
    v = np.asarray(values, float)
    ok = np.ones(v.shape, bool) if valid is None else np.broadcast_to(valid, v.shape)
    isnan = ~np.isfinite(v) & ok
    use = ok & ~isnan
    n = use.sum(1)
    x = np.where(use, v, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, x.sum(1) / np.maximum(n, 1), np.nan)
        dev = np.where(use, v - mean[:, None], 0.0)
        sd = np.where(n > 1, np.sqrt((dev**2).sum(1) / np.maximum(n - 1, 1)), np.nan)
        sem = sd / np.sqrt(n)
    lo, hi = _ci(mean, sem, n)
    med = np.array([np.median(v[i, use[i]]) if n[i] else np.nan for i in range(v.shape[0])])
    return LayerSummary(n, mean, sd, sem, lo, hi, med, isnan.sum(1))


def adjust_pvalues(
    p: Real[np.ndarray, " test"],
    method: str = "bonferroni",
    *,
    m: int | None = None,
) -> Float[np.ndarray, " test"]:
    """Adjusted p-values (NaN stays NaN). ``"bonferroni"``: m = number of finite tests;
    ``"bonferroni_states"``: Bonferroni with m = the number of hidden states = tests + 1 (the
    course's ``.05/n_hiddens`` for L per-layer tests), or ``m``; ``"fdr_bh"``:
    Benjamini-Hochberg through ``scipy.stats.false_discovery_control``.

    >>> import numpy as np
    >>> adjust_pvalues(np.array([0.01, 0.02]), "bonferroni_states").tolist()
    [0.03, 0.06]
    """
    p = np.asarray(p, float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    k = int(ok.sum())
    _refuse_renamed(method, "method")
    if method not in CORRECTIONS:
        raise InputError(f"unknown correction {method!r}; choose one of {choices(CORRECTIONS)}")
    if k == 0:
        return out
    if method == "none":
        out[ok] = p[ok]
    elif method == "bonferroni":
        out[ok] = np.minimum(1.0, p[ok] * (m if m is not None else k))
    elif method == "bonferroni_states":
        out[ok] = np.minimum(1.0, p[ok] * (m if m is not None else p.size + 1))
    else:
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


@dataclass(frozen=True, eq=False, repr=False)
class PairedTest(FrameMixin):
    """Per-layer paired t-test of a - b over the same items (``scipy.stats.ttest_rel``).

    ``d_z`` = mean(diff)/sd(diff); ``ci_low/ci_high`` bound mean(diff) at 95%;
    ``p_bonferroni`` uses the correction named in ``bonferroni``: ``"bonferroni"`` (m = L tests)
    or ``"bonferroni_states"`` (m = L+1 hidden states, the course's)."""

    n: np.ndarray
    mean_diff: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    d_z: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_bonferroni: np.ndarray
    p_fdr_bh: np.ndarray
    alpha: float
    bonferroni: str

    @property
    def reject_bonferroni(self) -> np.ndarray:
        return self.p_bonferroni < self.alpha

    @property
    def reject_fdr_bh(self) -> np.ndarray:
        return self.p_fdr_bh < self.alpha

    def columns(self, group: str) -> dict[tuple[str, str], np.ndarray]:
        keys = ("n", "mean_diff", "t", "df", "p", "d_z", "ci_low", "ci_high", "p_bonferroni",
                "p_fdr_bh")
        out = {(group, k): getattr(self, k) for k in keys}
        out[(group, "reject_bonferroni")] = self.reject_bonferroni.astype(float)
        out[(group, "reject_fdr_bh")] = self.reject_fdr_bh.astype(float)
        return out

    def to_frame(self, group: str = "a-b", layers: Layers = None) -> pd.DataFrame:
        return long_frame(self.columns(group), layers=layers)


def paired_test(
    a: Real[np.ndarray, "layer item"],
    b: Real[np.ndarray, "layer item"],
    *,
    alpha: float | int = 0.05,
    bonferroni: str = "bonferroni",
) -> PairedTest:
    """Two-sided paired t-test of ``a`` vs ``b`` at each layer over items where both are finite.

    A layer with fewer than two pairs (or no spread in the differences) has no t and gives NaN,
    with a warning naming the layers.

    >>> import numpy as np
    >>> paired_test(np.array([[1.0, 2.0, 4.0]]), np.array([[0.0, 1.0, 1.0]])).n.tolist()
    [3]
    """
    bonferroni = _bonferroni_name(bonferroni)
    n, rows = _finite_pairs(a, b)
    res = {k: np.full(n.size, np.nan) for k in ("n", "md", "t", "df", "p", "dz", "lo", "hi")}
    res["n"][:] = n
    for i, x, y in rows:
        d = x - y
        res["md"][i] = d.mean()
        sd = d.std(ddof=1)
        res["dz"][i] = d.mean() / sd if sd > 0 else np.nan
        if sd == 0:
            continue
        tt = stats.ttest_rel(x, y)
        ci = tt.confidence_interval(0.95)
        res["t"][i], res["p"][i], res["df"][i] = tt.statistic, tt.pvalue, tt.df
        res["lo"][i], res["hi"][i] = ci.low, ci.high
    few = np.flatnonzero(res["n"] < 2)
    if few.size:
        warnings.warn(
            f"paired t-test: layer index(es) {few.tolist()} have fewer than 2 pairs "
            f"(n = {res['n'][few].astype(int).tolist()}); their t and p are NaN",
            RuntimeWarning, stacklevel=2,
        )
    flat = np.flatnonzero((res["n"] >= 2) & ~np.isfinite(res["t"]))
    if flat.size:
        warnings.warn(
            f"paired t-test: layer index(es) {flat.tolist()} have identical differences (sd = 0); "
            "their t and p are NaN", RuntimeWarning, stacklevel=2,
        )
    return PairedTest(
        res["n"].astype(int), res["md"], res["t"], res["df"], res["p"], res["dz"], res["lo"],
        res["hi"], adjust_pvalues(res["p"], bonferroni), adjust_pvalues(res["p"], "fdr_bh"),
        alpha, bonferroni,
    )


@dataclass(frozen=True, eq=False, repr=False)
class IndependentTest(FrameMixin):
    """Per-layer Welch t-test and Mann-Whitney U of two independent groups, FDR-BH across layers."""

    n_a: np.ndarray
    n_b: np.ndarray
    mean_diff: np.ndarray
    t: np.ndarray
    p: np.ndarray
    hedges_g: np.ndarray
    u: np.ndarray
    p_mannwhitney: np.ndarray
    p_fdr_bh: np.ndarray
    p_mannwhitney_fdr_bh: np.ndarray

    def columns(self, group: str) -> dict[tuple[str, str], np.ndarray]:
        keys = ("n_a", "n_b", "mean_diff", "t", "p", "hedges_g", "u", "p_mannwhitney",
                "p_fdr_bh", "p_mannwhitney_fdr_bh")
        return {(group, k): getattr(self, k) for k in keys}

    def to_frame(self, group: str = "a-b", layers: Layers = None) -> pd.DataFrame:
        return long_frame(self.columns(group), layers=layers)


def independent_test(
    a: Real[np.ndarray, "layer item_a"], b: Real[np.ndarray, "layer item_b"]
) -> IndependentTest:
    """Welch's t (``ttest_ind(equal_var=False)``) and Mann-Whitney U per layer, NaNs dropped."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    L = a.shape[0]
    out = {k: np.full(L, np.nan) for k in ("na", "nb", "md", "t", "p", "g", "u", "pu")}
    for i in range(L):
        x, y = a[i][np.isfinite(a[i])], b[i][np.isfinite(b[i])]
        out["na"][i], out["nb"][i] = x.size, y.size
        if x.size < 2 or y.size < 2:
            continue
        out["md"][i] = x.mean() - y.mean()
        sp = np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1))
                     / (x.size + y.size - 2))
        corr = 1 - 3 / (4 * (x.size + y.size) - 9)
        out["g"][i] = corr * out["md"][i] / sp if sp > 0 else np.nan
        w = stats.ttest_ind(x, y, equal_var=False)
        out["t"][i], out["p"][i] = w.statistic, w.pvalue
        mw = stats.mannwhitneyu(x, y, alternative="two-sided")
        out["u"][i], out["pu"][i] = mw.statistic, mw.pvalue
    return IndependentTest(
        out["na"].astype(int), out["nb"].astype(int), out["md"], out["t"], out["p"], out["g"],
        out["u"], out["pu"], adjust_pvalues(out["p"], "fdr_bh"),
        adjust_pvalues(out["pu"], "fdr_bh"),
    )


@dataclass(frozen=True, eq=False, repr=False)
class Correlation(FrameMixin):
    """Pearson r and Spearman rho with p-values over ``n`` finite pairs; ``excluded`` says what was
    dropped before (e.g. first/last positions, padding)."""

    n: int
    pearson_r: float
    pearson_p: float
    spearman_r: float
    spearman_p: float
    excluded: tuple[str, ...] = ()

    def to_frame(self, group: str = "all", layer: int = -1) -> pd.DataFrame:
        keys = ("n", "pearson_r", "pearson_p", "spearman_r", "spearman_p")
        return long_frame({(group, k): [getattr(self, k)] for k in keys}, layers=[layer])


def correlation(
    x: Real[np.ndarray, " n"], y: Real[np.ndarray, " n"], *, excluded: tuple[str, ...] = ()
) -> Correlation:
    """Pearson and Spearman correlation of the finite pairs of ``x`` and ``y``."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return Correlation(n, np.nan, np.nan, np.nan, np.nan, excluded)
    pr = stats.pearsonr(x[ok], y[ok])
    sr = stats.spearmanr(x[ok], y[ok])
    return Correlation(n, float(pr.statistic), float(pr.pvalue), float(sr.statistic),
                       float(sr.pvalue), excluded)


@dataclass(frozen=True, eq=False, repr=False)
class SignFlipTest(FrameMixin):
    """Per-layer paired permutation test: under H0 each item's difference a - b is as likely
    to have the opposite sign, so the mean difference is compared with its sign-flip distribution.

    ``exact`` says whether all 2^n sign patterns were enumerated (else ``n_resamples`` Monte Carlo
    ones from ``seed``); ``p`` is two-sided; ``p_bonferroni`` / ``p_fdr_bh`` are corrected across
    layers like :class:`PairedTest`. No normality is assumed."""

    n: np.ndarray
    mean_diff: np.ndarray
    p: np.ndarray
    exact: np.ndarray
    p_bonferroni: np.ndarray
    p_fdr_bh: np.ndarray
    n_resamples: int
    seed: int
    bonferroni: str

    def columns(self, group: str) -> dict[tuple[str, str], np.ndarray]:
        return {(group, "perm_p"): self.p, (group, "perm_p_bonferroni"): self.p_bonferroni,
                (group, "perm_p_fdr_bh"): self.p_fdr_bh,
                (group, "perm_exact"): self.exact.astype(float)}

    def to_frame(self, group: str = "a-b", layers: Layers = None) -> pd.DataFrame:
        return long_frame(self.columns(group), layers=layers)


def _mean_stat(x: Any, axis: int = -1) -> Any:
    return np.mean(x, axis=axis)


def sign_flip_test(
    a: Real[np.ndarray, "layer item"],
    b: Real[np.ndarray, "layer item"],
    *,
    n_resamples: int = 9999,
    seed: int = 0,
    bonferroni: str = "bonferroni",
) -> SignFlipTest:
    """Exact (``2**n <= n_resamples + 1``) or Monte Carlo sign-flip test of mean(a - b) per layer,
    over the items where both are finite. Calls ``scipy.stats.permutation_test`` with
    ``permutation_type="samples"`` (swapping a and b inside a pair = flipping the sign of its
    difference), seeded with ``numpy.random.default_rng(seed)``.

    >>> import numpy as np
    >>> r = sign_flip_test(np.array([[1.0, 2.0, 3.0]]), np.zeros((1, 3)))
    >>> bool(r.exact[0]), float(r.p[0])  # 2 of the 8 sign patterns reach |mean| >= 2
    (True, 0.25)
    """
    bonferroni = _bonferroni_name(bonferroni)
    n, rows = _finite_pairs(a, b)
    n = n.astype(int)
    md = np.full(n.size, np.nan)
    p = np.full(n.size, np.nan)
    exact = np.zeros(n.size, bool)
    rng = np.random.default_rng(seed)
    for i, x, y in rows:
        d = x - y
        md[i] = d.mean()
        exact[i] = 2.0 ** n[i] <= n_resamples + 1
        res = stats.permutation_test(
            (d, np.zeros_like(d)), lambda x, y, axis=-1: _mean_stat(x - y, axis),
            permutation_type="samples", vectorized=True, alternative="two-sided",
            n_resamples=np.inf if exact[i] else n_resamples, rng=rng,
        )
        p[i] = res.pvalue
    return SignFlipTest(n, md, p, exact, adjust_pvalues(p, bonferroni), adjust_pvalues(p, "fdr_bh"),
                        int(n_resamples), int(seed), bonferroni)


@dataclass(frozen=True, eq=False, repr=False)
class BootstrapCI(FrameMixin):
    """Per-layer bootstrap confidence interval of the mean of ``a - b`` (or of ``a``) over items,
    resampling items (sentences) with replacement; ``method`` is scipy's ("BCa" by default)."""

    n: np.ndarray
    mean: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    confidence: float
    method: str
    n_resamples: int
    seed: int

    def columns(self, group: str) -> dict[tuple[str, str], np.ndarray]:
        return {(group, "boot_ci_low"): self.ci_low, (group, "boot_ci_high"): self.ci_high}

    def to_frame(self, group: str = "a-b", layers: Layers = None) -> pd.DataFrame:
        return long_frame(self.columns(group), layers=layers)


def bootstrap_ci(
    a: Real[np.ndarray, "layer item"],
    b: Real[np.ndarray, "layer item"] | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int = 0,
) -> BootstrapCI:
    """Bootstrap CI over items of mean(a - b) (paired; ``b=None``: of mean(a)) at each layer,
    through ``scipy.stats.bootstrap`` seeded with ``numpy.random.default_rng(seed)``.

    >>> import numpy as np
    >>> ci = bootstrap_ci(np.random.default_rng(0).normal(1.0, 0.1, size=(1, 40)))
    >>> bool(ci.ci_low[0] < 1.0 < ci.ci_high[0])
    True
    """
    n, rows = _finite_pairs(a, b)
    n = n.astype(int)
    mean, lo, hi = (np.full(n.size, np.nan) for _ in range(3))
    rng = np.random.default_rng(seed)
    for i, x, y in rows:
        d = x - y
        mean[i] = d.mean()
        if np.ptp(d) == 0:
            lo[i] = hi[i] = d[0]
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
            r = stats.bootstrap((d,), _mean_stat, n_resamples=n_resamples, method=method,
                                confidence_level=confidence, vectorized=True, rng=rng)
        lo[i], hi[i] = r.confidence_interval.low, r.confidence_interval.high
    return BootstrapCI(n, mean, lo, hi, float(confidence), method, int(n_resamples), int(seed))
