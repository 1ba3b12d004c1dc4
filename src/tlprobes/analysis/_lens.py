"""Logit lens and unembedding tools (seed 004; lectures 37 and 222): per-layer top-k, target
rank and log-prob, entropy, KL to the final distribution; weight tying, SVD spectrum and
effective rank.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> r = lens_readout(rng.normal(size=(3, 1, 4, 8)), rng.normal(size=(8, 11)), top_k=2,
    ...                ln="parameter-free")
    >>> r.top_ids.shape, float(np.abs(r.kl_to_final[-1]).max())
    ((3, 1, 4, 2), 0.0)

The two variants: the logit lens (``apply_ln=True``) reads every state x_l through the model's
own final norm, ``W_U ln_f(x_l) + b_U``; the course's variant (``apply_ln=False``, lecture 222)
applies ``W_U`` to Hugging Face's ``hidden_states``: x_0..x_(L-1) raw and x_L after ln_f (HF's
last hidden state already is), so its last row is the model's own prediction too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int, Real
from scipy.special import log_softmax

from .._errors import InputError
from .._tl.adapter import Adapter, adapter_for, is_tl_model
from ._inputs import as_array, as_states, warn_nan
from ._norm import LN_WORDS, layer_norm
from ._stats import LayerSummary, layer_summary
from ._tables import FrameMixin, component_columns, group_columns, long_frame

__all__ = [
    "lens_readout",
    "LogitLensResult",
    "weight_tying",
    "WeightTying",
    "unembedding_spectrum",
    "Spectrum",
    "effective_rank",
]

Array = np.ndarray | torch.Tensor

#: what each value of ``apply_ln`` computes, in the words every report prints
VARIANTS = {
    True: "logit lens: W_U ln_f(x_l) + b_U at every state, with the model's own final norm",
    False: "course (lecture 222): W_U applied to HF hidden_states, i.e. x_0..x_(L-1) raw and "
           "ln_f(x_L) at the last state, so its last row is the model's own prediction",
}


@dataclass(frozen=True, eq=False, repr=False)
class LogitLensResult(FrameMixin):
    """Per-layer lens read-outs ``[L+1, B, P, ...]`` (layer 0 = embeddings, L = final state);
    ``target_rank`` is 0-based (#logits strictly above the target's), ``kl_to_final`` is
    KL(p_L || p_l) in nats. ``summary`` holds per-layer means over valid slots."""

    layers: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    target_ids: np.ndarray | None
    target_logprob: np.ndarray | None
    target_rank: np.ndarray | None
    entropy: np.ndarray
    kl_to_final: np.ndarray
    mask: np.ndarray
    summary: dict[str, LayerSummary]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols = group_columns(self.summary)
        return long_frame(cols, layers=self.layers)


def _resolve_norm(ln: Any, model: Any, carried: Any) -> tuple[Any, str]:
    """The final norm to use and its description; None when none is known."""
    if isinstance(ln, str):
        if ln not in LN_WORDS:
            raise InputError(f"unknown ln {ln!r}; valid: None (the model's own), "
                             f"{', '.join(map(repr, LN_WORDS))}, a (weight, bias) pair or a "
                             "callable")
        return ln, ln
    if ln is not None:
        if is_tl_model(ln):  # a TL model passed as the norm
            model, ln = ln, None
        else:
            return ln, "callable" if callable(ln) else "weight,bias"
    if model is not None:
        return adapter_for(model).final_norm, "the model's final norm (adapter ln_final)"
    if carried is not None:
        return carried, "the model's final norm (carried with the capture)"
    return None, "none"


def _summaries(
    res: dict[str, np.ndarray | None], mask: np.ndarray, has_target: np.ndarray | None
) -> dict[str, LayerSummary]:
    """Per-layer summaries over valid slots; target statistics only where a target exists."""
    L1 = mask.shape[0]
    flat = np.asarray(mask, bool).reshape(L1, -1)
    tflat = flat if has_target is None else flat & np.asarray(has_target, bool).reshape(1, -1)
    out = {}
    for k in ("target_logprob", "target_rank", "entropy", "kl_to_final", "top1_logprob"):
        v = res.get(k)
        if v is not None:
            valid = tflat if k.startswith("target") else flat
            out[k] = layer_summary(np.asarray(v, float).reshape(L1, -1), valid)
    if res.get("target_rank") is not None:
        hit = (np.asarray(res["target_rank"]) == 0).astype(float).reshape(L1, -1)
        out["target_is_top1"] = layer_summary(hit, tflat)
    return out


def lens_readout(
    data: Any,
    W_U: Real[Array, "d_model vocab"] | torch.nn.Module | Adapter | None = None,
    b_U: Real[Array, " vocab"] | None = None,
    *,
    mask: Any = None,
    targets: Int[Array, "batch pos"] | None = None,
    apply_ln: bool = True,
    ln: Any = None,
    eps: float | int = 1e-5,
    top_k: int = 5,
    chunk_elements: int = 1 << 22,
    mode: str | None = None,
    model: Any = None,
) -> LogitLensResult:
    """Read every layer's state through the unembedding: z_l = ln_f(x_l) @ W_U + b_U.

    ``data``: residual capture / ``[L+1, B, P, d]`` states (with ``W_U``: a matrix, or the model
    itself, or ``model=``, for the model's own final norm, unembedding and logit soft-cap), or a logit-lens capture (``.target_logprob``, ...), summarised as is.

    The final norm ``ln`` defaults to the model's own: the one a ``tp.Residual`` capture carries
    (the adapter's ``ln_final``), or ``model``'s. Bare arrays have no model, so the norm must be
    named: ``ln=model``, a ``(weight, bias)`` LayerNorm pair, a callable (given a float64 torch
    tensor), ``"parameter-free"`` (a LayerNorm without weights, ``eps``) or ``"identity"`` (the
    states are normalised already). ``apply_ln=False`` is the course's variant (lecture 222): no
    norm on x_0..x_(L-1), the final norm on x_L only (as HF's last hidden state), so the last row
    is the model's own prediction. A state already marked ``final_state="ln_f"`` is not
    normalised twice.
    ``targets`` ``[B, P]`` token ids (e.g. the next tokens; -1 = none) give rank and log-prob;
    target statistics are summarised only where a target exists. Work is done in float64 over
    chunks of about ``chunk_elements`` logits, so a 50k vocabulary does not need all layers'
    full distributions in memory at once.

    >>> import numpy as np
    >>> x = np.random.default_rng(1).normal(size=(2, 1, 3, 4))
    >>> r = lens_readout(x, np.eye(4), targets=np.zeros((1, 3), int), ln="identity")
    >>> r.target_rank.shape
    (2, 1, 3)
    """
    if hasattr(data, "target_logprob") and not hasattr(data, "shape"):
        cap = data
        st = as_states(cap, mask, attr="entropy", vector=False, mode=mode)
        res = {k: None if getattr(cap, k, None) is None else as_array(getattr(cap, k))
               for k in ("top_ids", "top_logprobs", "target_ids", "target_logprob",
                         "target_rank", "entropy", "kl_to_final")}
        m3 = np.broadcast_to(st.mask[None], st.values.shape)
        if res["top_logprobs"] is not None:
            res["top1_logprob"] = res["top_logprobs"][..., 0]
        settings = {"mode": st.mode, "source": "capture", "meta": st.meta,
                    "apply_ln": getattr(cap, "apply_ln", "unknown")}
        L1 = st.values.shape[0]
        has_t = None if res["target_ids"] is None else res["target_ids"] >= 0
        return LogitLensResult(
            np.arange(L1), res["top_ids"], res["top_logprobs"], res["target_ids"],
            res["target_logprob"], res["target_rank"], res["entropy"], res["kl_to_final"],
            st.mask, _summaries(res, m3, has_t), settings,
        )
    if W_U is not None and not hasattr(W_U, "shape"):  # the model (or its Adapter) given as W_U
        model, W_U = W_U, None
    if W_U is None and model is None:
        raise InputError("lens_readout on states needs W_U [d_model, vocab] (and optionally b_U), "
                         "or model=... to take the model's own")
    st = as_states(data, mask, mode=mode)
    readout = None
    if model is not None and ln is None and W_U is None:
        # the model's own readout: its final norm, unembedding and final-logit transform
        ad = adapter_for(model)
        readout, W_U, b_U = ad.readout, ad.unembed_weight.detach(), None
    norm, norm_name = (None, "the model's readout") if readout is not None else _resolve_norm(
        ln, model, st.final_norm)
    final_ln = st.meta.get("final_state") == "ln_f"
    if readout is None and norm is None and (apply_ln or not final_ln):
        raise InputError(
            "lens_readout on bare arrays needs the final norm named (they carry no model): pass "
            "ln=model (or model=...), ln=(weight, bias), a callable such as the adapter's "
            "ln_final, ln='parameter-free' (a LayerNorm without the model's weights) or "
            "ln='identity' (the states are normalised already); a tp.Residual capture carries "
            "the model's own"
        )
    W = as_array(W_U)
    b = np.zeros(W.shape[1]) if b_U is None else as_array(b_U)
    L1, B, P, d = st.values.shape
    if W.shape[0] != d:
        raise InputError(f"W_U has shape {W.shape}; expected [d_model={d}, vocab]")
    k = int(min(top_k, W.shape[1]))
    tg = None if targets is None else as_array(targets, dtype=None).astype(int)
    has_t = None if tg is None else tg >= 0  # -1 = no target (e.g. the last position)
    tgc = None if tg is None else np.clip(tg, 0, W.shape[1] - 1)
    N = B * P
    xs = st.values.reshape(L1, N, d)
    tgf = None if tgc is None else tgc.reshape(N)
    htf = None if has_t is None else has_t.reshape(N)
    out = {n: np.zeros((L1, N)) for n in ("entropy", "kl", "tlp", "rank")}
    top_ids = np.zeros((L1, N, k), int)
    top_lp = np.zeros((L1, N, k))
    step = max(1, int(chunk_elements // max(W.shape[1], 1)))  # rows per chunk: bounded memory
    for lo in range(0, N, step):
        sl = slice(lo, min(N, lo + step))
        lps = []
        for li in range(L1):
            x = xs[li, sl]
            last = li == L1 - 1
            norm_here = (apply_ln or last) and not (final_ln and last)
            if readout is not None:
                with torch.no_grad():
                    z = as_array(readout(torch.as_tensor(x), apply_ln=norm_here).double())
            else:
                z = (layer_norm(x, norm, eps) if norm_here else x) @ W + b
            lp = log_softmax(z, axis=-1)
            lps.append(lp)
            part = np.argpartition(-z, k - 1, axis=-1)[:, :k]
            order = np.take_along_axis(
                part, np.argsort(-np.take_along_axis(z, part, -1), axis=-1, kind="stable"), -1)
            top_ids[li, sl] = order
            top_lp[li, sl] = np.take_along_axis(lp, order, -1)
            out["entropy"][li, sl] = -(np.exp(lp) * lp).sum(-1)
            if tgf is not None:
                t = tgf[sl, None]
                zt = np.take_along_axis(z, t, -1)
                out["rank"][li, sl] = np.where(htf[sl], (z > zt).sum(-1), -1)
                out["tlp"][li, sl] = np.where(htf[sl], np.take_along_axis(lp, t, -1)[:, 0],
                                              np.nan)
        pL = np.exp(lps[-1])
        for li in range(L1):
            out["kl"][li, sl] = (pL * (lps[-1] - lps[li])).sum(-1)
    out = {n: v.reshape(L1, B, P) for n, v in out.items()}
    top_ids = top_ids.reshape(L1, B, P, k)
    top_lp = top_lp.reshape(L1, B, P, k)
    m3 = np.broadcast_to(st.mask[None], (L1, B, P))
    warn_nan(int((~np.isfinite(out["entropy"]) & m3).sum()), "lens read-outs (NaN/inf states)")

    def msk(v: np.ndarray) -> np.ndarray:
        return np.where(m3, v, np.nan)

    res = {"target_logprob": None if tg is None else msk(out["tlp"]),
           "target_rank": None if tg is None else msk(out["rank"]),
           "entropy": msk(out["entropy"]), "kl_to_final": msk(out["kl"]),
           "top1_logprob": msk(top_lp[..., 0])}
    settings = {"mode": st.mode, "apply_ln": apply_ln, "ln": norm_name,
                "eps": eps, "top_k": k, "final_state": st.meta.get("final_state", "unknown"),
                "variant": VARIANTS[bool(apply_ln)], "meta": st.meta,
                "protocol": {**st.meta.get("protocol", {}), "variant": VARIANTS[bool(apply_ln)],
                             "final_norm": norm_name}}
    return LogitLensResult(np.arange(L1), top_ids, top_lp, tg, res["target_logprob"],
                           res["target_rank"], res["entropy"], res["kl_to_final"], st.mask,
                           _summaries(res, m3, has_t), settings)


@dataclass(frozen=True, eq=False, repr=False)
class WeightTying(FrameMixin):
    """How close W_U is to W_E^T: ``max_abs_diff``, ``relative_diff`` (Frobenius),
    ``mean_cosine`` of matching token vectors and ``tied`` (relative_diff <= tol)."""

    tied: bool
    max_abs_diff: float
    relative_diff: float
    mean_cosine: float
    tol: float

    def to_frame(self) -> pd.DataFrame:
        keys = ("tied", "max_abs_diff", "relative_diff", "mean_cosine")
        return long_frame({("weight_tying", k): [float(getattr(self, k))] for k in keys},
                          layers=[-1])


def weight_tying(
    W_U: Real[Array, "d_model vocab"], W_E: Real[Array, "vocab d_model"], *, tol: float | int = 1e-6
) -> WeightTying:
    """Compare the unembedding with the transposed embedding (GPT-2 ties them).

    >>> import numpy as np
    >>> E = np.random.default_rng(0).normal(size=(10, 4))
    >>> weight_tying(E.T, E).tied
    True
    """
    U, E = as_array(W_U), as_array(W_E).T
    diff = U - E
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(E), np.finfo(float).tiny))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (U * E).sum(0) / (np.linalg.norm(U, axis=0) * np.linalg.norm(E, axis=0))
    return WeightTying(rel <= tol, float(np.abs(diff).max()), rel, float(np.nanmean(cos)), tol)


def effective_rank(x: Real[Array, ...]) -> float:
    """Roy & Vetterli's effective rank exp(H(s/sum s)) of a matrix (or of its singular values).

    >>> import numpy as np
    >>> round(effective_rank(np.eye(4)), 6)
    4.0
    """
    a = as_array(x)
    s = a if a.ndim == 1 else np.linalg.svd(a, compute_uv=False)
    s = s[s > 0]
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


@dataclass(frozen=True, eq=False, repr=False)
class Spectrum(FrameMixin):
    """Singular values of a matrix, their variance fractions s^2/sum s^2, the effective rank,
    participation ratio (sum s^2)^2/sum s^4 and k95 (components for > 95% of s^2)."""

    singular_values: np.ndarray
    explained: np.ndarray
    effective_rank: float
    participation_ratio: float
    k95: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Long table (``layer`` = -1: not per layer): group ``sv1..svn`` with each singular value
        and its variance fraction, group ``spectrum`` with the effective rank, participation ratio
        and k95."""
        return long_frame(component_columns("sv", {
            "singular_value": self.singular_values, "explained": self.explained,
        }) | {("spectrum", "effective_rank"): [self.effective_rank],
              ("spectrum", "participation_ratio"): [self.participation_ratio],
              ("spectrum", "k95"): [self.k95]}, layers=[-1])


def unembedding_spectrum(
    W: Real[Array, "rows cols"], *, center: bool = False
) -> Spectrum:
    """SVD spectrum of an unembedding (or embedding) matrix; ``center`` removes the column mean
    over the vocabulary axis (the longer one) first.

    >>> import numpy as np
    >>> unembedding_spectrum(np.diag([3.0, 4.0])).k95
    2
    """
    A = as_array(W)
    if center:
        ax = 1 if A.shape[1] >= A.shape[0] else 0
        A = A - A.mean(axis=ax, keepdims=True)
    # the squared singular values are the eigenvalues of the short side's Gram matrix: one GEMM and
    # a d_model x d_model eigvalsh instead of an SVD of the whole [d_model, vocab] matrix (90 s for
    # SmolLM2's 576 x 49152 in float64; a second this way)
    G = A @ A.T if A.shape[0] <= A.shape[1] else A.T @ A
    lam = np.linalg.eigvalsh(G)[::-1]
    # eigenvalues below the Gram matrix's rounding (n * eps * lam_max) are zero singular values
    lam = np.where(lam > max(G.shape) * np.finfo(float).eps * lam[0], lam, 0.0)
    s = np.sqrt(lam)
    frac = lam / lam.sum()
    k95 = int(np.searchsorted(np.cumsum(frac), 0.95) + 1)
    return Spectrum(s, frac, effective_rank(s), float(lam.sum() ** 2 / (lam**2).sum()),
                    min(k95, s.size), {"center": center, "shape": tuple(A.shape)})
