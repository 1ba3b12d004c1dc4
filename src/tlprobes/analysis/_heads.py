"""Which heads turn the token: rankings with confidence intervals and the paired contrast per head.

Both read a :class:`~tlprobes.capture.heads.HeadStepsCapture` (its streamed moments over prompts)::

    >>> hs = tp.run(model, prompts, tp.HeadSteps(positions=tp.Target(" her"),
    ...             baseline=tp.Target(" her", offset=-1))).head_steps      # doctest: +SKIP
    >>> head_ranking(hs, "angle").top(layer=3)                               # doctest: +SKIP
    >>> head_contrast(hs, "angle").to_frame()                                # doctest: +SKIP

Confidence intervals are t-based over prompts (each prompt contributes the mean over its selected
slots); the contrast is a paired t-test per layer and part computed from the streamed moments of the
per-prompt differences (it equals ``scipy.stats.ttest_rel`` on the same values), corrected across
all tested layer x part cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .._errors import InputError, check_index, choices
from ._stats import CORRECTIONS, _refuse_renamed, adjust_pvalues, summary_from_moments
from ._tables import FrameMixin, long_frame

__all__ = ["HeadRanking", "HeadContrast", "head_ranking", "head_contrast"]

_STATS = ("n", "mean", "sd", "sem", "ci_low", "ci_high")


def _check(capture: Any) -> None:
    from ..capture.heads import HeadStepsCapture

    if not isinstance(capture, HeadStepsCapture):
        raise InputError(
            "expected the capture of tp.HeadSteps (result.head_steps), got "
            f"{type(capture).__name__}"
        )


def _summary(capture: Any, field_name: str, group: str) -> dict[str, np.ndarray]:
    i = capture._field(field_name)
    m = capture._group(group)
    n, s, q = (m[k][i].numpy() for k in ("n", "sum", "sumsq"))
    summ = summary_from_moments(n, s, q, np.zeros_like(n))
    return {k: np.asarray(getattr(summ, k), float) for k in _STATS}


def _grid(parts: tuple[str, ...], cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """The wide ``[layer x part]`` table: one row per layer and part (``head`` -1: not a head)."""
    L, P = next(iter(cols.values())).shape
    data = {
        "layer": np.repeat(np.arange(L), P),
        "part": np.tile(np.array(parts, dtype=object), L),
        "head": np.tile(np.r_[np.arange(len(parts) - 2), [-1, -1]], L),
    }
    data.update({k: v.reshape(-1) for k, v in cols.items()})
    return pd.DataFrame(data)


def _long(parts: tuple[str, ...], cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """``[layer, part]`` arrays as the tidy table every result gives: group = part."""
    return long_frame({(part, k): np.asarray(v, float)[:, j]
                       for j, part in enumerate(parts) for k, v in cols.items()})


@dataclass(frozen=True, eq=False, repr=False)
class HeadRanking(FrameMixin):
    """Per layer, the heads ordered by their mean ``statistic`` over prompts (with 95% CIs).

    ``mean``/``ci_low``/``ci_high``/``n`` are ``[layer, part]`` (parts: heads, ``attn_bias``,
    ``mlp``); ``order[l]`` lists layer ``l``'s head indices best first; ``rank`` is
    ``[layer, head]`` (0 = best).
    """

    statistic: str
    group: str
    parts: tuple[str, ...]
    summary: dict[str, np.ndarray]
    order: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        return self.summary["mean"]

    @property
    def rank(self) -> np.ndarray:
        r = np.empty_like(self.order)
        for l in range(self.order.shape[0]):
            r[l, self.order[l]] = np.arange(self.order.shape[1])
        return r

    def top(self, layer: int, k: int = 1) -> list[int]:
        """The ``k`` best heads of ``layer``."""
        layer = check_index(layer, self.order.shape[0], of=" of this ranking")
        return [int(h) for h in self.order[layer, :k]]

    def _cols(self) -> dict[str, np.ndarray]:
        rank = np.full((self.order.shape[0], len(self.parts)), -1)
        rank[:, : self.order.shape[1]] = self.rank
        return {**self.summary, "rank": rank}

    def to_frame(self) -> pd.DataFrame:
        """Long table: layer, group (the part: ``H0``.., ``attn_bias``, ``mlp``), statistic (n,
        mean, sd, sem, ci_low, ci_high of ``self.statistic``, and the head's rank in its layer,
        -1 for the parts that are not heads), value."""
        return _long(self.parts, self._cols())

    def table(self) -> pd.DataFrame:
        """The same numbers wide: one row per layer and part, a column per statistic."""
        df = _grid(self.parts, self._cols())
        df.insert(0, "statistic", self.statistic)
        return df


def head_ranking(
    capture: Any, statistic: str = "step_proj", *, group: str = "target", absolute: bool = False
) -> HeadRanking:
    """Rank each layer's heads by their mean ``statistic`` over prompts.

    Args:
        capture: ``result.head_steps`` (a HeadStepsCapture).
        statistic: one of ``step_proj``, ``state_proj``, ``norm``, ``angle``, ``dla``.
        group: ``"target"``, ``"baseline"`` or ``"contrast"`` (the latter two need ``baseline=``).
        absolute: rank by ``|mean|`` (heads that act most, in either direction).

    Example::

        >>> r = head_ranking(hs, "dla")      # doctest: +SKIP
        >>> r.top(layer=1, k=3)              # doctest: +SKIP
    """
    _check(capture)
    summ = _summary(capture, statistic, group)
    H = capture.n_heads
    key = summ["mean"][:, :H]
    key = np.abs(key) if absolute else key
    order = np.argsort(-np.nan_to_num(key, nan=-np.inf), axis=1, kind="stable")
    return HeadRanking(
        statistic, group, tuple(capture.parts), summ, order,
        {"absolute": absolute, **capture.settings},
    )


@dataclass(frozen=True, eq=False, repr=False)
class HeadContrast(FrameMixin):
    """Paired target - baseline contrast per layer and part: mean difference, its 95% CI, t, p, d_z,
    and p corrected across all ``[layer, part]`` cells (``[layer, part]`` arrays)."""

    statistic: str
    parts: tuple[str, ...]
    target: dict[str, np.ndarray]
    baseline: dict[str, np.ndarray]
    diff: dict[str, np.ndarray]
    t: np.ndarray
    p: np.ndarray
    p_adjusted: np.ndarray
    d_z: np.ndarray
    correction: str
    alpha: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def reject(self) -> np.ndarray:
        return self.p_adjusted < self.alpha

    def top(self, k: int = 5, *, heads_only: bool = True) -> pd.DataFrame:
        """The ``k`` cells with the largest t (target > baseline), significant or not."""
        df = self.table()
        if heads_only:
            df = df[df["head"] >= 0]
        df = df.sort_values("t", ascending=False, na_position="last")
        return df.head(k).reset_index(drop=True)

    def _cols(self) -> dict[str, np.ndarray]:
        return {
            "target_mean": self.target["mean"], "baseline_mean": self.baseline["mean"],
            "n": self.diff["n"], "diff_mean": self.diff["mean"], "diff_ci_low": self.diff["ci_low"],
            "diff_ci_high": self.diff["ci_high"], "t": self.t, "p": self.p,
            f"p_{self.correction}": self.p_adjusted, "d_z": self.d_z,
            "reject": self.reject.astype(float),
        }

    def to_frame(self) -> pd.DataFrame:
        """Long table: layer, group (the part), statistic (target_mean, baseline_mean, n,
        diff_mean, its CI, t, p, the corrected p, d_z, reject), value."""
        return _long(self.parts, self._cols())

    def table(self) -> pd.DataFrame:
        """The same numbers wide: one row per layer and part, a column per statistic."""
        df = _grid(self.parts, self._cols())
        df.insert(0, "statistic", self.statistic)
        return df


def head_contrast(
    capture: Any, statistic: str = "angle", *, correction: str = "fdr_bh", alpha: float = 0.05
) -> HeadContrast:
    """Paired test per layer and part: does ``statistic`` differ between the target positions and
    the baseline positions of the same prompts (e.g. " her" vs the word before it)?

    Example::

        >>> c = head_contrast(hs, "angle")   # doctest: +SKIP
        >>> c.top(3)                         # doctest: +SKIP
    """
    _check(capture)
    if "contrast" not in capture.moments:
        raise InputError(
            "this HeadSteps capture has no baseline; run tp.HeadSteps(positions=..., "
            "baseline=tp.Target(word, offset=-1)) to compare each head at the target with the word "
            "before"
        )
    _refuse_renamed(correction, "correction")
    if correction not in CORRECTIONS:
        raise InputError(f"unknown correction {correction!r}; valid: {choices(CORRECTIONS)}")
    tgt = _summary(capture, statistic, "target")
    base = _summary(capture, statistic, "baseline")
    diff = _summary(capture, statistic, "contrast")
    n = diff["n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = diff["mean"] / diff["sem"]
        p = 2 * stats.t.sf(np.abs(t), np.where(n > 1, n - 1, np.nan))
        d_z = diff["mean"] / diff["sd"]
    flat = p.reshape(-1)
    ok = np.isfinite(flat)
    adj = np.full_like(flat, np.nan)
    if ok.any():
        adj[ok] = adjust_pvalues(flat[ok], correction)
    return HeadContrast(
        statistic, tuple(capture.parts), tgt, base, diff, t, p, adj.reshape(p.shape), d_z,
        correction, alpha, dict(capture.settings),
    )
