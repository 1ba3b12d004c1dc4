"""Path length of each token through the residual stream (lectures 227-229): step lengths,
cumulative and total path, straightness, the attention/MLP decomposition of each step and the
correlation of path length with the next token's logit.

    >>> import numpy as np
    >>> x = np.cumsum(np.ones((4, 1, 3, 2)), axis=0)      # straight line, step sqrt(2)
    >>> r = path_length(x, exclude_first=False)
    >>> np.round(r.total[0], 4).tolist(), np.round(r.straightness[0], 9).tolist()
    ([4.2426, 4.2426, 4.2426], [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int, Real

from .._errors import InputError, choices
from ._inputs import as_array, as_states, included_mask, last_token_mask, warn_nan
from ._stats import Correlation, LayerSummary, adjust_pvalues, correlation, layer_summary
from ._stream import LayerMoments, StreamedSummary, note_mode
from ._tables import FrameMixin, group_columns, long_frame

__all__ = [
    "path_length",
    "PathLength",
    "decompose_steps",
    "StepDecomposition",
    "next_token_values",
    "path_logit_correlation",
    "PathAccumulator",
    "PathSummary",
]

Array = np.ndarray | torch.Tensor


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1)


@dataclass(frozen=True, eq=False, repr=False)
class PathLength(FrameMixin):
    """Per-token path through the layers. ``steps``/``cumulative``/``relative_steps`` are
    ``[L, B, P]``: row i is the step x_(i+1) - x_i, labelled layer i + 1 (``layers`` = 1..L),
    relative to |x_i|; ``total``,
    ``displacement`` (|x_L - x_0|) and ``straightness`` (displacement/total) are ``[B, P]``.
    Invalid slots are NaN; ``included`` ``[B, P]`` marks the tokens the summaries use."""

    layers: np.ndarray
    steps: np.ndarray
    cumulative: np.ndarray
    relative_steps: np.ndarray
    total: np.ndarray
    displacement: np.ndarray
    straightness: np.ndarray
    included: np.ndarray
    summary: dict[str, LayerSummary]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Per-layer step/cumulative/relative-step summaries, plus token totals at layer L."""
        cols: dict[tuple[str, str], np.ndarray] = {}
        for g in ("step", "cumulative", "relative_step"):
            cols.update(self.summary[g].columns(g))
        df = long_frame(cols, layers=self.layers)
        tok = {g: self.summary[g].columns(g) for g in ("total", "straightness")}
        last = [long_frame(c, layers=[int(self.layers[-1])]) for c in tok.values()]
        return pd.concat([df, *last], ignore_index=True)


def _path(x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    d = x[1:] - x[:-1]
    steps = np.linalg.norm(d, axis=-1)
    prev_norm = np.linalg.norm(x[:-1], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = steps / prev_norm
        total = steps.sum(0)
        disp = np.linalg.norm(x[-1] - x[0], axis=-1)
        straight = disp / total
    out = {"steps": steps, "cumulative": np.cumsum(steps, 0), "relative_steps": rel,
           "total": total, "displacement": disp, "straightness": straight}
    for k, v in out.items():
        out[k] = np.where(mask if v.ndim == 2 else mask[None], np.where(np.isfinite(v), v, np.nan),
                          np.nan)
    return out


def _path_from_steps(st: Any, norm: Any) -> dict[str, np.ndarray]:
    m = st.mask[None]
    steps = np.where(m, st.values, np.nan)
    rel = np.full(steps.shape, np.nan)
    if norm is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(m, steps / as_array(norm)[:-1], np.nan)
    nan2 = np.full(steps.shape[1:], np.nan)
    return {"steps": steps, "cumulative": np.cumsum(steps, 0), "relative_steps": rel,
            "total": steps.sum(0), "displacement": nan2, "straightness": nan2}


def path_length(
    data: Any, mask: Any = None, *, exclude_first: bool = True, mode: str | None = None
) -> PathLength:
    """Step lengths |x_l - x_(l-1)| (l = 1..L), cumulative and total path, straightness
    |x_L - x_0| / total, per token; summaries skip padding and (by default) each sequence's
    first token. ``data``: residual capture or ``[L+1, B, P, d]`` (``[L+1, P, d]`` = one sequence),
    or a steps capture (``.step [L, B, P]``, ``.norm [L+1, B, P]``), which has no displacement,
    so its straightness is NaN.

    >>> import numpy as np
    >>> path_length(np.zeros((3, 2, 4, 5)) + np.arange(3)[:, None, None, None]).steps.shape
    (2, 2, 4)
    """
    from_steps = hasattr(data, "step") and not hasattr(data, "shape")
    if from_steps:  # a steps capture: lengths but no vectors
        st = as_states(data, mask, attr="step", vector=False, mode=mode)
        p = _path_from_steps(st, getattr(data, "norm", None))
    else:
        st = as_states(data, mask, mode=mode)
        if st.values.shape[0] < 2:
            raise InputError(f"need at least 2 states on the layer axis, got {st.values.shape[0]}")
        p = _path(st.values, st.mask)
    inc = included_mask(st, exclude_first)
    n_bad = int((np.isnan(p["total" if from_steps else "straightness"]) & inc).sum())
    warn_nan(n_bad, "path lengths or straightness values")
    L = p["steps"].shape[0]
    flat_inc = inc.reshape(-1)
    summary = {k: layer_summary(_flat(p[k2]), flat_inc)
               for k, k2 in (("step", "steps"), ("cumulative", "cumulative"),
                             ("relative_step", "relative_steps"))}
    summary["total"] = layer_summary(p["total"].reshape(1, -1), flat_inc)
    summary["straightness"] = layer_summary(p["straightness"].reshape(1, -1), flat_inc)
    settings = {"mode": st.mode, "exclude_first": exclude_first, "from_steps": from_steps,
                "final_state": st.meta.get("final_state", "unknown"), "meta": st.meta}
    return PathLength(np.arange(1, L + 1), p["steps"], p["cumulative"], p["relative_steps"],
                      p["total"], p["displacement"], p["straightness"], inc, summary, settings)


@dataclass(frozen=True, eq=False, repr=False)
class StepDecomposition(FrameMixin):
    """Each block's step Δ_l = a_l + m_l split into attention and MLP parts, ``[L, B, P]``.

    Additive: ``attn_proj + mlp_proj == step`` (projections onto Δ_l/|Δ_l|, signed).
    Norms: ``attn_norm``, ``mlp_norm``; energy: ``step**2 == attn_norm**2 + mlp_norm**2 + cross``.
    Course (lectures 228-229): ``cos_attn_mlp``; ``attn_drift``/``mlp_drift`` = |a_l - a_(l-1)|
    (row 0 NaN); ``course_r`` per layer Pearson r of each drift with the step over included tokens
    (with p and FDR-BH across layers). Layers are block indices 0..L-1.
    """

    layers: np.ndarray
    step: np.ndarray
    attn_proj: np.ndarray
    mlp_proj: np.ndarray
    attn_norm: np.ndarray
    mlp_norm: np.ndarray
    cross: np.ndarray
    cos_attn_mlp: np.ndarray
    attn_drift: np.ndarray
    mlp_drift: np.ndarray
    course_r: dict[str, np.ndarray]
    included: np.ndarray
    summary: dict[str, LayerSummary]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols = group_columns(self.summary)
        for part in ("attn", "mlp"):
            for k in ("r", "p", "p_fdr_bh", "spearman_r", "n"):
                cols[(f"{part}_drift~step", k)] = self.course_r[f"{part}_{k}"]
        return long_frame(cols, layers=self.layers)


def decompose_steps(
    data: Any,
    mlp_out: Any = None,
    *,
    mask: Any = None,
    exclude_first: bool = True,
    mode: str | None = None,
) -> StepDecomposition:
    """Split each step into attention and MLP contributions. ``data`` is a components capture
    (``.attn_out``, ``.mlp_out``; its ``.layers`` label the rows), ``attn_out [L, B, P, d]`` with
    ``mlp_out`` given, or a steps capture (``.attn_proj``, ``.mlp_proj``, ``.attn_norm``,
    ``.mlp_norm``, ``.attn_mlp_cos``, ``.step``: no vectors, so the course drifts are NaN).

    >>> import numpy as np
    >>> a, m = np.random.default_rng(0).normal(size=(2, 3, 1, 4, 8))
    >>> r = decompose_steps(a, m)
    >>> bool(np.allclose(r.attn_proj + r.mlp_proj, r.step))
    True
    """
    if mlp_out is None and hasattr(data, "attn_proj") and not hasattr(data, "shape"):
        return _decompose_from_steps(data, mask, exclude_first, mode)
    if mlp_out is None:
        a_st = as_states(data, mask, attr="attn_out", mode=mode)
        m_st = as_states(data, a_st.mask, attr="mlp_out", mode=mode)
    else:
        a_st = as_states(data, mask, mode=mode)
        m_st = as_states(mlp_out, a_st.mask, mode=mode)
    a, m = a_st.values, m_st.values
    if a.shape != m.shape:
        raise InputError(f"attn_out shape {a.shape} differs from mlp_out shape {m.shape}")
    d = a + m
    step = np.linalg.norm(d, axis=-1)
    na, nm = np.linalg.norm(a, axis=-1), np.linalg.norm(m, axis=-1)
    dot_am = (a * m).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pa = (a * d).sum(-1) / step
        pm = (m * d).sum(-1) / step
        cos = dot_am / (na * nm)
    L = a.shape[0]
    ad = np.full(step.shape, np.nan)
    md = np.full(step.shape, np.nan)
    if L > 1:
        ad[1:] = np.linalg.norm(a[1:] - a[:-1], axis=-1)
        md[1:] = np.linalg.norm(m[1:] - m[:-1], axis=-1)
    fields = {"step": step, "attn_proj": pa, "mlp_proj": pm, "attn_norm": na, "mlp_norm": nm,
              "cross": 2 * dot_am, "cos_attn_mlp": cos, "attn_drift": ad, "mlp_drift": md}
    layers = getattr(data, "layers", None) if mlp_out is None else None
    return _decomposition(fields, a_st, layers, exclude_first, "components")


def _decompose_from_steps(
    data: Any, mask: Any, exclude_first: bool, mode: str | None
) -> StepDecomposition:
    st = as_states(data, mask, attr="step", vector=False, mode=mode)

    def get(name: str) -> np.ndarray:
        v = getattr(data, name, None)
        if v is None:
            raise InputError(f"the steps capture has no {name!r}; capture it with components=True")
        return as_array(v)

    step, pa, pm = st.values, get("attn_proj"), get("mlp_proj")
    na, nm, cos = get("attn_norm"), get("mlp_norm"), get("attn_mlp_cos")
    nan = np.full(step.shape, np.nan)
    fields = {"step": step, "attn_proj": pa, "mlp_proj": pm, "attn_norm": na, "mlp_norm": nm,
              "cross": step**2 - na**2 - nm**2, "cos_attn_mlp": cos, "attn_drift": nan,
              "mlp_drift": nan}
    return _decomposition(fields, st, None, exclude_first, "steps")


def _decomposition(
    fields: dict[str, np.ndarray], st: Any, layers: Any, exclude_first: bool, source: str
) -> StepDecomposition:
    valid = st.mask
    inc = included_mask(st, exclude_first)
    L = fields["step"].shape[0]

    def vmask(v: np.ndarray) -> np.ndarray:
        return np.where(valid[None] & np.isfinite(v), v, np.nan)

    fields = {k: vmask(v) for k, v in fields.items()}
    n_bad = int((np.isnan(fields["attn_proj"]) & inc[None]).sum()
                + (np.isnan(fields["cos_attn_mlp"]) & inc[None]).sum())
    warn_nan(n_bad, "step projections or cosines (zero attn/mlp/step vectors)")
    flat = inc.reshape(-1)
    summary = {k: layer_summary(_flat(v), flat) for k, v in fields.items()}
    cr: dict[str, np.ndarray] = {}
    for part in ("attn", "mlp"):
        rs = [correlation(_flat(fields[f"{part}_drift"])[i][flat], _flat(fields["step"])[i][flat])
              for i in range(L)]
        cr[f"{part}_r"] = np.array([c.pearson_r for c in rs])
        cr[f"{part}_p"] = np.array([c.pearson_p for c in rs])
        cr[f"{part}_spearman_r"] = np.array([c.spearman_r for c in rs])
        cr[f"{part}_n"] = np.array([c.n for c in rs], float)
        cr[f"{part}_p_fdr_bh"] = adjust_pvalues(cr[f"{part}_p"], "fdr_bh")
    settings = {"mode": st.mode, "exclude_first": exclude_first, "source": source,
                "meta": st.meta}
    lay = np.arange(L) if layers is None else np.asarray(layers, int)
    return StepDecomposition(lay, *(fields[k] for k in (
        "step", "attn_proj", "mlp_proj", "attn_norm", "mlp_norm", "cross", "cos_attn_mlp",
        "attn_drift", "mlp_drift")), cr, inc, summary, settings)


def next_token_values(
    logits: Real[Array, "batch pos vocab"],
    tokens: Int[Array, "batch pos"],
    mask: Bool[Array, "batch pos"] | None = None,
    *,
    kind: str = "logprob",
) -> Float[np.ndarray, "batch pos"]:
    """The logit (or log-prob) each position gives the *next* token: ``[B, P]``, NaN at each
    row's last valid position and at padding (slots must be the full, contiguous sequence).

    >>> import numpy as np
    >>> z = np.log(np.full((1, 3, 4), 0.25))
    >>> np.round(next_token_values(z, np.array([[0, 1, 2]])), 4).tolist()
    [[-1.3863, -1.3863, nan]]
    """
    if kind not in ("logit", "logprob"):
        raise InputError(f"unknown kind {kind!r}; choose one of {choices(('logit', 'logprob'))}")
    z = as_array(logits)
    tok = as_array(tokens, dtype=None).astype(int)
    m = np.ones(tok.shape, bool) if mask is None else as_array(mask, dtype=bool)
    if kind == "logprob":
        from scipy.special import log_softmax

        z = log_softmax(z, axis=-1)
    nxt = np.zeros_like(tok)
    nxt[:, :-1] = tok[:, 1:]
    val = np.take_along_axis(z, nxt[..., None], axis=-1)[..., 0]
    has_next = np.zeros_like(m)
    has_next[:, :-1] = m[:, :-1] & m[:, 1:]
    return np.where(has_next, val, np.nan)


def path_logit_correlation(
    path: Any,
    next_values: Real[Array, "batch pos"],
    mask: Bool[Array, "batch pos"] | None = None,
    *,
    which: str = "total",
    exclude_first: bool = True,
) -> Correlation:
    """Pearson and Spearman correlation of path length with the next token's logit/log-prob
    over valid positions, always excluding each row's last valid position (no next token) and,
    by default, the first. ``path`` is a :class:`PathLength` or a ``[B, P]`` array. ``which``:
    ``"total"`` path or the ``"last_step"`` (the course's ``pathlen[-1]``).

    >>> import numpy as np
    >>> v = np.array([[0.0, 1.0, 2.0, 3.0, 9.0]])
    >>> round(path_logit_correlation(v, -v, exclude_first=False).pearson_r, 6)
    -1.0
    """
    if isinstance(path, PathLength):
        vals = path.total if which == "total" else path.steps[-1]
        m = np.isfinite(vals) if mask is None else as_array(mask, dtype=bool)
    else:
        vals = as_array(path)
        m = np.ones(vals.shape, bool) if mask is None else as_array(mask, dtype=bool)
    nv = as_array(next_values)
    keep = included_mask(m, exclude_first) & ~last_token_mask(m)
    excluded = ["padding", "first", "last"] if exclude_first else ["padding", "last"]
    return correlation(vals[keep], nv[keep], excluded=tuple(excluded))


@dataclass(frozen=True, eq=False, repr=False)
class PathSummary(FrameMixin):
    """Streamed path-length summaries: per-layer ``steps`` and, per group, token-level
    ``total[group]`` and ``straightness[group]`` (one-entry summaries; straightness is NaN when
    fed from a steps capture, which has no states)."""

    steps: StreamedSummary
    total: dict[str, LayerSummary]
    straightness: dict[str, LayerSummary]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Step summaries per layer; token totals at layer L with statistics ``total_*`` and
        ``straightness_*``."""
        last = [int(self.steps.layers[-1])]
        parts = [self.steps.to_frame()]
        for name, d in (("total", self.total), ("straightness", self.straightness)):
            for g, s in d.items():
                cols = {(g, f"{name}_{k}"): v for (_, k), v in s.columns(g).items()}
                parts.append(long_frame(cols, layers=last))
        return pd.concat(parts, ignore_index=True)


class PathAccumulator(LayerMoments):
    """Streaming path-length summaries (``update`` / ``merge`` / ``compute``).

    ``update`` takes a residual capture / ``[L+1, B, P, d]`` states or a steps capture
    (``.step [L, B, P]``).

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(3, 4, 5, 8))
    >>> a, b = PathAccumulator(), PathAccumulator()
    >>> a.update(x[:, :1]); b.update(x[:, 1:])
    >>> a.merge(b).compute().total["all"].n.tolist()
    [16]
    """

    def __init__(self, *, exclude_first: bool = True) -> None:
        super().__init__("step", first_layer=1)
        self.settings = {"exclude_first": exclude_first}
        self._tok = LayerMoments("token")

    def update(  # type: ignore[override]
        self, data: Any, mask: Any = None, *, group: str = "all"
    ) -> None:
        """Fold one batch in."""
        if hasattr(data, "step") and not hasattr(data, "shape"):
            st = as_states(data, mask, attr="step", vector=False)
            steps = np.where(st.mask[None], st.values, np.nan)
            total = steps.sum(0)
            straight = np.full(total.shape, np.nan)
        else:
            st = as_states(data, mask)
            p = _path(st.values, st.mask)
            steps, total, straight = p["steps"], p["total"], p["straightness"]
        inc = included_mask(st, self.settings["exclude_first"])
        warn_nan(int((np.isnan(steps) & inc[None]).sum()), "step lengths")
        note_mode(self.settings, st.mode)
        self._fold(steps, inc[None], group)
        self._tok.update(np.stack([total, straight]), inc[None], group)

    def merge(self, other: PathAccumulator) -> PathAccumulator:  # type: ignore[override]
        super().merge(other)
        self._tok.merge(other._tok)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The per-step moments plus the per-token ones (``"token"``: total and straightness)."""
        return {**super().state_dict(), "token": self._tok.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PathAccumulator:
        """The accumulator :meth:`state_dict` describes (an exact copy)."""
        obj = super().from_state_dict(state)
        obj._tok = LayerMoments.from_state_dict(state["token"])  # type: ignore[attr-defined]
        return obj  # type: ignore[return-value]

    def compute(self) -> PathSummary:  # type: ignore[override]
        steps = super().compute()
        tok = self._tok.compute().summary

        def row(s: LayerSummary, i: int) -> LayerSummary:
            return LayerSummary(*(getattr(s, k)[i:i + 1] for k in LayerSummary._STATS))

        return PathSummary(steps, {g: row(s, 0) for g, s in tok.items()},
                           {g: row(s, 1) for g, s in tok.items()}, dict(self.settings))
