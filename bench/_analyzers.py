"""Analyzers at scale against the library doing the same computation (time only).

* Procrustes on 50k x 768 pairs: ``tlprobes.analysis.Procrustes().fit`` vs
  ``scipy.linalg.orthogonal_procrustes``.
* t-SNE on 5k points (d=50): ``tlprobes.analysis.tsne`` (sklearn TSNE + trustworthiness) vs
  ``sklearn.manifold.TSNE`` with the same settings (perplexity 30, init="pca", seed 0); also the
  tlprobes call without its trustworthiness score to show what that costs.
* RSA on 1k items x 768: ``tlprobes.analysis.rsa(..., rdm="correlation", compare="spearman",
  n_perm=0)`` vs rsatoolbox ``calc_rdm(method="correlation")`` twice + ``compare(method="spearman")``;
  and the Mantel permutation test (n_perm=100), which rsatoolbox has no equivalent for, against a
  scipy reference loop (rank the permuted upper triangle with ``scipy.stats.spearmanr``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def _time(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(warmup + repeats):
        order = keys[r % len(keys):] + keys[: r % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            out = fns[k]()
            dt = time.perf_counter() - t0
            del out
            if r >= warmup:
                times[k].append(dt)
    return times


def _rows(group: str, times: dict[str, list[float]], ref: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    t_ref = statistics.median(times[ref])
    return [
        {"group": group, "method": k, "what": labels[k], "time_s": statistics.median(v),
         "times_s": v, "ratio_to_library": statistics.median(v) / t_ref, "reference": ref}
        for k, v in times.items()
    ]


def run(scale: float = 1.0, repeats: int = 3, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    import numpy as np

    rows: list[dict[str, Any]] = []
    try:
        from tlprobes.analysis import Procrustes, rsa, tsne
    except ImportError as err:  # the analysers are being written alongside this bench
        log(f"TODO: tlprobes.analysis does not import ({err}); analyzer rows skipped")
        return [{"group": "analyzers", "method": "TODO", "what": f"tlprobes.analysis missing: {err}"}]
    rng = np.random.default_rng(0)

    # ---------------------------------------------------------------- Procrustes
    n, d = int(50_000 * scale), 768
    log(f"analyzers: Procrustes {n} x {d}")
    X = rng.standard_normal((n, d))
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    Y = X @ Q + 0.1 * rng.standard_normal((n, d))
    from scipy.linalg import orthogonal_procrustes

    t = _time(
        {"scipy.orthogonal_procrustes": lambda: orthogonal_procrustes(X, Y)[0],
         "tlprobes.Procrustes.fit": lambda: Procrustes().fit(X, Y).rotation_},
        repeats,
    )
    R_tp = Procrustes().fit(X, Y).rotation_
    R_sp = orthogonal_procrustes(X, Y)[0]
    log(f"  max |R_tlprobes - R_scipy| = {np.abs(R_tp - R_sp).max():.2e}")
    rows += _rows("procrustes", t, "scipy.orthogonal_procrustes",
                  {"scipy.orthogonal_procrustes": f"scipy, {n}x{d} float64",
                   "tlprobes.Procrustes.fit": f"tlprobes, {n}x{d} float64"})
    del X, Y

    # ---------------------------------------------------------------- t-SNE
    n = int(5_000 * scale)
    log(f"analyzers: t-SNE {n} x 50")
    centers = rng.standard_normal((10, 50)) * 4
    Z = centers[rng.integers(0, 10, n)] + rng.standard_normal((n, 50))
    from sklearn.manifold import TSNE, trustworthiness

    perp = min(30.0, (n - 1) / 3)
    t = _time(
        {"sklearn.TSNE": lambda: TSNE(2, perplexity=perp, random_state=0, init="pca").fit_transform(Z),
         "tlprobes.tsne": lambda: tsne(Z).embedding},
        max(1, repeats - 2), warmup=0,
    )
    rows += _rows("tsne", t, "sklearn.TSNE",
                  {"sklearn.TSNE": f"sklearn TSNE, {n}x50", "tlprobes.tsne": f"tlprobes tsne (+trustworthiness), {n}x50"})
    emb = TSNE(2, perplexity=perp, random_state=0, init="pca").fit_transform(Z)
    t0 = time.perf_counter()
    trustworthiness(Z, emb, n_neighbors=5)
    dt = time.perf_counter() - t0
    rows.append({"group": "tsne", "method": "sklearn.trustworthiness", "what": "its trustworthiness score alone",
                 "time_s": dt, "reference": "sklearn.TSNE", "ratio_to_library": dt / rows[-2]["time_s"]})
    del Z

    # ---------------------------------------------------------------- RSA
    n, d = int(1_000 * scale), 768
    log(f"analyzers: RSA {n} items x {d}")
    A = rng.standard_normal((n, d))
    Bm = A @ rng.standard_normal((d, d)) / np.sqrt(d) + rng.standard_normal((n, d))
    fns: dict[str, Callable[[], Any]] = {
        "tlprobes.rsa(n_perm=0)": lambda: rsa(A, Bm, rdm="correlation", compare="spearman", n_perm=0).r,
    }
    labels = {"tlprobes.rsa(n_perm=0)": f"tlprobes, correlation RDMs + Spearman, {n} items"}
    ref = None
    try:
        import rsatoolbox

        def rsatb() -> Any:
            ra = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(A), method="correlation")
            rb = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(Bm), method="correlation")
            return rsatoolbox.rdm.compare(ra, rb, method="spearman")

        fns = {"rsatoolbox": rsatb, **fns}
        import importlib.metadata

        labels["rsatoolbox"] = f"rsatoolbox {importlib.metadata.version('rsatoolbox')}, same"
        ref = "rsatoolbox"
    except ImportError as err:
        log(f"  rsatoolbox not importable ({err}); RSA compared against scipy only")
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    def scipy_rsa() -> Any:
        return spearmanr(pdist(A, "correlation"), pdist(Bm, "correlation")).statistic

    fns["scipy pdist+spearmanr"] = scipy_rsa
    labels["scipy pdist+spearmanr"] = "scipy, same"
    ref = ref or "scipy pdist+spearmanr"
    t = _time(fns, repeats)
    r_tp = rsa(A, Bm, rdm="correlation", compare="spearman", n_perm=0).r
    log(f"  r tlprobes {r_tp:.6f}, scipy {scipy_rsa():.6f}")
    rows += _rows("rsa", t, ref, labels)

    n_perm = 100
    iu = np.triu_indices(n, k=1)
    from scipy.spatial.distance import squareform

    def scipy_mantel() -> Any:
        Dx, Dy = squareform(pdist(A, "correlation")), squareform(pdist(Bm, "correlation"))
        ux = Dx[iu]
        g = np.random.default_rng(0)
        r = spearmanr(ux, Dy[iu]).statistic
        null = [spearmanr(ux, Dy[p][:, p][iu]).statistic for p in (g.permutation(n) for _ in range(n_perm))]
        return r, null

    t = _time(
        {"scipy Mantel loop": scipy_mantel,
         "tlprobes.rsa(n_perm=100)": lambda: rsa(A, Bm, rdm="correlation", compare="spearman", n_perm=n_perm).p},
        max(1, repeats - 2), warmup=0,
    )
    rows += _rows("rsa_mantel", t, "scipy Mantel loop",
                  {"scipy Mantel loop": f"scipy spearmanr per permutation, {n_perm} perms",
                   "tlprobes.rsa(n_perm=100)": f"tlprobes Mantel test, {n_perm} perms"})
    return rows
