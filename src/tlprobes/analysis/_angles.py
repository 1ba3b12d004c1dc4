"""Angles between residual-stream vectors: the stable primitive, trajectories across layers with
target / word-before / random-control conditions (seed 003, lecture 225), and within-layer angles
between tokens (lecture 226).

    >>> import numpy as np
    >>> float(angle(np.array([1.0, 0.0]), np.array([1.0, 1.0])))
    45.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Real

from .._errors import InputError, PositionError, choices
from ._inputs import States, as_array, as_states, first_token_mask, warn_nan
from ._stats import LayerSummary, PairedTest, layer_summary, paired_test
from ._stream import LayerMoments, note_mode
from ._tables import FrameMixin, long_frame

__all__ = [
    "angle",
    "layer_angles",
    "angle_trajectory",
    "AngleTrajectory",
    "within_layer_angles",
    "WithinLayerAngles",
    "AngleAccumulator",
    "CONTROLS",
]

Array = np.ndarray | torch.Tensor
CONTROLS = ("course", "clean", "layer_matched")
_UNITS = ("deg", "rad")


def _angle(u: np.ndarray, v: np.ndarray, units: str = "deg") -> tuple[np.ndarray, int]:
    nu = np.linalg.norm(u, axis=-1, keepdims=True)
    nv = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        uh, vh = u / nu, v / nv
        th = 2.0 * np.arctan2(np.linalg.norm(uh - vh, axis=-1), np.linalg.norm(uh + vh, axis=-1))
    bad = ~np.isfinite(th) | (nu[..., 0] == 0) | (nv[..., 0] == 0)
    th = np.where(bad, np.nan, th)
    if units == "deg":
        th = np.degrees(th)
    return np.asarray(th, float), int(bad.sum())


def angle(
    u: Real[Array, "*#batch d"],
    v: Real[Array, "*#batch d"],
    *,
    units: str = "deg",
) -> Float[np.ndarray, ...]:
    """Angle between ``u`` and ``v`` along the last dim, broadcasting the rest, in float64.

    Uses ``2*atan2(|u^-v^|, |u^+v^|)``, exact for tiny and near-180 degree angles where
    ``acos`` of a rounded cosine is not. Zero or non-finite vectors give NaN and a warning.

    >>> import numpy as np
    >>> angle(np.eye(3), np.array([1.0, 0.0, 0.0])).tolist()
    [0.0, 90.0, 90.0]
    """
    if units not in _UNITS:
        raise InputError(f"unknown units {units!r}; choose one of {choices(_UNITS)}")
    th, n_bad = _angle(as_array(u), as_array(v), units)
    warn_nan(n_bad, "angles")
    return th


def _consecutive(st: States) -> tuple[np.ndarray, int]:
    """[L, B, P] angle between x_l and x_(l-1) at each slot; NaN at invalid slots."""
    th, _ = _angle(st.values[1:], st.values[:-1])
    th = np.where(st.mask[None], th, np.nan)
    n_bad = int((~np.isfinite(th) & st.mask[None]).sum())
    return th, n_bad


def layer_angles(
    data: Any, mask: Any = None, *, units: str = "deg"
) -> Float[np.ndarray, "layer batch pos"]:
    """Angle between each slot's consecutive states ``x_(l-1), x_l`` (l = 1..L): ``[L, B, P]``,
    NaN where the mask is False. ``data`` is a residual capture or ``[L+1, B, P, d]``.

    >>> import numpy as np
    >>> layer_angles(np.random.default_rng(0).normal(size=(3, 1, 2, 4))).shape
    (2, 1, 2)
    """
    st = as_states(data, mask)
    th, n_bad = _consecutive(st)
    warn_nan(n_bad, "angles")
    return th if units == "deg" else np.radians(th)


def _slot_tokens(st: States, str_tokens: Any, b: int) -> list[str | None]:
    toks = str_tokens[b]
    P = st.mask.shape[1]
    out: list[str | None] = []
    for j in range(P):
        k = int(st.positions[b, j]) if st.positions is not None else j
        out.append(toks[k] if 0 <= k < len(toks) else None)
    return out


def resolve_targets(
    st: States, targets: Any, str_tokens: Any = None
) -> np.ndarray:
    """Target slot per sequence ``[B]`` (-1 where absent) from a token string, an int array of
    slots, or a per-sequence list; a string matches the first valid slot with that token."""
    B = st.mask.shape[0]
    if isinstance(targets, str):
        toks = str_tokens if str_tokens is not None else st.str_tokens
        if toks is None:
            raise PositionError(
                f"target {targets!r} is a token string but no str_tokens were given; pass "
                "str_tokens=... or integer target slots"
            )
        out = np.full(B, -1)
        for b in range(B):
            for j, t in enumerate(_slot_tokens(st, toks, b)):
                if st.mask[b, j] and t == targets:
                    out[b] = j
                    break
        if (out < 0).all():
            raise PositionError(
                f"target {targets!r} occurs in no sequence (check the leading space)"
            )
        return out
    t = np.asarray(as_array(targets, dtype=None)).astype(int).reshape(-1)
    if t.shape != (B,):
        raise PositionError(f"targets must give one slot per sequence ({B}), got shape {t.shape}")
    P = st.mask.shape[1]
    if ((t >= P) | (t < -1)).any():
        raise PositionError(
            f"target slots {t.tolist()} out of range; valid: -1 (absent) or 0..{P - 1}"
        )
    t = np.where((t >= 0) & st.mask[np.arange(B), np.clip(t, 0, P - 1)], t, -1)
    return t


@dataclass(frozen=True, eq=False, repr=False)
class AngleTrajectory(FrameMixin):
    """Angles (degrees) between a token's states at consecutive layers, per condition.

    ``angles[cond]`` is ``[L, B]`` (row l is the angle x_(l-1) -> x_l, ``layers`` = 1..L), NaN where
    the condition is unavailable for that sequence (``valid[cond]`` False) or the vectors are zero.
    ``tests`` holds paired t-tests across sequences: "target-before", "target-control".
    ``control_indices`` ``[L, B, 4]`` = (layer_u, slot_u, layer_v, slot_v) of each control draw.
    """

    layers: np.ndarray
    angles: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    summary: dict[str, LayerSummary]
    tests: dict[str, PairedTest]
    target_slots: np.ndarray
    control_indices: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Long table: layer, group (condition or test), statistic, value."""
        cols: dict[tuple[str, str], np.ndarray] = {}
        for g, s in self.summary.items():
            cols.update(s.columns(g))
        for g, t in self.tests.items():
            cols.update(t.columns(g))
        return long_frame(cols, layers=self.layers)


def _eligible(st: States, exclude_first: bool) -> np.ndarray:
    ok = st.mask.copy()
    if exclude_first:
        ok &= ~first_token_mask(st)
    return ok


def _draw_control(
    st: States, kind: str, rng: np.random.Generator, exclude_first: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Control angles [L, B] and indices [L, B, 4] (-1 where no draw was possible)."""
    L1, B, P, _ = st.values.shape
    L = L1 - 1
    idx = np.full((L, B, 4), -1)
    elig = _eligible(st, exclude_first)
    for b in range(B):
        slots = np.flatnonzero(elig[b])
        for r in range(L):
            if kind == "course":  # hidden layers 1..L, any slot of the padded row
                idx[r, b] = (rng.integers(1, L + 1), rng.integers(P), rng.integers(1, L + 1),
                             rng.integers(P))
            elif slots.size >= 2:
                i, j = rng.choice(slots, size=2, replace=False)
                lu, lv = (r, r + 1) if kind == "clean" else (r + 1, r + 1)
                idx[r, b] = (lu, i, lv, j)
    ok = idx[..., 0] >= 0
    bi = np.broadcast_to(np.arange(B)[None], (L, B))
    safe = np.where(ok[..., None], idx, 0)
    u = st.values[safe[..., 0], bi, safe[..., 1]]
    v = st.values[safe[..., 2], bi, safe[..., 3]]
    th, _ = _angle(u, v)
    return np.where(ok, th, np.nan), idx


def angle_trajectory(
    data: Any,
    targets: Any,
    *,
    mask: Any = None,
    str_tokens: Any = None,
    control: str = "clean",
    exclude_first: bool = True,
    seed: int = 0,
    alpha: float | int = 0.05,
    bonferroni: str = "bonferroni",
    mode: str | None = None,
) -> AngleTrajectory:
    """The seed-003 protocol: per-layer rotation of a target token, the word before it and a
    random control, with summaries, paired t-tests (Bonferroni + FDR-BH) and d_z effect sizes.

    ``data``: residual capture or ``[L+1, B, P, d]`` states; ``targets``: a token string
    (e.g. ``" her"``, first valid occurrence) or one slot per sequence (-1 = absent).

    Controls, drawn once per (layer, sequence) with ``numpy.random.default_rng(seed)``:
    ``"course"`` replicates the course: two independent (layer in 1..L, any slot *including
    padding*) draws in the same sentence; ``"clean"`` is layer-matched and valid-only: two
    distinct valid slots i != j, angle(x_(l-1)[i], x_l[j]); ``"layer_matched"``: distinct valid
    slots at the same layer l (an anisotropy baseline). ``exclude_first`` keeps the first token
    out of the clean draws. ``bonferroni="course"`` uses m = L+1 like the course.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(4, 6, 5, 16))
    >>> res = angle_trajectory(x, np.full(6, 3))
    >>> res.angles["target"].shape, sorted(res.tests)
    ((3, 6), ['target-before', 'target-control'])
    """
    if control not in CONTROLS:
        raise InputError(f"unknown control {control!r}; choose one of {choices(CONTROLS)}")
    st = as_states(data, mask, mode=mode)
    L1, B, P, _ = st.values.shape
    L = L1 - 1
    if L < 1:
        raise InputError(f"need at least 2 states (x_0, x_1) on the layer axis, got {L1}")
    t = resolve_targets(st, targets, str_tokens)
    bi = np.arange(B)
    has_t = t >= 0
    prev = np.where(has_t, t - 1, -1)
    has_b = has_t & (prev >= 0)
    has_b &= st.mask[bi, np.clip(prev, 0, P - 1)]
    if st.positions is not None:
        pos = np.asarray(st.positions)
        has_b &= pos[bi, np.clip(prev, 0, P - 1)] == pos[bi, np.clip(t, 0, P - 1)] - 1
    all_th, _ = _angle(st.values[1:], st.values[:-1])  # [L, B, P]
    tgt = np.where(has_t[None], all_th[:, bi, np.clip(t, 0, P - 1)], np.nan)
    bef = np.where(has_b[None], all_th[:, bi, np.clip(prev, 0, P - 1)], np.nan)
    ctl, cidx = _draw_control(st, control, np.random.default_rng(seed), exclude_first)
    has_c = (cidx[..., 0] >= 0).all(0) & has_t  # paired with the sequences that have a target
    ctl = np.where(has_c[None], ctl, np.nan)
    angles = {"target": tgt, "before": bef, "control": ctl}
    valid = {"target": has_t, "before": has_b, "control": has_c}
    n_bad = sum(int((~np.isfinite(angles[k]) & valid[k][None]).sum()) for k in angles)
    warn_nan(n_bad, "trajectory angles")
    summary = {k: layer_summary(angles[k], valid[k]) for k in angles}
    tests = {
        "target-before": paired_test(tgt, bef, alpha=alpha, bonferroni=bonferroni),
        "target-control": paired_test(tgt, ctl, alpha=alpha, bonferroni=bonferroni),
    }
    settings = {
        "mode": st.mode, "control": control, "exclude_first": exclude_first, "seed": seed,
        "alpha": alpha, "bonferroni": bonferroni, "units": "deg",
        "targets": targets if isinstance(targets, str) else "slots",
        "final_state": st.meta.get("final_state", "unknown"), "meta": st.meta,
    }
    return AngleTrajectory(np.arange(1, L + 1), angles, valid, summary, tests, t, cidx, settings)


@dataclass(frozen=True, eq=False, repr=False)
class WithinLayerAngles(FrameMixin):
    """Angles between tokens inside each layer (lecture 226), ``layers`` = 0..L.

    ``adjacent`` ``[L+1, B, P]``: angle between each valid slot and the previous valid slot (NaN
    at the first). ``target`` ``[L+1, B]``: target vs the slot before it; ``control`` ``[L+1, B]``:
    one random pair of distinct eligible non-target slots per sequence (``control_pairs`` [B, 2]).
    """

    layers: np.ndarray
    adjacent: np.ndarray
    target: np.ndarray | None
    control: np.ndarray
    control_pairs: np.ndarray
    summary: dict[str, LayerSummary]
    test: PairedTest | None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        cols: dict[tuple[str, str], np.ndarray] = {}
        for g, s in self.summary.items():
            cols.update(s.columns(g))
        if self.test is not None:
            cols.update(self.test.columns("target-control"))
        return long_frame(cols, layers=self.layers)


def within_layer_angles(
    data: Any,
    targets: Any = None,
    *,
    mask: Any = None,
    str_tokens: Any = None,
    exclude_first: bool = True,
    seed: int = 0,
    mode: str | None = None,
) -> WithinLayerAngles:
    """Angles between tokens at the same layer: adjacent valid tokens, target vs its previous
    token, and a random pair of distinct eligible slots (valid, not the target, not the first
    token when ``exclude_first``).

    >>> import numpy as np
    >>> r = within_layer_angles(np.random.default_rng(0).normal(size=(3, 2, 6, 8)))
    >>> r.adjacent.shape, r.control.shape
    ((3, 2, 6), (3, 2))
    """
    st = as_states(data, mask, mode=mode)
    L1, B, P, _ = st.values.shape
    x, m = st.values, st.mask
    elig = _eligible(st, exclude_first)
    adj = np.full((L1, B, P), np.nan)
    adj_ok = np.zeros((B, P), bool)
    for b in range(B):
        slots = np.flatnonzero(m[b])
        if exclude_first:
            slots = slots[elig[b, slots]]
        if slots.size >= 2:
            adj[:, b, slots[1:]] = _angle(x[:, b, slots[1:]], x[:, b, slots[:-1]])[0]
            adj_ok[b, slots[1:]] = True
    tgt_arr = None
    t = np.full(B, -1)
    if targets is not None:
        t = resolve_targets(st, targets, str_tokens)
        ok = (t >= 1) & m[np.arange(B), np.clip(t - 1, 0, P - 1)]
        tc = np.clip(t, 1, P - 1)
        th = _angle(x[:, np.arange(B), tc], x[:, np.arange(B), tc - 1])[0]
        tgt_arr = np.where(ok[None], th, np.nan)
    rng = np.random.default_rng(seed)
    pairs = np.full((B, 2), -1)
    for b in range(B):
        slots = np.flatnonzero(elig[b] & (np.arange(P) != t[b]))
        if slots.size >= 2:
            pairs[b] = np.sort(rng.choice(slots, size=2, replace=False))
    okc = pairs[:, 0] >= 0
    pc = np.where(okc[:, None], pairs, 0)
    ctl = _angle(x[:, np.arange(B), pc[:, 0]], x[:, np.arange(B), pc[:, 1]])[0]
    ctl = np.where(okc[None], ctl, np.nan)
    summary = {
        "adjacent": layer_summary(adj.reshape(L1, -1), adj_ok.reshape(-1)),
        "control": layer_summary(ctl, okc),
    }
    test = None
    if tgt_arr is not None:
        summary["target"] = layer_summary(tgt_arr, ok)
        test = paired_test(tgt_arr, ctl)
    settings = {"mode": st.mode, "exclude_first": exclude_first, "seed": seed, "units": "deg",
                "meta": st.meta}
    return WithinLayerAngles(np.arange(L1), adj, tgt_arr, ctl, pairs, summary, test, settings)


class AngleAccumulator(LayerMoments):
    """Streaming mean/SD/CI of the consecutive-layer angle per layer (and group).

    ``update`` takes a residual capture / ``[L+1, B, P, d]`` states, or a steps capture with
    ``.angle`` ``[L, B, P]``; ``merge`` adds another accumulator; ``compute`` summarises.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(3, 4, 5, 8))
    >>> a, b = AngleAccumulator(), AngleAccumulator()
    >>> a.update(x[:, :2]); b.update(x[:, 2:])
    >>> a.merge(b).compute().summary["all"].n.tolist()  # 4 sequences x 4 non-first slots
    [16, 16]
    """

    def __init__(self, *, exclude_first: bool = True) -> None:
        super().__init__("angle", first_layer=1)
        self.settings = {"exclude_first": exclude_first, "units": "deg"}

    def update(self, data: Any, mask: Any = None, *, group: str = "all") -> None:
        """Fold one batch in."""
        if hasattr(data, "angle") and not hasattr(data, "shape"):
            st = as_states(data, mask, attr="angle", vector=False)
            th = np.where(st.mask[None], st.values, np.nan)
        else:
            st = as_states(data, mask)
            th, _ = _consecutive(st)
        ok = _eligible(st, self.settings["exclude_first"])
        n_bad = int((~np.isfinite(th) & ok[None]).sum())
        warn_nan(n_bad, "angles")
        note_mode(self.settings, st.mode)
        self.add(th, ok[None], group)
